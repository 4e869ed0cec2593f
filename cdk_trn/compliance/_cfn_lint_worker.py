"""cfn-lint on one template text: the function, and the worker process that runs it.

Imports nothing of cdk_trn or aws-cdk-lib, so a worker started as a script
(``python -P _cfn_lint_worker.py``) pays for cfn-lint's import only. The worker reads one JSON
request a line (``{"text": ..., "region": ...}``) on stdin and answers each with one JSON line:
``{"issues": [[rule_id, level, message, path, line], ...]}`` or ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any

#: One finding as plain data: rule id, level, message, path, line.
RawIssue = tuple[str, str, str, str, int]


def lint_text(text: str, region: str) -> list[RawIssue]:
    """cfn-lint's errors and warnings for the template ``text`` in ``region``, in cfn-lint's
    order. Informational findings (``I...``) are left out."""
    from cfnlint.api import ManualArgs, lint

    issues: list[RawIssue] = []
    for match in lint(text, config=ManualArgs(regions=[region])):
        rule_id = match.rule.id
        if rule_id[:1] not in ("E", "W"):
            continue
        issues.append(
            (
                rule_id,
                "error" if rule_id.startswith("E") else "warning",
                match.message,
                "/".join(str(p) for p in getattr(match, "path", []) or []),
                match.linenumber,
            )
        )
    return issues


def serve(requests: Any, replies: Any) -> None:
    """Answer each request line of ``requests`` on ``replies`` until end of input."""
    for line in requests:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            reply: dict[str, Any] = {"issues": lint_text(request["text"], request["region"])}
        except Exception:  # noqa: BLE001 - the parent raises it with the template's name
            reply = {"error": traceback.format_exc()}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__":
    import os

    import cfnlint.api  # noqa: F401 - loaded before the first request arrives

    # Replies go to the original stdout only; whatever cfn-lint prints goes to stderr.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    sys.stdout = sys.stderr
    serve(sys.stdin, answers)
