"""The D-Bus contract of locald-admin: every name both sides rely on.

This is the only place where bus names, error names, the polkit action id and
the CLI exit codes are spelled out; the mechanism and the client import them
from here.
"""

BUS_NAME = "org.locald.Admin1"
OBJECT_PATH = "/org/locald/Admin1"
INTERFACE = "org.locald.Admin1"
METHOD_CLEANUP = "Cleanup"
CLEANUP_SIGNATURE = "s"
# Progress(s path, t removed, d elapsed_seconds): sent during a long
# Cleanup, only to the caller's unique name (never broadcast).
SIGNAL_PROGRESS = "Progress"

POLKIT_ACTION = "org.locald.admin1.cleanup"

# The anchor directory name: only paths below the first component that is
# exactly this name are in scope.
ANCHOR_NAME = ".locald"
# The second anchor kind: locald's per-user data directory, below the
# caller's home directory (from the password database, never the caller's
# environment).
DATA_DIR_NAME = ".local/share/locald"

# Longest path accepted, in bytes of UTF-8 (PATH_MAX on Linux).
MAX_PATH_BYTES = 4096

# D-Bus error names.
ERROR_FAILED = "org.locald.Admin1.Error.Failed"
ERROR_NOT_AUTHORIZED = "org.locald.Admin1.Error.NotAuthorized"
ERROR_INTERACTIVE_AUTH_REQUIRED = "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"
ERROR_INVALID_PATH = "org.locald.Admin1.Error.InvalidPath"
ERROR_OUTSIDE_SCOPE = "org.locald.Admin1.Error.OutsideScope"
ERROR_MOUNT_POINT = "org.locald.Admin1.Error.MountPoint"

# locald-shim exit codes.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_AUTHORIZED = 3
EXIT_INVALID_PATH = 4
EXIT_OUTSIDE_SCOPE = 5
EXIT_MOUNT_POINT = 6
EXIT_NO_SERVICE = 7

EXIT_CODE_BY_ERROR = {
    ERROR_FAILED: EXIT_FAILED,
    ERROR_NOT_AUTHORIZED: EXIT_NOT_AUTHORIZED,
    ERROR_INTERACTIVE_AUTH_REQUIRED: EXIT_NOT_AUTHORIZED,
    ERROR_INVALID_PATH: EXIT_INVALID_PATH,
    ERROR_OUTSIDE_SCOPE: EXIT_OUTSIDE_SCOPE,
    ERROR_MOUNT_POINT: EXIT_MOUNT_POINT,
}

# polkit's CheckAuthorization flag (polkit's PolkitCheckAuthorizationFlags).
POLKIT_ALLOW_USER_INTERACTION = 0x1

# The client waits this long for a Cleanup reply by default: big trees take
# minutes; D-Bus' usual 25 s is far too short.
DEFAULT_CALL_TIMEOUT = 600.0
