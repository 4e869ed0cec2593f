"""Enabling the packs on an app, and the synthesis that fails on unacknowledged findings.

What aws-cdk-lib 2.275 does on its own (checked by experiment; see the package README section):

* ``python app.py`` (no CDK CLI): a failing plugin makes ``app.synth()`` raise
  ``RuntimeError: ValidationFailed`` after writing the report, so the process dies with a
  traceback and exit code 1. Under pytest (``PYTEST_CURRENT_TEST`` set) the message holds the
  whole report.
* ``cdk synth``: the CLI passes ``@aws-cdk/core:failSynthOnValidationErrors=false`` to the app,
  ``app.synth()`` returns normally, and the CLI itself reads the report and exits 1.
* A cdk-nag pack whose only findings are warnings also fails the synth (NagPack reports
  ``success`` only with zero violations), unless some finding of that pack was acknowledged;
  then CDK re-judges the pack by errors only.

:func:`synth_checked` does not depend on any of that: it synthesizes, reads the report, and
raises :class:`ComplianceError` on any unacknowledged error-level finding (and on warnings when
asked), naming the rule, the resource path and the pack.
"""

from __future__ import annotations

import json
import os
import sys
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import jsii
from constructs import IConstruct

from cdk_trn.compliance.cfn_lint_runner import DEFAULT_REGION, start_linting
from cdk_trn.compliance.depends_on import drop_implied_depends_on
from cdk_trn.compliance.packs import CLOUDFORMATION_VALIDATE, DEFAULT_PACKS, Pack, create_pack
from cdk_trn.compliance.report import PACKS_FILE, ComplianceReport, Finding
from cdk_trn.compliance.verdict import Evidence, Policy, evaluate
from cdk_trn.errors import CdkTrnError

#: Construct metadata aws-cdk-lib records each ``Validations.of(c).acknowledge`` under.
ACKNOWLEDGED_RULES = "aws:cdk:acknowledged-rules"
#: Name of the recording plugin; it never reports a finding.
RECORDER_NAME = "cdk-trn-record"
#: ``Finding.pack`` of the entries ``findings_of`` adds for acknowledgments that cover nothing.
UNUSED_ACKNOWLEDGMENT = "unused acknowledgment"


class ComplianceError(CdkTrnError):
    """The synthesized app fails the verdict; ``report`` holds every finding, ``evidence`` the
    unused acknowledgments and cfn-lint silences too."""

    def __init__(self, message: str, report: ComplianceReport, evidence: Evidence) -> None:
        super().__init__(message)
        self.report = report
        self.evidence = evidence


@dataclass
class _AppCompliance:
    packs: list[Pack] = field(default_factory=list)
    report: ComplianceReport | None = None
    evidence: Evidence | None = None
    recorder: bool = False
    validate: Any = None
    #: The next synthesis is judged with cfn-lint: the recorder starts it as soon as it can.
    lint_early: bool = False
    lint_cache: bool | None = None


def under_cdk_cli() -> bool:
    """Whether the CDK CLI (``cdk synth``/``deploy``) runs this app; it judges the report itself."""
    return "CDK_CLI_VERSION" in os.environ or "CDK_CLI_ASM_VERSION" in os.environ


def recorded_acknowledgments(
    app: cdk.App, assembly_dir: str | Path | None = None
) -> list[dict[str, str]]:
    """Every acknowledgment in the tree: ``{"path", "id", "reason"}`` as aws-cdk-lib stored it.

    With ``assembly_dir`` (an assembly of ``app`` written by this synthesis), those on constructs
    inside a stack are read from the stack artifacts' metadata, where aws-cdk-lib copies every
    construct's metadata, and only the constructs outside stacks (the app, stages) are asked
    through jsii: a few calls instead of two per construct.
    """
    if assembly_dir is None:
        found = []
        for construct in app.node.find_all():
            found += _acknowledgments_of(construct.node.path, construct.node.metadata)
        return found
    found = _acknowledgments_in_assembly(Path(assembly_dir))
    outside: list[IConstruct] = [app]
    while outside:
        construct = outside.pop()
        found += _acknowledgments_of(construct.node.path, construct.node.metadata)
        outside += [c for c in reversed(construct.node.children) if not cdk.Stack.is_stack(c)]
    return found


def _acknowledgments_of(path: str, metadata: Iterable[Any]) -> list[dict[str, str]]:
    found = []
    for entry in metadata:
        kind = entry["type"] if isinstance(entry, Mapping) else entry.type
        data = entry.get("data") if isinstance(entry, Mapping) else entry.data
        if kind == ACKNOWLEDGED_RULES and isinstance(data, Mapping):
            for rule_id, reason in data.items():
                found.append({"path": path, "id": rule_id, "reason": reason})
    return found


def _acknowledgments_in_assembly(directory: Path) -> list[dict[str, str]]:
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    found = []
    for artifact in manifest.get("artifacts", {}).values():
        if artifact.get("type") == "cdk:cloud-assembly":
            nested = directory / artifact["properties"]["directoryName"]
            found += _acknowledgments_in_assembly(nested)
        if artifact.get("type") != "aws:cloudformation:stack":
            continue
        metadata = dict(artifact.get("metadata") or {})
        extra = artifact.get("additionalMetadataFile")
        if extra:
            metadata.update(json.loads((directory / extra).read_text(encoding="utf-8")))
        for path, entries in metadata.items():
            found += _acknowledgments_of(path.lstrip("/"), entries or [])
    return found


