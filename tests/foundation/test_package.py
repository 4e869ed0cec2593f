"""The public names import, and the runtime package never loads the CDK."""

import subprocess
import sys

import pytest

import cdk_trn


@pytest.mark.parametrize("name", cdk_trn.__all__)
def test_every_exported_name_is_defined(name):
    assert getattr(cdk_trn, name) is not None


def test_runtime_modules_load_neither_the_cdk_nor_torch():
    code = (
        "import sys, cdk_trn_runtime.vault.server, cdk_trn_runtime.contract; "
        "bad = [m for m in ('aws_cdk', 'jsii', 'constructs', 'torch', 'cbor2') "
        "if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError):
        cdk_trn.NoSuchConstruct  # noqa: B018
