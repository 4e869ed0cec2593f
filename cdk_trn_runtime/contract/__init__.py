"""Every name the constructs and the runtime must agree on, defined once.

The constructs (``cdk_trn``) import this module; the runtime reads it where it runs (every
runtime asset ships it). Standard library only.

The messages that cross from the constructs to the runtime are typed, one module each, on the
base in ``message.py``: ``preflight`` (and ``CapacityKind``), ``eif`` (the enclave image build),
``cluster_document`` (the Slurm cluster document), ``boot`` (the ``CDK_TRN_*`` boot variables of
each instance role) and ``deploy_time`` (the custom-resource functions' settings).
"""

from __future__ import annotations

#: Tag on every resource of a cluster, value the cluster's name; the acceptance handler sends
#: commands only to instances that carry it with the expected value.
CLUSTER_TAG = "cdk-trn:cluster"
#: How long a trn2 node takes from launch to ready (the DLAMI's boot, device checks, the FSx
#: mount, the training image's pull, slurmd's registration). An estimate, nothing here has run on
#: AWS: it bounds node replacements at deploy (the boot's fail_retryable, the acceptance run's
#: replacement round) to what fits the signal timeout and CloudFormation's hour.
NODE_BOOT_MINUTES = 15
#: Exit status of the acceptance document when the job would wait behind users' jobs.
ACCEPTANCE_BUSY_EXIT = 71
#: The Slurm drain reason of a node the acceptance run refreshes after an image change: drained so
#: no new job lands on it, then replaced (marked Unhealthy in its Auto Scaling group) once Slurm
#: says it is drained without a job, by the acceptance handler or, for a node that was busy, by
#: the controller's reaper (``slurm/scripts/reaper.sh``, from contract.sh).
REFRESH_DRAIN_REASON = "cdk-trn: image refresh"
#: Tag on the enclave vault's hosts (value: the vault's path), so nodes can find them.
VAULT_DISCOVERY_TAG = "cdk-trn:enclave-vault"

# --- Signed checkpoints: where nodes find the enclave vault, what auditors read -------------------

#: SSM parameter (String) holding the URL of the enclave vault that serves a cluster,
#: ``http://<vault host private IP>:<port>``: created by the vault stack, written by each vault
#: host when it starts, readable by that cluster's node role alone. Its name derives from the
#: cluster's name only, so the cluster stack grants it without referring to the vault stack.
VAULT_URL_PARAMETER_FORMAT = "/cdk-trn/{cluster}/vault-url"
#: The parameter's value until a vault host has published its address (not a URL).
VAULT_URL_PENDING = "pending: no vault host has published its address yet"


def vault_url_parameter(cluster_name: str) -> str:
    """The name of the SSM parameter holding the vault URL of the cluster ``cluster_name``."""
    return VAULT_URL_PARAMETER_FORMAT.format(cluster=cluster_name)


#: The SSM documents the cluster stack creates for researchers (``cdk_trn.researcher_access``,
#: ``cdk_trn_runtime/cli/documents.py``): Command documents by action, and the shell's Session
#: document. ``completions`` is the read-only job completion log (``cdk-trn cost`` reads it).
RESEARCHER_ACTIONS = ("submit", "queue", "logs", "status", "cancel", "completions", "relay")
RESEARCHER_SHELL = "shell"


def researcher_document(cluster_name: str, action: str) -> str:
    """The name of the cluster's SSM document for ``action`` (one of
    :data:`RESEARCHER_ACTIONS` or :data:`RESEARCHER_SHELL`)."""
    if action not in (*RESEARCHER_ACTIONS, RESEARCHER_SHELL):
        raise ValueError(f"no researcher document for {action!r}")
    return f"cdk-trn-{cluster_name}-{action}"


#: The read-only document that returns Slurm's job completion log (cost reports).
def job_completions_document(cluster_name: str) -> str:
    return researcher_document(cluster_name, "completions")


#: Environment of training jobs: the vault URL (overrides the SSM parameter), the run id signed
#: into each manifest (default: the Slurm job id) and the cluster's name (default: the node
#: environment file's, written by the node bootstrap).
ENV_VAULT_URL = "CDK_TRN_VAULT_URL"
ENV_RUN_ID = "CDK_TRN_RUN_ID"
ENV_CLUSTER = "CDK_TRN_CLUSTER"
#: Optional: the SHA-256 (hex) of the vault's public key (DER) every signature of a job must be
#: made with, e.g. ``cdk-trn vault-key``'s attested key; without it, the key the vault publishes
#: when the job first signs.
ENV_VAULT_KEY_SHA256 = "CDK_TRN_VAULT_KEY_SHA256"

