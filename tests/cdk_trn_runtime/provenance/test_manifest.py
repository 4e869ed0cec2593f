"""Checkpoint manifests: canonical form, contents, offline verification and the CLI."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cdk_trn_runtime.provenance import (
    FORMAT,
    ManifestError,
    build_manifest,
    canonical_json,
    load_public_key,
    manifest_digest,
    sign_with_private_key,
    verify_signed_manifest,
)
from cdk_trn_runtime.provenance.cli import main

WHEN = dt.datetime(2026, 11, 25, 12, 0, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    directory = tmp_path / "ckpt"
    (directory / "nested" / "deeper").mkdir(parents=True)
    (directory / "a.bin").write_bytes(b"a" * 10)
    (directory / "nested" / "b.bin").write_bytes(b"")
    (directory / "nested" / "deeper" / "c.bin").write_bytes(os.urandom(3000))
    return directory


def _manifest(directory: Path) -> dict:
    return build_manifest(
        directory,
        run_id="run-1",
        cluster="trn-a",
        step=1000,
        checkpoint_path="/fsx/checkpoints/run-1/step-1000",
        created=WHEN,
    )


def test_canonical_json_is_independent_of_key_order_and_whitespace():
    assert canonical_json({"b": 1, "a": [1, {"d": "x", "c": None}]}) == (
        b'{"a":[1,{"c":null,"d":"x"}],"b":1}'
    )
    assert canonical_json({"a": 1, "b": 2}) == canonical_json(json.loads('{ "b" : 2,\n"a":1 }'))


def test_canonical_json_escapes_non_ascii():
    assert canonical_json({"p": "é"}) == b'{"p":"\\u00e9"}'


def test_canonical_json_refuses_floats():
    with pytest.raises(ManifestError, match="floats"):
        canonical_json({"size": 1.5})


def test_manifest_lists_every_file_with_sha384_size_run_cluster_and_time(checkpoint):
    manifest = _manifest(checkpoint)
    assert manifest["format"] == FORMAT
    assert (manifest["run_id"], manifest["cluster"]) == ("run-1", "trn-a")
    assert (manifest["step"], manifest["checkpoint_path"]) == (
        1000,
        "/fsx/checkpoints/run-1/step-1000",
    )
    assert manifest["created"] == "2026-11-25T12:00:00Z"
    assert [f["path"] for f in manifest["files"]] == [
        "a.bin",
        "nested/b.bin",
        "nested/deeper/c.bin",
    ]
    first = manifest["files"][0]
    assert first == {"path": "a.bin", "sha384": hashlib.sha384(b"a" * 10).hexdigest(), "size": 10}


def test_manifest_digest_is_sha384_of_the_canonical_bytes(checkpoint):
    manifest = _manifest(checkpoint)
    assert manifest_digest(manifest) == hashlib.sha384(canonical_json(manifest)).digest()


def test_manifest_refuses_symbolic_links(checkpoint):
    (checkpoint / "link.bin").symlink_to(checkpoint / "a.bin")
    with pytest.raises(ManifestError, match="link.bin"):
        _manifest(checkpoint)


def test_manifest_refuses_a_missing_directory(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        _manifest(tmp_path / "nope")


@pytest.mark.parametrize("run_id", ["", "has space", "x" * 300, "semi;colon"])
def test_manifest_refuses_odd_run_ids(checkpoint, run_id):
    with pytest.raises(ManifestError, match="run_id"):
        build_manifest(checkpoint, run_id=run_id, cluster="trn-a", step=1)


def test_signed_manifest_verifies_against_the_untouched_directory(checkpoint, signing_key):
    signed = sign_with_private_key(_manifest(checkpoint), signing_key)
    report = verify_signed_manifest(signed, checkpoint, signing_key.public_key())
    assert report.ok and report.checked == 3


def test_signature_is_plain_ecdsa_p384_sha384_over_the_canonical_bytes(checkpoint, signing_key):
    import base64

    signed = sign_with_private_key(_manifest(checkpoint), signing_key)
    signing_key.public_key().verify(
        base64.b64decode(signed["signature"]["value"]),
        canonical_json(signed["manifest"]),
        ec.ECDSA(hashes.SHA384()),
    )


def test_every_tampered_missing_and_extra_file_is_reported(checkpoint, signing_key):
    signed = sign_with_private_key(_manifest(checkpoint), signing_key)
    (checkpoint / "a.bin").write_bytes(b"a" * 9 + b"b")
    (checkpoint / "nested" / "b.bin").write_bytes(b"grew")
    (checkpoint / "nested" / "deeper" / "c.bin").unlink()
    (checkpoint / "new.bin").write_bytes(b"new")
    report = verify_signed_manifest(signed, checkpoint, signing_key.public_key())
    assert not report.ok and report.signature_valid
    assert report.tampered == ["a.bin", "nested/b.bin"]
    assert report.missing == ["nested/deeper/c.bin"]
    assert report.extra == ["new.bin"]


def test_signature_by_another_key_is_invalid(checkpoint, signing_key):
    forger = ec.generate_private_key(ec.SECP384R1())
    signed = sign_with_private_key(_manifest(checkpoint), forger)
    report = verify_signed_manifest(signed, checkpoint, signing_key.public_key())
    assert not report.ok and not report.signature_valid


def test_edited_manifest_under_a_valid_signature_is_invalid(checkpoint, signing_key):
    signed = sign_with_private_key(_manifest(checkpoint), signing_key)
    signed["manifest"]["files"][0]["size"] = 11
    assert not verify_signed_manifest(signed, checkpoint, signing_key.public_key()).signature_valid


@pytest.mark.parametrize("path", ["../outside", "/etc/passwd", "a/../../b", "a\\b", ""])
def test_unsafe_paths_in_a_manifest_are_problems(checkpoint, signing_key, path):
    manifest = _manifest(checkpoint)
    manifest["files"].append({"path": path, "sha384": "00", "size": 0})
    report = verify_signed_manifest(
        sign_with_private_key(manifest, signing_key), checkpoint, signing_key.public_key()
    )
    assert not report.ok and any("unsafe" in p for p in report.problems)


def test_not_a_signed_manifest_is_a_problem(checkpoint, signing_key):
    report = verify_signed_manifest({"files": []}, checkpoint, signing_key.public_key())
    assert not report.ok and report.problems


def test_public_key_must_be_p384(tmp_path):
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = other.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ManifestError, match="P-384"):
        load_public_key(pem)


# --- CLI ------------------------------------------------------------------------------------


def _write_keys(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    private = tmp_path / "signer.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = tmp_path / "signer.pub.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def test_cli_signs_locally_and_verify_exits_zero(checkpoint, signing_key, tmp_path, capsys):
    private, public = _write_keys(tmp_path, signing_key)
    assert (
        main(
            [
                "sign",
                str(checkpoint),
                "--private-key",
                str(private),
                "--cluster",
                "c",
                "--step",
                "7",
            ]
        )
        == 0
    )
    manifest = tmp_path / "ckpt.manifest.json"
    assert json.loads(manifest.read_text())["manifest"]["run_id"] == "ckpt"
    capsys.readouterr()
    assert (
        main(["verify", str(manifest), str(checkpoint), "--public-key", str(public), "--any-run"])
        == 0
    )
    assert "OK: 3 files checked" in capsys.readouterr().out


def test_cli_manifest_inside_the_directory_is_not_an_extra_file(
    checkpoint, signing_key, tmp_path, capsys
):
    private, public = _write_keys(tmp_path, signing_key)
    manifest = checkpoint / "MANIFEST.json"
    assert (
        main(
            [
                "sign",
                str(checkpoint),
                "--private-key",
                str(private),
                "--cluster",
                "c",
                "--step",
                "7",
                "--output",
                str(manifest),
            ]
        )
        == 0
    )
    assert (
        main(["verify", str(manifest), str(checkpoint), "--public-key", str(public), "--any-run"])
        == 0
    )


def test_cli_sign_needs_a_cluster_and_a_signer(checkpoint, monkeypatch, capsys):
    monkeypatch.delenv("CDK_TRN_CLUSTER", raising=False)
    monkeypatch.delenv("CDK_TRN_VAULT_URL", raising=False)
    assert main(["sign", str(checkpoint)]) == 2
    assert main(["sign", str(checkpoint), "--cluster", "c"]) == 2
    assert "--vault" in capsys.readouterr().err


def test_cli_sign_reports_an_unreachable_vault(checkpoint, capsys):
    # Port 9 on loopback (discard) is closed here: the connection is refused at once.
    assert (
        main(
            [
                "sign",
                str(checkpoint),
                "--cluster",
                "c",
                "--step",
                "7",
                "--vault",
                "http://127.0.0.1:9",
            ]
        )
        == 1
    )
    assert "unreachable" in capsys.readouterr().err


def test_cli_verify_as_a_module_names_the_tampered_file_and_exits_one(
    checkpoint, signing_key, tmp_path
):
    private, public = _write_keys(tmp_path, signing_key)
    assert (
        main(
            [
                "sign",
                str(checkpoint),
                "--private-key",
                str(private),
                "--cluster",
                "c",
                "--step",
                "7",
            ]
        )
        == 0
    )
    (checkpoint / "nested" / "deeper" / "c.bin").write_bytes(b"changed")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdk_trn_runtime.provenance",
            "verify",
            str(tmp_path / "ckpt.manifest.json"),
            str(checkpoint),
            "--public-key",
            str(public),
            "--any-run",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "TAMPERED nested/deeper/c.bin" in result.stdout


def test_cli_verify_with_an_unreadable_key_is_a_usage_error(checkpoint, tmp_path, capsys):
    (tmp_path / "m.json").write_text("{}")
    (tmp_path / "bad.pem").write_text("not a key")
    assert (
        main(
            [
                "verify",
                str(tmp_path / "m.json"),
                str(checkpoint),
                "--public-key",
                str(tmp_path / "bad.pem"),
                "--any-run",
            ]
        )
        == 2
    )


# --- identity: run, cluster, step and path are signed and checked ----------------------------


def _identity_expected(**overrides):
    expected = {
        "run_id": "run-1",
        "cluster": "trn-a",
        "step": 1000,
        "checkpoint_path": "/fsx/checkpoints/run-1/step-1000/",
    }
    return {**expected, **overrides}


def test_identity_matching_every_expectation_verifies(checkpoint, signing_key):
    signed = sign_with_private_key(_manifest(checkpoint), signing_key)
    report = verify_signed_manifest(
        signed, checkpoint, signing_key.public_key(), expected=_identity_expected()
    )
    assert report.ok and report.mismatches == []
    assert report.identity["step"] == 1000
    assert any(
        line.startswith("IDENTITY run_id=run-1 cluster=trn-a step=1000") for line in report.lines()
    )


@pytest.mark.parametrize(
    "field, value",
    [
        ("run_id", "run-2"),
        ("cluster", "trn-b"),
        ("step", 2000),
        ("checkpoint_path", "/fsx/checkpoints/run-1/step-2000"),
    ],
)
def test_each_identity_mismatch_fails_and_is_named(checkpoint, signing_key, field, value):
    signed = sign_with_private_key(_manifest(checkpoint), signing_key)
    report = verify_signed_manifest(
        signed, checkpoint, signing_key.public_key(), expected=_identity_expected(**{field: value})
    )
    assert report.signature_valid and not report.ok
    assert len(report.mismatches) == 1 and report.mismatches[0].startswith(f"{field}:")


def test_edited_identity_under_a_valid_signature_is_invalid(checkpoint, signing_key):
    signed = sign_with_private_key(_manifest(checkpoint), signing_key)
    signed["manifest"]["step"] = 2000
    report = verify_signed_manifest(
        signed, checkpoint, signing_key.public_key(), expected=_identity_expected(step=2000)
    )
    assert not report.signature_valid and not report.ok


@pytest.mark.parametrize("path", ["relative/dir", "/a/../b", "/with space", ""])
def test_checkpoint_path_must_be_a_plain_absolute_path(checkpoint, path):
    with pytest.raises(ManifestError, match="checkpoint path"):
        build_manifest(checkpoint, run_id="r", cluster="c", step=1, checkpoint_path=path)


@pytest.mark.parametrize("step", [-1, True, "5", 2**60])
def test_step_must_be_a_non_negative_integer(checkpoint, step):
    with pytest.raises(ManifestError, match="step"):
        build_manifest(checkpoint, run_id="r", cluster="c", step=step)


def test_first_format_manifests_are_not_accepted(checkpoint, signing_key):
    manifest = _manifest(checkpoint)
    manifest["format"] = "cdk-trn.checkpoint-manifest/1"
    report = verify_signed_manifest(
        sign_with_private_key(manifest, signing_key), checkpoint, signing_key.public_key()
    )
    assert not report.ok and "unknown manifest format" in report.problems[0]


def _sign_cli(directory: Path, private: Path, *extra: str) -> int:
    return main(
        ["sign", str(directory), "--private-key", str(private), "--cluster", "trn-a", *extra]
    )


def test_cli_verify_run_id_mismatch_exits_one_and_says_which(
    checkpoint, signing_key, tmp_path, capsys
):
    private, public = _write_keys(tmp_path, signing_key)
    assert _sign_cli(checkpoint, private, "--run-id", "run-1", "--step", "5") == 0
    manifest = str(tmp_path / "ckpt.manifest.json")
    capsys.readouterr()
    code = main(
        ["verify", manifest, str(checkpoint), "--public-key", str(public), "--run-id", "run-9"]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "MISMATCH run_id: manifest says 'run-1', expected 'run-9'" in out
    code = main(
        ["verify", manifest, str(checkpoint), "--public-key", str(public), "--run-id", "run-1"]
    )
    out = capsys.readouterr().out
    assert code == 0 and "IDENTITY run_id=run-1 cluster=trn-a step=5" in out


def test_cli_sign_takes_the_step_from_the_directory_name_or_refuses(
    tmp_path, signing_key, capsys, monkeypatch
):
    monkeypatch.delenv("CDK_TRN_STEP", raising=False)
    private, _ = _write_keys(tmp_path, signing_key)
    named = tmp_path / "checkpoints" / "step-001200"
    named.mkdir(parents=True)
    (named / "w.bin").write_bytes(b"w")
    assert _sign_cli(named, private) == 0
    manifest = json.loads((named.parent / "step-001200.manifest.json").read_text())["manifest"]
    assert (manifest["step"], manifest["checkpoint_path"]) == (1200, str(named.resolve()))
    unnamed = tmp_path / "latest"
    unnamed.mkdir()
    assert _sign_cli(unnamed, private) == 2
    assert "--step" in capsys.readouterr().err


def test_replayed_older_checkpoint_fails_when_the_expected_step_or_path_is_given(
    tmp_path, signing_key, capsys
):
    # Finding: an older, genuinely signed checkpoint copied over a newer one verified.
    private, public = _write_keys(tmp_path, signing_key)
    root = tmp_path / "checkpoints"
    old, new = root / "step-1000", root / "step-2000"
    for directory, content in (
        (old, b"weights after 1000 steps"),
        (new, b"weights after 2000 steps"),
    ):
        directory.mkdir(parents=True)
        (directory / "model.bin").write_bytes(content)
        assert _sign_cli(directory, private, "--run-id", "run-1") == 0
    # The attack: the older checkpoint and its manifest replace the newer ones.
    (new / "model.bin").write_bytes((old / "model.bin").read_bytes())
    (root / "step-2000.manifest.json").write_text((root / "step-1000.manifest.json").read_text())
    manifest = str(root / "step-2000.manifest.json")
    base = ["verify", manifest, str(new), "--public-key", str(public), "--any-run"]
    capsys.readouterr()
    assert main(base) == 0  # files and signature alone cannot tell...
    assert "identity above was signed but not compared" in capsys.readouterr().err
    assert main([*base, "--step", "2000"]) == 1  # ...the signed step can
    assert "MISMATCH step: manifest says 1000, expected 2000" in capsys.readouterr().out
    assert main([*base, "--path", str(new.resolve())]) == 1
    assert "MISMATCH checkpoint_path" in capsys.readouterr().out


def test_cli_verify_without_a_run_fails_closed(checkpoint, signing_key, tmp_path, capsys):
    """A valid signature over another run's checkpoint proves nothing about yours: without
    --run-id (or an explicit --any-run) verify refuses before it reads anything."""
    private, public = _write_keys(tmp_path, signing_key)
    sign = ["sign", str(checkpoint), "--private-key", str(private), "--cluster", "c", "--step", "7"]
    assert main(sign) == 0
    manifest = str(tmp_path / "ckpt.manifest.json")
    assert main(["verify", manifest, str(checkpoint), "--public-key", str(public)]) == 2
    assert "--run-id" in capsys.readouterr().err
