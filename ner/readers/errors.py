"""The error raised for a malformed dataset file."""

from __future__ import annotations

import os


class DatasetFormatError(ValueError):
    """A dataset file that does not follow its format.

    The message always starts with ``<path>:<line>:`` (1-based line), like a compiler diagnostic, so that
    editors and terminals can jump to the offending line.
    """

    def __init__(self, path: str | os.PathLike[str], line: int, message: str) -> None:
        self.path = os.fspath(path)
        self.line = line
        self.reason = message
        super().__init__(f"{self.path}:{line}: {message}")
