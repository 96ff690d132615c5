"""The one thing pyproject.toml cannot say with Debian 12's setuptools (66):
the optional C extensions, the compiled removal walk (docs/architecture.md,
"The walk"), the in-use check's scan of /proc (``fs/procscan.py``) and the
reader of D-Bus values (``wire.py``).
Optional: without gcc or the Python headers the package still installs and
the Python walk, scan and reader are used."""

from setuptools import Extension, setup

FLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror=implicit"]

setup(ext_modules=[Extension("locald_admin.fs._cwalk", ["locald_admin/fs/_cwalk.c"], optional=True,
                             extra_compile_args=FLAGS),
                   Extension("locald_admin.fs._cprocscan", ["locald_admin/fs/_cprocscan.c"], optional=True,
                             extra_compile_args=FLAGS),
                   Extension("locald_admin._cwire", ["locald_admin/_cwire.c"], optional=True,
                             extra_compile_args=FLAGS)])
