"""scripts/demo.py's client, run as the unprivileged user: shutil.rmtree
fails on the root-owned leftover, force_remove_dir_all delegates it.

Usage: demo_client.py PATH
"""

import shutil
import sys

from locald_admin.client import force_remove_dir_all


def main(target):
    try:
        shutil.rmtree(target)
        print("  shutil.rmtree: removed (unexpected: nothing root-owned?)")
    except PermissionError as e:
        print(f"  shutil.rmtree as this user: PermissionError: {e}")
    force_remove_dir_all(target)
    print("  force_remove_dir_all: done (delegated to org.locald.Admin1)")


if __name__ == "__main__":
    main(sys.argv[1])
