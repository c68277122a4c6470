"""``python -m hetfaas.gateway serve|token ...``: ``hetfaas serve`` and ``hetfaas token``."""

import sys

from .cli import main

sys.exit(main())
