"""Unit tests: project names, sdist file names, interpreter tags, os-release."""

from __future__ import annotations

import pytest

from pinwheel import names


@pytest.mark.parametrize(("raw", "normal"), [
    ("Foo_Bar", "foo-bar"), ("foo.bar", "foo-bar"), ("FOO--._bar", "foo-bar"),
    ("numpy", "numpy"), ("zope.interface", "zope-interface"),
])
def test_normalise(raw, normal):
    assert names.normalise(raw) == normal


@pytest.mark.parametrize("name", ["foo", "Foo_Bar", "a", "a.b-c_d", "x1"])
def test_valid_names(name):
    assert names.is_valid_name(name)


@pytest.mark.parametrize("name", ["", "-foo", "foo-", "../etc", "foo/bar", "fo o", "é", "a" * 201,
                                  "<script>"])
def test_invalid_names(name):
    assert not names.is_valid_name(name)


@pytest.mark.parametrize(("filename", "project", "version"), [
    ("pwtest_cext-1.0.tar.gz", "pwtest-cext", "1.0"),
    ("Foo-Bar-2.0rc1.tar.gz", "foo_bar", "2.0rc1"),
    ("foo-1.0.post1.zip", "foo", "1.0.post1"),
    ("foo-bar-1.0.tar.gz", "foo", None),          # another project's sdist
    ("foo-1.0-py3-none-any.whl", "foo", None),    # not an sdist
    ("foo-1.0.tar.bz2", "foo", None),
])
def test_sdist_version(filename, project, version):
    assert names.sdist_version(filename, project) == version


def test_tags():
    assert names.abi_tag("cpython", 3, 11) == "cp311"
    assert names.abi_tag("pypy", 3, 9) == "pp39"
    assert names.platform_tag("linux-armv7l") == "linux_armv7l"
    assert names.platform_tag("linux-aarch64") == "linux_aarch64"
    assert names.platform_tag("linux-x86_64", maxsize=2**31 - 1) == "linux_i686"


def test_os_release(tmp_path):
    f = tmp_path / "os-release"
    f.write_text('PRETTY_NAME="Raspbian GNU/Linux 12 (bookworm)"\nID=raspbian\n'
                 'VERSION_CODENAME=bookworm\n')
    assert names.os_release(str(f)) == "raspbian bookworm"
    assert names.os_release(str(tmp_path / "missing")) == "unknown"
