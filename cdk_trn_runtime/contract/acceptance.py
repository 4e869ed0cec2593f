"""The acceptance run's messages and names, shared by the construct (``cdk_trn.acceptance``), the
custom resource's handler (``cdk_trn_runtime.acceptance``) and the controller's scripts.

Messages (each wire key spelled here only):

- :class:`AcceptanceRunProperties`: the custom resource's properties, built by
  ``AcceptanceRun`` and parsed by the handler (with its :class:`Check` list);
- :class:`AcceptanceReport`: the resource's ``Data``, which the handler returns and the
  construct reads as attributes (one per exported figure besides the fixed ones);
- :class:`NodeCommand` and :class:`SlurmCommand`: the parameters of the two SSM Command
  documents, declared by ``cdk_trn.acceptance.document`` (with their descriptions and
  ``allowedPattern``) and filled by the handler's launchers.

Standard library only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from cdk_trn_runtime.contract.message import Message, MessageError, key

#: ``schema_version`` of the suite's ``summary.json`` that the handler reads
#: (``cdk_trn_runtime.suite.schema`` writes it).
SUMMARY_SCHEMA_VERSION = 1
#: Exit status of the Slurm document when a node of the run's node list is not (yet) idle in
#: Slurm for another reason than a job: a successor that has not registered, or is down or drained.
#: The handler tries again until the run's deadline (``submit_suite.sh`` gets it at synth).
ACCEPTANCE_NOT_READY_EXIT = 72
#: ``DrainFor`` of the Slurm document: why the nodes of ``DrainList`` are drained.
#: ``replace``: below threshold; ``refresh``: an image refresh, drain every one and report each
#: node's state and jobs; ``refresh-if-idle``: the same, but drain none when none is idle;
#: ``refresh-by-reaper`` (a rollback that reuses a passed run): drain every one for the
#: controller's reaper to replace, none when the installed reaper lacks the refresh rule.
#: Whatever the reason, a node running a job is drained for a refresh only when the installed
#: reaper has the refresh rule (``REAPER_REFRESH_MARKER``): else only idle ones are drained.
DRAIN_FOR = ("replace", "refresh", "refresh-if-idle", "refresh-by-reaper")
#: A line of the controller's reaper (``slurm/scripts/reaper.sh``, as ``# <marker>``) saying it
#: has the refresh rule. A controller booted from an earlier bundle keeps its earlier reaper (the
#: controller group has no rolling update), so the drain command reads the installed reaper
#: (``ExecStart`` of ``REAPER_UNIT``) before it drains a node that runs a job: without the rule no
#: one would replace that node when its jobs end. ``document.py`` renders it into the script.
REAPER_REFRESH_MARKER = "cdk-trn-reaper-rule: image-refresh 1"
#: The reaper's installed systemd unit on the controller (``controller_bootstrap.sh``).
REAPER_UNIT = "/etc/systemd/system/cdk-trn-reaper.service"
#: The refresh report's line when the installed reaper lacks the refresh rule.
REPORT_NO_REAPER_RULE = "cdk-trn refresh-rule: absent"
#: Node lists the handler hands the controller, and the drain report it reads back, go through
#: the run's results prefix in S3 (no SSM parameter or output limit): ``<ResultsUri><stem>`` +
#: these suffixes, the stem being ``DrainList`` / ``NodeList`` (one address a line).
LIST_SUFFIX = ".addresses"
REPORT_SUFFIX = ".report"
#: Where under a run's prefix those objects go (the controller may read only these).
CONTROL_DIR = "control/"
#: The run's nodes by address, as Slurm allocated them to the job (one a line; empty when Slurm
#: did not say), at ``<ResultsUri>`` + this key: written after the job by the Slurm document's
#: script, as root on the controller, from Slurm's answer (``squeue -t all``). A node below
#: threshold is replaced only if it is among them, whatever the results say (the job, and any
#: job of its user, can write those). No result upload can write it: the nodes' role is denied
#: ``control/*``, and the controller's upload of the job's results leaves out ``control/`` (its
#: role is denied only the handler's ``*.addresses`` lists: it writes this and the drain reports).
RUN_NODES_KEY = f"{CONTROL_DIR}ran-on.nodes"
#: ``Launcher``: a Slurm job submitted from the controller, or the suite on every node via SSM.
LAUNCHERS = ("slurm", "ssm")
#: ``WhenBusy``: what a run does when the cluster's nodes are busy with users' jobs.
WHEN_BUSY = ("fail", "report")
#: SSM ListCommands' filter key for a document (the API's word, which is also a run property's).
SSM_FILTER_DOCUMENT = "DocumentName"
#: A figure the handler reports but could not measure (and ``Passed`` of a run not judged).
NOT_AVAILABLE = "n/a"


def key_of(message: type[Message], field_name: str) -> str:
    """The wire key of ``message``'s field ``field_name`` (for a construct reading an attribute)."""
    return message.keys()[field_name]


