"""The public names import, and importing the package alone loads no third-party code."""

import importlib
import subprocess
import sys

import pytest

import cdk_trn


@pytest.mark.parametrize("name", cdk_trn.__all__)
def test_every_exported_name_resolves_to_its_module(name):
    module = importlib.import_module(cdk_trn._EXPORTS[name])
    assert getattr(cdk_trn, name) is getattr(module, name)


def test_import_cdk_trn_loads_neither_the_cdk_nor_torch():
    code = (
        "import sys, cdk_trn, cdk_trn.enclave.parent; "
        "bad = [m for m in ('aws_cdk', 'jsii', 'torch', 'cbor2') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError):
        cdk_trn.NoSuchConstruct  # noqa: B018


def test_all_lists_exactly_the_lazy_exports():
    assert sorted(cdk_trn.__all__) == sorted(cdk_trn._EXPORTS)
