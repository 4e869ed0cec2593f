"""Training entry point for Slurm jobs: ``python -m cdk_trn_runtime.train``."""
