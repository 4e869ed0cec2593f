"""``python -m cdk_trn_runtime.provenance``: see :mod:`cdk_trn_runtime.provenance.cli`."""

from cdk_trn_runtime.provenance.cli import main

raise SystemExit(main())
