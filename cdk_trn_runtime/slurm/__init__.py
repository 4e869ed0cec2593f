"""Slurm on cdk-trn clusters: the slurm.conf generator and the prolog, epilog and health-check
scripts, shared by the cloud (shipped in the bundled training image) and the local cluster."""
