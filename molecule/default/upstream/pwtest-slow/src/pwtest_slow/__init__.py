"""Pinwheel fleet test package: pure Python, slow to build."""

VALUE = "slow"
