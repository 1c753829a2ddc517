"""Errors that speak to the user.

Every user mistake (a malformed data row, an unknown config key, a missing model
directory) raises a subclass of :class:`AlignkitError`. The CLI prints its message on
one line and exits with status 2; no traceback is shown for these.
"""

from __future__ import annotations


class AlignkitError(Exception):
    """Base class for errors caused by user input, printed as one line by the CLI."""


class DataError(AlignkitError):
    """A data file (or record) is malformed.

    The message names the file, the line (1-based, for line-oriented formats), the
    field and what was expected, e.g.
    ``data.jsonl:3: field 'rejected': missing (expected a string)``.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ):
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        self.reason = message
        where = ""
        if self.path is not None:
            where = self.path + (f":{line}" if line is not None else "") + ": "
        elif line is not None:
            where = f"line {line}: "
        what = f"field '{field}': " if field is not None else ""
        super().__init__(f"{where}{what}{message}")


class ConfigError(AlignkitError):
    """A configuration file or option is invalid (unknown key, wrong type)."""
