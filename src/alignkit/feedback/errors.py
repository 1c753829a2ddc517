"""What the feedback store refuses, as kinds of error (the callers decide how to say it).

The store knows nothing of HTTP or of the command line: the web app maps each class to a
status code (``alignkit.app.errors``) and the CLI prints the message on one line (and
adds the flag or command that would fix it where it knows one).
"""

from __future__ import annotations

from alignkit.errors import AlignkitError

__all__ = [
    "Conflict",
    "InvalidAnswer",
    "InvalidRequest",
    "NotFound",
    "NotMember",
    "ProjectNotFound",
    "StoreError",
    "UnknownFormat",
]


class StoreError(AlignkitError):
    """A request the feedback store refuses."""


class InvalidRequest(StoreError):
    """Bad settings or account details (a user name with spaces, an unknown role, ...)."""


class InvalidAnswer(StoreError):
    """An answer that does not fit its task (unknown choice, wrong number of ranks, ...)."""


class NotFound(StoreError):
    """No such assignment, item or user (or not one this user may see)."""


class ProjectNotFound(NotFound):
    """No project of this name; ``project`` holds the name asked for."""

    def __init__(self, project: str):
        super().__init__(f"no project named {project!r}; import items into it first")
        self.project = project


class NotMember(StoreError):
    """The user is not a member of the project asked about."""


class Conflict(StoreError):
    """The request contradicts what is stored (an assignment answered differently, ...)."""


class UnknownFormat(StoreError):
    """An export format the store does not write; ``choices`` lists the ones it does."""

    def __init__(self, fmt: str, choices: tuple[str, ...]):
        super().__init__(f"unknown export format {fmt!r}; expected one of {', '.join(choices)}")
        self.format, self.choices = fmt, choices
