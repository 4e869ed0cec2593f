"""TrainiumChecks on the templates of an assembly alone, for ``python -m cdk_trn.compliance``.

The rules are pure functions of the synthesized template, so they can judge an assembly that was
synthesized without the packs (a plain ``cdk synth``). Without the construct tree there are no
acknowledgments: every finding is open.
"""

from __future__ import annotations

import json
from pathlib import Path

from cdk_trn.compliance.assembly import logical_ids, stack_templates
from cdk_trn.compliance.report import Finding
from cdk_trn.compliance.rules import NON_COMPLIANT, TemplateResource
from cdk_trn.compliance.rules.efa import TRN1, TRN2
from cdk_trn.compliance.rules.fsx import TRN7, TRN8
from cdk_trn.compliance.rules.instances import TRN3, TRN4, TRN5, TRN6, TRN10
from cdk_trn.compliance.rules.kms import TRN9

RULES = (TRN1, TRN2, TRN3, TRN4, TRN5, TRN6, TRN7, TRN8, TRN9, TRN10)
PACK = "TrainiumChecks"


def trainium_findings(assembly_dir: str | Path) -> list[Finding]:
    directory = Path(assembly_dir)
    paths = logical_ids(directory)
    findings = []
    for stack in stack_templates(directory):
        template = json.loads(stack.template_path.read_text(encoding="utf-8"))
        relative = str(stack.template_path.relative_to(directory))
        for logical_id in template.get("Resources", {}):
            resource = TemplateResource.of(template, logical_id, stack.region)
            for rule in RULES:
                if resource.type in rule.resource_types and rule(resource) is NON_COMPLIANT:
                    findings.append(
                        Finding(
                            rule_id=f"{PACK}-{rule.id}",
                            pack=PACK,
                            level=rule.level,
                            path=paths.get((relative, logical_id), f"{stack.name}/{logical_id}"),
                            description=rule.info,
                            logical_id=logical_id,
                            template=relative,
                        )
                    )
    return findings
