"""Metric collectors run on the instances (inside the training image's containers); the hosts'
timers publish what they print with ``aws cloudwatch put-metric-data`` (node_bootstrap.sh,
controller_bootstrap.sh). Names are in ``cdk_trn_runtime.contract``."""
