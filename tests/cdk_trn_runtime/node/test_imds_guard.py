"""imds_guard.sh's rules, loaded by the real nft in a network namespace of the test's own: a
listener standing in for instance metadata (an "IMDS double") on 169.254.169.254, on the
namespace's loopback only (it has no other interface: nothing leaves it). A job's uid (2000) is
refused within 3 s, root connects; the users (or uids) the boot names connect too. Needs root,
``ip``, ``nft`` and ``setpriv`` (CI runs as root and installs nftables)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

GUARD = Path(__file__).parents[3] / "cdk_trn_runtime" / "node" / "imds_guard.sh"
JOB_UID = 2000
IMDS = "169.254.169.254"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(c) for c in ("ip", "nft", "setpriv")),
    reason="needs root, ip, nft and setpriv (CI has them)",
)

#: Connects to the IMDS double within 3 s; prints what it answered, or the error. A system
#: Python: the job's uid may not read the venv.
PROBE = textwrap.dedent(
    f"""
    import socket
    try:
        with socket.create_connection(("{IMDS}", 80), timeout=3) as s:
            print("ANSWER", s.recv(64).decode())
    except OSError as e:
        print("REFUSED", type(e).__name__)
    """
)

#: The IMDS double: answers every connection with one line.
DOUBLE = textwrap.dedent(
    f"""
    import socket
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("{IMDS}", 80))
    s.listen()
    print("listening", flush=True)
    while True:
        c, _ = s.accept()
        c.sendall(b"imds-double\\n")
        c.close()
    """
)


def _in(ns: str, *argv: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30, **kw
    )


def _probe(ns: str, uid: int) -> str:
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    user = [] if uid == 0 else ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    done = _in(ns, *user, python, "-I", "-c", PROBE)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def netns() -> Iterator[str]:
    """A namespace whose loopback holds the IMDS address, the double listening on it."""
    ns = f"cdktrn-imds-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    double = None
    try:
        for cmd in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "addr", "add", f"{IMDS}/32", "dev", "lo"],
        ):
            subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)
        double = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-I", "-c", DOUBLE],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert double.stdout is not None and double.stdout.readline().strip() == "listening"
        yield ns
    finally:
        if double is not None:
            double.kill()
            double.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)


def _guard(ns: str, root: Path, *users: str) -> subprocess.CompletedProcess[str]:
    # As boot_common.sh sources it: units.sh from the same bundle directory installs the unit.
    env = {
        **os.environ,
        "ROOT": str(root),
        "NODE_BOOTSTRAP_TEST_ROOT": str(root),
        "BOOT_DIR": str(GUARD.parent),
    }
    return _in(
        ns,
        "bash",
        "-euo",
        "pipefail",
        "-c",
        f'. "{GUARD.parent / "units.sh"}"; . "{GUARD}"; guard_imds "$@"',
        "guard",
        *users,
        env=env,
    )


def test_before_the_guard_the_job_uid_reaches_the_double(netns):
    """The test can fail: without the rules, uid 2000 gets the double's answer."""
    assert _probe(netns, JOB_UID) == "ANSWER imds-double"


def test_the_job_uid_is_refused_and_root_connects(netns, tmp_path):
    done = _guard(netns, tmp_path)
    assert done.returncode == 0, done.stderr
    assert _probe(netns, JOB_UID).startswith("REFUSED")
    assert _probe(netns, 0) == "ANSWER imds-double"


def test_a_named_daemon_user_connects_and_other_users_do_not(netns, tmp_path):
    done = _guard(netns, tmp_path, "nobody")
    assert done.returncode == 0, done.stderr
    nobody = int(subprocess.run(["id", "-u", "nobody"], capture_output=True, text=True).stdout)
    assert _probe(netns, nobody) == "ANSWER imds-double"
    assert _probe(netns, JOB_UID).startswith("REFUSED")


def test_a_numeric_uid_the_host_does_not_know_connects(netns, tmp_path):
    """The controller names the image's SlurmUser by uid (64030): slurmctld runs power saving's
    ResumeProgram/SuspendProgram as that user, and the host has no such user."""
    from cdk_trn_runtime.contract import SLURM_DAEMON_UID

    done = _guard(netns, tmp_path, str(SLURM_DAEMON_UID))
    assert done.returncode == 0, done.stderr
    assert _probe(netns, SLURM_DAEMON_UID) == "ANSWER imds-double"
    assert _probe(netns, JOB_UID).startswith("REFUSED")
    rules = (tmp_path / "etc/cdk-trn/imds-guard.nft").read_text()
    assert f"meta skuid != {{ 0,{SLURM_DAEMON_UID} }}" in rules


def test_loading_again_replaces_the_table_and_it_persists_across_reboots(netns, tmp_path):
    for _ in range(2):
        assert _guard(netns, tmp_path).returncode == 0
    table = _in(netns, "nft", "list", "table", "inet", "cdk_trn_imds").stdout
    assert table.count(f"ip daddr {IMDS}") == 2  # output (reject), forward (drop): once each
    rules = (tmp_path / "etc/cdk-trn/imds-guard.nft").read_text()
    assert IMDS in rules and "meta skuid != { 0 }" in rules
    unit = (tmp_path / "etc/systemd/system/cdk-trn-imds-guard.service").read_text()
    assert "ExecStart=" in unit and "-f /etc/cdk-trn/imds-guard.nft" in unit
    assert "Before=network-pre.target" in unit and "WantedBy=sysinit.target" in unit
    enabled = tmp_path / "etc/systemd/system/sysinit.target.wants/cdk-trn-imds-guard.service"
    assert enabled.resolve() == tmp_path / "etc/systemd/system/cdk-trn-imds-guard.service"


def test_an_unknown_user_fails_the_guard(netns, tmp_path):
    assert _guard(netns, tmp_path, "no-such-user-cdktrn").returncode != 0
    assert _probe(netns, JOB_UID) == "ANSWER imds-double"


def test_node_and_controller_boots_call_the_guard():
    node = GUARD.parent
    for script in ("node_bootstrap.sh", "controller_bootstrap.sh"):
        boot = (node / script).read_text().split("\nboot() {", 1)[1].split("\n}", 1)[0]
        assert "guard_imds ||" in boot or 'guard_imds "$SLURM_DAEMON_UID" ||' in boot, script
        # before anything that could run a job's code starts
        assert boot.index("guard_imds") < boot.index("start_docker"), script
