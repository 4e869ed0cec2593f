"""Slurm's runtime side: the one slurm.conf generator (cloud and local), the node scripts
(health check, prolog, epilog) and the local cluster used in development and tests."""
