"""The runtime of cdk-trn's deploy-time custom resources: the driver every such function runs
(``driver``) and the handlers that belong to no other subpackage (``prefix_list``)."""
