"""``python -m nerve.cli``: the ``nerve`` command."""

import sys

from nerve.cli import app

sys.exit(app())
