"""The user data every role launches with, run for real: the node's rendered user data (its
``CDK_TRN_*`` variables and ``launcher.sh``) on the fake node of test_node_bootstrap.py, with
the node's real boot archive in an S3 stand-in directory that the ``aws`` double serves. The
launcher must check the archive's SHA-256 before anything in it runs, unpack it into a root-only
directory, run the entry script from there, and send the boot log to CloudWatch Logs."""

from __future__ import annotations

import json
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from cdk_trn_runtime.node.bundle import bundle_archive, bundle_files, bundle_sha256
from tests.cdk_trn_runtime.node.test_node_bootstrap import BootResult, FakeNode, Rendered, _render
from tests.support.stacks import cluster_stack


@pytest.fixture(scope="module")
def trn2() -> Rendered:
    return _render(cluster_stack("trn2.48xlarge")[1])


def _variable(user_data: str, name: str) -> str:
    [value] = re.findall(rf"^{name}=(.*)$", user_data, re.M)
    return shlex.split(value)[0]


def _launch(tmp_path: Path, rendered: Rendered, archive: bytes | None, **env: str) -> BootResult:
    node = FakeNode(tmp_path)
    s3 = tmp_path / "s3"
    s3.mkdir()
    key = _variable(rendered.user_data, "CDK_TRN_BOOT_KEY")
    if archive is not None:
        (s3 / key).write_bytes(archive)
    script = tmp_path / "user-data.sh"
    script.write_text(rendered.user_data)
    node.log.write_text("")
    result = subprocess.run(
        ["bash", str(script)],
        env={
            "PATH": f"{node.bin}:/usr/bin:/bin",
            "HOME": str(node.root),
            "NODE_BOOTSTRAP_TEST_ROOT": str(node.root),
            "NODE_BOOTSTRAP_TEST_WAIT_SECONDS": "0",
            "DOUBLES_LOG": str(node.log),
            "AWS_DOUBLE_S3": str(s3),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = [line.split() for line in node.log.read_text().splitlines() if line.strip()]
    return BootResult(result.returncode, result.stdout + result.stderr, calls, node.root)


def _shipped_events(result: BootResult) -> list[str]:
    events = Path(str(result.root.parent / "calls.log") + ".events")
    return [e["message"] for e in json.loads(events.read_text())] if events.exists() else []


def test_user_data_carries_the_bundle_digest_and_entry(trn2):
    assert _variable(trn2.user_data, "CDK_TRN_BOOT_SHA256") == bundle_sha256("node")
    assert _variable(trn2.user_data, "CDK_TRN_BOOT_ENTRY") == "node_bootstrap.sh"
    assert _variable(trn2.user_data, "CDK_TRN_BOOT_KEY").endswith(".gz")
    # No boot script travels in the user data any more: only the launcher.
    assert "check_neuron" not in trn2.user_data


def test_archive_is_reproducible_and_holds_exactly_the_bundle():
    import io
    import tarfile

    assert bundle_archive("node") == bundle_archive("node")
    with tarfile.open(fileobj=io.BytesIO(bundle_archive("node"))) as archive:
        members = {m.name: m for m in archive.getmembers()}
        assert set(members) == set(bundle_files("node"))
        for name, path in bundle_files("node").items():
            member = archive.extractfile(members[name])
            assert member is not None and member.read() == path.read_bytes()


def test_verified_bundle_runs_from_a_root_only_directory_and_signals_success(tmp_path, trn2):
    result = _launch(tmp_path, trn2, bundle_archive("node"))
    assert result.returncode == 0, result.output
    assert result.statuses() == ["SUCCESS"]
    boot = result.root / "opt/cdk-trn/boot"
    assert stat.S_IMODE(boot.stat().st_mode) == 0o700
    assert stat.S_IMODE(boot.parent.stat().st_mode) == 0o755
    assert stat.S_IMODE((boot / "boot.env").stat().st_mode) == 0o600
    sourced = subprocess.run(
        ["bash", "-c", f'. "{boot}/boot.env"; echo "$CDK_TRN_CLUSTER $CDK_TRN_REGION"'],
        capture_output=True,
        text=True,
    )
    assert sourced.stdout.strip() == "test-cluster us-east-2"
    assert (boot / "node_bootstrap.sh").read_bytes() == bundle_files("node")[
        "node_bootstrap.sh"
    ].read_bytes()


def test_boot_log_goes_to_the_clusters_log_group_under_the_instance_id(tmp_path, trn2):
    result = _launch(tmp_path, trn2, bundle_archive("node"))
    [put] = [c for c in result.calls_to("aws") if c[:2] == ["logs", "put-log-events"]]
    group = _variable(trn2.user_data, "CDK_TRN_BOOT_LOG_GROUP")
    assert put[put.index("--log-group-name") + 1] == group
    assert put[put.index("--log-stream-name") + 1] == "i-0123456789abcdef0"
    messages = _shipped_events(result)
    assert any("node ready" in m for m in messages)
    console = (result.root / "dev/console").read_text()
    assert "[cdk-trn-bootstrap] node ready" in console
    assert "[cdk-trn-launcher] node_bootstrap.sh exited with status 0" in console
    assert any("node_bootstrap.sh exited with status 0" in m for m in messages)


def test_bundle_that_does_not_match_its_digest_never_runs_and_signals_failure(tmp_path, trn2):
    tampered = bytearray(bundle_archive("node"))
    tampered[-20] ^= 0xFF
    result = _launch(tmp_path, trn2, bytes(tampered))
    assert result.returncode == 1
    assert result.statuses() == ["FAILURE"]
    # Nothing of the bundle ran: no device check, no Docker, no unpacked directory.
    assert result.calls_to("systemctl") == [] and result.calls_to("docker") == []
    assert not (result.root / "opt/cdk-trn/boot").exists()
    assert any("does not match its SHA-256" in m for m in _shipped_events(result))


def test_bundle_that_cannot_be_downloaded_signals_failure_after_retries(tmp_path, trn2):
    result = _launch(tmp_path, trn2, None)
    assert result.returncode == 1
    assert result.statuses() == ["FAILURE"]
    assert len([c for c in result.calls_to("aws") if c[:2] == ["s3", "cp"]]) == 5
    assert any("could not download the boot bundle" in m for m in _shipped_events(result))


def test_failing_boot_still_ships_its_log(tmp_path, trn2):
    result = _launch(tmp_path, trn2, bundle_archive("node"), DOUBLES_FAILING="sysctl")
    assert result.returncode == 1
    assert result.statuses() == ["FAILURE"]
    messages = _shipped_events(result)
    assert any("could not reserve the rendezvous ports" in m for m in messages)
    assert any("node_bootstrap.sh exited with status 1" in m for m in messages)


def _log_events(tmp_path: Path, log: bytes) -> list[dict]:
    """launcher.sh's log_events on a boot log of ``log``: the JSON PutLogEvents takes."""
    launcher = (Path(bundle_files("node")["node_bootstrap.sh"]).parent / "launcher.sh").read_text()
    [function] = re.findall(r"^log_events\(\) \{\n.*?^\}\n", launcher, re.M | re.S)
    (tmp_path / "boot.log").write_bytes(log)
    done = subprocess.run(
        ["bash", "-c", f"set -uo pipefail\n{function}log_events"],
        env={"PATH": "/usr/bin:/bin", "LOG": str(tmp_path / "boot.log")},
        capture_output=True,
        check=True,
    )
    events = json.loads(done.stdout.decode("utf-8"))
    assert len({e["timestamp"] for e in events}) == 1
    return events


def test_boot_log_events_are_valid_json_whatever_the_boot_printed(tmp_path):
    log = (
        b'quote " and back\\slash\\\n'  # escaped
        b"\n"  # an empty line is one space (CloudWatch refuses empty messages)
        b"tab\there\r\n"  # a tab becomes a space, a carriage return goes
        b"bell\x07 escape\x1b[0m\n"  # control characters go
        b"broken \xff\xfe utf-8 \xc3\xa9\n"  # invalid bytes go, valid ones stay
    )
    messages = [e["message"] for e in _log_events(tmp_path, log)]
    assert messages == [
        'quote " and back\\slash\\',
        " ",
        "tab here",
        "bell escape[0m",
        "broken  utf-8 é",
    ]


def test_boot_log_events_keep_the_last_lines_that_fit_one_call(tmp_path):
    # Long lines are cut at 16,000 bytes, never inside an escape or a character.
    # (Escaped, a quote is two bytes.)
    split_character = b'"' * 7999 + b"x" + "é".encode() + b"x" * 100 + b"\n"
    assert [e["message"] for e in _log_events(tmp_path, split_character)] == ['"' * 7999 + "x"]
    split_escape = b"a" + b'"' * 8000 + b"\n"
    assert [e["message"] for e in _log_events(tmp_path, split_escape)] == ["a" + '"' * 7999]
    lines = [f"line {i} ".encode() + b"y" * 990 for i in range(1200)]
    messages = [e["message"] for e in _log_events(tmp_path, b"\n".join(lines) + b"\n")]
    # 900,000 bytes of messages and their 26 bytes each: the last lines, in order.
    assert len(messages) < 1200 and messages[-1].startswith("line 1199 ")
    assert messages == [line.decode() for line in lines[-len(messages) :]]
    assert sum(len(m.encode()) + 26 for m in messages) <= 900_000
    assert [e["message"] for e in _log_events(tmp_path, b"")] == ["(the boot printed nothing)"]
    assert len(_log_events(tmp_path, b"a\n" * 9500)) == 9000
