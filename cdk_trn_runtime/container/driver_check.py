"""Does the host's Neuron driver serve this image? (``-m cdk_trn_runtime.container.driver_check``)

Runs inside the training image on a node (``docker run --rm --entrypoint python IMAGE -m ...``),
where ``/sys`` is the host's: it reads the host's Neuron driver version
(``/sys/module/neuron/version``, the loaded ``aws-neuronx-dkms`` module) and the image's Neuron
release (``CDK_TRN_NEURON_RELEASE``, the value of the image's ``com.cdk-trn.neuron-release``
label), and compares the driver with the oldest one that release supports (``REQUIRED_DRIVER``,
from the "Neuron Driver" line of each release's component release notes).

Exit 0 and one line saying what was compared when the driver is new enough (or the host has no
Neuron device); exit 1 and one line naming both versions when it is older, or when the versions
cannot be read on a host with Neuron devices. The node bootstrap fails its boot with that line
(no retry: a replacement would boot the same AMI with the same driver). Standard library only.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from collections.abc import Mapping

#: Neuron SDK release -> the aws-neuronx-dkms version that release ships (the oldest driver its
#: runtime supports). Source: awsdocs-neuron release-notes/components/index of each release.
REQUIRED_DRIVER: dict[str, str] = {
    "2.30": "2.28.0.0",
    "2.31": "2.29.0.0",
    "2.32": "2.30.2.0",
    "2.33": "2.31.7.0",
}
RELEASE_VARIABLE = "CDK_TRN_NEURON_RELEASE"
#: Prefix of /dev and /sys (tests), as the node scripts use it (contract.SLURM_ENV_DEVICE_ROOT).
ROOT_VARIABLE = "CDK_TRN_DEVICE_ROOT"


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def required_driver(release: str) -> str:
    """The oldest driver ``release`` (``2.33.0``, ``2.33``) supports; ValueError if unknown."""
    minor = ".".join(release.strip().split(".")[:2])
    if minor not in REQUIRED_DRIVER:
        raise ValueError(
            f"Neuron release {release!r} is not in the driver table "
            f"({', '.join(REQUIRED_DRIVER)}); add its driver version to "
            "cdk_trn_runtime/container/driver_check.py"
        )
    return REQUIRED_DRIVER[minor]


def host_driver(root: str = "") -> str | None:
    """The loaded Neuron driver's version, or None when no Neuron module is loaded."""
    try:
        with open(f"{root}/sys/module/neuron/version", encoding="ascii") as handle:
            return handle.read().strip() or None
    except FileNotFoundError:
        return None


def check(environ: Mapping[str, str]) -> tuple[bool, str]:
    """(ok, the line to print) for this host and image."""
    root = environ.get(ROOT_VARIABLE, "")
    devices = glob.glob(f"{root}/dev/neuron[0-9]*")
    driver = host_driver(root)
    release = environ.get(RELEASE_VARIABLE, "").strip()
    if not devices and driver is None:
        return True, "neuron driver check: no Neuron device on this host, nothing to check"
    if not release:
        return False, (
            f"neuron driver check: the image does not say its Neuron release "
            f"(${RELEASE_VARIABLE} unset); host Neuron driver {driver or 'unknown'}"
        )
    try:
        required = required_driver(release)
    except ValueError as error:
        return False, f"neuron driver check: {error}"
    if driver is None:
        return False, (
            f"neuron driver check: the host has Neuron devices but no loaded Neuron driver "
            f"(/sys/module/neuron/version); the image's Neuron {release} needs driver "
            f"{required} or newer"
        )
    if _key(driver) < _key(required):
        return False, (
            f"neuron driver check: host Neuron driver (aws-neuronx-dkms) {driver} is older than "
            f"{required}, which the training image's Neuron {release} requires: update the "
            f"driver in the AMI (or pick an AMI with a newer one), or use an image of an older "
            f"Neuron release"
        )
    return True, (
        f"neuron driver check: host Neuron driver {driver} serves the image's Neuron {release} "
        f"(needs {required} or newer)"
    )


def main() -> int:
    ok, line = check(os.environ)
    print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
