"""Reading validation reports: open and acknowledged findings, plugin crashes, the legacy format."""

from __future__ import annotations

from cdk_trn.compliance.report import PLUGIN_FAILED, parse_report

VIOLATION = {
    "ruleName": "AwsSolutions-EC23",
    "description": "The Security Group allows for 0.0.0.0/0 or ::/0 inbound access.",
    "severity": "error",
    "violatingConstructs": [{"constructPath": "S/Sg/Resource"}, {"constructPath": "S/Other"}],
}
SUPPRESSED = {
    "ruleName": "AwsSolutions-S1",
    "description": "The S3 Bucket has server access logs disabled.",
    "severity": "error",
    "violatingConstructs": [{"constructPath": "S/Logs/Resource"}],
    "acknowledgedId": "AwsSolutions::AwsSolutions-S1",
    "reason": "this bucket is the access log destination",
    "acknowledgedAt": "S/Logs",
}


def test_each_violating_construct_is_one_open_finding():
    report = parse_report(
        {"pluginReports": [{"pluginName": "AwsSolutions", "violations": [VIOLATION]}]}
    )
    assert [(f.rule_id, f.path, f.acknowledged) for f in report.findings] == [
        ("AwsSolutions-EC23", "S/Sg/Resource", False),
        ("AwsSolutions-EC23", "S/Other", False),
    ]
    assert len(report.blocking()) == 2


def test_suppressed_violation_is_an_acknowledged_finding_with_reason_and_place():
    report = parse_report(
        {
            "pluginReports": [
                {
                    "pluginName": "AwsSolutions",
                    "violations": [],
                    "suppressedViolations": [SUPPRESSED],
                }
            ]
        }
    )
    [finding] = report.acknowledged
    assert (finding.reason, finding.acknowledged_at) == (SUPPRESSED["reason"], "S/Logs")
    assert report.blocking() == []


def test_warnings_block_only_when_asked():
    warning = dict(VIOLATION, severity="warning", violatingConstructs=[{"constructPath": "S/A"}])
    report = parse_report({"pluginReports": [{"pluginName": "P", "violations": [warning]}]})
    assert report.blocking() == []
    assert len(report.blocking(fail_on_warnings=True)) == 1


def test_crashed_plugin_is_a_blocking_finding():
    crashed = {
        "pluginName": "TrainiumChecks",
        "conclusion": "failure",
        "violations": [],
        "metadata": {"error": "Validation plugin 'TrainiumChecks' failed: boom"},
    }
    [finding] = parse_report({"pluginReports": [crashed]}).blocking()
    assert (finding.rule_id, finding.pack) == (PLUGIN_FAILED, "TrainiumChecks")


def test_legacy_policy_validation_report_is_read():
    legacy = {
        "title": "Validation Report",
        "pluginReports": [
            {
                "summary": {"pluginName": "AwsSolutions", "status": "failure"},
                "violations": [VIOLATION],
            }
        ],
    }
    report = parse_report(legacy)
    assert {f.pack for f in report.findings} == {"AwsSolutions"}


def test_enabled_packs_without_findings_are_listed_in_the_summary():
    report = parse_report({"pluginReports": []}, packs=["AwsSolutions", "TrainiumChecks"])
    assert report.summary_lines() == [
        "Compliance: 2 packs, 0 unacknowledged findings, 0 acknowledged",
        "  AwsSolutions    0 errors, 0 warnings, 0 acknowledged",
        "  TrainiumChecks  0 errors, 0 warnings, 0 acknowledged",
    ]
