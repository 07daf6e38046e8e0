"""``python -m nerve.tuning CONFIG [--section.field VALUE ...]``: a tuning run without the ``nerve`` CLI.

This is the entry point for ``accelerate launch -m tuning ...`` and ``torchrun -m tuning ...``.
``python -m nerve.tuning --help-config`` lists every config field.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__.strip())
        return 0
    if argv[0] == "--help-config":
        from .config import config_help_markdown

        print(config_help_markdown())
        return 0
    from .run import tune

    run_dir = tune(argv[0], argv[1:])
    print(run_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
