"""The D-Bus contract of locald-admin: every name both sides rely on.

This is the only place where bus names, the error table (D-Bus names, exit
codes, the exception classes of both sides), the polkit action id and the
CLI exit codes are spelled out; the mechanism and the client import them
from here.
"""

from .records import frozen

BUS_NAME = "org.locald.Admin1"
OBJECT_PATH = "/org/locald/Admin1"
INTERFACE = "org.locald.Admin1"

POLKIT_ACTION = "org.locald.admin1.cleanup"


# -- the interface's members, once: dispatch and introspection both read them --

# The Python type of a basic D-Bus type's value, as the wire codec reads it.
PYTHON_TYPES = {"s": str, "o": str, "g": str, "b": bool, "y": int, "n": int, "q": int, "i": int, "u": int,
                "x": int, "t": int, "d": float, "h": int,
                # and the one container an argument has: a vardict, str -> wire.Variant
                "a{sv}": dict}


@frozen
class Arg:
    name: str
    signature: str

    @property
    def python_type(self):
        """The type of its value as the mechanism receives it (a basic type's)."""
        return PYTHON_TYPES[self.signature]


@frozen
class MethodSpec:
    name: str
    in_args: tuple[Arg, ...]
    out_args: tuple[Arg, ...]
    action: str  # the polkit action that gates it
    doc: str = ""  # what it does, for the man page

    @property
    def in_signature(self):
        return "".join(a.signature for a in self.in_args)

    def unpack(self, body):
        """The call's arguments, in order, each checked to be of its
        ``Arg.python_type``: what the method's handler is given.  ValueError
        when the body does not match (the signature was checked before)."""
        if len(body) != len(self.in_args):
            raise ValueError(f"{self.name} takes {len(self.in_args)} arguments, got {len(body)}")
        for arg, value in zip(self.in_args, body):
            if type(value) is not arg.python_type:
                raise ValueError(f"{self.name}: {arg.name} is {type(value).__name__}, not {arg.signature}")
        return tuple(body)

    @property
    def out_signature(self):
        return "".join(a.signature for a in self.out_args)


@frozen
class SignalSpec:
    name: str
    args: tuple[Arg, ...]
    doc: str = ""

    @property
    def signature(self):
        return "".join(a.signature for a in self.args)


@frozen
class PropertySpec:
    name: str
    signature: str
    doc: str = ""
    # Its org.freedesktop.DBus.Property.EmitsChangedSignal annotation, when
    # not the default ("true"): "const", a value that never changes while
    # the mechanism runs (so no PropertiesChanged is ever sent for it).
    emits_changed_signal: str | None = None


CLEANUP = MethodSpec(
    "Cleanup", (Arg("path", "s"),), (), POLKIT_ACTION,
    "Remove path, an absolute path at or below a .locald directory the caller owns (or below the "
    "caller's own ~/.local/share/locald), with everything in it; the anchor itself may be named. A path "
    "that does not exist is success. Nothing outside the target is touched: no symbolic link is "
    "followed, no mount entered, and a mount at or below the target, or one of a running container "
    "that uses it, refuses the call before anything is deleted.")
# CleanupWithOptions' options and result: each key's D-Bus type, once (the
# mechanism checks the options against it, the client reads the result by
# it, the man page lists both).  A key the table does not have, or a value of
# another type, is InvalidArgs naming it: an option a newer client sends and
# this mechanism would ignore could change what a call means.
OPTION_INTERACTIVE = "interactive"
OPTION_DRY_RUN = "dry-run"
CLEANUP_OPTIONS = {
    OPTION_INTERACTIVE: ("b", "whether polkit may ask for a password; when absent, the message's "
                              "ALLOW_INTERACTIVE_AUTHORIZATION flag decides"),
    OPTION_DRY_RUN: ("b", "check and walk the tree as a real call would, and remove nothing"),
}
MAX_REFUSED = 5  # entries named in a dry run's refused
RESULT_REMOVED = "removed"
RESULT_EXISTED = "existed"
RESULT_DURATION = "duration-usec"
RESULT_WOULD_REMOVE = "would-remove"
RESULT_REFUSED = "refused"
CLEANUP_RESULT = {
    RESULT_REMOVED: ("t", "entries removed (0 for a dry run)"),
    RESULT_EXISTED: ("b", "whether the target existed when it was looked up"),
    RESULT_DURATION: ("t", "microseconds from the call's arrival to its answer"),
    RESULT_WOULD_REMOVE: ("t", "a dry run only: entries a real call would remove"),
    RESULT_REFUSED: ("a(ss)", f"a dry run only: the first {MAX_REFUSED} entries a real call would leave in place, "
                              "each with its reason (path, reason)"),
}
CLEANUP_WITH_OPTIONS = MethodSpec(
    "CleanupWithOptions", (Arg("path", "s"), Arg("options", "a{sv}")), (Arg("result", "a{sv}"),), POLKIT_ACTION,
    "Cleanup with options, answering with what it did: the same rules, checks and polkit action. "
    "A dry run resolves the scope and runs every check (mounts, in use, the trust rule), then walks the "
    "tree without removing anything.")

