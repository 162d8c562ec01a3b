"""apt dependencies read from real ELF files and the real dpkg database of this machine.

The system Python's ``_ctypes`` (linking libffi) and a shared object compiled
here with ``gcc -lz`` (linking zlib1g) are real compiled extensions; a wheel
is a zip of them. Nothing is mocked.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest

from pinwheel import aptdeps
from pinwheel.aptdeps import Library, System


def system_extension(module: str) -> Path:
    """The system Python's compiled ``module`` (the venv's interpreter is Debian's)."""
    out = subprocess.run(["/usr/bin/python3", "-c", f"import {module}; print({module}.__file__)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    return Path(out)


@pytest.fixture(scope="module")
def zlib_so(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shared object calling zlibVersion(), linked with -lz (zlib1g-dev)."""
    place = tmp_path_factory.mktemp("zlibso")
    (place / "z.c").write_text("#include <zlib.h>\nconst char *v(void) "
                               "{ return zlibVersion(); }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(place / "_z.so"), str(place / "z.c"),
                    "-lz"], check=True)
    return place / "_z.so"


def libffi_soname() -> str:
    elf = aptdeps.read_elf_path(system_extension("_ctypes"))
    assert elf is not None
    return next(n for n in elf.needed if n.startswith("libffi.so."))


def make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_reads_dt_needed_of_a_real_extension_like_the_loader():
    elf = aptdeps.read_elf_path(system_extension("_ctypes"))
    assert elf is not None
    assert "libc.so.6" in elf.needed
    assert any(n.startswith("libffi.so.") for n in elf.needed)
    assert elf.bits == struct.calcsize("P") * 8
    readelf = shutil.which("readelf")
    if readelf:  # binutils agrees (build-essential brings it)
        out = subprocess.run([readelf, "-d", str(system_extension("_ctypes"))],
                             capture_output=True, text=True, check=True).stdout
        listed = [line.split("[", 1)[1].split("]", 1)[0] for line in out.splitlines()
                  if "(NEEDED)" in line]
        assert list(elf.needed) == listed


def test_non_elf_and_malformed_elf_are_told_apart_without_crashing():
    assert aptdeps.read_elf(io.BytesIO(b"#!/bin/sh\necho hi\n")) is None
    with pytest.raises(aptdeps.ElfError):
        aptdeps.read_elf(io.BytesIO(b"\x7fELF\x09\x01" + b"\0" * 60))
    real = system_extension("_ctypes").read_bytes()
    with pytest.raises((aptdeps.ElfError, struct.error)):
        aptdeps.read_elf(io.BytesIO(real[:200]))  # the dynamic section is cut off
    # A program header count claiming a huge table is refused, not looped over.
    hostile = bytearray(real[:64])
    struct.pack_into("<H", hostile, 56, 0xFFFF)
    with pytest.raises(aptdeps.ElfError):
        aptdeps.read_elf(io.BytesIO(bytes(hostile)))


def test_libraries_are_found_and_owned_by_their_debian_packages(zlib_so: Path):
    system = System()
    elf = aptdeps.read_elf_path(zlib_so)
    assert elf is not None and "libz.so.1" in elf.needed
    path = system.find("libz.so.1", elf)
    assert path is not None and os.path.isfile(path)
    # dpkg knows the file by one side of the /usr merge only; both are found.
    real = os.path.realpath(path)
    merged = real[len("/usr"):] if real.startswith("/usr/lib/") else "/usr" + real
    owners = system.owners([path, real, merged])
    assert owners[path] == owners[real] == owners[merged] == "zlib1g"


def test_base_packages_are_essential_and_what_essential_packages_need():
    system = System()
    base = system.base_packages()
    assert {"dpkg", "libc6", "zlib1g"} <= base  # dpkg Pre-Depends on zlib1g
    elf = aptdeps.read_elf_path(system_extension("_ctypes"))
    assert elf is not None
    path = system.find(libffi_soname(), elf)
    assert path is not None
    ffi_package = system.owners([path])[path]
    assert ffi_package and ffi_package.startswith("libffi") and ffi_package not in base


def test_a_wheel_of_real_extensions_lists_packages_and_bundled_libraries(tmp_path: Path,
                                                                          zlib_so: Path):
    ctypes_so = system_extension("_ctypes").read_bytes()
    ffi = libffi_soname()
    # zlib's module as an extension, and _ctypes with libffi bundled as in auditwheel's .libs/.
    wheel = make_wheel(tmp_path / "demo-1.0-cp311-cp311-linux_x86_64.whl", {
        "demo/_zlib.so": zlib_so.read_bytes(),
        "demo/_ctypes.so": ctypes_so,
        f"demo.libs/{ffi}": b"\x7fELF not really, and never loaded",
        "demo/__init__.py": b"",
        "demo-1.0.dist-info/RECORD": b"",
    })
    libs = {lib.library: lib for lib in aptdeps.wheel_libraries(wheel)}
    assert libs["libz.so.1"] == Library("libz.so.1", "debian", "zlib1g", True)
    assert libs["libc.so.6"] == Library("libc.so.6", "debian", "libc6", True)
    assert libs[ffi] == Library(ffi, "bundled")
    assert aptdeps.install_packages(libs.values()) == []

    without_bundle = make_wheel(tmp_path / "demo2-1.0-cp311-cp311-linux_x86_64.whl", {
        "demo2/_ctypes.so": ctypes_so})
    libs2 = aptdeps.wheel_libraries(without_bundle)
    packages = aptdeps.install_packages(libs2)
    assert len(packages) == 1 and packages[0].startswith("libffi")
    assert aptdeps.apt_install_line(packages) == f"sudo apt install {packages[0]}"


def test_a_library_in_no_package_is_unpackaged_and_an_absent_one_missing(tmp_path: Path,
                                                                          zlib_so: Path):
    system = System()
    zlib_elf = aptdeps.read_elf_path(zlib_so)
    assert zlib_elf is not None
    local = tmp_path / "lib"
    local.mkdir()
    shutil.copy(system.find("libz.so.1", zlib_elf) or "", local / "libz.so.1")
    # As an extension with DT_RUNPATH=<local> would see it.
    elf = aptdeps.Elf(zlib_elf.bits, zlib_elf.little, zlib_elf.machine, ("libz.so.1",),
                      (str(local),))
    path = system.find("libz.so.1", elf)
    assert path == str(local / "libz.so.1")
    assert system.owners([path])[path] is None
    assert system.find("libpinwheel-nothing.so.9", elf) is None


def test_a_wheel_with_a_broken_elf_member_is_still_analysed(tmp_path: Path, zlib_so: Path):
    real = zlib_so.read_bytes()
    wheel = make_wheel(tmp_path / "odd-1.0-cp311-cp311-linux_x86_64.whl", {
        "odd/_broken.so": real[:300] + b"\0" * 100,
        "odd/_zlib.so": real,
    })
    names = {lib.library for lib in aptdeps.wheel_libraries(wheel)}
    assert "libz.so.1" in names


def test_the_agent_reports_libraries_in_the_file_report(tmp_path: Path, zlib_so: Path):
    from pinwheel.agent import report_for

    wheel = make_wheel(tmp_path / "z-1.0-cp311-cp311-linux_x86_64.whl",
                       {"z/_zlib.so": zlib_so.read_bytes()})
    report = report_for(wheel, System()).as_json()
    assert {"library": "libz.so.1", "kind": "debian", "package": "zlib1g",
            "base": True} in report["libraries"]
    assert "libraries" not in report_for(wheel).as_json()  # a failed build: not looked at



def synthetic_elf(bits: int, little: bool, machine: int, needed: list[str],
                  runpath: str = "") -> bytes:
    """A minimal ELF shared object: two program headers (a PT_LOAD mapping the whole file
    at address 0, PT_DYNAMIC), a dynamic string table and a dynamic section."""
    e = "<" if little else ">"
    ehsize, phentsize = (52, 32) if bits == 32 else (64, 56)
    strtab = b"\0"
    offsets = []
    for name in [*needed, runpath]:
        offsets.append(len(strtab))
        strtab += name.encode() + b"\0"
    str_off = ehsize + 2 * phentsize
    dyn_off = (str_off + len(strtab) + 7) // 8 * 8
    entries = [(1, off) for off in offsets[:-1]]
    if runpath:
        entries.append((29, offsets[-1]))
    entries += [(5, str_off), (10, len(strtab)), (0, 0)]
    dyn_fmt = e + ("iI" if bits == 32 else "qQ")
    dynamic = b"".join(struct.pack(dyn_fmt, tag, value) for tag, value in entries)
    total = dyn_off + len(dynamic)
    ident = b"\x7fELF" + bytes([1 if bits == 32 else 2, 1 if little else 2, 1]) + b"\0" * 9
    if bits == 32:
        header = struct.pack(e + "HHIIIIIHHHHHH", 3, machine, 1, 0, ehsize, 0, 0, ehsize,
                             phentsize, 2, 0, 0, 0)
        phdrs = (struct.pack(e + "IIIIIIII", 1, 0, 0, 0, total, total, 5, 4096)
                 + struct.pack(e + "IIIIIIII", 2, dyn_off, dyn_off, dyn_off, len(dynamic),
                               len(dynamic), 6, 4))
    else:
        header = struct.pack(e + "HHIQQQIHHHHHH", 3, machine, 1, 0, ehsize, 0, 0, ehsize,
                             phentsize, 2, 0, 0, 0)
        phdrs = (struct.pack(e + "IIQQQQQQ", 1, 5, 0, 0, 0, total, total, 4096)
                 + struct.pack(e + "IIQQQQQQ", 2, 6, dyn_off, dyn_off, dyn_off, len(dynamic),
                               len(dynamic), 8))
    body = ident + header + phdrs + strtab
    return body + b"\0" * (dyn_off - len(body)) + dynamic


@pytest.mark.parametrize(("bits", "little", "machine"), [
    (32, True, 40),    # armhf
    (64, True, 183),   # arm64
    (64, True, 62),    # amd64
    (32, False, 8),    # big-endian MIPS: byte order is read, not assumed
])
def test_elf_of_every_class_and_byte_order_is_read(bits: int, little: bool, machine: int):
    data = synthetic_elf(bits, little, machine, ["libz.so.1", "libffi.so.8"],
                         "$ORIGIN/../demo.libs:/opt/x")
    elf = aptdeps.read_elf(io.BytesIO(data))
    assert elf == aptdeps.Elf(bits, little, machine, ("libz.so.1", "libffi.so.8"),
                              ("$ORIGIN/../demo.libs", "/opt/x"))


def test_a_wheel_needing_thousands_of_libraries_is_cut_where_the_master_cuts(tmp_path: Path):
    names = [f"libx{i:05d}.so.1" for i in range(5000)] + ["bad name;rm.so"]
    wheel = make_wheel(tmp_path / "many-1.0-cp311-cp311-linux_armv7l.whl",
                       {"many/_m.so": synthetic_elf(32, True, 40, names)})
    libs = aptdeps.wheel_libraries(wheel)
    assert len(libs) == aptdeps.MAX_LIBRARIES
    assert {lib.kind for lib in libs} == {"missing"}  # an armhf library is no amd64 file
    with zipfile.ZipFile(wheel) as zf:
        needed, members = aptdeps.needed_in(zf)
    assert aptdeps.report_problem(libs, needed, members) is None
    lie = [*libs[:-1], Library("libevil.so.1", "debian", "evil")]
    assert "libevil.so.1, which no ELF file of the wheel needs" in (
        aptdeps.report_problem(lie, needed, members) or "")