@jsii.implements(cdk.IPolicyValidationPlugin)
class _Recorder:
    """Writes ``cdk-trn-compliance.json`` (packs that ran, every acknowledgment) into the
    assembly during validation, so any synthesis (``cdk synth`` too) leaves the record the
    verdict needs. Reports nothing itself."""

    def __init__(self, app: cdk.App) -> None:
        self._app = weakref.ref(app)

    @property
    def name(self) -> str:
        return RECORDER_NAME

    @property
    def version(self) -> str | None:
        return None

    @property
    def rule_ids(self) -> list[str] | None:
        return None

    def validate(self, context: Any) -> cdk.PolicyValidationPluginReport:
        app = self._app()
        # The templates are written: cfn-lint starts now, beside aws-cdk-lib's validation (an
        # aws-cdk-lib whose context has no stack_templates lints them after the synth).
        early = app is not None and _state(app).lint_early
        stacks = getattr(context, "stack_templates", None) if early else None
        if app is not None and stacks:
            start_linting(
                [(s.template_path, s.region or DEFAULT_REGION) for s in stacks],
                cache=_state(app).lint_cache,
            )
        if app is not None:
            outdir = app.outdir
            record = {
                "packs": [p.value for p in _state(app).packs],
                "acknowledgments": recorded_acknowledgments(app, outdir),
            }
            path = Path(outdir) / PACKS_FILE
            path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        return cdk.PolicyValidationPluginReport(success=True, violations=[])


@jsii.implements(cdk.IAspect)
class _DropImpliedDependsOn:
    """CDK's own redundant DependsOn (cfn-lint W3005 on every ``lambda.Function``), once."""

    def visit(self, node: IConstruct) -> None:
        # isinstance, not Stack.is_stack: jsii hands every stack over as a cdk.Stack (or a
        # subclass), and this runs for every construct, so a call to node each time adds up.
        if isinstance(node, cdk.Stack):
            drop_implied_depends_on(node)


# Keyed by the App object itself: jsii hands back the same Python object for the same app, and
# every root construct has the same ``node.addr``. Weak, so test apps are not kept alive.
_APPS: weakref.WeakKeyDictionary[cdk.App, _AppCompliance] = weakref.WeakKeyDictionary()


def _root_app(scope: IConstruct) -> cdk.App:
    root = scope.node.root
    if not cdk.App.is_app(root):
        raise CdkTrnError(f"compliance needs a construct inside a cdk.App, got {scope.node.path!r}")
    return root  # type: ignore[return-value]


def _state(app: cdk.App) -> _AppCompliance:
    return _APPS.setdefault(app, _AppCompliance())


def enable_compliance(
    app: cdk.App,
    packs: Iterable[Pack | str] | str = DEFAULT_PACKS,
    *,
    verbose: bool = False,
    cache_cloudformation_validate: bool = False,
) -> tuple[Pack, ...]:
    """Register ``packs`` (default: AwsSolutions, NIST 800-53 R5, HIPAA, PCI DSS 3.2.1 and
    TrainiumChecks) as validation plugins of ``app``; returns every pack now enabled.

    Call it before synthesizing. Calling it again adds only packs not yet enabled.
    ``verbose`` puts each rule's explanation into the finding's description.
    ``cache_cloudformation_validate`` is for an app created with
    ``cdk.App(builtin_cloud_formation_validation=False)``: the kit then runs aws-cdk-lib's
    CloudFormation Validate itself, the same report, cached by template content
    (:mod:`cdk_trn.compliance.cfn_validate_cache`). On an app with the built-in validation
    still on, it would run twice.
    """
    if not cdk.App.is_app(app):
        raise CdkTrnError(
            "enable_compliance needs the cdk.App itself (validation plugins live on it)"
        )
    state = _state(app)
    if not state.recorder:  # first, so that cfn-lint starts before the packs run
        state.recorder = True
        cdk.Validations.of(app).add_plugins(_Recorder(app))
        cdk.Aspects.of(app).add(_DropImpliedDependsOn())
    for pack in Pack.parse_all(packs):
        if pack not in state.packs:
            cdk.Validations.of(app).add_plugins(create_pack(pack, app, verbose=verbose))
            state.packs.append(pack)
    if cache_cloudformation_validate and state.validate is None:
        from cdk_trn.compliance.cfn_validate_cache import CachedCloudFormationValidate

        state.validate = CachedCloudFormationValidate(app)
        cdk.Validations.of(app).add_plugins(state.validate)
    return tuple(state.packs)


def enabled_packs(app: cdk.App) -> tuple[Pack, ...]:
    return tuple(_state(app).packs)


