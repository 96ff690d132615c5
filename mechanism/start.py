"""The entry point of ``locald-admin-mechanism`` (launcher, console script,
``python -m locald_admin.mechanism``).

It first makes the interpreter use glibc's malloc (``memory``; this may
replace the process, before anything else is imported), then runs the
service (``main``).
"""

from . import memory


def main():
    memory.exec_under_system_malloc()
    from .main import main as run  # only now: the imports are the start-up's main cost

    return run()