#: Vault stack outputs an auditor (``cdk-trn vault-key`` / ``cdk-trn verify``) reads.
OUTPUT_VAULT_IMAGE_PCR0 = "VaultImagePcr0"  # PCR0 (SHA-384) of the enclave image
OUTPUT_VAULT_KEY_ARN = "VaultKeyArn"  # the KMS key the enclave's signing key comes from
OUTPUT_VAULT_URL_PARAMETER = "VaultUrlParameter"  # the SSM parameter above
#: Cluster stack output: the cluster's name, signed into every manifest as ``cluster``.
OUTPUT_CLUSTER_NAME = "ClusterName"

#: Derived by the acceptance handler when the run's price is known: cost per million tokens.
FIGURE_USD_PER_MILLION_TOKENS = "train_usd_per_million_tokens"
#: Figures of an acceptance run: the suite reports them (``cdk_trn_runtime.suite.summary``), the
#: handler derives ``gemm_bf16_tflops_per_chip`` and returns them, the construct exports them.
#: name -> (unit, description).
FIGURES: dict[str, tuple[str, str]] = {
    "gemm_bf16_tflops_per_chip": (
        "TFLOPS",
        "BF16 GEMM TFLOPS per chip (worst device x devices per chip)",
    ),
    "gemm_bf16_tflops_per_device": ("TFLOPS", "BF16 GEMM TFLOPS per device (worst rank)"),
    "gemm_fraction_of_peak": ("fraction", "BF16 GEMM throughput as a fraction of the catalog peak"),
    "gemm_max_rel_error": ("relative error", "largest BF16 GEMM error against float64"),
    "hbm_copy_gbps": ("GB/s", "device memory copy bandwidth (worst rank)"),
    "hbm_fraction_of_peak": ("fraction", "device copy bandwidth as a fraction of the catalog peak"),
    "allreduce_algbw_gbps": ("GB/s", "all-reduce algorithm bandwidth at the largest size"),
    "allreduce_busbw_gbps": ("GB/s", "all-reduce bus bandwidth at the largest size (worst rank)"),
    "allgather_algbw_gbps": ("GB/s", "all-gather algorithm bandwidth at the largest size"),
    "allgather_busbw_gbps": ("GB/s", "all-gather bus bandwidth at the largest size (worst rank)"),
    "train_tokens_per_s": ("tokens/s", "training throughput over all ranks"),
    "train_usd_per_million_tokens": (
        "USD",
        "training cost per million tokens at the measured throughput (nodes x node price)",
    ),
    "train_step_ms": ("ms", "steady-state training step time (slowest rank)"),
    "train_loss_drop_fraction": ("fraction", "training loss drop"),
    "compile_seconds": ("s", "graph compile time (slowest rank)"),
    "graph_compilations_after_warmup": (
        "count",
        "torch.compile graph compilations (recompiles) after warm-up",
    ),
    "new_compilations_with_warm_cache": ("count", "new compilations with a warm cache"),
    "compile_cache_hits": ("count", "compile-cache hits in the measured training (all ranks)"),
    "compile_cache_misses": ("count", "compile-cache misses in the measured training (all ranks)"),
    "compile_cache_hit_rate": ("fraction", "compile-cache hit rate (worst rank)"),
    "world_size": ("ranks", "ranks in the run"),
    "nodes": ("nodes", "nodes in the run"),
}


# --- Slurm: names the scheduler construct, the node and controller scripts, the local cluster and
# the ``cdk-trn`` command agree on ------------------------------------------------------------