def _synthesize(app: cdk.App, *, fresh: bool) -> str:
    """Synthesize ``app`` (again, with ``fresh``: every plugin runs on the current tree) and
    return the assembly directory."""
    try:
        directory: str = app.synth(force=fresh, error_on_duplicate_synth=False).directory
    except RuntimeError as error:
        # aws-cdk-lib raises after writing the assembly and the report; we judge the report.
        # Construct validation errors (``ValidationFailedWithErrors``) come before anything is
        # written: those are the app's errors and propagate.
        if "ValidationFailed" not in str(error) or "ValidationFailedWithErrors" in str(error):
            raise
        directory = app.outdir
    return directory


def synth_checked(
    app: cdk.App,
    *,
    fail_on_warnings: bool = True,
    fail_on_unused_acknowledgments: bool = True,
    cfn_lint: bool = True,
    ignore_cfn_lint: Mapping[str, str] | None = None,
    lint_cache: bool | None = None,
) -> ComplianceReport:
    """Synthesize ``app``, judge it as ``python -m cdk_trn.compliance`` does, and return the
    :class:`ComplianceReport` (pack findings, and cfn-lint's when ``cfn_lint``).

    Raises :class:`ComplianceError` on an open error, an open warning (unless
    ``fail_on_warnings=False``), an unused acknowledgment (unless
    ``fail_on_unused_acknowledgments=False``), whatever aws-cdk-lib does by default.
    ``ignore_cfn_lint`` maps a cfn-lint rule to the reason it is ignored in every template
    (the command line's ``--ignore-cfn-lint RULE=REASON``). cfn-lint's findings are cached by
    template content unless ``lint_cache=False`` or ``CDK_TRN_LINT_CACHE=off``
    (``cdk_trn.compliance.cfn_lint_runner``).

    Under the CDK CLI (``cdk synth``), findings the CLI itself reports are left to it, so its
    per-finding ids are what the user sees; the rest (unused acknowledgments, cfn-lint) ends the
    process with exit code 1 and one line each on stderr, without a traceback.
    """
    state = _state(app)
    if not state.packs:
        raise CdkTrnError("synth_checked needs enable_compliance(app) before it")
    if state.evidence is None:
        if state.validate is not None and lint_cache is not None:
            state.validate.cache = lint_cache
        state.lint_early, state.lint_cache = cfn_lint, lint_cache
        try:
            directory = _synthesize(app, fresh=state.report is None)
        finally:
            state.lint_early = False
        policy = Policy(fail_on_warnings, fail_on_unused_acknowledgments)
        state.evidence = evaluate(
            directory,
            policy=policy,
            cfn_lint=cfn_lint,
            ignore_cfn_lint=ignore_cfn_lint,
            lint_cache=lint_cache,
        )
        state.report = state.evidence.report
    evidence = state.evidence
    if evidence.passed:
        return evidence.report
    if under_cdk_cli():
        print("\n".join(evidence.summary_lines()), file=sys.stderr)
        if any(f.pack in evidence.packs_ran for f in evidence.blocking):
            return evidence.report  # the CDK CLI fails the synth with its own ids
        raise SystemExit(1)
    raise ComplianceError(evidence.failure_message(), evidence.report, evidence)


def _under(path: str, prefix: str) -> bool:
    return not prefix or path == prefix or path.startswith(prefix + "/")


def findings_of(scope: IConstruct, packs: Iterable[Pack | str] | None = None) -> list[Finding]:
    """Findings (open and acknowledged) on ``scope`` and its children, for tests.

    Each call synthesizes the app afresh (``force``), so the packs judge the tree as it is now,
    whatever synthesized it before (``assertions.Template.from_stack`` included): never fewer
    findings. ``packs`` limits the result to those packs (plugin names such as ``"CloudFormation
    Validate"`` are accepted too) and enables any that are missing. Default: the findings of
    every plugin that ran (enabling :data:`DEFAULT_PACKS` if no pack was enabled), plus one
    error finding of pack ``"unused acknowledgment"`` per acknowledgment that covers nothing
    (its ``rule_id`` is the acknowledged id, its ``description`` says why).
    """
    app = _root_app(scope)
    state = _state(app)
    names: set[str] | None = None
    if packs is not None:
        wanted = list(packs)
        plugins = {p for p in wanted if isinstance(p, str) and p == CLOUDFORMATION_VALIDATE}
        chosen = [Pack.parse(p) for p in wanted if p not in plugins]
        names = {p.value for p in chosen} | {str(p) for p in plugins}
        missing = [p for p in dict.fromkeys(chosen) if p not in state.packs]
        if missing:
            enable_compliance(app, missing)
    elif not state.packs:
        enable_compliance(app)
    directory = _synthesize(app, fresh=True)
    evidence = evaluate(directory, cfn_lint=False)
    state.report, state.evidence = evidence.report, None
    prefix = scope.node.path
    unused = [
        Finding(
            rule_id=u.acknowledgment.rule,
            pack=UNUSED_ACKNOWLEDGMENT,
            level="error",
            path=u.acknowledgment.path,
            description=u.why,
        )
        for u in evidence.unused
    ]
    return [
        f
        for f in [*evidence.report.findings, *unused]
        if _under(f.path, prefix) and (names is None or f.pack in names)
    ]
