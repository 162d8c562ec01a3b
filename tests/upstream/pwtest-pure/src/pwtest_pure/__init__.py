"""Pinwheel test package: pure Python."""


def hello() -> str:
    return "Hello from pwtest-pure"
