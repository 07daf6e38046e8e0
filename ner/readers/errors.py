"""The errors raised for a dataset file that cannot be read as gold data."""

from __future__ import annotations

import os


class DatasetFormatError(ValueError):
    """A dataset file that does not follow its format.

    The message starts with ``<path>:<line>:`` (1-based line), like a compiler diagnostic, so that editors and
    terminals can jump to the offending line; a problem of the whole file (``line`` is ``None``) starts with
    ``<path>:``.
    """

    def __init__(self, path: str | os.PathLike[str], line: int | None, message: str) -> None:
        self.path = os.fspath(path)
        self.line = line
        self.reason = message
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {message}")


class NoEntitiesError(DatasetFormatError):
    """A dataset in which no example has an entity.

    As training data it teaches a model to answer ``{"entities": []}``; as evaluation data it scores nothing.
    It is most often a file read in the wrong format, so readers refuse it unless told the file is meant to be
    unlabelled (``allow_empty=True``).
    """

    def __init__(self, path: str | os.PathLike[str], examples: int, format: str) -> None:
        self.examples = examples
        self.format = format
        found = "no examples" if examples == 0 else f"{examples} example(s), none with an entity"
        super().__init__(path, None, f"{found} (read as {format}); unlabelled data must be allowed explicitly")


class MissingDependencyError(DatasetFormatError):
    """A format whose reader or writer needs an optional package that is not installed (spaCy for DocBin files,
    Hugging Face ``datasets`` for ``save_to_disk`` folders).

    It is a :class:`DatasetFormatError` of the whole file, so that every command that reports bad data reports
    this too, with the install command: ``pip install 'nerve[formats]'``.
    """

    def __init__(self, path: str | os.PathLike[str], what: str, package: str) -> None:
        self.package = package
        super().__init__(path, None, f"{what} needs the {package} package, which is not installed: "
                                     "pip install 'nerve[formats]'")
