"""Database connections and the errors Pinwheel's SQL functions raise.

The SQL functions raise their own SQLSTATE codes (class ``PW``); this module
turns them into Python exceptions with the server's message and hint, so the
agent and the CLI can tell "your lease is gone" from "the network is down".
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.extensions

SCHEMA = "pinwheel"


class PinwheelError(Exception):
    """An error with a message meant for the person reading the log."""


class DatabaseUnavailable(PinwheelError):
    """The database could not be reached (retry later)."""


class LeaseLost(PinwheelError):
    """The job is no longer held by this builder under this token."""


class JobCancelled(LeaseLost):
    """The job was cancelled while this builder held it (its release was removed upstream
    or skipped): stop the build and report nothing."""


class NotRegistered(PinwheelError):
    """The builder has not registered (or its ABI is unknown)."""


class RegistrationMismatch(PinwheelError):
    """The builder reports another ABI or platform than it was registered with."""


class InvalidReport(PinwheelError):
    """A builder function refused its arguments."""


_CODES: dict[str, type[PinwheelError]] = {
    "PWL01": LeaseLost,
    "PWL02": JobCancelled,
    "PWB01": NotRegistered,
    "PWB02": RegistrationMismatch,
    "PWV01": InvalidReport,
}


def translate(exc: psycopg2.Error) -> PinwheelError | None:
    """The Pinwheel exception for a database error raised by our functions."""
    code = exc.pgcode or ""
    # A lease error this agent does not know yet (a newer database) is still a lost lease.
    cls = _CODES.get(code) or (LeaseLost if code.startswith("PWL") else None)
    if cls is None:
        return None
    diag = exc.diag
    message = diag.message_primary or str(exc)
    if diag.message_hint:
        message = f"{message} ({diag.message_hint})"
    return cls(message)


def connect(dsn: str, application_name: str = "pinwheel", **kwargs: Any) -> Any:
    """Open an autocommit connection: every call is its own short transaction."""
    # TCP keepalives: a connection whose peer vanished (network cut, host
    # lost power) fails within about a minute instead of hanging for hours.
    options = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30,
               "keepalives_interval": 10, "keepalives_count": 3, **kwargs}
    try:
        conn = psycopg2.connect(dsn, application_name=application_name, **options)
    except psycopg2.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {exc}".strip()) from exc
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"SET search_path = {SCHEMA}, pg_temp")
    return conn


def call(conn: Any, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement, translating Pinwheel's SQLSTATEs into exceptions."""
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    except psycopg2.OperationalError as exc:
        raise DatabaseUnavailable(f"lost the database connection: {exc}".strip()) from exc
    except psycopg2.InterfaceError as exc:
        raise DatabaseUnavailable(f"lost the database connection: {exc}".strip()) from exc
    except psycopg2.Error as exc:
        mapped = translate(exc)
        if mapped is not None:
            raise mapped from exc
        raise


@contextmanager
def transaction(conn: Any) -> Iterator[Any]:
    """A cursor inside one transaction on an autocommit connection; commits or rolls back."""
    previous = conn.autocommit
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            yield cur
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.autocommit = previous
