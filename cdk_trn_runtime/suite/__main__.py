"""``python -m cdk_trn_runtime.suite``: the container's entry point."""

import sys

from .cli import main

sys.exit(main())
