"""cfn-lint as a library: the errors and warnings of templates, each for its region.

Used by ``python -m cdk_trn.compliance`` (and ``synth_checked``) on every template of an
assembly, and by the test suite to assert that a template has zero errors and zero warnings.
Informational findings (``I...``) are not returned. Per-resource
``Metadata.cfn-lint.config.ignore_checks`` is honoured by cfn-lint itself; :func:`ignored_checks`
lists those silences so they can be shown with reasons.

Two things keep a synth fast:

* **A cache by content.** cfn-lint's findings depend on the template's bytes, the region, the
  cfn-lint version (rules and schemas ship with it) and cfn-lint's options (here: the region
  only, plus any ``.cfnlintrc`` in the home or working directory, whose bytes are part of the
  key). A result is stored under that key in :func:`lint_cache_dir` and a later lint of the same
  bytes returns it without running cfn-lint: the same findings in the same order with the same
  wording. Each entry is written to a temporary file and renamed into place, so two synths at
  once never read half an entry. ``CDK_TRN_LINT_CACHE=off`` (or ``cache=False``,
  ``--no-lint-cache``) turns it off. Silences in resource metadata are part of the template
  bytes; rules ignored for every template (``--ignore-cfn-lint``) are applied to the findings
  after the cache, so they need no key.
* **Parallel workers.** Templates that are not in the cache are linted by worker processes, at
  most one per core, each importing cfn-lint once (about 0.6 s) and then taking the next
  template; the results come back in the order asked, identical to linting them one after the
  other in this process. ``CDK_TRN_LINT_JOBS=1`` lints in this process.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cdk_trn.compliance import _cfn_lint_worker
from cdk_trn.compliance._cfn_lint_worker import RawIssue

#: cfn-lint's own default when no region is known.
DEFAULT_REGION = "us-east-1"
#: ``off``, ``0``, ``false`` or ``no`` turns the findings cache off.
CACHE_ENV = "CDK_TRN_LINT_CACHE"
#: How many worker processes may lint at once (default: the cores this process may use).
JOBS_ENV = "CDK_TRN_LINT_JOBS"
#: Bumped whenever what is cached, or how it is keyed, changes.
CACHE_FORMAT = 1
_OFF = frozenset({"off", "0", "false", "no"})
#: cfn-lint configuration files, looked up in the home and the working directory as cfn-lint does.
_RC_NAMES = (".cfnlintrc", ".cfnlintrc.yaml", ".cfnlintrc.yml")
#: Options of a ``.cfnlintrc`` that load files the key cannot see: no caching with them.
_UNKEYED_OPTIONS = re.compile(r"append_rules|custom_rules|override_spec|registry_schemas")

TemplateSource = Mapping[str, Any] | str | Path


@dataclass(frozen=True)
class LintIssue:
    rule_id: str
    #: ``error`` (E...) or ``warning`` (W...).
    level: str
    message: str
    #: Where in the template: ``Resources/Node/Properties/InstanceType``.
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.rule_id} {self.level} at {self.path} (line {self.line}): {self.message}"


@dataclass(frozen=True)
class LintResult:
    """cfn-lint's findings for one template, and whether they came from the cache."""

    issues: tuple[LintIssue, ...]
    cached: bool


def _template_text(template: TemplateSource) -> str:
    if isinstance(template, Mapping):
        return json.dumps(template, indent=1)
    return Path(template).read_text(encoding="utf-8")


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/cdk-trn`` (``~/.cache/cdk-trn`` without it)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
    return root / "cdk-trn"


def lint_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/cdk-trn/cfn-lint`` (``~/.cache/cdk-trn/cfn-lint`` without it)."""
    return user_cache_dir() / "cfn-lint"


def write_atomically(path: Path, data: Any) -> None:
    """``data`` as JSON at ``path``, written to a temporary file beside it and renamed into
    place, so a reader sees the old entry or the new one, never a part. A cache that cannot be
    written only makes the next synth slower: errors are ignored."""
    temp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out)
        os.replace(temp, path)
        temp = None
    except OSError:
        pass
    finally:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)


def lint_cache_enabled(cache: bool | None = None) -> bool:
    """``cache`` if given, else whether :data:`CACHE_ENV` leaves the cache on."""
    if cache is not None:
        return cache
    return os.environ.get(CACHE_ENV, "").strip().lower() not in _OFF


def cfn_lint_version() -> str:
    """The installed cfn-lint's version, read without importing cfn-lint (about 0.6 s)."""
    spec = importlib.util.find_spec("cfnlint")
    if spec is not None and spec.submodule_search_locations:
        version_file = Path(list(spec.submodule_search_locations)[0], "version.py")
        if version_file.is_file():
            found = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", version_file.read_text())
            if found:
                return found.group(1)
    from cfnlint.version import __version__

    return str(__version__)


