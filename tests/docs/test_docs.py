"""The documentation names only what the project has.

README.md stays a first screen and a tour (under 250 lines); docs/ has the pages the README links;
every repository path the pages name (in backticks or as a relative link, with its #anchor) exists;
every `make <target>` they show is a target of the Makefile; the table of TrainiumChecks rules
in docs/compliance.md is the rules' own ids, levels and texts; and the context-key table of
docs/configuration.md has exactly the keys the default app reads.

The table is generated from the rules: ``python tests/docs/test_docs.py`` prints it.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = (
    "architecture.md",
    "configuration.md",
    "slurm.md",
    "security.md",
    "compliance.md",
    "acceptance.md",
    "operations.md",
)
#: Directories that exist only after a command ran (synth, make, the local twin).
GENERATED_ROOTS = {
    "cdk.out",
    "cdk.out.oldest",
    ".venv",
    ".venv-oldest",
    ".venv-host39",
    "node_modules",
    ".local-cluster",
}
#: Suffixes of the files a repository path names (a token with one of them is a path candidate).
SOURCE_SUFFIXES = (".py", ".sh", ".sbatch", ".md", ".toml", ".json", ".txt", ".service", ".timer")
#: Characters that make a backticked token a pattern, a placeholder or a command, not a path.
NOT_A_PATH = re.compile(r"[\s<>*$~:…{}\[\]@=|,()'\"]")

FENCE = re.compile(r"^[ \t]*```.*?^[ \t]*```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
MAKE = re.compile(r"(?<![\w-])make ([a-z][\w-]*)")


def documents() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return FENCE.sub("", text)


def tracked_top_level() -> set[str]:
    """The first path component of every file the repository has (tracked or, outside git, on
    disk), e.g. ``cdk_trn``, ``Makefile``, ``.ci``."""
    try:
        listed = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        listed = [p.name for p in ROOT.iterdir()]
    return {name.split("/", 1)[0] for name in listed} | {"docs"}


def _is_path_like(token: str) -> bool:
    return not NOT_A_PATH.search(token) and not token.startswith("/") and "//" not in token


def repository_paths(text: str) -> set[str]:
    """The repository paths a page names: backticked tokens (outside code blocks) with a ``/``
    whose first component is a top-level entry of the repository or whose name ends in a source
    suffix, and, in code blocks (commands, examples), words with a ``/`` whose first component
    is a top-level entry. Absolute paths, URLs, patterns, placeholders and what only a command
    creates (``cdk.out``, ``.local-cluster``) are not repository paths."""
    top = tracked_top_level()
    found = set()
    for token in CODE_SPAN.findall(prose(text)):
        token = token.rstrip(".")
        if "/" not in token or not _is_path_like(token):
            continue
        first = token.split("/", 1)[0]
        if first in GENERATED_ROOTS:
            continue
        if first in top or token.rstrip("/").endswith(SOURCE_SUFFIXES + ("Dockerfile",)):
            found.add(token)
    for block in FENCE.findall(text):
        for word in block.split():
            word = word.strip("`'\"();,")
            if "/" in word and _is_path_like(word) and word.split("/", 1)[0] in top:
                found.add(word)
    return found


#: Bare file names the pages mention that are not files of this repository: what runs or is
#: written elsewhere (a planted module, a run's summary, CDK's report) or another project's file.
NOT_REPOSITORY_FILES = {
    "json.py",  # the module a hostile job plants (security.md)
    "imds-access.sh",  # ParallelCluster's
    "summary.json",  # an acceptance run's, in S3
    "validation-report.json",  # CDK's, in cdk.out
}


def repository_file_names(text: str) -> set[str]:
    """Backticked bare file names (no ``/``) with a source suffix, outside code blocks."""
    names = set()
    for token in CODE_SPAN.findall(prose(text)):
        token = token.rstrip(".")
        if "/" in token or not _is_path_like(token) or token in NOT_REPOSITORY_FILES:
            continue
        if token.endswith(SOURCE_SUFFIXES) or token in ("Makefile", "Dockerfile"):
            names.add(token)
    return names


def tracked_names() -> set[str]:
    try:
        listed = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        listed = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if p.is_file()]
    return {name.rsplit("/", 1)[-1] for name in listed}


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", prose(path.read_text()), re.MULTILINE)
    return {github_anchor(h) for h in headings}


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):(?!=)", text, re.MULTILINE))


# --- TrainiumChecks: the table comes from the rules themselves ------------------------------


def trainium_rules() -> list:
    """Every TrainiumChecks rule the code defines: the ``Rule`` objects of every module under
    ``cdk_trn.compliance.rules`` (one rule per file or several), ordered by number."""
    rules_package = importlib.import_module("cdk_trn.compliance.rules")
    rule_type = rules_package.Rule
    found = {}
    modules = [rules_package]
    for info in pkgutil.walk_packages(rules_package.__path__, rules_package.__name__ + "."):
        modules.append(importlib.import_module(info.name))
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, rule_type):
                found[value.id] = value
    return sorted(found.values(), key=lambda rule: int(re.sub(r"\D", "", rule.id)))


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def trainium_checks_rows() -> list[str]:
    return [
        f"| `TrainiumChecks-{rule.id}` | {rule.level} | {_cell(rule.info)} | "
        + ", ".join(f"`{t}`" for t in rule.resource_types)
        + " |"
        for rule in trainium_rules()
    ]


def trainium_checks_table() -> str:
    header = [
        "| rule | level | what it checks (a finding means) | resources |",
        "|---|---|---|---|",
    ]
    return "\n".join(header + trainium_checks_rows())


class _ContextRecorder:
    """Test double of a construct's ``node``: records the context keys asked for, has none."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def try_get_context(self, key: str) -> None:
        self.asked.add(key)


