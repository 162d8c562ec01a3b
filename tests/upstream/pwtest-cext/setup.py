"""The C extension; the rest of the metadata is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("pwtest_cext._add", ["src/pwtest_cext/_add.c"])])
