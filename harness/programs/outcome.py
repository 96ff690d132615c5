"""What the client programs report about an exception (imported from the
programs' own directory, which is sys.path[0] when one of them runs)."""


def describe(exc):
    return {
        "ok": False,
        "type": type(exc).__name__,
        "mro": [c.__name__ for c in type(exc).__mro__],
        "message": str(exc),
        "errno": getattr(exc, "errno", None),
        "filename": getattr(exc, "filename", None),
        "cause": type(exc.__cause__).__name__ if exc.__cause__ else None,
        "notes": list(getattr(exc, "__notes__", [])),
        "hint": getattr(exc, "locald_admin_hint", None),
    }
