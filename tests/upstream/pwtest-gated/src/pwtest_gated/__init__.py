"""Pinwheel test package: pure Python, built only once its gate is open."""


def hello() -> str:
    return "Hello from pwtest-gated"
