"""Where the constructs find ``cdk_trn_runtime``, and the one rule for what an asset ships.

Every asset that carries runtime code (each Lambda handler, the enclave image's build context,
the training container) is rooted at the folder that holds ``cdk_trn_runtime/`` and ships the
package's ``__init__`` and ``contract`` plus the subpackages it names, nothing else. No asset keeps
a file list of its own; the instances' boot bundles (``cdk_trn._boot``) are laid out by
``cdk_trn_runtime.node.bundle``, which the tests and the local twin use too.
"""

from __future__ import annotations

from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_lambda as lambda_

import cdk_trn_runtime

#: The ``cdk_trn_runtime`` package folder.
RUNTIME_PACKAGE = Path(cdk_trn_runtime.__file__).resolve().parent
#: The folder that holds ``cdk_trn_runtime/``: the root of every runtime asset.
RUNTIME_ROOT = RUNTIME_PACKAGE.parent
#: What of the package every asset ships: its ``__init__`` and the ``contract`` subpackage.
_COMMON_MODULES = ("__init__.py",)
_COMMON_PACKAGES = ("contract",)
_NAME = RUNTIME_PACKAGE.name


def runtime_file(*parts: str) -> Path:
    """A file of the runtime package, e.g. ``runtime_file("node", "node_bootstrap.sh")``."""
    path = RUNTIME_PACKAGE.joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"cdk_trn_runtime has no {'/'.join(parts)}")
    return path


def runtime_excludes(*subpackages: str) -> list[str]:
    """gitignore-style excludes (``IgnoreMode.GIT``) for an asset rooted at :data:`RUNTIME_ROOT`
    that ships the common modules and ``subpackages`` of ``cdk_trn_runtime`` only."""
    for name in subpackages:
        if not (RUNTIME_PACKAGE / name).is_dir():
            raise ValueError(f"cdk_trn_runtime has no subpackage {name!r}")
    return [
        "/*",
        f"!/{_NAME}/",
        f"/{_NAME}/*",
        *(f"!/{_NAME}/{module}" for module in _COMMON_MODULES),
        *(f"!/{_NAME}/{name}/" for name in (*_COMMON_PACKAGES, *subpackages)),
        "__pycache__/",
        "*.pyc",
        "*.egg-info/",
    ]


def runtime_lambda_code(*subpackages: str) -> lambda_.Code:
    """Lambda code holding ``cdk_trn_runtime`` with ``subpackages``; the handler is named by its
    module path, e.g. ``cdk_trn_runtime.acceptance.handler.on_event``."""
    return lambda_.Code.from_asset(
        str(RUNTIME_ROOT),
        exclude=runtime_excludes(*subpackages),
        ignore_mode=cdk.IgnoreMode.GIT,
    )