def _rc_files() -> list[bytes] | None:
    """The bytes of the ``.cfnlintrc`` files cfn-lint would read, or ``None`` when one loads
    rules or schemas from elsewhere (their content is not in the key, so nothing is cached)."""
    found: list[bytes] = []
    for folder in (Path.home(), Path.cwd()):
        for name in _RC_NAMES:
            path = folder / name
            if path.is_file():
                data = path.read_bytes()
                if _UNKEYED_OPTIONS.search(data.decode("utf-8", "replace")):
                    return None
                found.append(str(path).encode() + b"\0" + data)
                break
    return found


class LintCache:
    """Findings stored by content key, one JSON file per template version and region."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or lint_cache_dir()
        self._version = cfn_lint_version()
        self._rc = _rc_files()

    @property
    def usable(self) -> bool:
        return self._rc is not None

    def key(self, text: str, region: str) -> str:
        digest = hashlib.sha256()
        header = {"format": CACHE_FORMAT, "cfn-lint": self._version, "regions": [region]}
        digest.update(json.dumps(header, sort_keys=True).encode() + b"\0")
        for rc in self._rc or []:
            digest.update(hashlib.sha256(rc).digest())
        digest.update(b"\0" + text.encode("utf-8"))
        return digest.hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> tuple[LintIssue, ...] | None:
        try:
            entry = json.loads(self._path(key).read_text(encoding="utf-8"))
            if entry.get("format") != CACHE_FORMAT or entry.get("key") != key:
                return None
            return tuple(LintIssue(*_raw(issue)) for issue in entry["issues"])
        except (OSError, ValueError, TypeError, KeyError):
            return None  # absent, or not an entry of this format: lint again

    def put(self, key: str, region: str, issues: Sequence[LintIssue]) -> None:
        """Store ``issues`` atomically; a cache that cannot be written is only slower."""
        entry = {
            "format": CACHE_FORMAT,
            "key": key,
            "cfn-lint": self._version,
            "region": region,
            "issues": [[i.rule_id, i.level, i.message, i.path, i.line] for i in issues],
        }
        write_atomically(self._path(key), entry)


def _raw(issue: Sequence[Any]) -> RawIssue:
    rule_id, level, message, path, line = issue
    return (str(rule_id), str(level), str(message), str(path), int(line))


def lint_jobs() -> int:
    """Worker processes at most: :data:`JOBS_ENV`, else the cores this process may run on."""
    configured = os.environ.get(JOBS_ENV, "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class _Worker:
    """One ``_cfn_lint_worker`` process: a request line in, a reply line out."""

    def __init__(self) -> None:
        # -P: the worker's folder (cdk_trn/compliance) must not shadow top-level modules.
        self.process = subprocess.Popen(
            [sys.executable, "-P", _cfn_lint_worker.__file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )

    def lint(self, text: str, region: str) -> list[RawIssue]:
        stdin: IO[str] | None = self.process.stdin
        stdout: IO[str] | None = self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(json.dumps({"text": text, "region": region}) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"the cfn-lint worker ended with exit code {self.process.wait()}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"cfn-lint failed in a worker:\n{reply['error']}")
        return [_raw(issue) for issue in reply["issues"]]

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _lint_parallel(jobs: Sequence[tuple[str, str]], workers: int) -> list[list[RawIssue]]:
    """``lint_text`` of each ``(text, region)``, by up to ``workers`` processes, in order."""
    results: list[list[RawIssue] | None] = [None] * len(jobs)
    failures: list[tuple[int, BaseException]] = []
    pending: queue.Queue[int] = queue.Queue()
    for index in range(len(jobs)):
        pending.put(index)

    def drain(worker: _Worker) -> None:
        try:
            while not failures:
                try:
                    index = pending.get_nowait()
                except queue.Empty:
                    return
                try:
                    results[index] = worker.lint(*jobs[index])
                except Exception as error:  # noqa: BLE001 - raised below, for the template
                    failures.append((index, error))
        finally:
            worker.close()

    started = [_Worker() for _ in range(min(workers, len(jobs)))]
    threads = [threading.Thread(target=drain, args=(w,), daemon=True) for w in started]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        index, error = min(failures, key=lambda f: f[0])
        raise RuntimeError(f"cfn-lint of template #{index + 1}: {error}") from error
    return [r if r is not None else [] for r in results]


#: Lints begun by :func:`start_linting`, by (sha256 of the text, region), not yet collected.
_IN_FLIGHT: dict[tuple[str, str], Future[tuple[LintIssue, ...]]] = {}
_IN_FLIGHT_LOCK = threading.Lock()


def _ident(text: str, region: str) -> tuple[str, str]:
    return hashlib.sha256(text.encode("utf-8")).hexdigest(), region


def start_linting(
    templates: Sequence[tuple[TemplateSource, str | None]],
    *,
    cache: bool | None = None,
    jobs: int | None = None,
) -> int:
    """Begin linting, in worker processes, the templates that are not in the cache, and return
    how many. The next :func:`lint_templates` of the same text and region waits for the result
    instead of linting again (and the cache gets it either way). A synth calls this as soon as
    the templates are written, so cfn-lint runs while aws-cdk-lib validates; it uses one worker
    fewer than the cores (default), as aws-cdk-lib's node process is busy meanwhile."""
    texts = [(_template_text(t), region or DEFAULT_REGION) for t, region in templates]
    store = LintCache() if lint_cache_enabled(cache) else None
    if store is not None and not store.usable:
        store = None
    todo: list[tuple[str, str, Future[tuple[LintIssue, ...]]]] = []
    with _IN_FLIGHT_LOCK:
        for text, region in dict.fromkeys(texts):
            ident = _ident(text, region)
            if ident in _IN_FLIGHT or (store and store.get(store.key(text, region)) is not None):
                continue
            future: Future[tuple[LintIssue, ...]] = Future()
            _IN_FLIGHT[ident] = future
            todo.append((text, region, future))
    if not todo:
        return 0

    def run() -> None:
        try:
            # The synth's own node process keeps a core busy meanwhile: one worker fewer.
            workers = max(1, lint_jobs() - 1) if jobs is None else max(1, jobs)
            raw = _lint_parallel([(text, region) for text, region, _ in todo], workers)
        except BaseException as error:  # noqa: BLE001 - handed to whoever collects the result
            for _, _, future in todo:
                future.set_exception(error)
            return
        for (text, region, future), found in zip(todo, raw, strict=True):
            issues = tuple(LintIssue(*issue) for issue in found)
            if store is not None:
                store.put(store.key(text, region), region, issues)
            future.set_result(issues)

    threading.Thread(target=run, name="cdk-trn-cfn-lint", daemon=True).start()
    return len(todo)


