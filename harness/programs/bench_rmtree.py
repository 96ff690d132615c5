"""shutil.rmtree(PATH), timed, for bench/ (as the test user)."""
import json, shutil, sys, time
t0 = time.perf_counter()
err = None
try:
    shutil.rmtree(sys.argv[1])
except BaseException as e:
    err = f"{type(e).__name__}: {str(e)[:200]}"
print(json.dumps({"seconds": time.perf_counter() - t0, "error": err}))