# Sent during a long Cleanup, only to the caller's unique name (never
# broadcast): paths are private.
PROGRESS = SignalSpec(
    "Progress", (Arg("path", "s"), Arg("removed", "t"), Arg("elapsed_seconds", "d")),
    "Sent during a long Cleanup, about once a second, to the caller only (never broadcast): the entries "
    "removed so far.")
# What a client can ask the mechanism about itself (Properties.Get/GetAll).
VERSION = PropertySpec("Version", "s", "the mechanism's release, as locald-admin-mechanism --version shows it",
                       emits_changed_signal="const")
INTERFACE_REVISION_PROPERTY = PropertySpec(
    "InterfaceRevision", "u", "the revision of this interface: 1 for Cleanup, Progress, Version and "
    "InterfaceRevision, 2 with CleanupWithOptions and InvalidArgs; raised by one for every later method, "
    "signal, property or error, so that a client can tell what the mechanism has", emits_changed_signal="const")
METHODS = (CLEANUP, CLEANUP_WITH_OPTIONS)
SIGNALS = (PROGRESS,)
PROPERTIES = (VERSION, INTERFACE_REVISION_PROPERTY)
# Raised by one with every method, signal, property or error added (1: this
# interface, with Busy, Progress, Version and InterfaceRevision; 2:
# CleanupWithOptions and the InvalidArgs row of the error table).
INTERFACE_REVISION = 2
# The revision that brought CleanupWithOptions: a client finding an older
# mechanism (UnknownMethod) falls back to Cleanup, and fails a dry run.
REVISION_WITH_OPTIONS = 2

METHOD_CLEANUP = CLEANUP.name
CLEANUP_SIGNATURE = CLEANUP.in_signature
SIGNAL_PROGRESS = PROGRESS.name

# The anchor directory name: only paths below the first component that is
# exactly this name are in scope.
ANCHOR_NAME = ".locald"
# The second anchor kind: locald's per-user data directory, below the
# caller's home directory (from the password database, never the caller's
# environment).
DATA_DIR_NAME = ".local/share/locald"

# Longest path accepted, in bytes of UTF-8 (PATH_MAX on Linux).  Checked on
# arrival, before anything else is done for the call.
MAX_PATH_BYTES = 4096
# The most requests one uid may have queued at the mechanism (credentials,
# polkit, waiting for a worker, running): past it, Busy.  Twice what one
# client library keeps in flight (AdminClient's max_in_flight).
MAX_QUEUED_PER_UID = 128
CLIENT_MAX_IN_FLIGHT = 64

# -- the error table ------------------------------------------------------------
# Every error of the contract, once: each row has one exception class on
# each side, which names its row and takes its D-Bus name (and the client's
# its exit code) from it (mechanism/errors.py, client/errors.py);
# locald-shim's exit codes come from it, the audit record's journal priority
# too; the classes and the README's error table are checked against it
# (tests/test_contract.py).

# syslog(3) priorities, as the journal's PRIORITY field spells them.
PRIORITY_ERR, PRIORITY_WARNING, PRIORITY_NOTICE, PRIORITY_INFO = 3, 4, 5, 6
PRIORITY_OK = PRIORITY_INFO  # a request that succeeded
PRIORITY_CANCELLED = PRIORITY_NOTICE  # its caller left before the answer

@frozen
class ErrorSpec:
    """One error of the contract, as both sides see it."""

    dbus_name: str
    exit_code: int  # locald-shim's
    mechanism_class: str  # its class in locald_admin.mechanism.errors
    client_class: str  # its class in locald_admin.client.errors
    client_base: type  # the built-in exception the client's class also is
    meaning: str  # when it is answered, in one line
    priority: int  # of the request's audit record in the journal: a refusal is a notice, ...
    refines: "ErrorSpec | None" = None  # a more general error it is a case of


FAILED = ErrorSpec(
    "org.locald.Admin1.Error.Failed", 1, "Failed", "CleanupFailedError", OSError,
    "I/O errors (the message names the first entries that failed), internal errors", PRIORITY_ERR)
NOT_AUTHORIZED = ErrorSpec(
    "org.locald.Admin1.Error.NotAuthorized", 3, "NotAuthorized", "NotAuthorizedError", PermissionError,
    "polkit said no, or polkit is unavailable or timed out", PRIORITY_NOTICE)
INTERACTIVE_AUTH_REQUIRED = ErrorSpec(
    "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired", 3, "InteractiveAuthorizationRequired",
    "InteractiveAuthorizationRequiredError", PermissionError,
    "polkit needs a password but the call did not allow interaction", PRIORITY_NOTICE, refines=NOT_AUTHORIZED)
INVALID_PATH = ErrorSpec(
    "org.locald.Admin1.Error.InvalidPath", 4, "InvalidPath", "InvalidPathError", ValueError,
    "the path breaks a lexical rule", PRIORITY_NOTICE)