#: Slurm cluster name written into slurm.conf when none is given.
SLURM_DEFAULT_CLUSTER_NAME = "trn"
#: The non-root user jobs run as (same uid on controller, nodes and the local cluster's jobs).
SLURM_JOB_USER = "trn"
SLURM_JOB_UID = 2000
#: The Slurm daemons' user (SlurmUser ``slurm``) in the training image, pinned by its Dockerfile
#: (64030: the uid Debian's Slurm packages give slurm, their preinst checks it; the image build
#: creates the user first and fails if the package changed it). slurmctld runs power
#: saving's programs as this uid; the controller boot lets it reach instance metadata
#: (controller_bootstrap.sh SLURM_DAEMON_UID, imds_guard.sh).
SLURM_DAEMON_USER = "slurm"
SLURM_DAEMON_UID = 64030
#: Docker containers that run the Slurm daemons from the bundled training image.
SLURM_CONTROLLER_CONTAINER = "cdk-trn-slurmctld"
SLURM_NODE_CONTAINER = "cdk-trn-slurmd"
#: The name every Slurm daemon uses for the controller (SlurmctldAddr, slurmd --conf-server): the
#: nodes' and the controller's /etc/hosts map it to the controller's current address.
SLURM_CONTROLLER_ADDR = "cdk-trn-slurmctld"
#: slurmctld's port (the Slurm default) and slurmd's.
SLURMCTLD_PORT = 6817
SLURMD_PORT = 6818
#: Rendezvous ports torchrun may use; reserved on every node (net.ipv4.ip_local_reserved_ports).
RENDEZVOUS_PORTS = (29400, 29499)
#: Paths under the shared file system's mount (``/fsx`` on the cloud, a local directory locally).
SHARED_SLURM_STATE = "slurm/state"  # StateSaveLocation: survives a controller replacement
SHARED_HOMES = "home"  # /fsx/home/<user>: scripts and job logs
SHARED_JOB_LOGS = "slurm/logs"  # job completion log and per-job logs
SHARED_CHECKPOINTS = "checkpoints"
SHARED_COMPILE_CACHE = "neuron-compile-cache"

#: Cluster stack outputs the ``cdk-trn`` command reads (keys of CloudFormation ``Outputs``).
OUTPUT_CONTROLLER_GROUP = "SlurmControllerGroup"  # Auto Scaling group of the controller
OUTPUT_NODE_GROUP = "SlurmNodeGroup"  # Auto Scaling group of the Trainium nodes
OUTPUT_JOB_USER = "SlurmJobUser"
OUTPUT_SHARED_ROOT = "SlurmSharedRoot"  # the shared file system's mount path, e.g. /fsx
OUTPUT_SLURM_CLUSTER = "SlurmClusterName"
#: The bucket ``cdk-trn submit --code`` uploads code archives to (under code/), published by the
#: scheduler's ``ResearcherAccess.allow_code_archives`` beside the outputs above.
OUTPUT_CODE_ARCHIVE_BUCKET = "SlurmCodeBucket"
#: The default app's storage stack's dataset bucket: where ``submit --code`` falls back to (the
#: ``<prefix>-storage`` stack beside ``<prefix>-cluster``) when the cluster stack has no
#: ``OUTPUT_CODE_ARCHIVE_BUCKET`` (deployed before it existed).
OUTPUT_CODE_BUCKET = "DatasetBucketName"

#: The environment file the Slurm node scripts (health check, prolog, epilog) read: shell
#: ``NAME=value`` lines with the names below. ``CDK_TRN_SLURM_ENV`` overrides its path.
SLURM_NODE_ENV_FILE = "/etc/cdk-trn/slurm-node.env"
SLURM_ENV_EXPECTED_NEURON = "CDK_TRN_EXPECTED_NEURON_DEVICES"  # /dev/neuron* count; 0 = CPU node
SLURM_ENV_EXPECTED_EFA = "CDK_TRN_EXPECTED_EFA_DEVICES"  # /sys/class/infiniband/* count
SLURM_ENV_SHARED_ROOT = "CDK_TRN_SHARED_ROOT"  # the shared file system's mount path
SLURM_ENV_SHARED_FS_TYPE = "CDK_TRN_SHARED_FS_TYPE"  # e.g. lustre; empty: a writable directory
SLURM_ENV_DEVICE_ROOT = "CDK_TRN_DEVICE_ROOT"  # prefix of /dev and /sys (tests, local cluster)
#: Prefix of the drain reasons the node scripts set, so operators (and the CLI) can tell them apart.
SLURM_DRAIN_REASON_PREFIX = "cdk-trn:"
#: Set to 1 on the cloud (node_bootstrap.sh): a node drained for a hardware reason (Neuron or EFA
#: device count) marks its instance Unhealthy in its Auto Scaling group, which replaces it.
SLURM_ENV_REPLACE_ON_HARDWARE_FAILURE = "CDK_TRN_REPLACE_ON_HARDWARE_FAILURE"
SLURM_ENV_INSTANCE_ID = "CDK_TRN_INSTANCE_ID"  # the instance to mark Unhealthy
SLURM_ENV_REGION = "CDK_TRN_REGION"  # its region

