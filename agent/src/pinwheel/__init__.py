"""Pinwheel: a wheel-building farm for Raspberry Pi OS and Debian."""

__version__ = "0.1.0"