def _collect(text: str, region: str) -> tuple[LintIssue, ...] | None:
    with _IN_FLIGHT_LOCK:
        future = _IN_FLIGHT.pop(_ident(text, region), None)
    return None if future is None else future.result()


def lint_templates(
    templates: Sequence[tuple[TemplateSource, str | None]],
    *,
    cache: bool | None = None,
    jobs: int | None = None,
) -> list[LintResult]:
    """cfn-lint's errors and warnings for each ``(template, region)``, in the order given.

    Templates found in the cache are not linted; the others are linted by up to ``jobs``
    worker processes (default :func:`lint_jobs`), or in this process when one is left or
    ``jobs`` is 1, and stored in the cache.
    """
    texts = [(_template_text(t), region or DEFAULT_REGION) for t, region in templates]
    store = LintCache() if lint_cache_enabled(cache) else None
    if store is not None and not store.usable:
        store = None
    keys = [store.key(text, region) if store else "" for text, region in texts]
    results: list[LintResult | None] = [None] * len(texts)
    missing: list[int] = []
    for index, key in enumerate(keys):
        begun = _collect(*texts[index])
        if begun is not None:
            results[index] = LintResult(begun, cached=False)
            continue
        hit = store.get(key) if store else None
        if hit is not None:
            results[index] = LintResult(hit, cached=True)
        else:
            missing.append(index)
    workers = lint_jobs() if jobs is None else max(1, jobs)
    to_lint = [texts[i] for i in missing]
    if len(to_lint) > 1 and workers > 1:
        raw = _lint_parallel(to_lint, workers)
    else:
        raw = [_cfn_lint_worker.lint_text(text, region) for text, region in to_lint]
    for index, found in zip(missing, raw, strict=True):
        issues = tuple(LintIssue(*issue) for issue in found)
        results[index] = LintResult(issues, cached=False)
        if store is not None:
            store.put(keys[index], texts[index][1], issues)
    return [r for r in results if r is not None]


def lint_template(
    template: TemplateSource, region: str | None, *, cache: bool | None = None
) -> list[LintIssue]:
    """cfn-lint's errors and warnings for ``template`` (a dict or a file path) in ``region``."""
    [result] = lint_templates([(template, region)], cache=cache, jobs=1)
    return list(result.issues)


def ignored_checks(template: TemplateSource) -> list[tuple[str, str, str]]:
    """``(logical id, rule id, reason)`` for each check silenced in a resource's Metadata.

    The reason comes from ``Metadata["cdk-trn:acknowledged"][rule]`` when the resource says why.
    """
    data = template if isinstance(template, Mapping) else json.loads(_template_text(template))
    silenced = []
    for logical_id, body in (data.get("Resources") or {}).items():
        metadata = body.get("Metadata") or {}
        config = (metadata.get("cfn-lint") or {}).get("config") or {}
        reasons = metadata.get("cdk-trn:acknowledged") or {}
        for rule in config.get("ignore_checks", []):
            silenced.append((logical_id, rule, str(reasons.get(rule, "(no reason given)"))))
    return silenced
