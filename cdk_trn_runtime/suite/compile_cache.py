"""The persistent compile cache: where it lives, and how many entries a stretch of work added.

``--cache-dir DIR`` holds two caches: ``DIR/neuron`` is the Neuron compiler's NEFF cache
(``NEURON_COMPILE_CACHE_URL``, the cache torch-neuronx documents), ``DIR/xla`` torch_xla's own
persistent cache (``XLA_PERSISTENT_CACHE_PATH`` through ``torch_xla.runtime.initialize_cache``).
On XLA CPU only the second exists. A new file in either is a graph that was not in the cache and
had to be compiled, which is what ``new_compilations_with_warm_cache`` counts.
"""

from __future__ import annotations

import os
from pathlib import Path

from .device import CPU, NEURON

# Transient files of concurrent writers (the Neuron cache locks entries while compiling).
_TRANSIENT_SUFFIXES = (".lock", ".tmp")


def xla_cache_enabled(mode: str, platform: str) -> bool:
    """``auto`` enables torch_xla's persistent cache on CPU only.

    On Neuron the NEFF cache is the documented mechanism; whether the Neuron PJRT plugin can
    serialize executables into torch_xla's cache is not established, so it stays off unless
    ``on`` is asked for.
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"xla cache mode must be auto, on or off, got {mode}")
    if mode == "auto":
        return platform == CPU
    return mode == "on"


def cache_paths(cache_dir: str, platform: str, xla_mode: str) -> dict[str, str | None]:
    root = Path(cache_dir).resolve()
    return {
        "dir": str(root),
        "neuron": str(root / "neuron") if platform == NEURON else None,
        "xla": str(root / "xla") if xla_cache_enabled(xla_mode, platform) else None,
    }


def configure_environment(paths: dict[str, str | None]) -> None:
    """Point the Neuron compiler at the cache, unless the caller already chose a cache URL."""
    for key in ("neuron", "xla"):
        if paths[key]:
            Path(str(paths[key])).mkdir(parents=True, exist_ok=True)
    if paths["neuron"]:
        os.environ.setdefault("NEURON_COMPILE_CACHE_URL", str(paths["neuron"]))


def entries(paths: dict[str, str | None]) -> set[str]:
    """Every cache file, by path, under the caches in use."""
    found: set[str] = set()
    roots = [p for p in (paths.get("neuron"), paths.get("xla")) if p]
    if paths.get("neuron") and os.environ.get("NEURON_COMPILE_CACHE_URL", "").startswith("/"):
        roots.append(os.environ["NEURON_COMPILE_CACHE_URL"])
    for root in dict.fromkeys(roots):
        for dirpath, _, files in os.walk(root):
            found.update(
                os.path.join(dirpath, f) for f in files if not f.endswith(_TRANSIENT_SUFFIXES)
            )
    return found


def countable(paths: dict[str, str | None]) -> bool:
    """False when the Neuron cache is remote (``s3://``): its entries cannot be listed here."""
    url = os.environ.get("NEURON_COMPILE_CACHE_URL", "")
    return not (paths.get("neuron") and url and not url.startswith("/"))
