"""``python -m cdk_trn_runtime.cli``: the same as the ``cdk-trn`` console script."""

import sys

from cdk_trn_runtime.cli.command import main

sys.exit(main())
