"""The error table (``locald_admin.interface.ERRORS``) is the one place the
contract's errors are declared: each row has exactly one class on each side
(written out, each naming its row), the client maps every D-Bus name back to
its class, and the README's error table says what the code does.  Runs
anywhere, no bus."""

import re
from pathlib import Path

import pytest

from locald_admin import interface as i
from locald_admin.client import errors as client_errors
from locald_admin.mechanism import errors as mechanism_errors

README = Path(__file__).resolve().parent.parent / "README.md"


def _declared(module, base):
    """The classes ``module`` writes for the table's rows: its subclasses of
    ``base`` that name a row (``spec``) themselves, by their row."""
    by_row = {}
    for cls in vars(module).values():
        if isinstance(cls, type) and issubclass(cls, base) and cls is not base and "spec" in vars(cls):
            by_row.setdefault(cls.spec.dbus_name, []).append(cls)
    return by_row


@pytest.mark.parametrize("module, base, field", [
    (mechanism_errors, mechanism_errors.MechanismError, "mechanism_class"),
    (client_errors, client_errors.CleanupError, "client_class"),
], ids=["mechanism", "client"])
def test_every_row_has_exactly_one_class_on_each_side_and_every_class_a_row(module, base, field):
    by_row = _declared(module, base)
    assert set(by_row) == {s.dbus_name for s in i.ERRORS}
    for spec in i.ERRORS:
        [cls] = by_row[spec.dbus_name]
        assert cls.spec is spec and cls.__name__ == getattr(spec, field) and getattr(module, cls.__name__) is cls
        assert cls.__doc__ == spec.meaning
    if module is client_errors:  # and from_dbus knows each by its name
        assert client_errors._BY_NAME == {name: cls for name, [cls] in by_row.items()}


@pytest.mark.parametrize("spec", i.ERRORS, ids=lambda s: s.dbus_name.rsplit(".", 1)[-1])
def test_each_error_has_its_class_on_both_sides(spec):
    mech = getattr(mechanism_errors, spec.mechanism_class)
    assert mech.__bases__ == (mechanism_errors.MechanismError,)
    assert mech("x").dbus_name == spec.dbus_name

    cls = getattr(client_errors, spec.client_class)
    if spec.refines is not None:
        assert cls.__bases__ == (getattr(client_errors, spec.refines.client_class),)
        assert spec.client_base is spec.refines.client_base
    else:
        assert cls.__bases__ == (client_errors.CleanupError, spec.client_base)
    assert (cls.dbus_name, cls.exit_code) == (spec.dbus_name, spec.exit_code)
    raised = client_errors.from_dbus(spec.dbus_name, "the message")
    assert type(raised) is cls and str(raised) == "the message"


def test_a_callers_subclass_keeps_its_parents_row():
    class Mine(client_errors.NotAuthorizedError):
        pass
    assert (Mine.dbus_name, Mine.exit_code) == (i.ERROR_NOT_AUTHORIZED, i.EXIT_NOT_AUTHORIZED)
    assert client_errors._BY_NAME[i.ERROR_NOT_AUTHORIZED] is client_errors.NotAuthorizedError
    with pytest.raises(TypeError, match="already has its class"):
        class Again(client_errors.CleanupError):
            spec = i.BUSY
    assert client_errors._BY_NAME[i.ERROR_BUSY] is client_errors.BusyError


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
