"""The C extension, linked with Debian's zlib and libffi; the rest is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("pwtest_clibs._clibs", ["src/pwtest_clibs/_clibs.c"],
                             libraries=["z", "ffi"])])