OUTSIDE_SCOPE = ErrorSpec(
    "org.locald.Admin1.Error.OutsideScope", 5, "OutsideScope", "OutsideScopeError", PermissionError,
    "under no anchor, the anchor is not a real directory owned by the caller, a symlink or magic link on "
    "the way, or excluded by the administrator's configuration", PRIORITY_NOTICE)
MOUNT_POINT = ErrorSpec(
    "org.locald.Admin1.Error.MountPoint", 6, "MountPoint", "MountPointError", OSError,
    "a mount at or below the target, or the anchor is a mount point", PRIORITY_WARNING)
IN_USE = ErrorSpec(
    "org.locald.Admin1.Error.InUse", 8, "InUse", "InUseError", OSError,
    "a mount in another mount namespace (a running container's) uses the target", PRIORITY_WARNING)
BUSY = ErrorSpec(
    "org.locald.Admin1.Error.Busy", 9, "Busy", "BusyError", OSError,
    "the caller already has the most requests queued that one user may have; the client library "
    "retries with backoff", PRIORITY_WARNING)

INVALID_ARGS = ErrorSpec(
    "org.freedesktop.DBus.Error.InvalidArgs", 10, "InvalidArgs", "InvalidArgumentsError", ValueError,
    "arguments of the wrong type, or an option the method does not know or of the wrong type (named)",
    PRIORITY_NOTICE)

ERRORS = (FAILED, NOT_AUTHORIZED, INTERACTIVE_AUTH_REQUIRED, INVALID_PATH, OUTSIDE_SCOPE, MOUNT_POINT, IN_USE,
          BUSY, INVALID_ARGS)
ERROR_BY_NAME = {e.dbus_name: e for e in ERRORS}

# The names and codes as constants, for readable call sites.
ERROR_FAILED = FAILED.dbus_name
ERROR_NOT_AUTHORIZED = NOT_AUTHORIZED.dbus_name
ERROR_INTERACTIVE_AUTH_REQUIRED = INTERACTIVE_AUTH_REQUIRED.dbus_name
ERROR_INVALID_PATH = INVALID_PATH.dbus_name
ERROR_OUTSIDE_SCOPE = OUTSIDE_SCOPE.dbus_name
ERROR_MOUNT_POINT = MOUNT_POINT.dbus_name
ERROR_IN_USE = IN_USE.dbus_name
ERROR_BUSY = BUSY.dbus_name
ERROR_INVALID_ARGS = INVALID_ARGS.dbus_name

# locald-shim exit codes: the table's, plus those that are no bus error.
EXIT_OK = 0
EXIT_USAGE = 2  # a bad command line
EXIT_NO_SERVICE = 7  # bus unreachable, mechanism not installed
EXIT_LEFT_BEHIND = 1  # --dry-run: a real call would leave something in place
EXIT_UNSUPPORTED = 11  # the mechanism is older than what was asked (a dry run needs CleanupWithOptions)
EXIT_SIGINT = 130  # interrupted (128 + SIGINT), as shells report it
EXIT_SIGTERM = 143  # terminated (128 + SIGTERM)
EXIT_FAILED = FAILED.exit_code
EXIT_NOT_AUTHORIZED = NOT_AUTHORIZED.exit_code
EXIT_INVALID_PATH = INVALID_PATH.exit_code
EXIT_OUTSIDE_SCOPE = OUTSIDE_SCOPE.exit_code
EXIT_MOUNT_POINT = MOUNT_POINT.exit_code
EXIT_IN_USE = IN_USE.exit_code
EXIT_BUSY = BUSY.exit_code
EXIT_INVALID_ARGS = INVALID_ARGS.exit_code

EXIT_CODE_BY_ERROR = {e.dbus_name: e.exit_code for e in ERRORS}


def exit_statuses():
    """locald-shim's exit statuses, (code, meaning) in order of code: what
    its man page (scripts/generate) and its ``--help`` list."""
    rows = [(EXIT_OK, "success, or the target did not exist"),
            (EXIT_LEFT_BEHIND, "--dry-run: a cleanup would leave something in place"),
            (EXIT_USAGE, "a bad command line"),
            (EXIT_NO_SERVICE, "the bus is unreachable or the mechanism is not installed"),
            (EXIT_UNSUPPORTED, f"the mechanism is older than what was asked (a dry run needs InterfaceRevision "
                               f"{REVISION_WITH_OPTIONS})"),
            (EXIT_SIGINT, "interrupted (SIGINT)"), (EXIT_SIGTERM, "terminated (SIGTERM)")]
    rows += [(spec.exit_code, f"{spec.dbus_name}: {spec.meaning}") for spec in ERRORS if spec.refines is None]
    return sorted(rows, key=lambda row: row[0])

# polkit's CheckAuthorization flag (polkit's PolkitCheckAuthorizationFlags).
POLKIT_ALLOW_USER_INTERACTION = 0x1

# The client waits this long for a Cleanup reply by default: big trees take
# minutes; D-Bus' usual 25 s is far too short.
DEFAULT_CALL_TIMEOUT = 600.0
