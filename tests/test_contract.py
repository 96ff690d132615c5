"""The error table (``locald_admin.interface.ERRORS``) is the one place the
contract's errors are declared: both sides' classes are made from it, the
client maps every D-Bus name back to its class, and the README's error
table says what the code does.  Runs anywhere, no bus."""

import re
from pathlib import Path

import pytest

from locald_admin import interface as i
from locald_admin.client import errors as client_errors
from locald_admin.mechanism import errors as mechanism_errors

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.parametrize("spec", i.ERRORS, ids=lambda s: s.dbus_name.rsplit(".", 1)[-1])
def test_each_error_has_its_class_on_both_sides(spec):
    mech = getattr(mechanism_errors, spec.mechanism_class)
    assert issubclass(mech, mechanism_errors.MechanismError)
    assert mech("x").dbus_name == spec.dbus_name

    cls = getattr(client_errors, spec.client_class)
    assert issubclass(cls, client_errors.CleanupError) and issubclass(cls, spec.client_base)
    assert (cls.dbus_name, cls.exit_code) == (spec.dbus_name, spec.exit_code)
    if spec.refines is not None:
        assert issubclass(cls, getattr(client_errors, spec.refines.client_class))
    raised = client_errors.from_dbus(spec.dbus_name, "the message")
    assert type(raised) is cls and str(raised) == "the message"


def test_exit_codes_are_distinct_except_for_refinements():
    general = [s for s in i.ERRORS if s.refines is None]
    codes = [s.exit_code for s in general] + [i.EXIT_OK, i.EXIT_USAGE, i.EXIT_NO_SERVICE, i.EXIT_SIGINT,
                                              i.EXIT_SIGTERM]
    assert len(codes) == len(set(codes)), codes
    for s in i.ERRORS:
        if s.refines is not None:
            assert s.exit_code == s.refines.exit_code


def test_an_unknown_error_name_is_a_failure_that_names_it():
    raised = client_errors.from_dbus("org.example.Surprise", "what")
    assert type(raised) is client_errors.CleanupFailedError
    assert "org.example.Surprise" in str(raised)


PRIORITY_NAMES = {i.PRIORITY_ERR: "err", i.PRIORITY_WARNING: "warning", i.PRIORITY_NOTICE: "notice",
                  i.PRIORITY_INFO: "info"}


def _readme_error_rows():
    text = README.read_text()
    table = text[text.index("### Errors"):text.index("### Python")]
    rows = {}
    for line in table.splitlines():
        m = re.match(r"\| `([\w.]+)` \| .* \| `(\w+)\((\w+)\)` \| (\d+) \| (\w+) \|$", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3), int(m.group(4)), m.group(5))
    return rows


def test_the_readme_error_table_matches_the_contract():
    rows = _readme_error_rows()
    assert set(rows) == {s.dbus_name for s in i.ERRORS}
    for s in i.ERRORS:
        base = s.refines.client_class if s.refines else s.client_base.__name__
        assert rows[s.dbus_name] == (s.client_class, base, s.exit_code, PRIORITY_NAMES[s.priority]), s.dbus_name
