"""The persistent compile cache: where it lives, and how many entries a stretch of work added.

``--cache-dir DIR`` (on FSx in the cluster, shared by every node and job) holds two caches:
``DIR/neuron`` is the Neuron compiler's NEFF cache (``NEURON_COMPILE_CACHE_URL``), used by
``torch.compile(backend="neuron")`` on Trainium; ``DIR/inductor`` is torch.compile's own cache
(``TORCHINDUCTOR_CACHE_DIR``: its FX-graph cache and AOTAutograd cache), used by the default
backend on CPU and CUDA. A new entry in either is a graph that was not in the cache and had to be
compiled, which is what ``new_compilations_with_warm_cache`` counts; torch.compile's own hit and
miss counters (``device.cache_counters``) give the hit rate.
"""

from __future__ import annotations

import os
from pathlib import Path

from .device import NEURON

# Transient files of concurrent writers (both caches lock entries while compiling).
_TRANSIENT_SUFFIXES = (".lock", ".tmp")
#: The subdirectories of torch.compile's cache that hold one entry per compiled graph (the rest
#: are build products of those entries: C++ sources, shared objects, Triton kernels).
INDUCTOR_ENTRY_DIRS = ("fxgraph", "aotautograd")


def cache_paths(cache_dir: str, device: str) -> dict[str, str | None]:
    root = Path(cache_dir).resolve()
    return {
        "dir": str(root),
        "neuron": str(root / "neuron") if device == NEURON else None,
        "inductor": str(root / "inductor"),
    }


def configure_environment(paths: dict[str, str | None]) -> None:
    """Point the compilers at the cache (the Neuron URL only if the caller chose none)."""
    for key in ("neuron", "inductor"):
        if paths[key]:
            Path(str(paths[key])).mkdir(parents=True, exist_ok=True)
    if paths["neuron"]:
        os.environ.setdefault("NEURON_COMPILE_CACHE_URL", str(paths["neuron"]))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(paths["inductor"])
    # The FX-graph and AOTAutograd caches persist to disk (on by default; said explicitly).
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")


def _roots(paths: dict[str, str | None]) -> list[str]:
    roots = [os.path.join(str(paths["inductor"]), d) for d in INDUCTOR_ENTRY_DIRS]
    if paths.get("neuron"):
        roots.append(str(paths["neuron"]))
        url = os.environ.get("NEURON_COMPILE_CACHE_URL", "")
        if url.startswith("/"):
            roots.append(url)
    return list(dict.fromkeys(roots))


def entries(paths: dict[str, str | None]) -> set[str]:
    """Every cache entry file, by path, under the caches in use."""
    found: set[str] = set()
    for root in _roots(paths):
        for dirpath, _, files in os.walk(root):
            found.update(
                os.path.join(dirpath, f) for f in files if not f.endswith(_TRANSIENT_SUFFIXES)
            )
    return found


def countable(paths: dict[str, str | None]) -> bool:
    """False when the Neuron cache is remote (``s3://``): its entries cannot be listed here."""
    url = os.environ.get("NEURON_COMPILE_CACHE_URL", "")
    return not (paths.get("neuron") and url and not url.startswith("/"))


def hit_rate(hits: int, misses: int) -> float | None:
    """hits / (hits + misses); None when nothing was looked up."""
    total = hits + misses
    return hits / total if total else None
