"""Pinwheel test package: versions of the shared libraries its C extension links."""

from ._clibs import ffi_uint32_size, zlib_version

__all__ = ["ffi_uint32_size", "zlib_version"]
