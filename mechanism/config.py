"""The administrator's configuration: /etc/locald/admin.conf (INI).

    [scope]
    # Anchors may only be below these directories ...
    allow = /home /var/home /srv /tmp /var/tmp /mnt /media /run/media /dev/shm
    # ... and never below these.  The nearest listed ancestor decides.
    deny = /proc /sys /dev /run /boot /etc /usr
    [owner]
    # Whether uid 0 callers may clean anchors they do not own.
    root_skips_owner_check = yes
    # Whether a root-owned .locald (runc made it) counts as the caller's when
    # the directory holding it is the caller's and nobody else can write it.
    root_made_anchor = yes

No file means the defaults.  Roots are matched by identity, not by string:
each is stat'ed (following symlinks, so /home -> /var/home names the same
directory) and compared with the (st_dev, st_ino) of every ancestor of the
resolved anchor, nearest first.  So a symlinked prefix in the request can
move a path neither into nor out of a root unnoticed.
"""

import configparser
import os
from dataclasses import dataclass
from typing import Tuple

DEFAULT_PATH = "/etc/locald/admin.conf"
# Exactly what the unit makes writable (its ReadWritePaths=, plus /dev/shm,
# which PrivateDevices= keeps writable): tests/test_data_files.py holds the two
# together.  More roots: list them in admin.conf and run systemctl
# daemon-reload (mechanism/generator.py widens the unit to match).
DEFAULT_ALLOW = ("/home", "/var/home", "/srv", "/tmp", "/var/tmp", "/mnt", "/media", "/run/media", "/dev/shm")
DEFAULT_DENY = ("/proc", "/sys", "/dev", "/run", "/boot", "/etc", "/usr")


class ConfigError(Exception):
    """The configuration file is malformed; the message says where."""


@dataclass(frozen=True)
class Config:
    allow: Tuple[str, ...] = DEFAULT_ALLOW
    deny: Tuple[str, ...] = DEFAULT_DENY
    root_skips_owner_check: bool = True
    root_made_anchor: bool = True
    source: str = "built-in defaults"

    def identities(self):
        """{(st_dev, st_ino): (allowed, root)} for the roots that exist now."""
        ids = {}
        for allowed, roots in ((True, self.allow), (False, self.deny)):
            for root in roots:
                try:
                    st = os.stat(root)
                except OSError:
                    continue  # a root that does not exist matches nothing
                key = (st.st_dev, st.st_ino)
                if key in ids and ids[key][0] != allowed:
                    ids[key] = (False, root)  # listed both ways: deny wins
                else:
                    ids.setdefault(key, (allowed, root))
        return ids


def _roots(section, key, default):
    raw = section.get(key)
    if raw is None:
        return default
    roots = tuple(raw.split())
    for r in roots:
        if not r.startswith("/"):
            raise ConfigError(f"[{section.name}] {key}: '{r}' is not an absolute path")
        if any(p in (".", "..") for p in r.split("/")):
            raise ConfigError(f"[{section.name}] {key}: '{r}' has a '.' or '..' component")
    return roots


def parse(text, source="<string>"):
    cp = configparser.ConfigParser(interpolation=None, empty_lines_in_values=False)
    try:
        cp.read_string(text, source=source)
    except configparser.Error as e:
        raise ConfigError(f"{source}: {' '.join(str(e).split())}") from None
    unknown = set(cp.sections()) - {"scope", "owner"}
    if unknown:
        raise ConfigError(f"{source}: unknown section [{sorted(unknown)[0]}]")
    known = {"scope": {"allow", "deny"}, "owner": {"root_skips_owner_check", "root_made_anchor"}}
    for name, keys in known.items():
        if name in cp:
            extra = set(cp[name]) - keys
            if extra:
                raise ConfigError(f"{source}: unknown key '{sorted(extra)[0]}' in [{name}]")
    scope = cp["scope"] if "scope" in cp else cp[cp.default_section]
    try:
        allow = _roots(scope, "allow", DEFAULT_ALLOW) if "scope" in cp else DEFAULT_ALLOW
        deny = _roots(scope, "deny", DEFAULT_DENY) if "scope" in cp else DEFAULT_DENY
        owner = {}
        for key in ("root_skips_owner_check", "root_made_anchor"):
            try:
                owner[key] = cp.getboolean("owner", key, fallback=True)
            except ValueError as e:
                raise ConfigError(f"[owner] {key}: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return Config(allow=allow, deny=deny, source=source, **owner)


def load(path=DEFAULT_PATH):
    """Read ``path``; a missing file gives the defaults."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return Config()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    return parse(text, source=path)
