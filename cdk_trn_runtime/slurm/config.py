"""The one slurm.conf generator: the cloud controller and the local cluster both render with it.

Whole nodes are the unit of scheduling (``OverSubscribe=EXCLUSIVE``, as ParallelCluster and
HyperPod do for Trainium: neither defines a Neuron GRES), a node that comes back returns to
service (``ReturnToService=1``), batch jobs are requeued when their node fails (``JobRequeue=1``)
and go elsewhere when a prolog drains a node (``nohold_on_prolog_fail``), and every finished job
is logged on the shared file system (``contract.SHARED_JOB_LOGS``).

Nodes are either static (``StaticNode``: the local cluster, one host several slurmd) or dynamic
(``DynamicNodes``: cloud nodes register themselves with ``slurmd -Z --conf ...``, see
``dynamic_node_conf``; the controller serves its configuration, ``enable_configless``).

Standard library only. Every value is validated before anything is rendered: a value that would
end a line or start a comment in slurm.conf is refused with ValueError naming the field.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from cdk_trn_runtime import contract
from cdk_trn_runtime.contract.cluster_document import ClusterDocument

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_SCHEDULER_PARAMETER = re.compile(r"^[a-z_]+(=[A-Za-z0-9_.:-]+)?$")
_FEATURE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Paths Slurm expands: %n (node name), %h (host). Nothing that ends a line, splits a value or
# starts a comment.
_PATH = re.compile(r"^/[A-Za-z0-9_./%+@-]*$")
AUTH_TYPES = ("auth/munge", "auth/slurm")
SELECT_TYPES = ("select/cons_tres",)


@dataclass(frozen=True)
class StaticNode:
    """A node slurm.conf names. ``hostname``/``address`` default to the name; ``port`` to
    the cluster's ``slurmd_port`` (several slurmd on one host need one port each)."""

    name: str
    hostname: str | None = None
    address: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class DynamicNodes:
    """Nodes that register themselves (``slurmd -Z``), at most ``max_node_count`` at once."""

    max_node_count: int


@dataclass(frozen=True)
class PowerSave:
    """Slurm's power saving (issue 22's idle scale-in): nodes idle ``suspend_time`` seconds are
    suspended by ``suspend_program`` and resumed by ``resume_program`` when a job needs them
    (``cdk_trn_runtime.slurm.power``: Standby and stop, start and back in service)."""

    suspend_time: int
    suspend_program: str
    resume_program: str
    #: Seconds a suspend (Standby, then stop) may take before the node may be resumed.
    suspend_timeout: int = 300


@dataclass(frozen=True)
class SlurmConfig:
    """What slurm.conf says. Defaults are the cloud's (ParallelCluster-like timeouts, cgroups).

    ``shared_root`` is the shared file system's mount path: the controller's state
    (``contract.SHARED_SLURM_STATE``) and the job completion log (``contract.SHARED_JOB_LOGS``)
    live under it unless ``state_save_location`` says otherwise.
    """

    controller_host: str
    shared_root: str
    cpus: int
    real_memory_mb: int
    nodes: tuple[StaticNode, ...] = ()
    dynamic: DynamicNodes | None = None
    cluster_name: str = contract.SLURM_DEFAULT_CLUSTER_NAME
    controller_address: str | None = None
    controller_port: int = contract.SLURMCTLD_PORT
    slurmd_port: int = contract.SLURMD_PORT
    #: Node features: instance type, ``efa``, UltraServer id (static nodes; dynamic nodes bring
    #: their own through ``dynamic_node_conf``).
    features: tuple[str, ...] = ()
    partition: str = "trn"
    state_save_location: str | None = None
    slurmctld_spool_dir: str = "/var/spool/slurmctld"
    slurmd_spool_dir: str = "/var/spool/slurmd"
    log_dir: str = "/var/log/slurm"
    pid_dir: str = "/run/slurm"
    slurm_user: str = "slurm"
    prolog: str | None = None
    epilog: str | None = None
    task_prolog: str | None = None
    health_check_program: str | None = None
    health_check_interval: int = 300
    slurmd_timeout: int = 180
    slurmctld_timeout: int = 300
    #: Seconds a node may take to boot and register after it was asked for (cloud) or restarted.
    resume_timeout: int = 1800
    kill_wait: int = 30
    #: Seconds slurmctld waits for a daemon's answer (Slurm's default 10); a dead slurmd is
    #: noticed after about SlurmdTimeout plus twice this.
    message_timeout: int = 10
    auth: str = "auth/munge"
    munge_socket: str | None = None
    #: Seconds a job step credential lives (AuthInfo cred_expire), which is also how long a
    #: requeued batch job waits before it starts again; None: Slurm's default, 120.
    cred_expire: int | None = None
    proctrack: str = "proctrack/cgroup"
    task_plugin: str = "task/cgroup,task/affinity"
    configless: bool = False
    extra_scheduler_parameters: tuple[str, ...] = field(default=())
    #: The partition's MaxNodes (a job's largest allocation); None: no limit.
    max_nodes_per_job: int | None = None
    #: Ports srun listens on for its tasks (SrunPortRange), opened to the nodes by the construct.
    srun_port_range: tuple[int, int] | None = None
    #: Idle scale-in through Slurm's power saving; None: nodes are never suspended.
    power_save: PowerSave | None = None

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def state_dir(self) -> str:
        return self.state_save_location or f"{self.shared_root}/{contract.SHARED_SLURM_STATE}"

    @property
    def job_completion_log(self) -> str:
        return f"{self.shared_root}/{contract.SHARED_JOB_LOGS}/jobcomp.log"

    @property
    def uses_cgroup(self) -> bool:
        return "cgroup" in self.proctrack or "cgroup" in self.task_plugin


