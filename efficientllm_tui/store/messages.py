"""The words of the store's lock and corruption errors: who holds a locked file, and the
phrases by which DuckDB says a file is not a database it can read (store.db translates the
exceptions; this part needs no `duckdb` import)."""

from __future__ import annotations

import re


def locked_message(path: object, msg: str, waited_s: float | None = None) -> str:
    """One line: the file, who holds it (from DuckDB's message), how long we waited."""
    holder = "another process"
    if m := re.search(r"held in (.+?) \(PID (\d+)\)", msg):
        holder = f"another process (pid {m.group(2)}, {m.group(1)})"
    elif "different configuration" in msg or "Unique file handle conflict" in msg:
        holder = "another connection of this process, opened read-only vs read-write"
    waited = f"; waited {waited_s:.1f} s" if waited_s is not None else ""
    return (
        f"database {path} is locked by {holder}{waited}; try again when it has finished "
        "(an ingest takes seconds; a duckdb shell holds it until closed)"
    )


CORRUPT_MARKERS = (
    "not a valid DuckDB database",
    "Could not read enough bytes",
    "Corrupt database",
    "checksum",
    "replaying WAL",
    "WAL file",
    "database has been invalidated",
    "Failed to load metadata",
)
"""Phrases of DuckDB's messages that mean the file is damaged or not a DuckDB database."""
