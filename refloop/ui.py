"""Temporal UI columns for referral loops.

The Temporal UI (2.x) shows custom search attributes as workflow-table columns only when the
browser's saved column configuration lists them: local storage key
`namespace-workflow-table-columns`, a JSON map namespace -> [{label, pinned}], where a custom
search attribute's label is its name. `refloop ui-columns` prints a one-line snippet that
saves ours; paste it once into the browser console on the UI's page.
"""

from __future__ import annotations

import json

from refloop import temporal as names

STORAGE_KEY = "namespace-workflow-table-columns"

LOOP_COLUMNS = [
    names.LOOP_STATE.name,
    names.PRIORITY.name,
    names.MODALITY.name,
    names.ESCALATION_LEVEL.name,
    names.STAGE_DEADLINE.name,
    names.NEEDS_ATTENTION.name,
    names.ACCESSION_NUMBER.name,
]


def workflow_table_columns(namespace: str = "default") -> dict[str, list[dict]]:
    """The saved column configuration: status and ID pinned, then the loop's attributes."""
    columns = [{"label": "Status", "pinned": True}, {"label": "Workflow ID", "pinned": True}]
    columns += [{"label": label, "pinned": False} for label in LOOP_COLUMNS]
    columns += [{"label": "Start", "pinned": False}]
    return {namespace: columns}


def local_storage_items(namespace: str = "default") -> dict[str, str]:
    return {STORAGE_KEY: json.dumps(workflow_table_columns(namespace))}


def console_snippet(namespace: str = "default") -> str:
    """JavaScript for the browser console on the UI's page; reload the page afterwards."""
    sets = "; ".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)})" for k, v in local_storage_items(namespace).items())
    return sets + "; location.reload()"
