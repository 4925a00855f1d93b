"""``python -m rmkd COMMAND`` and ``torchrun ... -m rmkd COMMAND``: the ``rmkd`` console script.

Both run :func:`rmkd.cli.main`, the entry point ``pyproject.toml`` names for ``rmkd``.
"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
