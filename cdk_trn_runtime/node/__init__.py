"""What runs on a Trainium node at boot: ``node_bootstrap.sh`` (health checks, FSx, signal)."""
