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

import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

import aws_cdk as cdk
from constructs import IConstruct

from cdk_trn.compliance.packs import CLOUDFORMATION_VALIDATE, DEFAULT_PACKS, Pack, create_pack
from cdk_trn.compliance.report import ComplianceReport, Finding, load_report, write_packs_file
from cdk_trn.errors import CdkTrnError


class ComplianceError(CdkTrnError):
    """The synthesized app has unacknowledged findings; ``report`` holds all of them."""

    def __init__(self, message: str, report: ComplianceReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class _AppCompliance:
    packs: list[Pack] = field(default_factory=list)
    report: ComplianceReport | None = None


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
    app: cdk.App, packs: Iterable[Pack | str] | str = DEFAULT_PACKS, *, verbose: bool = False
) -> tuple[Pack, ...]:
    """Register ``packs`` (default: AwsSolutions, NIST 800-53 R5, HIPAA, PCI DSS 3.2.1 and
    TrainiumChecks) as validation plugins of ``app``; returns every pack now enabled.

    Call it before synthesizing. Calling it again adds only packs not yet enabled.
    ``verbose`` puts each rule's explanation into the finding's description.
    """
    if not cdk.App.is_app(app):
        raise CdkTrnError(
            "enable_compliance needs the cdk.App itself (validation plugins live on it)"
        )
    state = _state(app)
    if state.report is not None:
        raise CdkTrnError("enable_compliance must be called before the app is synthesized")
    for pack in Pack.parse_all(packs):
        if pack not in state.packs:
            cdk.Validations.of(app).add_plugins(create_pack(pack, app, verbose=verbose))
            state.packs.append(pack)
    return tuple(state.packs)


def enabled_packs(app: cdk.App) -> tuple[Pack, ...]:
    return tuple(_state(app).packs)


def _synthesize(app: cdk.App) -> ComplianceReport:
    state = _state(app)
    if state.report is not None:
        return state.report
    try:
        directory = app.synth().directory
    except RuntimeError as error:
        # aws-cdk-lib raises after writing the assembly and the report; we judge the report.
        # Construct validation errors (``ValidationFailedWithErrors``) come before anything is
        # written: those are the app's errors and propagate.
        if "ValidationFailed" not in str(error) or "ValidationFailedWithErrors" in str(error):
            raise
        directory = app.outdir
    packs = [pack.value for pack in state.packs]
    write_packs_file(directory, packs)
    state.report = load_report(directory) or ComplianceReport((), tuple(packs))
    return state.report


def synth_checked(app: cdk.App, *, fail_on_warnings: bool = False) -> ComplianceReport:
    """Synthesize ``app`` and return its :class:`ComplianceReport`.

    Raises :class:`ComplianceError` if any finding of level error (or warning, with
    ``fail_on_warnings``) is not acknowledged, whatever aws-cdk-lib does by default.
    """
    if not _state(app).packs:
        raise CdkTrnError("synth_checked needs enable_compliance(app) before it")
    report = _synthesize(app)
    blocking = report.blocking(fail_on_warnings=fail_on_warnings)
    if blocking:
        raise ComplianceError(report.failure_message(blocking), report)
    return report


def _under(path: str, prefix: str) -> bool:
    return not prefix or path == prefix or path.startswith(prefix + "/")


def findings_of(scope: IConstruct, packs: Iterable[Pack | str] | None = None) -> list[Finding]:
    """Findings (open and acknowledged) on ``scope`` and its children, for tests.

    Synthesizes the app once (later calls reuse the result). ``packs`` limits the result to
    those packs (plugin names such as ``"CloudFormation Validate"`` are accepted too) and enables
    any that are missing, which is possible only before the first synthesis. Default: the
    findings of every plugin that ran (enabling :data:`DEFAULT_PACKS` if no pack was enabled).
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
            if state.report is not None:
                raise CdkTrnError(
                    f"packs {[p.value for p in missing]} were not enabled before the app was "
                    "synthesized; call enable_compliance(app, packs=...) first"
                )
            enable_compliance(app, missing)
    elif not state.packs and state.report is None:
        enable_compliance(app)
    report = _synthesize(app)
    prefix = scope.node.path
    return [
        f for f in report.findings if _under(f.path, prefix) and (names is None or f.pack in names)
    ]