def _bad(name: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_name(name: str, value: str) -> None:
    if not isinstance(value, str) or not _NAME.match(value):
        raise _bad(name, value, "a letter then up to 62 letters, digits, '_' or '-'")


def _check_host(name: str, value: str) -> None:
    if not isinstance(value, str) or not _HOST.match(value):
        raise _bad(name, value, "a host name or IPv4 address")


def _check_path(name: str, value: str | None) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not _PATH.match(value) or "/../" in f"{value}/":
        raise _bad(name, value, "an absolute path of letters, digits and _ . / % + @ -")


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(name, value, f"an integer from {low} to {high}")


def _validate(c: SlurmConfig) -> None:
    _check_name("cluster_name", c.cluster_name)
    _check_name("partition", c.partition)
    _check_name("slurm_user", c.slurm_user)
    _check_host("controller_host", c.controller_host)
    if c.controller_address is not None:
        _check_host("controller_address", c.controller_address)
    _check_int("controller_port", c.controller_port, 1, 65535)
    _check_int("slurmd_port", c.slurmd_port, 1, 65535)
    _check_int("cpus", c.cpus, 1, 100_000)
    _check_int("real_memory_mb", c.real_memory_mb, 1, 1 << 30)
    _check_int("health_check_interval", c.health_check_interval, 1, 86_400)
    _check_int("slurmd_timeout", c.slurmd_timeout, 5, 86_400)
    _check_int("slurmctld_timeout", c.slurmctld_timeout, 5, 86_400)
    _check_int("resume_timeout", c.resume_timeout, 30, 86_400)
    _check_int("kill_wait", c.kill_wait, 1, 3600)
    _check_int("message_timeout", c.message_timeout, 1, 600)
    if c.cred_expire is not None:
        _check_int("cred_expire", c.cred_expire, 10, 86_400)
    for name in (
        "shared_root",
        "state_save_location",
        "slurmctld_spool_dir",
        "slurmd_spool_dir",
        "log_dir",
        "pid_dir",
        "prolog",
        "epilog",
        "task_prolog",
        "health_check_program",
        "munge_socket",
    ):
        _check_path(name, getattr(c, name))
    for feature in c.features:
        if not isinstance(feature, str) or not _FEATURE.match(feature):
            raise _bad("features", feature, "1-64 letters, digits, '_', '.' or '-'")
    for parameter in c.extra_scheduler_parameters:
        if not isinstance(parameter, str) or not _SCHEDULER_PARAMETER.match(parameter):
            raise _bad("extra_scheduler_parameters", parameter, "name or name=value items")
    if c.auth not in AUTH_TYPES:
        raise _bad("auth", c.auth, " or ".join(AUTH_TYPES))
    if c.munge_socket is not None and c.auth != "auth/munge":
        raise ValueError(f"munge_socket is only used with auth/munge, got auth {c.auth!r}")
    if c.proctrack not in ("proctrack/cgroup", "proctrack/linuxproc"):
        raise _bad("proctrack", c.proctrack, "proctrack/cgroup or proctrack/linuxproc")
    if c.task_plugin not in ("task/cgroup,task/affinity", "task/affinity", "task/none"):
        allowed = "task/cgroup,task/affinity, task/affinity or task/none"
        raise _bad("task_plugin", c.task_plugin, allowed)
    if bool(c.nodes) == (c.dynamic is not None):
        raise ValueError("give either nodes (static) or dynamic (slurmd -Z), exactly one of them")
    if c.dynamic is not None:
        _check_int("dynamic.max_node_count", c.dynamic.max_node_count, 1, 65_533)
        if not c.configless:
            raise ValueError("dynamic nodes fetch their configuration: set configless=True")
    if c.max_nodes_per_job is not None:
        _check_int("max_nodes_per_job", c.max_nodes_per_job, 1, 65_533)
    if c.power_save is not None:
        _check_int("power_save.suspend_time", c.power_save.suspend_time, 60, 86_400)
        _check_int("power_save.suspend_timeout", c.power_save.suspend_timeout, 30, 3600)
        _check_path("power_save.suspend_program", c.power_save.suspend_program)
        _check_path("power_save.resume_program", c.power_save.resume_program)
    if c.srun_port_range is not None:
        low, high = c.srun_port_range
        _check_int("srun_port_range[0]", low, 1024, 65_535)
        _check_int("srun_port_range[1]", high, low, 65_535)
    seen: set[str] = set()
    addresses: set[tuple[str, int]] = set()
    for node in c.nodes:
        _check_name("nodes[].name", node.name)
        if node.name in seen:
            raise ValueError(f"nodes[].name must be unique, got {node.name!r} twice")
        seen.add(node.name)
        for attribute in ("hostname", "address"):
            value = getattr(node, attribute)
            if value is not None:
                _check_host(f"nodes[{node.name}].{attribute}", value)
        port = c.slurmd_port if node.port is None else node.port
        _check_int(f"nodes[{node.name}].port", port, 1, 65535)
        where = (node.address or node.hostname or node.name, port)
        if where in addresses:
            raise ValueError(
                f"nodes[{node.name}] listens on {where[0]}:{where[1]} like another node; "
                "several nodes on one host need a port each"
            )
        addresses.add(where)


def _node_line(c: SlurmConfig, node: StaticNode) -> str:
    parts = [f"NodeName={node.name}"]
    if node.hostname:
        parts.append(f"NodeHostname={node.hostname}")
    if node.address:
        parts.append(f"NodeAddr={node.address}")
    if node.port is not None:
        parts.append(f"Port={node.port}")
    parts += [f"CPUs={c.cpus}", f"RealMemory={c.real_memory_mb}"]
    if c.features:
        parts.append("Feature=" + ",".join(c.features))
    parts.append("State=UNKNOWN")
    return " ".join(parts)


def render_slurm_conf(c: SlurmConfig) -> str:
    """slurm.conf for ``c`` (already validated by its constructor)."""
    controller = c.controller_host + (f"({c.controller_address})" if c.controller_address else "")
    scheduler = ("nohold_on_prolog_fail", *c.extra_scheduler_parameters)
    lines = [
        "# Rendered by cdk_trn_runtime.slurm.config; edit the generator's input, not this file.",
        f"ClusterName={c.cluster_name}",
        f"SlurmctldHost={controller}",
        f"SlurmctldPort={c.controller_port}",
        f"SlurmdPort={c.slurmd_port}",
        f"SlurmUser={c.slurm_user}",
        f"AuthType={c.auth}",
        f"CredType={'cred/munge' if c.auth == 'auth/munge' else 'cred/slurm'}",
    ]
    auth_info = [f"socket={c.munge_socket}"] if c.munge_socket else []
    if c.cred_expire is not None:
        auth_info.append(f"cred_expire={c.cred_expire}")
    if auth_info:
        lines.append("AuthInfo=" + ",".join(auth_info))
    lines += [
        f"StateSaveLocation={c.state_dir}",
        f"SlurmdSpoolDir={c.slurmd_spool_dir}",
        f"SlurmctldPidFile={c.pid_dir}/slurmctld.pid",
        f"SlurmdPidFile={c.pid_dir}/slurmd-%n.pid",
        f"SlurmctldLogFile={c.log_dir}/slurmctld.log",
        f"SlurmdLogFile={c.log_dir}/slurmd-%n.log",
        "",
        "# Whole nodes: a job owns its nodes' NeuronCores, EFA devices and memory.",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        f"SchedulerParameters={','.join(scheduler)}",
        f"ProctrackType={c.proctrack}",
        f"TaskPlugin={c.task_plugin}",
        "MpiDefault=none",
        "",
        "# Failures: a node that comes back serves again, batch jobs on a failed node requeue.",
        "ReturnToService=1",
        "JobRequeue=1",
        f"SlurmdTimeout={c.slurmd_timeout}",
        f"SlurmctldTimeout={c.slurmctld_timeout}",
        f"ResumeTimeout={c.resume_timeout}",
        f"KillWait={c.kill_wait}",
        f"MessageTimeout={c.message_timeout}",
        "InactiveLimit=0",
        "MinJobAge=300",
        "",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={c.job_completion_log}",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
    ]
    if c.prolog or c.epilog:
        # Alloc: the prolog runs on every node of the allocation when it is made, so a bad node
        # is drained before the job's first step starts there.
        lines.append("PrologFlags=Alloc")
    if c.prolog:
        lines.append(f"Prolog={c.prolog}")
    if c.epilog:
        lines.append(f"Epilog={c.epilog}")
    if c.task_prolog:
        lines.append(f"TaskProlog={c.task_prolog}")
    if c.health_check_program:
        lines += [
            f"HealthCheckProgram={c.health_check_program}",
            f"HealthCheckInterval={c.health_check_interval}",
            "HealthCheckNodeState=ANY",
        ]
    if c.configless:
        lines.append("SlurmctldParameters=enable_configless")
    if c.srun_port_range is not None:
        lines.append(f"SrunPortRange={c.srun_port_range[0]}-{c.srun_port_range[1]}")
    if c.power_save is not None:
        p = c.power_save
        lines += [
            "# Idle scale-in: idle nodes stop (Standby in their group), jobs start them again.",
            f"SuspendTime={p.suspend_time}",
            f"SuspendTimeout={p.suspend_timeout}",
            f"SuspendProgram={p.suspend_program}",
            f"ResumeProgram={p.resume_program}",
        ]
    lines.append("")
    max_nodes = f" MaxNodes={c.max_nodes_per_job}" if c.max_nodes_per_job else ""
    if c.dynamic is not None:
        lines += [
            "# Dynamic nodes: each registers with slurmd -Z --conf (see dynamic_node_conf).",
            f"MaxNodeCount={c.dynamic.max_node_count}",
            "TreeWidth=65533",
            f"PartitionName={c.partition} Nodes=ALL Default=YES MaxTime=INFINITE "
            f"OverSubscribe=EXCLUSIVE State=UP{max_nodes}",
        ]
    else:
        lines += [_node_line(c, node) for node in c.nodes]
        names = ",".join(node.name for node in c.nodes)
        lines.append(
            f"PartitionName={c.partition} Nodes={names} Default=YES MaxTime=INFINITE "
            f"OverSubscribe=EXCLUSIVE State=UP{max_nodes}"
        )
    return "\n".join(lines) + "\n"


def render_cgroup_conf(c: SlurmConfig) -> str | None:
    """cgroup.conf when a cgroup plugin is in use, else None (no file needed)."""
    if not c.uses_cgroup:
        return None
    return (
        "# Rendered by cdk_trn_runtime.slurm.config.\n"
        "CgroupPlugin=autodetect\n"
        "ConstrainCores=yes\n"
        "ConstrainRAMSpace=yes\n"
        # Neuron and EFA devices are not GRES: whole-node jobs own them all.
        "ConstrainDevices=no\n"
    )


def dynamic_node_conf(cpus: int, real_memory_mb: int, features: tuple[str, ...] = ()) -> str:
    """The ``--conf`` value of ``slurmd -Z`` for a dynamic node: what it tells the controller."""
    _check_int("cpus", cpus, 1, 100_000)
    _check_int("real_memory_mb", real_memory_mb, 1, 1 << 30)
    for feature in features:
        if not isinstance(feature, str) or not _FEATURE.match(feature):
            raise _bad("features", feature, "1-64 letters, digits, '_', '.' or '-'")
    conf = f"CPUs={cpus} RealMemory={real_memory_mb}"
    if features:
        conf += " Feature=" + ",".join(features)
    return conf


def cloud_config(document: Mapping[str, object] | ClusterDocument) -> SlurmConfig:
    """The cluster's configuration from the cluster document
    (``cdk_trn_runtime.contract.cluster_document``: the ``SlurmScheduler`` construct writes it at
    synth, the twin at ``up``; its JSON form is parsed here, errors name the key) with
    ``controller_host`` and ``controller_addr``, which the controller adds at boot. Host-specific
    keys missing from the document take the cloud's values (``document.HOST_DEFAULTS``).

    Dynamic nodes register with ``slurmd -Z`` through the configless controller; the node scripts
    are the image's. Process tracking is ``linuxproc`` and tasks are not bound: slurmd runs in a
    container, jobs own whole nodes, and the epilog sweeps what a job left behind, so no cgroup
    delegation into the container is needed.
    """
    doc = (
        document
        if isinstance(document, ClusterDocument)
        else ClusterDocument.from_properties(document)
    )
    controller_host, controller_addr = doc.controller()
    scripts = doc.script_dir
    return SlurmConfig(
        controller_host=controller_host,
        controller_address=controller_addr,
        shared_root=doc.shared_root,
        cpus=doc.node_cpus,
        real_memory_mb=doc.node_real_memory_mib,
        dynamic=DynamicNodes(max_node_count=doc.max_node_count),
        cluster_name=doc.cluster_name,
        controller_port=doc.slurmctld_port,
        slurmd_port=doc.slurmd_port,
        features=doc.node_features,
        partition=doc.partition,
        state_save_location=doc.state_save_location,
        slurmctld_spool_dir=doc.slurmctld_spool_dir,
        slurmd_spool_dir=doc.slurmd_spool_dir,
        log_dir=doc.log_dir,
        pid_dir=doc.pid_dir,
        munge_socket=doc.munge_socket,
        cred_expire=doc.cred_expire,
        slurm_user=doc.slurm_user,
        prolog=f"{scripts}/prolog.sh",
        epilog=f"{scripts}/epilog.sh",
        task_prolog=f"{scripts}/task_prolog.sh",
        health_check_program=f"{scripts}/healthcheck.sh",
        health_check_interval=doc.health_check_interval,
        slurmd_timeout=doc.slurmd_timeout,
        slurmctld_timeout=doc.slurmctld_timeout,
        message_timeout=doc.message_timeout,
        kill_wait=doc.kill_wait,
        resume_timeout=doc.resume_timeout,
        proctrack="proctrack/linuxproc",
        task_plugin="task/none",
        configless=True,
        max_nodes_per_job=doc.max_nodes_per_job,
        srun_port_range=(doc.srun_port_range[0], doc.srun_port_range[1]),
        power_save=None
        if doc.power_save is None
        else PowerSave(
            suspend_time=doc.power_save.idle_seconds,
            suspend_program=f"{scripts}/power_suspend.sh",
            resume_program=f"{scripts}/power_resume.sh",
        ),
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m cdk_trn_runtime.slurm.config --spec cluster.json --output slurm.conf``: the
    controller renders its slurm.conf (and cgroup.conf when needed) at boot."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m cdk_trn_runtime.slurm.config")
    parser.add_argument("--spec", required=True, help="the cluster document (JSON)")
    parser.add_argument("--output", required=True, help="where to write slurm.conf")
    args = parser.parse_args(argv)
    try:
        document = json.loads(Path(args.spec).read_text())
        if not isinstance(document, dict):
            raise ValueError("cluster document: not a JSON object")
        config = cloud_config(document)
    except (OSError, ValueError) as error:
        print(f"slurm.config: {error}", file=sys.stderr)
        return 2
    output = Path(args.output)
    output.write_text(render_slurm_conf(config))
    cgroup = render_cgroup_conf(config)
    if cgroup is not None:
        output.with_name("cgroup.conf").write_text(cgroup)
    print(f"slurm.config: wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
