"""apt dependencies of a wheel: the shared libraries its compiled code needs, and their packages.

Run by the agent on the builder after a successful build, on the wheels it is
about to push. Nothing from the wheel is executed (``ldd`` may run the file it
inspects): every ELF file in the wheel is parsed here, in Python, reading its
``DT_NEEDED`` entries through the program headers as the dynamic loader does.
Each library is then

* ``bundled``: a file of that name is in the wheel (auditwheel's ``<pkg>.libs/``);
* ``debian``: found on the builder (``DT_RUNPATH``/``DT_RPATH`` directories,
  then ``ldconfig -p`` entries for the same ELF class and machine, then the
  default directories) and owned by a Debian package (``dpkg-query -S``, on
  the path found, its real path, and the other side of the /usr merge);
* ``unpackaged``: found, but owned by no package (e.g. under /usr/local);
* ``missing``: not found on the builder at all.

A Debian package is ``base`` when every Debian system has it: it is Essential,
or an Essential package depends on it (directly or not, through Pre-Depends or
Depends). That is what ``debootstrap --variant=minbase`` installs beside the
Essential set, e.g. libc6 and zlib1g. Bookworm's archive says "Priority:
optional" even for libc6, so Priority cannot tell. Project pages leave base
packages out of the ``sudo apt install`` line; the data keeps them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import struct
import subprocess
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("pinwheel.aptdeps")

KINDS = ("debian", "bundled", "unpackaged", "missing")
# What the database accepts (migration 5 checks the same).
LIBRARY_RE = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9._+-]{0,199}$")
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]{1,99}$")
MAX_LIBRARIES = 200          # per file
MAX_ELF_MEMBER = 1 << 30     # larger wheel members are not inspected
_MAX_STRTAB = 16 << 20
_MAX_PHNUM = 4096
_MAX_DYN = 1 << 16

PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 15, 29


class ElfError(ValueError):
    """A file that starts like ELF but cannot be read as one."""


@dataclass(frozen=True)
class Elf:
    """What the dynamic loader reads from an ELF file to load its libraries."""

    bits: int            # 32 or 64
    little: bool
    machine: int         # e_machine: 3 x86, 40 ARM, 62 x86-64, 183 AArch64 ...
    needed: tuple[str, ...]
    runpath: tuple[str, ...]  # DT_RUNPATH, or DT_RPATH when there is none

    @property
    def kind(self) -> tuple[int, bool, int]:
        return self.bits, self.little, self.machine


@dataclass(frozen=True)
class Library:
    """One shared library a file needs, and where it comes from."""

    library: str              # the DT_NEEDED name (soname)
    kind: str                 # one of KINDS
    package: str | None = None  # the Debian package, for kind "debian"
    base: bool = False        # the package is on every Debian system

    def as_json(self) -> dict[str, object]:
        return {"library": self.library, "kind": self.kind, "package": self.package,
                "base": self.base}


def _read(fh: BinaryIO, offset: int, size: int) -> bytes:
    fh.seek(offset)
    data = fh.read(size)
    if len(data) != size:
        raise ElfError(f"truncated: wanted {size} bytes at {offset}")
    return data


def read_elf(fh: BinaryIO) -> Elf | None:
    """The ELF facts of a seekable binary file; None if it is not ELF.

    Raises :class:`ElfError` for a malformed file. Reads are bounded, nothing is run.
    """
    fh.seek(0)
    ident = fh.read(16)
    if len(ident) < 16 or ident[:4] != b"\x7fELF":
        return None
    if ident[4] not in (1, 2) or ident[5] not in (1, 2):
        raise ElfError("unknown ELF class or byte order")
    bits = 32 if ident[4] == 1 else 64
    little = ident[5] == 1
    e = "<" if little else ">"
    if bits == 32:
        _, machine, _, _, phoff, _, _, _, phentsize, phnum = struct.unpack(
            e + "HHIIIIIHHH", _read(fh, 16, 30))
        ph_fmt, dyn_fmt = e + "IIIIIIII", e + "iI"
    else:
        _, machine, _, _, phoff, _, _, _, phentsize, phnum = struct.unpack(
            e + "HHIQQQIHHH", _read(fh, 16, 42))
        ph_fmt, dyn_fmt = e + "IIQQQQQQ", e + "qQ"
    if phnum > _MAX_PHNUM or (phnum and phentsize < struct.calcsize(ph_fmt)):
        raise ElfError("implausible program header table")
    loads: list[tuple[int, int, int]] = []   # (vaddr, filesz, offset)
    dynamic: tuple[int, int] | None = None   # (offset, filesz)
    for i in range(phnum):
        raw = _read(fh, phoff + i * phentsize, struct.calcsize(ph_fmt))
        if bits == 32:
            p_type, p_offset, p_vaddr, _, p_filesz, _, _, _ = struct.unpack(ph_fmt, raw)
        else:
            p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = struct.unpack(ph_fmt, raw)
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_filesz, p_offset))
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:  # statically linked, or not something the loader maps
        return Elf(bits, little, machine, (), ())
    entry = struct.calcsize(dyn_fmt)
    count = min(dynamic[1] // entry, _MAX_DYN)
    raw = _read(fh, dynamic[0], count * entry)
    needed: list[int] = []
    rpath: list[int] = []
    runpath: list[int] = []
    strtab = strsz = None
    for tag, value in struct.iter_unpack(dyn_fmt, raw):
        if tag == DT_NULL:
            break
        if tag == DT_NEEDED:
            needed.append(value)
        elif tag == DT_STRTAB:
            strtab = value
        elif tag == DT_STRSZ:
            strsz = value
        elif tag == DT_RPATH:
            rpath.append(value)
        elif tag == DT_RUNPATH:
            runpath.append(value)
    if not needed and not rpath and not runpath:
        return Elf(bits, little, machine, (), ())
    if strtab is None or strsz is None or strsz > _MAX_STRTAB:
        raise ElfError("no usable dynamic string table")
    offset = next((off + strtab - vaddr for vaddr, size, off in loads
                   if vaddr <= strtab < vaddr + size), None)
    if offset is None:
        raise ElfError("the dynamic string table is outside every loaded segment")
    table = _read(fh, offset, strsz)

    def string(at: int) -> str:
        if at >= len(table):
            raise ElfError("string offset outside the dynamic string table")
        end = table.find(b"\0", at)
        return table[at:end if end >= 0 else len(table)].decode("utf-8", "replace")

    paths = runpath or rpath
    dirs = tuple(d for at in paths for d in string(at).split(":") if d)
    return Elf(bits, little, machine, tuple(string(at) for at in needed), dirs)


def read_elf_path(path: str | Path) -> Elf | None:
    try:
        with open(path, "rb") as fh:
            return read_elf(fh)
    except (OSError, ElfError, struct.error):
        return None


# ------------------------------------------------------------- the system


def _usr_merge_twin(path: str) -> str | None:
    """/lib/x → /usr/lib/x and back: dpkg knows a file by the path in its package."""
    for top in ("/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin"):
        if path.startswith(top + "/"):
            return "/usr" + path
        if path.startswith("/usr" + top + "/"):
            return path[len("/usr"):]
    return None


def _dep_names(field: str) -> list[list[str]]:
    """``a (>= 1) | b:any, c [amd64]`` → [[a, b], [c]]."""
    groups = []
    for group in field.split(","):
        alts = []
        for alt in group.split("|"):
            name = re.split(r"[\s(\[<]", alt.strip(), maxsplit=1)[0].split(":")[0]
            if name:
                alts.append(name)
        if alts:
            groups.append(alts)
    return groups


def _tool(name: str) -> str:
    for found in (shutil.which(name), f"/usr/sbin/{name}", f"/sbin/{name}",
                  f"/usr/bin/{name}"):
        if found and os.path.exists(found):
            return found
    return name


class System:
    """The builder's libraries and packages, asked once and remembered (one per analysis)."""

    def __init__(self) -> None:
        self._cache: dict[str, list[str]] | None = None
        self._owners: dict[str, str | None] = {}
        self._base: frozenset[str] | None = None
        self._kinds: dict[str, tuple[int, bool, int] | None] = {}

    def _run(self, argv: list[str]) -> str:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
        try:
            done = subprocess.run(argv, capture_output=True, env=env, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("%s failed: %s", argv[0], exc)
            return ""
        return done.stdout.decode("utf-8", "replace")

    def ld_cache(self) -> dict[str, list[str]]:
        """soname → paths, from ``ldconfig -p`` (the loader's cache)."""
        if self._cache is None:
            self._cache = {}
            line_re = re.compile(r"^\s+(\S+) \([^)]*\) => (/\S.*)$")
            for line in self._run([_tool("ldconfig"), "-p"]).splitlines():
                m = line_re.match(line)
                if m:
                    self._cache.setdefault(m.group(1), []).append(m.group(2))
        return self._cache

    def _elf_kind(self, path: str) -> tuple[int, bool, int] | None:
        if path not in self._kinds:
            elf = read_elf_path(path)
            self._kinds[path] = elf.kind if elf else None
        return self._kinds[path]

    def find(self, soname: str, elf: Elf) -> str | None:
        """Where the loader would find ``soname`` for ``elf`` on this system, or None."""
        candidates = [os.path.join(d, soname) for d in elf.runpath
                      if d.startswith("/") and "$" not in d]
        candidates += self.ld_cache().get(soname, [])
        multiarch = {62: "x86_64-linux-gnu", 183: "aarch64-linux-gnu",
                     40: "arm-linux-gnueabihf", 3: "i386-linux-gnu"}.get(elf.machine)
        for top in ("/lib", "/usr/lib"):
            if multiarch:
                candidates.append(f"{top}/{multiarch}/{soname}")
            candidates.append(f"{top}/{soname}")
        for path in candidates:
            if os.path.isfile(path) and self._elf_kind(path) == elf.kind:
                return path
        return None

    def owners(self, paths: Iterable[str]) -> dict[str, str | None]:
        """The package owning each path (the path itself, its real path, or a /usr twin)."""
        wanted: dict[str, list[str]] = {}
        for path in paths:
            if path in self._owners or path in wanted:
                continue
            forms = [path, os.path.realpath(path)]
            forms += [t for t in (_usr_merge_twin(f) for f in list(forms)) if t]
            wanted[path] = [f for f in dict.fromkeys(forms) if not re.search(r"[*?\[\]\\]", f)]
        asked = sorted({f for forms in wanted.values() for f in forms})
        found: dict[str, str] = {}
        if asked:
            for line in self._run(["dpkg-query", "-S", *asked]).splitlines():
                if line.startswith("diversion ") or ": " not in line:
                    continue
                pkgs, _, owned = line.partition(": ")
                first = pkgs.split(",")[0].strip().split(":")[0]
                if owned in asked and PACKAGE_RE.match(first):
                    found.setdefault(owned, first)
        for path, forms in wanted.items():
            self._owners[path] = next((found[f] for f in forms if f in found), None)
        return self._owners

    def base_packages(self) -> frozenset[str]:
        """The Essential packages and everything they depend on (installed ones)."""
        if self._base is None:
            out = self._run(["dpkg-query", "-W", "-f",
                             "${db:Status-Abbrev}\t${Package}\t${Essential}\t${Provides}\t"
                             "${Pre-Depends}\t${Depends}\n"])
            installed: dict[str, str] = {}
            provides: dict[str, list[str]] = {}
            essential = []
            for line in out.splitlines():
                parts = line.split("\t")
                if len(parts) != 6 or not parts[0].startswith("ii"):
                    continue
                _, name, ess, prov, pre, dep = parts
                installed[name] = f"{pre},{dep}"
                for group in _dep_names(prov):
                    provides.setdefault(group[0], []).append(name)
                if ess == "yes":
                    essential.append(name)
            seen: set[str] = set()
            todo = list(essential)
            while todo:
                name = todo.pop()
                if name in seen:
                    continue
                seen.add(name)
                for alts in _dep_names(installed.get(name, "")):
                    for alt in alts:  # the first alternative that is installed
                        hits = [alt] if alt in installed else provides.get(alt, [])
                        if hits:
                            todo.extend(hits)
                            break
            self._base = frozenset(seen)
        return self._base


# ---------------------------------------------------------------- a wheel


def _elves(zf: zipfile.ZipFile) -> list[tuple[str, Elf]]:
    found = []
    unreadable = 0
    for info in zf.infolist():
        if info.is_dir() or info.file_size < 52 or info.file_size > MAX_ELF_MEMBER:
            continue
        try:
            with zf.open(info) as fh:
                if fh.read(4) != b"\x7fELF":
                    continue
                elf = read_elf(fh)  # type: ignore[arg-type]  # ZipExtFile is seekable
        except (ElfError, struct.error, OSError, zipfile.BadZipFile, RuntimeError,
                NotImplementedError) as exc:
            unreadable += 1
            if unreadable <= 5:  # a hostile wheel may hold thousands
                log.warning("%s: not readable as ELF (%s); its libraries are not listed",
                            info.filename[:200], exc)
            continue
        if elf is not None:
            found.append((info.filename, elf))
    if unreadable > 5:
        log.warning("%d more members not readable as ELF", unreadable - 5)
    return found


def needed_in(zf: zipfile.ZipFile) -> tuple[frozenset[str], frozenset[str]]:
    """The library names the ELF files of an open wheel need (as recordable), and the
    base names of its members (a needed name among them is bundled).

    The master checks a builder's report against these: it needs no system to do so.
    """
    members = frozenset(os.path.basename(n) for n in zf.namelist())
    needed = frozenset(n for _, elf in _elves(zf) for n in elf.needed if LIBRARY_RE.match(n))
    return needed, members


def report_problem(libraries: Iterable[Library], needed: frozenset[str],
                   members: frozenset[str]) -> str | None:
    """Why a builder's list of libraries does not fit the wheel (None: it fits)."""
    reported = {lib.library: lib.kind for lib in libraries}
    expected = sorted(needed)[:MAX_LIBRARIES]
    if sorted(reported) != expected:
        extra = sorted(set(reported) - set(expected))
        absent = sorted(set(expected) - set(reported))
        parts = []
        if absent:
            parts.append(f"the wheel needs {', '.join(absent[:10])} but the builder did not "
                         "report it")
        if extra:
            parts.append(f"the builder reported {', '.join(extra[:10])}, which no ELF file "
                         "of the wheel needs")
        return "; ".join(parts)
    wrong = sorted(name for name, kind in reported.items()
                   if (kind == "bundled") != (name in members))
    if wrong:
        return f"{', '.join(wrong[:10])} reported as bundled but not in the wheel, or the other " \
               "way round"
    return None


def wheel_libraries(wheel: Path, system: System | None = None) -> list[Library]:
    """The shared libraries the ELF files in ``wheel`` need, sorted by name."""
    system = system or System()
    with zipfile.ZipFile(wheel) as zf:
        members = {os.path.basename(n) for n in zf.namelist()}
        elves = _elves(zf)
    first: dict[str, Elf] = {}
    for _, elf in elves:
        for soname in elf.needed:
            first.setdefault(soname, elf)
    bad = sorted(n for n in first if not LIBRARY_RE.match(n))
    if bad:
        log.warning("%s: library names Pinwheel cannot record: %s", wheel.name,
                    ", ".join(repr(n[:100]) for n in bad[:5]))
    # The master checks the list against the same names, cut at the same length.
    recordable = sorted(n for n in first if LIBRARY_RE.match(n))[:MAX_LIBRARIES]
    libraries: dict[str, Library] = {}
    paths: dict[str, str] = {}
    for soname in recordable:
        elf = first[soname]
        if soname in members:
            libraries[soname] = Library(soname, "bundled")
            continue
        path = system.find(soname, elf)
        if path is None:
            libraries[soname] = Library(soname, "missing")
        else:
            paths[soname] = path
    if paths:
        owners = system.owners(paths.values())
        base = system.base_packages()
        for soname, path in paths.items():
            package = owners.get(path)
            libraries[soname] = (Library(soname, "debian", package, package in base)
                                 if package else Library(soname, "unpackaged"))
    return [libraries[k] for k in sorted(libraries)]


def install_packages(libraries: Iterable[Library]) -> list[str]:
    """The packages a ``sudo apt install`` line names: Debian, and not base."""
    return sorted({lib.package for lib in libraries
                   if lib.kind == "debian" and lib.package and not lib.base})


def apt_install_line(packages: Iterable[str]) -> str | None:
    names = sorted(set(packages))
    return f"sudo apt install {' '.join(names)}" if names else None
