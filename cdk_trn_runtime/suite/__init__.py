"""trn-acceptance: the acceptance suite that cdk-trn's bundled Neuron container runs on every rank.

The package owns the checks (discovery, BF16 GEMM, device memory bandwidth, collectives, a small
training run, the compile cache), the per-rank and summary JSON it writes, and its command line.
The modules ``schema``, ``formulas``, ``thresholds`` and ``report`` are plain Python and import
without torch; everything that touches a device goes through ``device``.
"""

__version__ = "0.1.0"
