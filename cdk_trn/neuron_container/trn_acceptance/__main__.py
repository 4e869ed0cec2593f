"""``python -m trn_acceptance``: the container's entry point."""

import sys

from .cli import main

sys.exit(main())
