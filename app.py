#!/usr/bin/env python3
"""The default cdk-trn app: `make synth` (offline) or `npx cdk deploy --all` (with credentials).

Configuration comes from cdk.json context, overridden with `-c key=value`.
"""

from __future__ import annotations

import sys

import aws_cdk as cdk

from cdk_trn.errors import CdkTrnError
from cdk_trn.summary import format_cluster_summary
from stacks import build_default_app


def main() -> int:
    app = cdk.App()
    try:
        default = build_default_app(app)
    except CdkTrnError as error:
        print(f"cdk-trn: invalid configuration: {error}", file=sys.stderr)
        return 2
    app.synth()
    print(format_cluster_summary(default.cluster), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
