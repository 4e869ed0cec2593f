"""The local twin of the cloud's Slurm cluster (``make local-cluster``): a controller and N
dynamic configless nodes, each in namespaces of its own on a private bridge, driven by the same
cluster document, slurm.conf generator, node scripts and reaper as the cloud. See
``cluster.py`` for the lifecycle (its parts in ``state``, ``machine``, ``instances``,
``controller`` and ``nodes``), ``net.py`` for the network, ``aws_double.py`` for the ``aws``
command double; ``cdk_trn_runtime.slurm.local`` is the command line.
"""