# --- Metrics: what the publishers on the instances send and the dashboard (cdk_trn.observability)
# shows. Every metric carries one dimension, the cluster's name.
METRIC_DIMENSION_CLUSTER = "Cluster"
#: Slurm node states and queue depth, from sinfo/squeue in the controller's container
#: (cdk_trn_runtime/monitoring/slurm_metrics.sh, every minute).
METRICS_NAMESPACE_SLURM = "cdk-trn/Slurm"
SLURM_NODE_STATE_METRICS = (
    "NodesIdle",
    "NodesAllocated",
    "NodesMixed",
    "NodesDrained",
    "NodesDown",
)
SLURM_JOB_METRICS = ("JobsRunning", "JobsPending")
#: NeuronCore utilization (percent, mean over the node's cores), device memory in use (bytes) from
#: neuron-monitor, and EFA traffic and errors (bytes or counts since the last sample) from the EFA
#: devices' hardware counters (cdk_trn_runtime/monitoring/node_metrics.sh, every minute).
METRICS_NAMESPACE_NODE = "cdk-trn/Node"
NODE_NEURON_METRICS = ("NeuronCoreUtilization", "NeuronDeviceMemoryUsed")
#: EFA hardware counters (/sys/class/infiniband/<dev>/ports/1/hw_counters/<counter>) -> metric.
NODE_EFA_COUNTERS = {"tx_bytes": "EfaTxBytes", "rx_bytes": "EfaRxBytes", "rx_drops": "EfaRxDrops"}
#: The acceptance run's figures (FIGURES' names as metric names) and whether it passed (1 or 0).
METRICS_NAMESPACE_ACCEPTANCE = "cdk-trn/Acceptance"
ACCEPTANCE_PASSED_METRIC = "Passed"

# --- Deploy-time custom resources: the construct (cdk_trn._provider) configures the one function
# of each custom resource through these environment variables; the driver
# (cdk_trn_runtime.deploy_time.driver) reads them.
#: The handler module, e.g. ``cdk_trn_runtime.acceptance.handler`` (its ``on_event`` and, if it
#: waits, ``is_complete``).
DEPLOY_TIME_ENV_HANDLER = "CDK_TRN_HANDLER_MODULE"
#: Seconds between two ``is_complete`` polls.
DEPLOY_TIME_ENV_QUERY_INTERVAL = "CDK_TRN_QUERY_INTERVAL_SECONDS"
#: Seconds from the first invocation until the wait fails with a timeout.
DEPLOY_TIME_ENV_TOTAL_TIMEOUT = "CDK_TRN_TOTAL_TIMEOUT_SECONDS"
#: What the handler does, for status reasons ("acceptance run").
DEPLOY_TIME_ENV_PURPOSE = "CDK_TRN_PURPOSE"
#: The word the driver logs with every FAILED answer; a metric filter on the function's log group
#: counts them (the driver answers failures itself, so Lambda's Errors metric never sees them).
DEPLOY_TIME_FAILURE_MARK = "CDK_TRN_CUSTOM_RESOURCE_FAILED"
#: Namespace of those counts (one metric per function, named after it).
METRICS_NAMESPACE_DEPLOY_TIME = "cdk-trn/DeployTime"

# --- Cost (issue 22): what ``cdk-trn cost`` reads and the stack publishes -------------------------
#: Cluster stack output: one node's price per hour in US dollars (the ``hourly_price`` prop or the
#: catalog's estimate); absent when unknown.
OUTPUT_NODE_HOURLY_PRICE = "NodeHourlyPrice"
#: The read-only SSM document that pages through the job completion log on the controller (and
#: lists the running jobs on the first page): the researcher document ``completions``
#: (:func:`job_completions_document`); its name is also the cluster stack output below. Its
#: commands are ``cdk_trn_runtime.cli.cost.job_completions_commands``; its parameters
#: ``DOC_PARAM_SINCE`` (``YYYY-MM-DDTHH:MM:SS`` or empty) and ``DOC_PARAM_OFFSET`` (lines
#: already read).
OUTPUT_DOC_JOB_COMPLETIONS = "SlurmJobCompletionsDocument"
DOC_PARAM_SINCE = "Since"
DOC_PARAM_OFFSET = "Offset"
#: Environment of training jobs: one node's price per hour (the trainer reports tokens per dollar).
ENV_HOURLY_PRICE = "CDK_TRN_HOURLY_PRICE"
