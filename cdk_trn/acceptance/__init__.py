"""The deploy-time acceptance run: the image it runs, the SSM document, the custom resource.

``NeuronTrainingImage`` says which container runs (the bundled suite by default);
``AcceptanceRun`` runs it on every node of a ``TrainiumCluster`` during ``cdk deploy`` and fails the
deploy when the cluster underperforms. The Lambda handler code lives in ``handler/`` (plain
Python, no CDK import).
"""

from cdk_trn.acceptance.image import BoundNeuronTrainingImage, NeuronTrainingImage
from cdk_trn.acceptance.run import (
    DEFAULT_FIGURES,
    FIGURES,
    RESULTS_ACCESS_LOG_PREFIX,
    AcceptanceRun,
    AcceptanceThresholds,
    AcceptanceWorkload,
)

__all__ = [
    "DEFAULT_FIGURES",
    "FIGURES",
    "RESULTS_ACCESS_LOG_PREFIX",
    "AcceptanceRun",
    "AcceptanceThresholds",
    "AcceptanceWorkload",
    "BoundNeuronTrainingImage",
    "NeuronTrainingImage",
]