def context_keys_read() -> set[str]:
    """The context keys the default app reads: those ``AppConfig.from_context`` asks for, and any
    literal key ``app.py`` or ``stacks/`` passes to ``try_get_context``."""
    from stacks.config import AppConfig

    recorder = _ContextRecorder()
    AppConfig.from_context(recorder)  # type: ignore[arg-type]
    keys = set(recorder.asked)
    for path in (ROOT / "app.py", *sorted((ROOT / "stacks").rglob("*.py"))):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"try_get_context", "get_context"}
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                keys.add(node.args[0].value)
    return keys


def context_keys_documented() -> set[str]:
    """The keys in the first column of docs/configuration.md's context-key table."""
    text = (DOCS / "configuration.md").read_text()
    section = text.split("\n## Context keys of the default app\n", 1)[1].split("\n## ", 1)[0]
    return {
        key
        for line in section.splitlines()
        if line.startswith("| `")
        for key in CODE_SPAN.findall(line.split("|")[1])
    }


# --- the tests ------------------------------------------------------------------------------


def test_the_readme_is_under_250_lines():
    assert len(README.read_text().splitlines()) < 250


def test_the_readme_first_screen_shows_make_synth_and_make_test():
    first_screen = "\n".join(README.read_text().splitlines()[:50])
    assert "$ make synth" in first_screen
    assert "$ make test" in first_screen


@pytest.mark.parametrize("page", PAGES)
def test_the_docs_page_exists_and_the_readme_links_it(page):
    assert (DOCS / page).is_file()
    assert f"(docs/{page})" in README.read_text()


@pytest.mark.parametrize("document", documents(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_repository_path_named_exists(document):
    missing = sorted(
        path for path in repository_paths(document.read_text()) if not (ROOT / path).exists()
    )
    assert missing == []


@pytest.mark.parametrize("document", documents(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_file_named_by_its_name_alone_is_a_file_of_the_repository(document):
    names = tracked_names() | {p.name for p in DOCS.glob("*.md")}
    assert sorted(repository_file_names(document.read_text()) - names) == []


@pytest.mark.parametrize("document", documents(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(document):
    broken = []
    for target in LINK.findall(prose(document.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (document.parent / path).resolve() if path else document
        if not file.exists() or (file.suffix == ".md" and anchor not in anchors(file) | {""}):
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("document", documents(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_make_target_shown_is_in_the_makefile(document):
    text = document.read_text()
    code = FENCE.findall(text) + CODE_SPAN.findall(prose(text))
    shown = {target for block in code for target in MAKE.findall(block)}
    assert sorted(shown - makefile_targets()) == []


def test_no_document_cites_a_file_outside_the_repository():
    for document in documents():
        text = document.read_text()
        assert "FACTS.md" not in text, document.name
        assert "../shared" not in text, document.name


def test_the_trainium_checks_table_lists_exactly_the_rules_of_the_code():
    """Regenerate the table with ``python tests/docs/test_docs.py`` when a rule changes."""
    documented = [
        line
        for line in (DOCS / "compliance.md").read_text().splitlines()
        if line.startswith("| `TrainiumChecks-")
    ]
    assert documented == trainium_checks_rows()


def test_the_context_key_table_has_every_key_the_default_app_reads():
    read, documented = context_keys_read(), context_keys_documented()
    assert "nodes" in read and "compliancePacks" in read  # the recorder and the scan both see
    assert sorted(read - documented) == [], "context keys read but not documented"
    assert sorted(documented - read) == [], "context keys documented but never read"


def test_the_trainium_checks_rules_are_the_pack_s_rules():
    from cdk_trn.compliance.trainium_checks import RULES

    assert [rule.id for rule in trainium_rules()] == [rule.id for rule in RULES]


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(trainium_checks_table())