@dataclass(frozen=True)
class Check(Message):
    """One threshold the handler re-checks on the summary's figures."""

    DESCRIPTION: ClassVar[str] = "acceptance check"

    figure: str = key("Figure")
    unit: str = key("Unit", default="")
    minimum: float | None = key("Min", default=None)
    maximum: float | None = key("Max", default=None)


@dataclass(frozen=True, kw_only=True)
class AcceptanceRunProperties(Message):
    """The ``Custom::TrnAcceptanceRun`` resource's properties."""

    DESCRIPTION: ClassVar[str] = "acceptance run properties"
    #: Fields whose change means a new run (everything else, e.g. the exported figures or the
    #: timeout, only changes how a run is waited for or reported).
    RUN_FIELDS: ClassVar[tuple[str, ...]] = (
        "auto_scaling_group_name",
        "cluster_name",
        "compile_cache_dir",
        "config_hash",
        "controller_group_name",
        "document_name",
        "image_uri",
        "launcher",
        "results_bucket",
        "results_prefix",
    )
    #: Fields the Slurm launcher needs (absent with the SSM launcher).
    SLURM_FIELDS: ClassVar[tuple[str, ...]] = (
        "controller_group_name",
        "partition",
        "job_user",
        "controller_container",
        "runs_dir",
    )

    auto_scaling_group_name: str = key("AutoScalingGroupName")
    cluster_name: str = key("ClusterName")
    nodes: int = key("Nodes")
    procs_per_node: int = key("ProcsPerNode")
    devices_per_chip: int = key("DevicesPerChip", default=1)
    document_name: str = key("DocumentName")
    image_uri: str = key("ImageUri")
    results_bucket: str = key("ResultsBucket")
    results_prefix: str = key("ResultsPrefix")
    compile_cache_dir: str = key("CompileCacheDir")
    suite_args: str = key("SuiteArgs", default="")
    rendezvous_port: int = key("RendezvousPort")
    neuron_comm_port: int = key("NeuronCommPort")
    expected_neuron_devices: int = key("ExpectedNeuronDevices")
    expected_efa_devices: int = key("ExpectedEfaDevices")
    run_timeout_seconds: int = key("RunTimeoutSeconds")
    checks: tuple[Check, ...] = key("Checks", default=())
    exported_figures: tuple[str, ...] = key("ExportedFigures", default=())
    #: US dollars per hour of the run's nodes together (nodes x node price), when known.
    hourly_price: float | None = key("HourlyPrice", default=None)
    config_hash: str = key("ConfigHash", default="")
    launcher: str = key("Launcher", default="ssm")
    #: ``fail`` (the deploy fails at once, saying the nodes are busy) or ``report`` (the deploy
    #: goes on and the resource's ``Passed`` says the run did not run).
    when_busy: str = key("WhenBusy", default="fail")
    controller_group_name: str | None = key("ControllerGroupName", default=None)
    partition: str | None = key("Partition", default=None)
    job_user: str | None = key("JobUser", default=None)
    controller_container: str | None = key("ControllerContainer", default=None)
    runs_dir: str | None = key("RunsDir", default=None)

    @classmethod
    def run_keys(cls) -> tuple[str, ...]:
        """The wire keys of :attr:`RUN_FIELDS`."""
        keys = cls.keys()
        return tuple(keys[name] for name in cls.RUN_FIELDS)

    def to_properties(self, *, omit_defaults: bool = False, strings: bool = True) -> dict[str, Any]:
        """As CloudFormation hands it over (numbers as text, the price to a hundredth of a cent)
        unless ``strings=False``."""
        out = super().to_properties(omit_defaults=omit_defaults, strings=strings)
        if strings and isinstance(self.hourly_price, (int, float)):
            out[type(self).keys()["hourly_price"]] = format(self.hourly_price, ".4f")
        return out

    def validate(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise self.invalid("launcher", " or ".join(LAUNCHERS))
        if self.when_busy not in WHEN_BUSY:
            raise self.invalid("when_busy", " or ".join(WHEN_BUSY))
        if self.slurm:
            for name in self.SLURM_FIELDS:
                if not getattr(self, name):
                    raise MessageError(
                        f"{self.DESCRIPTION}: {self.keys()[name]} is missing (Launcher slurm)"
                    )

    @property
    def slurm(self) -> bool:
        return self.launcher == "slurm"

    def run_prefix(self, run_id: str) -> str:
        return f"{self.results_prefix}{run_id}/"

    def results_uri(self, run_id: str) -> str:
        return f"s3://{self.results_bucket}/{self.run_prefix(run_id)}"

    def summary_key(self, run_id: str) -> str:
        return f"{self.run_prefix(run_id)}0/summary.json"

    def control_key(self, run_id: str, stem: str) -> str:
        """The S3 key of a node list or report (``stem`` + suffix) of the run ``run_id``."""
        return f"{self.run_prefix(run_id)}{stem}"


@dataclass(frozen=True)
class AcceptanceReport(Message):
    """The resource's ``Data`` (every value a string, for ``Fn::GetAtt``): these fixed keys and,
    beside them, one key per exported figure, named as in ``contract.FIGURES`` (:meth:`data`)."""

    DESCRIPTION: ClassVar[str] = "acceptance report"

    run_id: str = key("RunId")
    results_uri: str = key("ResultsUri")
    #: ``true``, ``n/a`` (an earlier run's figures could not be read) or ``not-run: <why>``.
    passed: str | None = key("Passed", default=None)
    world_size: str | None = key("WorldSize", default=None)
    #: The image the run tested.
    image_uri: str | None = key("ImageUri", default=None)
    #: Instances replaced below threshold during the run, comma-separated.
    replaced_nodes: str | None = key("ReplacedNodes", default=None)
    #: After an image refresh: the instances the run ran on, comma-separated.
    ran_on: str | None = key("RanOn", default=None)
    #: After an image refresh: the nodes still on the earlier image, waiting for their jobs.
    awaiting_refresh: str | None = key("AwaitingRefresh", default=None)

    def data(self, figures: Mapping[str, str] | None = None) -> dict[str, str]:
        """``Data``: the figures (name -> value as text, ``n/a`` when not measured), then these."""
        return {**dict(figures or {}), **self.to_properties()}


# --- the SSM Command documents' parameters ---------------------------------------------------

_INT = "^[0-9]{1,6}$"
_IPV4 = r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$"
_PATH = r"^/[A-Za-z0-9._/-]{1,255}$"
#: A stem under ResultsUri (``control/<name>``) or empty.
_LIST_STEM = r"^(control/[a-z0-9][a-z0-9-]{0,62})?$"
_RESULTS_URI = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[A-Za-z0-9_./-]*/$"


def _param(name: str, doc: str) -> Any:
    return key(name, doc=doc)


class _DocumentParameters(Message):
    """Parameters of an SSM Command document: each a string on the wire, with a description
    (the field's ``doc``) and an ``allowedPattern`` (:attr:`PATTERNS`, by field name), which is
    what keeps a value from becoming shell code when Run Command substitutes it."""

    PATTERNS: ClassVar[dict[str, str]] = {}

    @classmethod
    def document_parameters(cls) -> dict[str, tuple[str, str]]:
        """Wire name -> (description, allowedPattern), in declaration order."""
        return {
            f.metadata["key"]: (f.metadata["doc"], cls.PATTERNS[f.name])
            for f in dataclasses.fields(cls)
        }

    def command_parameters(self) -> dict[str, list[str]]:
        """SendCommand's ``Parameters``: every value a one-element list of a string."""
        return {wire: [str(value)] for wire, value in self.to_properties().items()}


_COMMON_PATTERNS = {
    "region": r"^[a-z]{2}(-[a-z]+)+-[0-9]$",
    "run_id": r"^[a-z0-9][a-z0-9-]{0,62}$",
    "nodes": _INT,
    "procs_per_node": _INT,
    "rendezvous_port": _INT,
    "neuron_comm_port": _INT,
    "results_uri": _RESULTS_URI,
    "compile_cache_dir": _PATH,
    "expected_neuron_devices": _INT,
    "expected_efa_devices": _INT,
    "suite_args": r"^[A-Za-z0-9 ._=,:/-]{0,2000}$",
    "execution_timeout": _INT,
}


@dataclass(frozen=True)
class NodeCommand(_DocumentParameters):
    """The node document's parameters (the suite on one node, under torchrun)."""

    DESCRIPTION: ClassVar[str] = "acceptance node command"
    PATTERNS: ClassVar[dict[str, str]] = {
        **_COMMON_PATTERNS,
        "image_uri": r"^[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+"
        r"(:[A-Za-z0-9._-]{1,128}|@sha256:[a-f0-9]{64})$",
        "node_rank": _INT,
        "local_address": _IPV4,
        "rendezvous_host": _IPV4,
    }

    image_uri: str = _param(
        "ImageUri", "Image of the acceptance suite (ECR repository URI with tag or digest)"
    )
    region: str = _param("Region", "Region of the image registry and the results bucket")
    run_id: str = _param("RunId", "Run id: S3 prefix, torchrun rendezvous id, container name")
    node_rank: int = _param("NodeRank", "Rank of this node (0 hosts the rendezvous)")
    local_address: str = _param(
        "LocalAddress", "Private IPv4 address of this node (orders the c10d rendezvous)"
    )
    nodes: int = _param("Nodes", "Number of nodes in the run")
    procs_per_node: int = _param("ProcsPerNode", "Worker processes per node")
    rendezvous_host: str = _param("RendezvousHost", "Private IPv4 address of node 0")
    rendezvous_port: int = _param(
        "RendezvousPort", "TCP port of the torchrun c10d rendezvous on node 0"
    )
    neuron_comm_port: int = _param("NeuronCommPort", "TCP port of NEURON_RT_ROOT_COMM_ID on node 0")
    results_uri: str = _param(
        "ResultsUri", "s3:// prefix of the run; this node uploads to <ResultsUri><NodeRank>/"
    )
    compile_cache_dir: str = _param(
        "CompileCacheDir",
        "Persistent Neuron compile cache directory on the node (FSx when mounted)",
    )
    expected_neuron_devices: int = _param(
        "ExpectedNeuronDevices", "Neuron devices (/dev/neuron*) the node must have"
    )
    expected_efa_devices: int = _param(
        "ExpectedEfaDevices", "EFA devices (/dev/infiniband/uverbs*) the node must have"
    )
    suite_args: str = _param(
        "SuiteArgs", "Extra arguments of 'cdk_trn_runtime.suite run' (peaks, thresholds, sizes)"
    )
    execution_timeout: int = _param("ExecutionTimeout", "Seconds before the node's run is stopped")


def _node_doc(field_name: str) -> str:
    [found] = [f for f in dataclasses.fields(NodeCommand) if f.name == field_name]
    return str(found.metadata["doc"])


@dataclass(frozen=True)
class SlurmCommand(_DocumentParameters):
    """The Slurm document's parameters (the run as a Slurm job, from the controller; or, with
    ``DrainList``, a drain-only command)."""

    DESCRIPTION: ClassVar[str] = "acceptance Slurm command"
    PATTERNS: ClassVar[dict[str, str]] = {
        **_COMMON_PATTERNS,
        "partition": r"^[a-z][a-z0-9_]{0,39}$",
        "job_user": r"^[a-z_][a-z0-9_-]{0,31}$",
        "controller_container": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
        "runs_dir": _PATH,
        "drain_list": _LIST_STEM,
        "drain_for": "^(" + "|".join(DRAIN_FOR) + ")$",
        "node_list": _LIST_STEM,
    }

    region: str = _param("Region", _node_doc("region"))
    run_id: str = _param("RunId", _node_doc("run_id"))
    nodes: int = _param("Nodes", _node_doc("nodes"))
    procs_per_node: int = _param("ProcsPerNode", _node_doc("procs_per_node"))
    rendezvous_port: int = _param("RendezvousPort", _node_doc("rendezvous_port"))
    neuron_comm_port: int = _param("NeuronCommPort", _node_doc("neuron_comm_port"))
    compile_cache_dir: str = _param("CompileCacheDir", _node_doc("compile_cache_dir"))
    expected_neuron_devices: int = _param(
        "ExpectedNeuronDevices", _node_doc("expected_neuron_devices")
    )
    expected_efa_devices: int = _param("ExpectedEfaDevices", _node_doc("expected_efa_devices"))
    suite_args: str = _param("SuiteArgs", _node_doc("suite_args"))
    execution_timeout: int = _param("ExecutionTimeout", _node_doc("execution_timeout"))
    partition: str = _param("Partition", "Slurm partition the job runs in")
    job_user: str = _param("JobUser", "User the job is submitted as")
    controller_container: str = _param(
        "ControllerContainer", "Docker container running slurmctld on the controller"
    )
    runs_dir: str = _param(
        "RunsDir", "Directory on the shared file system that holds one directory per run"
    )
    results_uri: str = _param(
        "ResultsUri",
        "s3:// prefix of the run; the results of node index N go to <ResultsUri>N/",
    )
    drain_list: str = _param(
        "DrainList",
        "Empty for a run; else only drain the Slurm nodes whose addresses <ResultsUri><DrainList>"
        ".addresses lists (one a line), and write what Slurm says of each after the drain to "
        "<ResultsUri><DrainList>.report",
    )
    drain_for: str = _param(
        "DrainFor",
        "Why DrainList is drained: replace (below threshold), refresh (an image change), "
        "refresh-if-idle (the same, none drained unless one is idle), refresh-by-reaper (every "
        "one for the reaper, none unless the reaper has the refresh rule)",
    )
    node_list: str = _param(
        "NodeList",
        "Empty: any idle nodes of the partition; else the run's nodes, whose addresses "
        "<ResultsUri><NodeList>.addresses lists (one a line), each of which must be idle",
    )
