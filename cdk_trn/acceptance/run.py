"""AcceptanceRun: the deploy-time proof that a new cluster computes, communicates and trains.

Owns the custom resource (cdk-trn's one deploy-time provider, ``cdk_trn._provider``, with the
on-event and is-complete handlers of ``cdk_trn_runtime.acceptance.handler``), the SSM document that
launches the suite (``document.py``), the results bucket (unless one is given), the permissions
the launcher needs (write the results) and one stack output per exported figure. The resource
runs after the cluster's Auto Scaling group is complete (all health signals received) and, with
Slurm, after the controller's, re-runs on Update only when the image or the run configuration
changed, and never blocks a stack delete.

Two launchers. With a ``SlurmScheduler`` the run is a Slurm job like any user's (one launcher for
the deploy-time run and users' jobs): the document runs on the controller only, submits
``cdk_trn_runtime/acceptance/acceptance.sbatch`` and uploads the results from the shared file
system. Without one the document runs ``cdk_trn_runtime/acceptance/run_suite.sh`` on every node,
which starts the container under torchrun itself.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk_trn._provider import SERVICE_TIMEOUT_MARGIN, DeployTimeProvider
from cdk_trn._resources import (
    access_log_bucket,
    allow_cloudwatch_logs,
    deliver_access_logs,
    encrypted_bucket,
    log_retention_period,
    stateful_removal_policy,
    validate_access_log_bucket,
    validate_access_log_prefix,
)
from cdk_trn.acceptance.document import DOCUMENT_PARAMETERS, acceptance_document
from cdk_trn.acceptance.image import BoundNeuronTrainingImage, NeuronTrainingImage
from cdk_trn.cluster import TrainiumCluster
from cdk_trn.compliance import acknowledge_regulated, acknowledge_wildcards
from cdk_trn.errors import CdkTrnError, invalid
from cdk_trn_runtime.contract import (
    CLUSTER_TAG,
    FIGURE_USD_PER_MILLION_TOKENS,
    FIGURES,
    SHARED_HOMES,
    SLURM_CONTROLLER_CONTAINER,
)
from cdk_trn_runtime.contract.acceptance import (
    CONTROL_DIR,
    LIST_SUFFIX,
    AcceptanceReport,
    AcceptanceRunProperties,
    Check,
    NodeCommand,
    key_of,
)

if TYPE_CHECKING:  # cdk_trn.scheduler imports cdk_trn.acceptance.image: no import at load time.
    from cdk_trn.scheduler import SlurmScheduler

HANDLER_MODULE = "cdk_trn_runtime.acceptance.handler"
#: Bump when the meaning of the run changes without any property changing (forces a re-run).
RUN_CONFIG_VERSION = 2
#: With Slurm, each run's directory is ``<shared root>/home/<job user>/<RUNS_SUBDIR>/<run id>``:
#: the job script, the job's log and the results, on the shared file system.
RUNS_SUBDIR = "acceptance"
#: Where the results bucket's server access logs go in their bucket, by default.
RESULTS_ACCESS_LOG_PREFIX = "acceptance-results/"
#: CloudFormation waits at most one hour for a custom resource (ServiceTimeout is 1-3600 s); the
#: provider keeps 5 minutes of it so that its own timeout message, not a generic one, ends a run.
MAX_TOTAL_TIMEOUT = cdk.Duration.hours(1).minus(SERVICE_TIMEOUT_MARGIN)
MIN_TOTAL_TIMEOUT = cdk.Duration.minutes(10)
#: Time kept back from the provider's total timeout so the handler's own deadline (naming the
#: nodes still running) fires before the provider's.
_DEADLINE_MARGIN_SECONDS = 120

DEFAULT_FIGURES: tuple[str, ...] = (
    "gemm_bf16_tflops_per_chip",
    "gemm_fraction_of_peak",
    "allreduce_busbw_gbps",
    "train_tokens_per_s",
    "compile_seconds",
)


@dataclass(frozen=True)
class AcceptanceThresholds:
    """What the cluster must reach for the deploy to succeed.

    Fractions are of the catalog's per-chip peaks (``InstanceSpec.peak_bf16_tflops_per_chip``,
    ``hbm_gbps_per_chip``) divided over the chip's devices, since the suite measures per device
    (one rank per logical NeuronCore). The suite checks all of them; the handler re-checks the
    figure-based ones on the summary.
    """

    min_gemm_fraction: float = 0.5
    """Best BF16 GEMM throughput / peak, worst device. Default: 0.5."""
    min_hbm_fraction: float = 0.5
    """Device copy bandwidth / peak HBM bandwidth, worst device. Default: 0.5."""
    peak_collective_busbw_gbps: float | None = None
    """Bus bandwidth per device the collectives are compared with, GB/s. Default: none (the
    reachable bandwidth depends on the algorithm and node count; the figures are reported)."""
    min_collective_fraction: float = 0.25
    """Bus bandwidth at the largest size / ``peak_collective_busbw_gbps``. Default: 0.25."""
    min_allreduce_busbw_gbps: float | None = None
    """Absolute all-reduce bus bandwidth floor at the largest size, GB/s. Default: none."""
    min_train_tokens_per_s: float | None = None
    """Training throughput floor over all ranks. Default: none (reported only)."""
    max_compile_seconds: float | None = None
    """Ceiling on the slowest rank's compile time. Default: none (reported only: a cold compile
    cache makes the first deploy much slower than the next)."""
    max_compilations_after_warmup: int = 0
    """Graph compilations allowed in steady-state training steps. Default: 0."""
    max_new_compilations_with_warm_cache: int = 0
    """New compile-cache entries allowed once the cache is warm. Default: 0."""
    gemm_rtol: float = 1e-2
    """Allowed BF16 GEMM error against float64 (normwise relative). Default: 0.01."""
    min_loss_drop: float = 0.05
    """Fraction by which the training loss must fall. Default: 0.05."""

    def validate(self) -> None:
        for name in (
            "min_gemm_fraction",
            "min_hbm_fraction",
            "min_collective_fraction",
            "min_loss_drop",
        ):
            value = getattr(self, name)
            if _not_number(value) or not 0 <= value <= 1:
                raise invalid(f"thresholds.{name}", value, "a fraction from 0 to 1")
        for name in (
            "peak_collective_busbw_gbps",
            "min_allreduce_busbw_gbps",
            "min_train_tokens_per_s",
            "max_compile_seconds",
        ):
            value = getattr(self, name)
            if value is not None and (_not_number(value) or not 0 < value < float("inf")):
                raise invalid(f"thresholds.{name}", value, "a positive number or None")
        if _not_number(self.gemm_rtol) or not 0 < self.gemm_rtol < 1:
            raise invalid("thresholds.gemm_rtol", self.gemm_rtol, "a number between 0 and 1")
        for name in ("max_compilations_after_warmup", "max_new_compilations_with_warm_cache"):
            value = getattr(self, name)
            if _not_int(value) or value < 0:
                raise invalid(f"thresholds.{name}", value, "an integer >= 0")

    def checks(self) -> tuple[Check, ...]:
        """The figure checks the handler repeats on the summary."""
        out = [
            _check("gemm_fraction_of_peak", minimum=self.min_gemm_fraction),
            _check("hbm_fraction_of_peak", minimum=self.min_hbm_fraction),
            _check("graph_compilations_after_warmup", maximum=self.max_compilations_after_warmup),
        ]
        if self.min_allreduce_busbw_gbps is not None:
            out.append(_check("allreduce_busbw_gbps", minimum=self.min_allreduce_busbw_gbps))
        if self.min_train_tokens_per_s is not None:
            out.append(_check("train_tokens_per_s", minimum=self.min_train_tokens_per_s))
        if self.max_compile_seconds is not None:
            out.append(_check("compile_seconds", maximum=self.max_compile_seconds))
        return tuple(out)

    def suite_args(self, peak_bf16_tflops: float, peak_hbm_gbps: float) -> list[str]:
        """``cdk_trn_runtime.suite run`` flags for these thresholds and the per-device peaks."""
        args = [
            "--peak-bf16-tflops", _flag_number(peak_bf16_tflops),
            "--peak-hbm-gbps", _flag_number(peak_hbm_gbps),
            "--min-gemm-fraction", _flag_number(self.min_gemm_fraction),
            "--min-hbm-fraction", _flag_number(self.min_hbm_fraction),
            "--min-collective-fraction", _flag_number(self.min_collective_fraction),
            "--gemm-rtol", _flag_number(self.gemm_rtol),
            "--min-loss-drop", _flag_number(self.min_loss_drop),
            "--max-compilations-after-warmup", str(self.max_compilations_after_warmup),
            "--max-new-compilations-with-warm-cache",
            str(self.max_new_compilations_with_warm_cache),
        ]  # fmt: skip
        if self.peak_collective_busbw_gbps is not None:
            args += ["--peak-collective-busbw-gbps", _flag_number(self.peak_collective_busbw_gbps)]
        return args


@dataclass(frozen=True)
class AcceptanceWorkload:
    """How much work each check does (the suite's own defaults; minutes on a trn2.48xlarge)."""

    gemm_sizes: tuple[int, ...] = (2048, 4096, 8192)
    """Square BF16 GEMM sizes. Default: 2048, 4096, 8192."""
    gemm_iterations: int = 10
    """Timed GEMMs per size. Default: 10."""
    copy_bytes: int = 1 << 30
    """Device copy buffer. Default: 1 GiB."""
    copy_iterations: int = 10
    """Timed device copies. Default: 10."""
    collective_sizes: tuple[int, ...] = (1 << 20, 1 << 24, 1 << 28, 1 << 30)
    """All-reduce / all-gather buffer sizes in bytes. Default: 1 MiB, 16 MiB, 256 MiB, 1 GiB."""
    collective_iterations: int = 5
    """Timed collectives per size. Default: 5."""
    train_steps: int = 20
    """Training steps, warm-up included. Default: 20."""
    warmup_steps: int = 3
    """Steps before graph compilations must stop. Default: 3."""
    extra_args: tuple[str, ...] = field(default=())
    """More ``cdk_trn_runtime.suite run`` arguments, word by word (e.g. ``("--layers", "8")``).
    Default: none."""

    def validate(self) -> None:
        if not self.gemm_sizes or any(_not_int(v) or not 64 <= v <= 65536 for v in self.gemm_sizes):
            raise invalid("workload.gemm_sizes", self.gemm_sizes, "integers from 64 to 65536")
        if not self.collective_sizes or any(
            _not_int(v) or not 4 <= v <= 16 << 30 for v in self.collective_sizes
        ):
            raise invalid(
                "workload.collective_sizes", self.collective_sizes, "integers from 4 B to 16 GiB"
            )
        if _not_int(self.copy_bytes) or not 1 << 20 <= self.copy_bytes <= 64 << 30:
            raise invalid("workload.copy_bytes", self.copy_bytes, "an integer from 1 MiB to 64 GiB")
        for name in ("gemm_iterations", "copy_iterations", "collective_iterations"):
            value = getattr(self, name)
            if _not_int(value) or not 1 <= value <= 1000:
                raise invalid(f"workload.{name}", value, "an integer from 1 to 1000")
        if _not_int(self.train_steps) or not 2 <= self.train_steps <= 10000:
            raise invalid("workload.train_steps", self.train_steps, "an integer from 2 to 10000")
        if _not_int(self.warmup_steps) or not 1 <= self.warmup_steps < self.train_steps:
            raise invalid(
                "workload.warmup_steps", self.warmup_steps, "an integer from 1 to train_steps - 1"
            )
        pattern = re.compile(r"^[A-Za-z0-9._=,:/-]+$")
        for word in self.extra_args:
            if not isinstance(word, str) or not pattern.match(word):
                raise invalid("workload.extra_args", word, "words of A-Z a-z 0-9 . _ = , : / -")

    def suite_args(self) -> list[str]:
        return [
            "--gemm-sizes", ",".join(str(v) for v in self.gemm_sizes),
            "--gemm-iterations", str(self.gemm_iterations),
            "--copy-size", str(self.copy_bytes),
            "--copy-iterations", str(self.copy_iterations),
            "--collective-sizes", ",".join(str(v) for v in self.collective_sizes),
            "--collective-iterations", str(self.collective_iterations),
            "--train-steps", str(self.train_steps),
            "--warmup-steps", str(self.warmup_steps),
            *self.extra_args,
        ]  # fmt: skip


class AcceptanceRun(Construct):
    """Runs the acceptance suite on every node of ``cluster`` during ``cdk deploy``.

    With a ``SlurmScheduler`` (the default app's), the run is a Slurm job: the deploy submits it
    from the controller (``sbatch --parsable -N <nodes> --exclusive`` as the job user, through
    SSM to the controller only), so the deploy-time run and users' jobs share one launcher, one
    image and one job environment, and Slurm owns the nodes while it runs (no user job can land
    on them, and the acceptance job cannot start on a node Slurm drained). Without a scheduler
    (``-c scheduler=none``) there is no slurmd to launch anything, so the run keeps the SSM
    launcher: the document runs the container under torchrun on every node itself.

    :param cluster: the ``TrainiumCluster`` to prove.
    :param scheduler: the ``SlurmScheduler`` serving ``cluster``; the run becomes a Slurm job.
        Default: the scheduler of ``cluster`` when one exists in the app (create it first), else
        none (the SSM launcher).
    :param image: the suite's image, without a scheduler. Default:
        ``NeuronTrainingImage.bundled()``. With a scheduler the job runs in the scheduler's image
        (``SlurmScheduler(image=...)``), so giving one here is an error.
    :param thresholds: pass/fail limits. Default: ``AcceptanceThresholds()``.
    :param workload: sizes and steps of the checks. Default: ``AcceptanceWorkload()``.
    :param results_bucket: where per-rank results and the summary go. Default: a new bucket
        (SSE-KMS with ``encryption_key``, TLS only, no public access, versioned, access-logged,
        retained, expiring results after ``results_retention``).
    :param results_prefix: key prefix of the runs in the bucket. Default: ``acceptance-runs/``.
    :param results_retention: lifetime of results in a bucket this construct creates.
        Default: 365 days.
    :param access_log_bucket: where the results bucket this construct creates sends its S3
        server access logs, for example the storage stack's
        ``TrainingBuckets.access_log_bucket``. S3 requires the destination to be in the same
        Region and account, encrypted with SSE-S3 (not SSE-KMS), without Object Lock default
        retention or Requester Pays; with ACLs disabled its bucket policy must admit
        ``logging.s3.amazonaws.com`` for ``access_log_prefix``: a bucket of this stack gets that
        statement from this construct, any other bucket's owner adds it
        (``TrainingBuckets.admit_access_logs(access_log_prefix)``). Not with ``results_bucket``
        (a bucket given is logged, or not, by its owner). Default: a new SSE-S3 bucket of this
        construct, retained, logs kept as long as the results.
    :param access_log_prefix: key prefix of the results bucket's access logs in that bucket.
        Default: ``acceptance-results/`` (:data:`RESULTS_ACCESS_LOG_PREFIX`).
    :param encryption_key: KMS key of the results bucket this construct creates and of the
        handlers' log groups. Default: a new key with rotation, retained.
    :param total_timeout: how long the deploy waits for the run, 10 to 55 minutes
        (CloudFormation waits at most an hour for a custom resource, and the provider keeps 5
        minutes for a clear timeout message). Default: 55 minutes.
    :param query_interval: how often the run is polled. Default: 30 seconds.
    :param procs_per_node: worker processes per node. Default: one per logical NeuronCore
        (``neuron_cores / default_logical_nc_config`` of the catalog entry).
    :param rendezvous_port: torchrun c10d rendezvous port on node 0. Default: 29400.
    :param neuron_comm_port: ``NEURON_RT_ROOT_COMM_ID`` port on node 0. Default: 46820.
    :param exported_figures: figures returned as attributes and stack outputs.
        Default: ``DEFAULT_FIGURES`` (GEMM TFLOPS per chip and fraction of peak, all-reduce bus
        bandwidth, training tokens/s, compile seconds).
    :param log_retention: retention of the handlers' log groups, one of CloudWatch Logs'
        periods. Default: 365 days.
    :param when_busy: with a scheduler, when the cluster's nodes are busy with users' jobs the
        run never queues behind them: ``"fail"`` fails the deploy at once with the reason,
        ``"report"`` lets it go on and sets the resource's ``Passed`` to ``not-run: cluster
        busy`` (or ``not-run: nodes busy``). Default: ``"fail"``.
    :param destroy_on_delete: the explicit opt-out from retention: delete the results bucket and
        its access-log bucket (CloudFormation deletes only empty buckets, so results are never
        deleted), the handlers' log groups and a key this construct creates with the stack.
        Default: False (retained on stack delete).

    An image change (a new launch template version) on running nodes: the run first refreshes
    the nodes on the earlier version. Each is drained in Slurm; one that Slurm then reports
    drained without a job is marked Unhealthy and its group replaces it from the new template;
    one still running a job keeps it, and the controller's reaper has it replaced when its jobs
    end. The run waits for the successors (bounded by ``total_timeout``) and runs on the nodes
    of the new version only; its ``RanOn`` and ``AwaitingRefresh`` attributes name the nodes it
    ran on and those still waiting for their jobs. When no node could be refreshed, ``when_busy``
    decides as above (with ``"fail"`` nothing is drained).
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        cluster: TrainiumCluster,
        scheduler: SlurmScheduler | None = None,
        image: NeuronTrainingImage | None = None,
        thresholds: AcceptanceThresholds | None = None,
        workload: AcceptanceWorkload | None = None,
        results_bucket: s3.IBucket | None = None,
        results_prefix: str = "acceptance-runs/",
        results_retention: cdk.Duration | None = None,
        access_log_bucket: s3.IBucket | None = None,
        access_log_prefix: str = RESULTS_ACCESS_LOG_PREFIX,
        encryption_key: kms.IKey | None = None,
        total_timeout: cdk.Duration | None = None,
        query_interval: cdk.Duration | None = None,
        procs_per_node: int | None = None,
        rendezvous_port: int = 29400,
        neuron_comm_port: int = 46820,
        exported_figures: tuple[str, ...] | list[str] = DEFAULT_FIGURES,
        log_retention: cdk.Duration | None = None,
        when_busy: str = "fail",
        destroy_on_delete: bool = False,
    ) -> None:
        if when_busy not in ("fail", "report"):
            raise invalid("when_busy", when_busy, "'fail' or 'report'")
        removal_policy = stateful_removal_policy(destroy_on_delete)
        log_retention_days = log_retention_period(
            "log_retention", log_retention or cdk.Duration.days(365)
        )
        super().__init__(scope, id)
        thresholds = thresholds or AcceptanceThresholds()
        workload = workload or AcceptanceWorkload()
        total_timeout = total_timeout or MAX_TOTAL_TIMEOUT
        query_interval = query_interval or cdk.Duration.seconds(30)
        results_retention = results_retention or cdk.Duration.days(365)
        spec = cluster.spec
        devices_per_chip = spec.logical_cores_per_chip
        procs_per_node = (
            procs_per_node if procs_per_node is not None else spec.chips * devices_per_chip
        )
        exported = tuple(exported_figures)
        # The run's price per hour (every node of it), when known: the figures then include the
        # cost per million tokens at the measured throughput, beside tokens/s.
        run_price = cluster.hourly_price * cluster.nodes if cluster.hourly_price else None
        if (
            run_price
            and "train_tokens_per_s" in exported
            and FIGURE_USD_PER_MILLION_TOKENS not in exported
        ):
            exported = (*exported, FIGURE_USD_PER_MILLION_TOKENS)

        # Validate everything before the first resource exists.
        thresholds.validate()
        workload.validate()
        self._validate_timeouts(total_timeout, query_interval)
        self._validate_procs_per_node(procs_per_node)
        self._validate_ports(rendezvous_port, neuron_comm_port)
        self._validate_prefix(results_prefix)
        self._validate_access_logs(scope, results_bucket, access_log_bucket, access_log_prefix)
        self._validate_figures(exported)
        self._validate_retention(results_retention)
        self._validate_cache_path(cluster.compile_cache_path)
        scheduler = self._scheduler(cluster, scheduler)
        if scheduler is not None and image is not None:
            raise invalid(
                "image",
                image,
                "None when the cluster has a SlurmScheduler: the run is a Slurm job and runs in "
                "the scheduler's image (SlurmScheduler(image=...))",
            )
        runs_dir = (
            f"{scheduler.shared_root}/{SHARED_HOMES}/{scheduler.job_user}/{RUNS_SUBDIR}"
            if scheduler is not None
            else ""
        )
        if scheduler is not None:
            self._validate_runs_dir(runs_dir)

        self.cluster = cluster
        #: The scheduler the run is submitted to, or None (the SSM launcher).
        self.scheduler = scheduler
        #: ``slurm`` or ``ssm``.
        self.launcher = "slurm" if scheduler is not None else "ssm"
        self.thresholds = thresholds
        self.workload = workload
        self.procs_per_node = procs_per_node
        self.results_prefix = results_prefix
        self.exported_figures = exported
        suite_args = self._suite_args(spec, devices_per_chip)
        stack = cdk.Stack.of(self)

        self.image: BoundNeuronTrainingImage = (
            scheduler.image
            if scheduler is not None
            else (image or NeuronTrainingImage.bundled()).bind(self)
        )
        self.encryption_key: kms.IKey = encryption_key or self._encryption_key(removal_policy)
        self.results_bucket = results_bucket or self._results_bucket(
            results_retention, access_log_bucket, access_log_prefix, removal_policy
        )
        self.document = acceptance_document(self, "Document", slurm=scheduler is not None)
        self.document_arn = stack.format_arn(
            service="ssm", resource="document", resource_name=self.document.ref
        )
        #: The launcher's permissions: the controller's (Slurm) or the nodes' (SSM).
        self.launcher_policy = (
            self._controller_policy(scheduler) if scheduler is not None else self._node_policy()
        )

        run_timeout = int(total_timeout.to_seconds()) - 2 * int(query_interval.to_seconds())
        run_timeout -= _DEADLINE_MARGIN_SECONDS
        static_config = {
            "version": RUN_CONFIG_VERSION,
            "nodes": cluster.nodes,
            "procs_per_node": procs_per_node,
            "instance_type": spec.instance_type,
            "thresholds": asdict(thresholds),
            "workload": asdict(workload),
            "suite_args": suite_args,
            "ports": [rendezvous_port, neuron_comm_port],
            "document": sorted(DOCUMENT_PARAMETERS),
            "launcher": self.launcher,
        }
        self.config_hash = hashlib.sha256(
            json.dumps(static_config, sort_keys=True, default=str).encode()
        ).hexdigest()

        wildcard_reason, wildcard_resources = self._wildcards()
        self.provider = DeployTimeProvider(
            self,
            "Provider",
            purpose="acceptance run",
            subpackage="acceptance",
            handler_module=HANDLER_MODULE,
            extra_subpackages=("cost",),
            statements=[*self._on_event_statements(), *self._is_complete_statements()],
            encryption_key=self.encryption_key,
            vpc=cluster.vpc,
            subnet=cluster.subnet,
            total_timeout=total_timeout,
            query_interval=query_interval,
            log_retention=log_retention_days,
            removal_policy=removal_policy,
            wildcard_reason=wildcard_reason,
            wildcard_resources=wildcard_resources,
        )

        self.resource = self.provider.custom_resource(
            self,
            "Resource",
            resource_type="Custom::TrnAcceptanceRun",
            properties=AcceptanceRunProperties(
                auto_scaling_group_name=cluster.auto_scaling_group.ref,
                cluster_name=cluster.cluster_name,
                nodes=cluster.nodes,
                procs_per_node=procs_per_node,
                devices_per_chip=devices_per_chip,
                document_name=self.document.ref,
                image_uri=self.image.image_uri,
                results_bucket=self.results_bucket.bucket_name,
                results_prefix=results_prefix,
                compile_cache_dir=cluster.compile_cache_path,
                suite_args=suite_args,
                rendezvous_port=rendezvous_port,
                neuron_comm_port=neuron_comm_port,
                expected_neuron_devices=spec.neuron_devices,
                expected_efa_devices=spec.efa_devices,
                run_timeout_seconds=run_timeout,
                checks=thresholds.checks(),
                exported_figures=exported,
                hourly_price=run_price or None,
                config_hash=self.config_hash,
                launcher=self.launcher,
                when_busy=when_busy,
                **(self._slurm_properties(scheduler, runs_dir) if scheduler else {}),
            ).to_properties(),
        )
        # The Ref to the Auto Scaling group orders the run after the group is complete, which
        # with its creation policy means after every node's health signal; with Slurm the nodes
        # signal only once their slurmd registered. The launcher's policy attaches beside its
        # role, so only an explicit dependency orders it.
        self.resource.node.add_dependency(self.launcher_policy)
        if scheduler is not None:
            # The controller's group is complete once slurmctld signalled (also implied by the
            # Ref in ControllerGroupName; explicit because the run cannot start without it).
            self.resource.node.add_dependency(scheduler.auto_scaling_group)

        self.figure_outputs: dict[str, cdk.CfnOutput] = {}
        for name in exported:
            unit, description = FIGURES[name]
            self.figure_outputs[name] = cdk.CfnOutput(
                self,
                _pascal(name),
                value=self.resource.get_att_string(name),
                description=f"Acceptance run: {description} ({unit})",
            )
        cdk.CfnOutput(
            self,
            key_of(AcceptanceReport, "results_uri"),
            value=self.resource.get_att_string(key_of(AcceptanceReport, "results_uri")),
            description="Acceptance run: S3 prefix of the per-rank results and the summary",
        )

    def figure(self, name: str) -> str:
        """The measured ``name`` (a deploy-time string attribute of the run)."""
        if name not in self.exported_figures:
            raise invalid("figure name", name, f"one of {', '.join(self.exported_figures)}")
        return self.resource.get_att_string(name)

    def grant_read_results(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` read the runs' per-rank results and summaries."""
        return self.results_bucket.grant_read(grantee, f"{self.results_prefix}*")

    @property
    def node_policy(self) -> iam.ManagedPolicy:
        """The launcher's policy (kept under its former name; see ``launcher_policy``)."""
        return self.launcher_policy

    @staticmethod
    def _slurm_properties(scheduler: SlurmScheduler, runs_dir: str) -> dict[str, str]:
        """The run properties of the Slurm launcher (fields of ``AcceptanceRunProperties``)."""
        return {
            "controller_group_name": scheduler.auto_scaling_group.auto_scaling_group_name,
            "partition": scheduler.partition,
            "job_user": scheduler.job_user,
            "controller_container": SLURM_CONTROLLER_CONTAINER,
            "runs_dir": runs_dir,
        }

    def _scheduler(
        self, cluster: TrainiumCluster, scheduler: SlurmScheduler | None
    ) -> SlurmScheduler | None:
        from cdk_trn.scheduler import SlurmScheduler

        if scheduler is not None:
            if not isinstance(scheduler, SlurmScheduler) or scheduler.cluster is not cluster:
                raise invalid("scheduler", scheduler, f"the SlurmScheduler of {cluster.node.path}")
            return scheduler
        found = [
            c
            for c in cluster.node.root.node.find_all()
            if isinstance(c, SlurmScheduler) and c.cluster is cluster
        ]
        if found:
            return found[0]
        if cluster.slurm is not None:
            raise CdkTrnError(
                f"{self.node.path}: {cluster.node.path} runs slurmd but its SlurmScheduler was "
                "not found in this app; pass it as scheduler="
            )
        return None

    # --- validation -------------------------------------------------------------------------

    @staticmethod
    def _validate_runs_dir(path: str) -> None:
        if cdk.Token.is_unresolved(path):
            return
        if not re.fullmatch(r"/[A-Za-z0-9._/-]{1,255}", path):
            raise invalid("scheduler.shared_root", path, "an absolute path of A-Z a-z 0-9 . _ / -")

    @staticmethod
    def _validate_timeouts(total: cdk.Duration, interval: cdk.Duration) -> None:
        seconds = total.to_seconds()
        if not MIN_TOTAL_TIMEOUT.to_seconds() <= seconds <= MAX_TOTAL_TIMEOUT.to_seconds():
            raise invalid(
                "total_timeout",
                f"{seconds / 60:g} minutes",
                "from 10 to 55 minutes (CloudFormation waits at most one hour for a custom "
                "resource, 5 minutes of which are kept for a clear timeout message)",
            )
        poll = interval.to_seconds()
        if not 10 <= poll <= 300 or poll * 10 > seconds:
            raise invalid(
                "query_interval",
                f"{poll:g} seconds",
                "from 10 to 300 seconds and at most a tenth of total_timeout",
            )

    @staticmethod
    def _validate_procs_per_node(procs: int) -> None:
        if _not_int(procs) or not 1 <= procs <= 512:
            raise invalid("procs_per_node", procs, "an integer from 1 to 512")

    @staticmethod
    def _validate_ports(rendezvous: int, comm: int) -> None:
        for name, port in (("rendezvous_port", rendezvous), ("neuron_comm_port", comm)):
            if _not_int(port) or not 1024 <= port <= 65535:
                raise invalid(name, port, "an integer from 1024 to 65535")
        if rendezvous == comm:
            raise invalid("neuron_comm_port", comm, "a port other than rendezvous_port")

    @staticmethod
    def _validate_prefix(prefix: str) -> None:
        if prefix and not re.fullmatch(r"([A-Za-z0-9_.-]+/)+", prefix):
            raise invalid(
                "results_prefix",
                prefix,
                "empty or path segments of A-Z a-z 0-9 _ . - ending in '/'",
            )

    @staticmethod
    def _validate_access_logs(
        scope: Construct,
        results_bucket: s3.IBucket | None,
        access_log_bucket: s3.IBucket | None,
        access_log_prefix: str,
    ) -> None:
        validate_access_log_prefix("access_log_prefix", access_log_prefix)
        if access_log_bucket is None:
            return
        validate_access_log_bucket("access_log_bucket", scope, access_log_bucket)
        if results_bucket is not None:
            raise invalid(
                "access_log_bucket",
                access_log_bucket.node.path,
                "None when results_bucket is given: the construct logs only a results bucket it "
                "creates; the owner of a given bucket sets its logging",
            )

    @staticmethod
    def _validate_figures(figures: tuple[str, ...]) -> None:
        unknown = [f for f in figures if f not in FIGURES]
        if unknown or len(set(figures)) != len(figures):
            raise invalid(
                "exported_figures", list(figures), f"distinct names from {', '.join(FIGURES)}"
            )

    @staticmethod
    def _validate_retention(retention: cdk.Duration) -> None:
        days = retention.to_days()
        if not 1 <= days <= 3650:
            raise invalid("results_retention", f"{days:g} days", "from 1 to 3650 days")

    @staticmethod
    def _validate_cache_path(path: str) -> None:
        if cdk.Token.is_unresolved(path):
            return
        if not re.fullmatch(r"/[A-Za-z0-9._/-]{1,255}", path):
            raise invalid(
                "cluster.compile_cache_path", path, "an absolute path of A-Z a-z 0-9 . _ / -"
            )

    # --- resources ----------------------------------------------------------------------------

    def _encryption_key(self, removal_policy: cdk.RemovalPolicy) -> kms.Key:
        key = kms.Key(
            self,
            "Key",
            description=f"cdk-trn acceptance run results and logs of {self.node.path}",
            enable_key_rotation=True,
            removal_policy=removal_policy,
        )
        # CloudWatch Logs encrypts the handlers' log groups with it.
        allow_cloudwatch_logs(key)
        return key

    def _results_bucket(
        self,
        retention: cdk.Duration,
        logs_to: s3.IBucket | None,
        log_prefix: str,
        removal_policy: cdk.RemovalPolicy,
    ) -> s3.Bucket:
        created: list[s3.Bucket] = []
        if logs_to is None:
            logs_to = access_log_bucket(
                self,
                "ResultsAccessLogs",
                expiration=retention,
                removal_policy=removal_policy,
                serves="the acceptance results bucket",
            )
            created.append(logs_to)
        results = encrypted_bucket(
            self,
            "Results",
            key=self.encryption_key,
            removal_policy=removal_policy,
            lifecycle_rules=[
                s3.LifecycleRule(
                    expiration=retention,
                    noncurrent_version_expiration=cdk.Duration.days(7),
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(7),
                )
            ],
        )
        deliver_access_logs(
            results, to=logs_to, prefix=log_prefix, sid="S3ServerAccessLogsOfAcceptanceResults"
        )
        for bucket in (results, *created):
            acknowledge_regulated(
                bucket,
                "S3BucketReplicationEnabled",
                "Acceptance results are test output that the next deploy can reproduce; "
                "a replica in another region would add a bucket and a role for nothing "
                "that could not be measured again.",
            )
        return results

    def _results_objects_arn(self) -> str:
        return self.results_bucket.arn_for_objects(f"{self.results_prefix}*")

    def _result_writer_statements(self, *, controller: bool = False) -> list[iam.PolicyStatement]:
        """What whoever uploads a run's results (the nodes, or the Slurm controller) may do:
        write under the results prefix, never a pass marker, with the results bucket's key; the
        nodes nothing under a run's ``control/`` (what the handler and the controller exchange),
        the controller not the handler's node lists there (it writes the job's nodes and the
        drain reports, and its upload of the job's results leaves ``control/`` out)."""
        statements = [
            iam.PolicyStatement(
                sid="WriteAcceptanceResults",
                actions=["s3:PutObject"],
                resources=[self._results_objects_arn()],
            ),
            # The pass markers sit under the results prefix, but only the handler may vouch that
            # a run passed: an uploader writing one would let a later deploy skip the suite.
            iam.PolicyStatement(
                sid="DenyWritingPassMarkers",
                effect=iam.Effect.DENY,
                actions=["s3:PutObject"],
                resources=[self._pass_markers_arn()],
            ),
            # Nor the node lists the handler hands the controller (which nodes to drain, which
            # to run on); the nodes (where users' jobs run, with this role) neither the lists
            # the controller writes back (the job's nodes, the drain reports: which nodes may be
            # replaced).
            iam.PolicyStatement(
                sid="DenyWritingNodeLists",
                effect=iam.Effect.DENY,
                actions=["s3:PutObject"],
                resources=[self._node_lists_arn(f"*{LIST_SUFFIX}" if controller else "*")],
            ),
        ]
        key = self.results_bucket.encryption_key
        if key is not None:
            statements.append(
                iam.PolicyStatement(
                    sid="EncryptAcceptanceResults",
                    # Decrypt too: the AWS CLI's multipart uploads (large logs) need it. Only
                    # for S3's calls on the uploader's behalf: the key encrypts the handlers'
                    # logs too, which the uploader has no business with.
                    actions=["kms:GenerateDataKey", "kms:Decrypt"],
                    resources=[key.key_arn],
                    conditions={
                        "StringEquals": {
                            "kms:ViaService": f"s3.{cdk.Stack.of(self).region}.amazonaws.com"
                        }
                    },
                )
            )
        return statements

    def _node_policy(self) -> iam.ManagedPolicy:
        statements = [*self.image.pull_statements(), *self._result_writer_statements()]
        policy = iam.ManagedPolicy(
            self,
            "NodePolicy",
            description="cdk-trn acceptance run: nodes pull the suite's image and write results",
            roles=[self.cluster.role],
            statements=statements,
        )
        acknowledge_wildcards(
            policy,
            "ecr:GetAuthorizationToken supports no resource-level permission (Resource must be "
            "'*'); s3:PutObject is limited to the acceptance results prefix, under which each "
            "deploy writes a new run id only known at deploy time (and denied on the pass "
            "markers, a Deny that cdk-nag does not report).",
            resources=["*", self._results_objects_arn()],
        )
        return policy

    def _controller_policy(self, scheduler: SlurmScheduler) -> iam.ManagedPolicy:
        """The controller uploads the job's results from the shared file system (the nodes need
        nothing more: the scheduler already lets them pull its image), and its reaper replaces
        the nodes an image refresh drained once their jobs ended (``reaper.sh``'s refresh rule):
        ``SetInstanceHealth`` in the node group only, and only while it carries this cluster's
        tag."""
        node_group = cdk.Stack.of(self).format_arn(
            service="autoscaling",
            resource="autoScalingGroup",
            resource_name=f"*:autoScalingGroupName/{self.cluster.auto_scaling_group.ref}",
            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
        )
        statements = [
            *self._result_writer_statements(controller=True),
            # The node lists of a run and a drain (S3, not SSM parameters: no size limit).
            iam.PolicyStatement(
                sid="ReadNodeLists",
                actions=["s3:GetObject"],
                resources=[self._node_lists_arn()],
            ),
            iam.PolicyStatement(
                sid="RefreshDrainedNodes",
                actions=["autoscaling:SetInstanceHealth"],
                resources=[node_group],
                conditions={
                    "StringEquals": {
                        f"autoscaling:ResourceTag/{CLUSTER_TAG}": self.cluster.cluster_name
                    }
                },
            ),
        ]
        policy = iam.ManagedPolicy(
            self,
            "ControllerPolicy",
            description="cdk-trn acceptance run: the Slurm controller uploads the job's results "
            "and refreshes drained nodes after an image change",
            roles=[scheduler.role],
            statements=statements,
        )
        acknowledge_wildcards(
            policy,
            "s3:PutObject is limited to the acceptance results prefix, under which each deploy "
            "writes a new run id only known at deploy time (and denied on the pass markers, a "
            "Deny that cdk-nag does not report); an Auto Scaling group's ARN contains a generated "
            "id that CloudFormation does not return, and the group name (the Ref) is exact, so "
            "SetInstanceHealth covers the node group only (and only while it carries the "
            "cluster's tag).",
            resources=[self._results_objects_arn(), self._node_lists_arn(), node_group],
        )
        return policy

    def _on_event_statements(self) -> list[iam.PolicyStatement]:
        instances = cdk.Stack.of(self).format_arn(
            service="ec2", resource="instance", resource_name="*"
        )
        return [
            iam.PolicyStatement(
                sid="RunAcceptanceDocument",
                actions=["ssm:SendCommand"],
                resources=[self.document_arn],
            ),
            # Only on the nodes of this cluster: SendCommand evaluates the instance's tags.
            iam.PolicyStatement(
                sid="RunOnClusterNodes",
                actions=["ssm:SendCommand"],
                resources=[instances],
                conditions={
                    "StringEquals": {f"aws:ResourceTag/{CLUSTER_TAG}": self.cluster.cluster_name}
                },
            ),
            iam.PolicyStatement(
                sid="FindClusterNodes",
                actions=[
                    "autoscaling:DescribeAutoScalingGroups",
                    "ec2:DescribeInstances",
                    "ssm:CancelCommand",
                ],
                resources=["*"],
            ),
            # A rollback to properties that passed before reuses that run (pass markers).
            iam.PolicyStatement(
                sid="ReadPassMarkers",
                actions=["s3:GetObject"],
                resources=[self._pass_markers_arn()],
            ),
            # The node lists of the drain command an image refresh (or a rollback) sends.
            iam.PolicyStatement(
                sid="WriteNodeLists",
                actions=["s3:PutObject"],
                resources=[self._node_lists_arn()],
            ),
            *self._key_statements("kms:Decrypt", "kms:GenerateDataKey"),
            # A rollback has the nodes the failed update refreshed, stopped in Standby by idle
            # scale-in, replaced (refresh_after_rollback): only in this cluster's group.
            self._replace_nodes_statement("RefreshNodesAfterRollback"),
        ]

    def _is_complete_statements(self) -> list[iam.PolicyStatement]:
        bucket = self.results_bucket
        statements = [
            iam.PolicyStatement(
                sid="WatchCommands",
                actions=[
                    "ssm:ListCommands",
                    "ssm:ListCommandInvocations",
                    "ssm:GetCommandInvocation",
                    "ssm:CancelCommand",
                ],
                resources=["*"],
            ),
            iam.PolicyStatement(
                sid="ReadAcceptanceResults",
                actions=["s3:GetObject"],
                resources=[self._results_objects_arn()],
            ),
            # Lets a missing summary read as 404 (missing results) instead of 403.
            iam.PolicyStatement(
                sid="ListAcceptanceResults",
                actions=["s3:ListBucket"],
                resources=[bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{self.results_prefix}*"]}},
            ),
            iam.PolicyStatement(
                sid="WritePassMarkersAndNodeLists",
                actions=["s3:PutObject"],
                resources=[self._pass_markers_arn(), self._node_lists_arn()],
            ),
            *self._key_statements("kms:Decrypt", "kms:GenerateDataKey"),
            # A node below a node-local threshold is replaced and the run repeated (handler's
            # replacement round), and an image refresh replaces the idle nodes on an earlier
            # launch template (those stopped in Standby are returned to service first): only
            # in this cluster's group, found by its tag.
            self._replace_nodes_statement("ReplaceNodesBelowThreshold"),
        ]
        return statements

    def _replace_nodes_statement(self, sid: str) -> iam.PolicyStatement:
        return iam.PolicyStatement(
            sid=sid,
            actions=["autoscaling:SetInstanceHealth", "autoscaling:ExitStandby"],
            resources=[self._groups_arn()],
            conditions={
                "StringEquals": {
                    f"autoscaling:ResourceTag/{CLUSTER_TAG}": self.cluster.cluster_name
                }
            },
        )

    def _node_lists_arn(self, name: str = "*") -> str:
        """The node lists and drain reports under each run's prefix (``CONTROL_DIR``)."""
        return self.results_bucket.arn_for_objects(f"{self.results_prefix}*/{CONTROL_DIR}{name}")

    def _groups_arn(self) -> str:
        return cdk.Stack.of(self).format_arn(
            service="autoscaling",
            resource="autoScalingGroup",
            resource_name="*:autoScalingGroupName/*",
            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
        )

    def _pass_markers_arn(self) -> str:
        return self.results_bucket.arn_for_objects(f"{self.results_prefix}_passed/*")

    def _key_statements(self, *actions: str) -> list[iam.PolicyStatement]:
        key = self.results_bucket.encryption_key
        if key is None:
            return []
        return [iam.PolicyStatement(actions=list(actions), resources=[key.key_arn])]

    def _wildcards(self) -> tuple[str, list[str]]:
        """Why the handler's statements have wildcard resources, and which."""
        control_plane = (
            "autoscaling:DescribeAutoScalingGroups, ec2:DescribeInstances, ssm:ListCommands, "
            "ssm:ListCommandInvocations, ssm:GetCommandInvocation and ssm:CancelCommand support "
            "no resource-level permission (Resource '*')"
        )
        instances = cdk.Stack.of(self).format_arn(
            service="ec2", resource="instance", resource_name="*"
        )
        return (
            f"{control_plane}; ssm:SendCommand on instance/* and autoscaling:SetInstanceHealth "
            f"on autoScalingGroup/* are limited to resources tagged {CLUSTER_TAG} with this "
            "cluster's name (the group's ARN holds an id CloudFormation does not return); S3 "
            "object access to the results prefix, whose run ids and pass markers are known only "
            "at deploy time.",
            [
                "*",
                instances,
                self._groups_arn(),
                self._results_objects_arn(),
                self._pass_markers_arn(),
                self._node_lists_arn(),
            ],
        )

    def _suite_args(self, spec: Any, devices_per_chip: int) -> str:
        args = self.thresholds.suite_args(
            peak_bf16_tflops=spec.peak_bf16_tflops_per_chip / devices_per_chip,
            peak_hbm_gbps=spec.hbm_gbps_per_chip / devices_per_chip,
        )
        text = " ".join([*args, *self.workload.suite_args()])
        pattern = NodeCommand.PATTERNS["suite_args"]
        if not re.fullmatch(pattern, text):
            raise invalid("workload", text, "suite arguments that fit the document's pattern")
        return text


def _check(figure: str, *, minimum: float | None = None, maximum: float | None = None) -> Check:
    return Check(figure=figure, unit=FIGURES[figure][0], minimum=minimum, maximum=maximum)


def _flag_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else format(value, ".6g")


def _pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _not_number(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, (int, float))


def _not_int(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)
