"""``python -m hetfaas``: the same command line as the ``hetfaas`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
