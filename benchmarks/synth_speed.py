"""`cdk synth -q` of the default app against a bare one-bucket CDK app, in one run.

    python benchmarks/synth_speed.py [--repeat N]

Each case is the pinned CDK CLI (node_modules/.bin/cdk) running `synth -q` of an app with this
Python, into a fresh output folder; the figure is the fastest of N rounds, and the rounds
interleave the cases so that other load on the machine hits them alike. Compare the ratios: the
seconds depend on the machine and on whatever else runs on it.

* bare: benchmarks/bare_app.py, one S3 bucket (node, jsii and the CLI starting up);
* cold: the default app with an empty cache (cfn-lint and CloudFormation Validate run on every
  template);
* warm: the default app again with the cache the previous run left;
* 1 node / 256 nodes: the default app with `-c nodes=1` and `-c nodes=256`, warm.

Targets (issue 23): warm <= 1.5 x bare, cold <= 2.5 x bare, 256 nodes <= 1.1 x 1 node.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CDK = REPO / "node_modules" / ".bin" / "cdk"
TARGETS = {"warm": 1.5, "cold": 2.5}
NODES_TARGET = 1.1


def synth(app: str, outdir: Path, cache_home: Path, *context: str) -> float:
    env = dict(
        os.environ,
        XDG_CACHE_HOME=str(cache_home),
        CDK_DISABLE_CLI_TELEMETRY="true",
        AWS_EC2_METADATA_DISABLED="true",
        JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20",
    )
    env.pop("CDK_TRN_LINT_CACHE", None)
    command = [str(CDK), "synth", "-q", "--no-notices", "--app", app, "-o", str(outdir)]
    for item in context:
        command += ["-c", item]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not CDK.exists():
        sys.exit("the pinned CDK CLI is missing: run `npm ci` (make synth does)")
    python = sys.executable
    bare = f"{python} {REPO / 'benchmarks' / 'bare_app.py'}"
    default = f"{python} {REPO / 'app.py'}"
    with tempfile.TemporaryDirectory(prefix="synth-speed-") as scratch:
        root = Path(scratch)
        warm_home = root / "warm-cache"
        runs = 0

        def out() -> Path:
            nonlocal runs
            runs += 1
            return root / f"out{runs}"

        cases: dict[str, tuple[str, tuple[str, ...]]] = {
            "bare": (bare, ()),
            "cold": (default, ()),
            "warm": (default, ()),
            "1 node": (default, ("nodes=1",)),
            "256 nodes": (default, ("nodes=256",)),
        }
        # Fill the warm cache for every variant first (not timed).
        for name in ("warm", "1 node", "256 nodes"):
            app, context = cases[name]
            synth(app, out(), warm_home, *context)
        best: dict[str, float] = {}
        for round_ in range(args.repeat):
            for name, (app, context) in cases.items():
                home = root / f"cold-cache-{round_}" if name == "cold" else warm_home
                seconds = synth(app, out(), home, *context)
                best[name] = min(best.get(name, seconds), seconds)
    base = best["bare"]
    print(f"cdk synth -q, fastest of {args.repeat} rounds")
    print(f"{'case':<11} {'seconds':>8} {'x bare':>7}  target")
    for name, seconds in best.items():
        target = TARGETS.get(name)
        verdict = ""
        if target is not None:
            verdict = f"<= {target}x {'ok' if seconds / base <= target else 'MISSED'}"
        print(f"{name:<11} {seconds:>8.2f} {seconds / base:>7.2f}  {verdict}")
    nodes = best["256 nodes"] / best["1 node"]
    verdict = "ok" if nodes <= NODES_TARGET else "MISSED"
    print(f"256 nodes / 1 node: {nodes:.2f} (target <= {NODES_TARGET}x {verdict})")


if __name__ == "__main__":
    main()
