"""The one thing pyproject.toml cannot say with Debian 12's setuptools (66):
the optional C extension, the compiled removal walk (docs/architecture.md,
"The walk").  Optional: without gcc or the Python headers the package still
installs and the Python walk is used."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("locald_admin.fs._cwalk", ["locald_admin/fs/_cwalk.c"], optional=True,
                             extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror=implicit"])])
