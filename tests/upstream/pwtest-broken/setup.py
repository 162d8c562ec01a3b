"""Fails every build, so tests can follow a failed build through Pinwheel."""

raise RuntimeError("pwtest-broken fails to build on purpose")
