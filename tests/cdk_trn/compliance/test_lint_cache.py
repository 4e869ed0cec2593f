"""cfn-lint findings cached by template content, and templates linted in parallel.

Every test points ``XDG_CACHE_HOME`` at its own folder, so the user's cache is never read.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from cdk_trn.compliance import cfn_lint_runner
from cdk_trn.compliance.__main__ import main
from cdk_trn.compliance.cfn_lint_runner import (
    CACHE_ENV,
    LintCache,
    LintIssue,
    lint_cache_dir,
    lint_template,
    lint_templates,
)
from cdk_trn.compliance.verdict import evaluate


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(CACHE_ENV, raising=False)
    return tmp_path / "xdg" / "cdk-trn" / "cfn-lint"


def node(instance_type: str = "trn2.48xlarge", unused: tuple[str, ...] = ()) -> dict:
    template: dict = {
        "Resources": {
            "Node": {
                "Type": "AWS::EC2::Instance",
                "Properties": {"InstanceType": instance_type, "ImageId": "ami-0123456789abcdef0"},
            }
        }
    }
    if unused:
        template["Parameters"] = {name: {"Type": "String"} for name in unused}
    return template


#: An error (instance type not offered in eu-west-1) and two warnings (unused parameters).
FINDINGS = (node("trn2.48xlarge", ("Alpha", "Beta")), "eu-west-1")


def entries(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.json"))


def test_cache_lives_under_xdg_cache_home(own_cache):
    assert lint_cache_dir() == own_cache


def test_cache_falls_back_to_home_cache_without_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert lint_cache_dir() == tmp_path / ".cache" / "cdk-trn" / "cfn-lint"


def test_a_hit_returns_the_same_findings_in_the_same_order_without_cfn_lint(monkeypatch):
    first = lint_templates([FINDINGS])
    assert not first[0].cached
    assert [i.rule_id for i in first[0].issues].count("W2001") == 2
    assert any(i.level == "error" for i in first[0].issues)

    def no_cfn_lint(text, region):
        raise AssertionError("cfn-lint ran on a cached template")

    monkeypatch.setattr(cfn_lint_runner._cfn_lint_worker, "lint_text", no_cfn_lint)
    second = lint_templates([FINDINGS])
    assert second[0].cached
    assert second[0].issues == first[0].issues


def test_findings_are_identical_with_and_without_the_cache():
    cold = lint_template(*FINDINGS)
    warm = lint_template(*FINDINGS)
    uncached = lint_template(*FINDINGS, cache=False)
    assert cold == warm == uncached
    assert [str(i) for i in warm] == [str(i) for i in uncached]


def test_changing_one_template_relints_exactly_that_template(tmp_path, own_cache):
    paths = []
    for name, template in (("a", node()), ("b", node(unused=("Alpha",))), ("c", node())):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(template))
        paths.append(path)
    jobs = [(p, "us-east-2") for p in paths]
    assert [r.cached for r in lint_templates(jobs)] == [False, False, False]
    assert [r.cached for r in lint_templates(jobs)] == [True, True, True]
    paths[1].write_text(json.dumps(node(unused=("Alpha", "Beta"))))
    results = lint_templates(jobs)
    assert [r.cached for r in results] == [True, False, True]
    assert [i.rule_id for i in results[1].issues] == ["W2001", "W2001"]
    assert [list(r.issues) for r in results] == [
        lint_template(p, "us-east-2", cache=False) for p in paths
    ]


def test_the_key_holds_region_and_cfn_lint_version(monkeypatch):
    template, _ = FINDINGS
    assert not lint_templates([(template, "us-east-2")])[0].cached
    assert not lint_templates([(template, "eu-west-1")])[0].cached
    assert lint_templates([(template, "us-east-2")])[0].cached
    monkeypatch.setattr(cfn_lint_runner, "cfn_lint_version", lambda: "99.0.0")
    assert not lint_templates([(template, "us-east-2")])[0].cached


def test_a_cfnlintrc_is_part_of_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not lint_templates([FINDINGS])[0].cached
    (tmp_path / ".cfnlintrc").write_text("ignore_checks:\n  - W2001\n")
    result = lint_templates([FINDINGS])[0]
    assert not result.cached
    assert "W2001" not in [i.rule_id for i in result.issues]


def test_a_cfnlintrc_loading_rules_from_elsewhere_turns_the_cache_off(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".cfnlintrc").write_text("registry_schemas: []\n")
    assert LintCache().usable is False
    assert not lint_templates([(node(), "us-east-2")])[0].cached
    assert not lint_templates([(node(), "us-east-2")])[0].cached


@pytest.mark.parametrize("value", ["off", "0", "false", "no", "OFF"])
def test_the_environment_variable_turns_the_cache_off(monkeypatch, own_cache, value):
    monkeypatch.setenv(CACHE_ENV, value)
    assert not lint_templates([FINDINGS])[0].cached
    assert not lint_templates([FINDINGS])[0].cached
    assert entries(own_cache) == []


def test_a_damaged_entry_is_linted_again_and_replaced(own_cache):
    expected = lint_template(*FINDINGS)
    [entry] = entries(own_cache)
    entry.write_text('{"format": 1, "issues": [["W2001"')
    result = lint_templates([FINDINGS])[0]
    assert not result.cached and list(result.issues) == expected
    assert lint_templates([FINDINGS])[0].cached
    assert json.loads(entry.read_text())["issues"][0][0] == expected[0].rule_id


def test_an_unwritable_cache_only_makes_linting_slower(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert lint_template(*FINDINGS) == lint_template(*FINDINGS, cache=False)


def test_readers_never_see_a_half_written_entry(own_cache):
    """Two synths at once: one rewrites an entry while the other reads it."""
    cache = LintCache()
    key = cache.key("template", "us-east-2")
    issues = [LintIssue("W2001", "warning", "x" * 2000, f"Parameters/P{n}", n) for n in range(200)]
    cache.put(key, "us-east-2", issues)
    seen: list[object] = []

    def write() -> None:
        for _ in range(100):
            cache.put(key, "us-east-2", issues)

    writer = threading.Thread(target=write)
    writer.start()
    while writer.is_alive():
        seen.append(cache.get(key))
    writer.join()
    assert seen and all(s == tuple(issues) for s in seen)
    assert [p.name for p in own_cache.rglob(".tmp-*")] == []


def test_parallel_workers_give_the_sequential_findings_in_order():
    templates = [
        FINDINGS,
        (node(), "us-east-2"),
        (node("trn2.96xlarge"), "us-east-2"),
        (node(unused=("Gamma",)), "us-east-2"),
    ]
    parallel = lint_templates(templates, cache=False, jobs=2)
    sequential = lint_templates(templates, cache=False, jobs=1)
    assert [r.issues for r in parallel] == [r.issues for r in sequential]
    assert [len(r.issues) for r in sequential] == [3, 0, 1, 1]


def test_a_worker_failure_names_the_template_and_the_cause():
    with pytest.raises(RuntimeError, match=r"template #2(.|\n)*nowhere-1'\] are unsupported"):
        lint_templates([(node(), "us-east-2"), (node(), "nowhere-1")], cache=False, jobs=2)


def write_assembly(directory: Path, templates: dict[str, dict]) -> None:
    artifacts = {
        name: {
            "type": "aws:cloudformation:stack",
            "environment": "aws://unknown-account/us-east-2",
            "properties": {"templateFile": f"{name}.template.json"},
        }
        for name in templates
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "manifest.json").write_text(json.dumps({"artifacts": artifacts}))
    for name, template in templates.items():
        (directory / f"{name}.template.json").write_text(json.dumps(template, indent=1))


def test_the_verdict_relints_only_the_changed_template(tmp_path):
    assembly = tmp_path / "cdk.out"
    write_assembly(assembly, {"Storage": node(), "Cluster": node(unused=("A",)), "Vault": node()})
    assert evaluate(assembly).relinted == ("Storage", "Cluster", "Vault")
    warm = evaluate(assembly)
    assert warm.relinted == ()
    write_assembly(
        assembly, {"Storage": node(), "Cluster": node(unused=("A", "B")), "Vault": node()}
    )
    changed = evaluate(assembly)
    assert changed.relinted == ("Cluster",)
    fresh = evaluate(assembly, lint_cache=False)
    assert fresh.relinted == ("Storage", "Cluster", "Vault")
    assert changed.report.findings == fresh.report.findings
    assert changed.linted == fresh.linted
    assert [f.rule_id for f in changed.report.findings] == ["W2001", "W2001"]


def test_the_command_line_says_what_came_from_the_cache(tmp_path, capsys):
    assembly = tmp_path / "cdk.out"
    write_assembly(assembly, {"One": node(), "Two": node()})
    main([str(assembly), "--allow-unused-acknowledgments"])
    assert "\ncfn-lint:\n" in capsys.readouterr().out
    main([str(assembly)])
    assert "cfn-lint (2 of 2 from the cache):" in capsys.readouterr().out
    main([str(assembly), "--no-lint-cache"])
    assert "\ncfn-lint:\n" in capsys.readouterr().out


def test_linting_started_early_is_collected_not_repeated(monkeypatch, own_cache):
    templates = [FINDINGS, (node(), "us-east-2")]
    expected = [r.issues for r in lint_templates(templates, cache=False, jobs=1)]
    assert cfn_lint_runner.start_linting(templates) == 2

    def no_second_lint(text, region):
        raise AssertionError("a template begun early was linted again")

    monkeypatch.setattr(cfn_lint_runner._cfn_lint_worker, "lint_text", no_second_lint)
    results = lint_templates(templates)
    assert [r.issues for r in results] == expected
    assert [r.cached for r in results] == [False, False]
    assert [r.cached for r in lint_templates(templates)] == [True, True]
    assert cfn_lint_runner.start_linting(templates) == 0


def test_a_failure_of_early_linting_surfaces_when_collected():
    assert cfn_lint_runner.start_linting([(node(), "nowhere-1")], cache=False) == 1
    with pytest.raises(RuntimeError, match="unsupported"):
        lint_templates([(node(), "nowhere-1")], cache=False)
