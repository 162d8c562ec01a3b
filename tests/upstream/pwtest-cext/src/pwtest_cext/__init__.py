"""Pinwheel test package: ``add(a, b)`` implemented in C."""

from ._add import add

__all__ = ["add"]
