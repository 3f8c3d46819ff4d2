"""Temporal names shared by the workflow, the worker, the gateways and the CLI."""

from __future__ import annotations

import re

from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter

WORKFLOW_TYPE = "ReferralWorkflow"

# Custom search attributes (SQL visibility: at most 10 Keyword, 3 of each other type).
REFERRAL_ID = SearchAttributeKey.for_keyword("ReferralId")
ACCESSION_NUMBER = SearchAttributeKey.for_keyword("AccessionNumber")
LOOP_STATE = SearchAttributeKey.for_keyword("LoopState")
PRIORITY = SearchAttributeKey.for_keyword("Priority")
MODALITY = SearchAttributeKey.for_keyword("Modality")
OUTCOME = SearchAttributeKey.for_keyword("Outcome")
ESCALATION_LEVEL = SearchAttributeKey.for_int("EscalationLevel")
STAGE_DEADLINE = SearchAttributeKey.for_datetime("StageDeadline")
NEEDS_ATTENTION = SearchAttributeKey.for_bool("NeedsAttention")

SEARCH_ATTRIBUTES = [
    REFERRAL_ID,
    ACCESSION_NUMBER,
    LOOP_STATE,
    PRIORITY,
    MODALITY,
    OUTCOME,
    ESCALATION_LEVEL,
    STAGE_DEADLINE,
    NEEDS_ATTENTION,
]

_CLI_TYPES = {"KEYWORD": "Keyword", "INT": "Int", "DATETIME": "Datetime", "BOOL": "Bool"}


def search_attribute_flags() -> list[str]:
    """`--search-attribute Name=Type` flags for `temporal server start-dev`."""
    flags: list[str] = []
    for key in SEARCH_ATTRIBUTES:
        flags += ["--search-attribute", f"{key.name}={_CLI_TYPES[key.indexed_value_type.name]}"]
    return flags


_SAFE = re.compile(r"[^A-Za-z0-9._:-]")


def workflow_id(referral_id: str) -> str:
    """`referral-<placer order number>`: an order number is not PHI; never put names or MRNs here."""
    return "referral-" + _SAFE.sub("_", referral_id)


async def connect(address: str, namespace: str = "default") -> Client:
    return await Client.connect(address, namespace=namespace, data_converter=pydantic_data_converter)
