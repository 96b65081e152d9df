"""The one error base of the app; foreign errors are translated into these at their boundary."""

from __future__ import annotations


class EfficientLLMError(Exception):
    """An error a user can act on: shown as one line (CLI) or a notification (TUI)."""

    exit_code = 2

    def __init__(self, msg: str, title: str | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.title = title or "Error"

    def __str__(self) -> str:
        return self.msg


class BadInput(EfficientLLMError):
    """Bad usage or bad input: unknown id, malformed value or file, invalid pair."""


class StoreError(EfficientLLMError):
    """The DuckDB store failed: bad SQL, a locked, corrupt or unreadable database."""


class DatabaseLocked(StoreError):
    """Another process held the database file longer than we were willing to wait."""


class CorruptDatabase(StoreError):
    """The file exists but is not a readable DuckDB database; it is never overwritten."""


class QueryError(StoreError):
    """A SQL statement failed (syntax, catalog, type or constraint error)."""


class RunFailed(EfficientLLMError):
    """The run itself failed (OOM, crash); it is recorded in the DB with its reason."""

    exit_code = 1
