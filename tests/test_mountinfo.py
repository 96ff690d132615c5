"""The mountinfo parser (``locald_admin/fs/mounts.py``): what the kernel
writes, read back exactly, and nothing it can be given breaks a check.

* Lines end at ``\\n`` only: the kernel escapes space, tab, newline and
  backslash in paths (``\\ooo``) but not a carriage return; one mount under a
  path with ``\\r`` made every check on the machine fail.
* A line that does not parse is left out and listed (the in-use check logs
  it once), never an error for every request.
* An overlay's layers, named only in its super options, unescaped both ways:
  mountinfo's octal escapes, then overlayfs's own ``\\:``, ``\\,``, ``\\\\``.

The fuzz tests try ``FUZZ_EXAMPLES`` inputs each (default 2,000; the threat
model states the figure): arbitrary bytes, and lines written the way the
kernel writes them from arbitrary paths.  Runs anywhere, as any user.
"""

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from locald_admin.fs import inuse, mounts

FUZZ_EXAMPLES = int(os.environ.get("LOCALD_ADMIN_FUZZ_EXAMPLES", "2000"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Captured from this project's kernel (6.18): an overlay mounted with the
# layers "/tmp/ovt/lo:w,er" (written lo\:w\,er) and "/tmp/ovt/l 2".
OVERLAY_LINE = (b"69 46 0:40 / /tmp/ovt/mnt rw,relatime - overlay overlay rw,lowerdir=/tmp/ovt/lo\\134:w\\134\\054er:"
                b"/tmp/ovt/l\\0402,upperdir=/tmp/ovt/up,workdir=/tmp/ovt/wk,uuid=on")


def kernel_escape(path, chars=b" \t\n\\"):
    """What the kernel's seq_escape makes of ``path``: each of ``chars`` as
    \\ooo (mountinfo's paths: space, tab, newline, backslash)."""
    return b"".join(b"\\%03o" % c if bytes([c]) in chars else bytes([c]) for c in path)


def line(id_, parent, dev, root, mount_point, fstype=b"tmpfs", options=b"rw", optional=b"shared:1"):
    return b" ".join([b"%d" % id_, b"%d" % parent, dev, kernel_escape(root), kernel_escape(mount_point),
                      b"rw,relatime", *([optional] if optional else []), b"-", fstype, b"none", options])


def test_a_carriage_return_is_part_of_a_path():
    raw = line(40, 27, b"0:50", b"/", b"/tmp/odd\rname") + b"\n" + line(41, 40, b"0:51", b"/", b"/tmp/x") + b"\n"
    a, b = mounts.parse(raw)
    assert a.mount_point == b"/tmp/odd\rname" and b.mount_point == b"/tmp/x"
    assert (a.fstype, a.options) == (b"tmpfs", b"rw")


def test_lines_that_do_not_parse_are_left_out_and_listed():
    good = line(40, 27, b"0:50", b"/", b"/a")
    raw = b"\n".join([b"garbage", good, b"x 27 0:1 / /b rw - t s o", b"41 27 nodev / /c rw - t s o", b""])
    bad = []
    assert mounts.parse(raw, bad) == [mounts.parse(good)[0]]
    assert [b.line[:7] for b in bad] == [b"garbage", b"x 27 0:", b"41 27 n"]


def test_the_in_use_check_logs_an_unparsable_line_once(caplog):
    raw = b"not a mountinfo line\n" + line(40, 27, b"0:50", b"/", b"/a")
    inuse._logged.clear()
    for _ in range(3):
        assert [m.id for m in inuse.parse(raw)] == [40]
    assert [r.getMessage() for r in caplog.records].count(
        "in-use check: a mountinfo line that does not parse was passed over: b'not a mountinfo line'") == 1


def test_a_kernel_overlay_line_gives_its_layers():
    (m,) = mounts.parse(OVERLAY_LINE)
    assert m.fstype == b"overlay"
    assert mounts.overlay_layers(m) == [b"/tmp/ovt/lo:w,er", b"/tmp/ovt/l 2", b"/tmp/ovt/up", b"/tmp/ovt/wk"]


def test_layers_of_the_new_mount_api_relative_ones_and_other_file_systems():
    opts = b"rw,lowerdir+=/l/1,lowerdir+=/l/2,datadir+=/d,upperdir=u/rel,workdir=/w,redirect_dir=on"
    (m,) = mounts.parse(line(1, 1, b"0:9", b"/", b"/", fstype=b"overlay", options=opts))
    assert mounts.overlay_layers(m) == [b"/l/1", b"/l/2", b"/d", b"u/rel", b"/w"]
    (m,) = mounts.parse(line(1, 1, b"0:9", b"/", b"/", fstype=b"fuse.fuse-overlayfs", options=b"rw,lowerdir=/x"))
    assert mounts.overlay_layers(m) == []
    (m,) = mounts.parse(line(1, 1, b"0:9", b"/", b"/", fstype=b"overlay", options=b"rw,lowerdir=/a::/data"))
    assert mounts.overlay_layers(m) == [b"/a", b"/data"]  # "::" separates the data-only layers


PATHS = st.binary(min_size=1, max_size=40).filter(lambda p: b"\0" not in p).map(lambda p: b"/" + p)


@FUZZ
@given(st.binary(max_size=600))
def test_any_bytes_parse_without_an_error(raw):
    bad = []
    for m in mounts.parse(raw, bad):
        assert isinstance(m.id, int) and isinstance(m.parent, int)
        mounts.overlay_layers(m._replace(fstype=mounts.OVERLAY))
    inuse.parse(raw)


@FUZZ
@given(st.lists(st.tuples(PATHS, PATHS), min_size=1, max_size=4),
       st.sampled_from([b"", b"shared:1", b"shared:1 master:2"]))
def test_lines_written_as_the_kernel_writes_them_read_back_exactly(paths, optional):
    raw = b"\n".join(line(40 + k, 1, b"8:%d" % k, root, mp, optional=optional) for k, (root, mp) in enumerate(paths))
    got = mounts.parse(raw + b"\n")
    assert [(m.root, m.mount_point) for m in got] == paths


def overlay_escape(path):
    """overlayfs's own escaping of a layer path (as a user writes it in the
    mount options), then the kernel's seq_show_option escaping."""
    own = b"".join(b"\\" + bytes([c]) if bytes([c]) in b":,\\" else bytes([c]) for c in path)
    return kernel_escape(own, b", \t\n\\")


@FUZZ
@given(st.lists(PATHS, min_size=1, max_size=3), PATHS, PATHS)
def test_overlay_layers_written_as_the_kernel_writes_them_read_back_exactly(lower, upper, work):
    opts = (b"rw,lowerdir=" + b":".join(overlay_escape(p) for p in lower) + b",upperdir=" + overlay_escape(upper)
            + b",workdir=" + overlay_escape(work) + b",uuid=on")
    (m,) = mounts.parse(line(7, 1, b"0:40", b"/", b"/", fstype=b"overlay", options=opts))
    assert mounts.overlay_layers(m) == [*lower, upper, work]
