"""``python -m cdk_trn.provenance``: see :mod:`cdk_trn.provenance.cli`."""

from cdk_trn.provenance.cli import main

raise SystemExit(main())
