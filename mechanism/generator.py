"""``locald-admin-generator``: a systemd generator that makes the roots the
administrator allows in /etc/locald/admin.conf writable in the unit's
sandbox.

The unit (``ProtectSystem=strict``) makes only its ``ReadWritePaths=``
writable: today's defaults of ``[scope] allow``.  An administrator who
allows more (``allow = /home /opt/projects``) edits admin.conf and runs
``systemctl daemon-reload``; this generator, run by systemd at boot and at
every reload, then writes the drop-in
``<normal dir>/locald-admin.service.d/50-allowed-roots.conf`` with
``ReadWritePaths=-<root>`` for each allowed root.  Denied roots are never
made writable by it.  A malformed admin.conf writes nothing (the service
then fails every call closed, naming the problem).

    locald-admin-generator NORMAL_DIR [EARLY_DIR LATE_DIR]
"""

import os
import sys

from . import config as configuration

UNIT = "locald-admin.service"
DROPIN = "50-allowed-roots.conf"


def dropin(cfg):
    """The drop-in's text for a Config, or None when nothing is to add."""
    roots = [r for r in cfg.allow if r not in cfg.deny]
    if not roots:
        return None
    lines = ["# Written by locald-admin-generator from " + cfg.source + "; do not edit:",
             "# change [scope] allow there and run systemctl daemon-reload.",
             "[Service]"]
    lines += [f"ReadWritePaths=-{r}" for r in roots]
    return "\n".join(lines) + "\n"


def main(argv=None, path=configuration.DEFAULT_PATH):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: locald-admin-generator NORMAL_DIR [EARLY_DIR LATE_DIR]", file=sys.stderr)
        return 2
    try:
        cfg = configuration.load(path)
    except configuration.ConfigError as e:
        print(f"locald-admin-generator: {e}; no drop-in written", file=sys.stderr)
        return 0  # never fail the boot over it
    text = dropin(cfg)
    if text is None:
        return 0
    d = os.path.join(argv[0], UNIT + ".d")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, DROPIN), "w", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
