"""cdk-trn's deploy-time custom resources: how the construct (``cdk_trn._provider``) configures
the one function of each (its environment, read by ``cdk_trn_runtime.deploy_time.driver``), and
what the S3 prefix-list lookup answers (``cdk_trn_runtime.deploy_time.prefix_list``).

Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

from cdk_trn_runtime.contract import (
    DEPLOY_TIME_ENV_HANDLER,
    DEPLOY_TIME_ENV_PURPOSE,
    DEPLOY_TIME_ENV_QUERY_INTERVAL,
    DEPLOY_TIME_ENV_TOTAL_TIMEOUT,
)
from cdk_trn_runtime.contract.message import Message, key

#: Handlers are modules of the runtime package (the function's code asset ships nothing else).
HANDLER_PREFIX = "cdk_trn_runtime."


@dataclass(frozen=True)
class DeployTimeSettings(Message):
    """The function's environment: which handler it serves and how it waits."""

    DESCRIPTION = "deploy-time function settings"

    handler_module: str = key(DEPLOY_TIME_ENV_HANDLER, doc="e.g. cdk_trn_runtime.preflight.handler")
    purpose: str = key(DEPLOY_TIME_ENV_PURPOSE, default="custom resource", doc="for status reasons")
    query_interval_seconds: int = key(DEPLOY_TIME_ENV_QUERY_INTERVAL, default=30)
    total_timeout_seconds: int = key(DEPLOY_TIME_ENV_TOTAL_TIMEOUT, default=3300)

    def validate(self) -> None:
        if not self.handler_module.startswith(HANDLER_PREFIX):
            raise self.invalid("handler_module", f"a {HANDLER_PREFIX} module")
        if self.query_interval_seconds < 1:
            raise self.invalid("query_interval_seconds", "at least 1")
        if self.total_timeout_seconds < 1:
            raise self.invalid("total_timeout_seconds", "at least 1")


@dataclass(frozen=True)
class PrefixListAttributes(Message):
    """What the S3 prefix-list lookup (``Custom::CdkTrnS3PrefixList``) answers."""

    DESCRIPTION = "S3 prefix list attributes"

    prefix_list_id: str = key("PrefixListId", doc="the region's S3 managed prefix list, pl-...")
