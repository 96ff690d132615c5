"""locald-shim's quick reading of its arguments (``shim._quick``) against
argparse's (``shim._parser``), which the man page, the completions and
every form locald does not write go through."""

import contextlib
import io
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from locald_admin import interface as i
from locald_admin.client import shim

LOCALD_FORMS = [
    ["admin", "cleanup", "--no-interactive", "/home/u/.locald/build"],
    ["admin", "cleanup", "/home/u/.locald/build"],
    ["admin", "cleanup", "--no-interactive", "--no-progress", "--timeout", "30", "/p/.locald/x"],
    ["admin", "cleanup", "/p/.locald/x", "--interactive", "--progress", "--timeout", "0.5"],
    ["admin", "cleanup", "--no-interactive", "--dry-run", "--json", "/p/.locald/x"],
]
TOKENS = ["admin", "cleanup", "--interactive", "--no-interactive", "--progress", "--no-progress", "--timeout", "5",
          "0.5", "-1", "nan", "1e3", " 7 ", "x", "/p/.locald/a", "/b", "--", "-h", "--help", "--time", "--timeout=3",
          "--no-inter", "-", "--version", "café", "--dry-run", "--json", "--dry"]


def argparse_reads(argv):
    """What argparse makes of ``argv``: its values, or None when it stops
    (help, version, an error)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            ns = shim._parser().parse_args(argv)
        except SystemExit:
            return None
    return ns


def same(quick, ns):
    assert ns is not None
    assert (quick.group, quick.command, quick.path, quick.interactive, quick.progress, quick.dry_run, quick.json) == (
        ns.group, ns.command, ns.path, ns.interactive, ns.progress, ns.dry_run, ns.json)
    assert quick.timeout == ns.timeout or (math.isnan(quick.timeout) and math.isnan(ns.timeout))


@pytest.mark.parametrize("argv", LOCALD_FORMS)
def test_locald_forms_are_read_quickly_and_as_argparse_reads_them(argv):
    quick = shim._quick(argv)
    assert quick is not None
    same(quick, argparse_reads(argv))


def test_the_default_timeout_is_the_contracts():
    assert shim._quick(["admin", "cleanup", "/p/.locald/x"]).timeout == i.DEFAULT_CALL_TIMEOUT


@pytest.mark.parametrize("argv", [["admin", "cleanup"], ["admin", "cleanup", "--", "/x"], ["admin", "cleanup", "-h"],
                                  ["admin", "cleanup", "--timeout=3", "/x"], ["admin", "cleanup", "--no-inter", "/x"],
                                  ["admin", "cleanup", "/x", "/y"], ["admin", "cleanup", "--timeout", "-1", "/x"],
                                  ["admin", "cleanup", "--progress", "--no-progress", "/x"]])
def test_anything_else_is_left_to_argparse(argv):
    assert shim._quick(argv) is None


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=7), st.booleans())
def test_whatever_the_quick_reading_takes_argparse_reads_the_same(tokens, prefixed):
    argv = (["admin", "cleanup"] if prefixed else []) + tokens
    quick = shim._quick(argv)
    if quick is not None:
        same(quick, argparse_reads(argv))


def test_version_is_what_argparse_prints(capsys):
    assert shim.main(["--version"]) == i.EXIT_OK
    ours = capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        shim._parser().parse_args(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == ours


@pytest.mark.parametrize("value", ["0", "-0", "nan", "inf", "1e999", "-1"])
def test_a_timeout_that_is_no_positive_number_of_seconds_is_a_usage_error(value, capsys):
    """Refused before anything is asked: nan passed a "<= 0" check and
    then waited for nothing; infinity (1e999 too) never ends."""
    assert shim.main(["admin", "cleanup", "--timeout", value, "/p/.locald/x"]) == i.EXIT_USAGE
    assert "--timeout must be a positive number of seconds" in capsys.readouterr().err
