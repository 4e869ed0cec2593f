"""The acceptance run's names that the construct, the handler and the controller's scripts share.

Standard library only.
"""

from __future__ import annotations

#: Exit status of the Slurm document when a node of the run's node list is not (yet) idle in
#: Slurm for another reason than a job: a successor that has not registered, or is down or drained.
#: The handler tries again until the run's deadline (``submit_suite.sh`` spells it too).
ACCEPTANCE_NOT_READY_EXIT = 72
#: The Slurm drain reason of a node the acceptance run refreshes after an image change: drained so
#: no new job lands on it, then replaced (marked Unhealthy in its Auto Scaling group) once Slurm
#: says it is drained without a job, by the handler or, for a node that was busy, by the
#: controller's reaper (``slurm/scripts/reaper.sh`` and ``acceptance/submit_suite.sh`` spell it).
REFRESH_DRAIN_REASON = "cdk-trn: image refresh"
#: ``DrainFor`` of the Slurm document: why the nodes at ``DrainAddresses`` are drained.
#: ``replace``: below threshold; ``refresh``: an image refresh, drain every one and report each
#: node's state and jobs; ``refresh-if-idle``: the same, but drain none when none is idle.
DRAIN_FOR = ("replace", "refresh", "refresh-if-idle")
