"""DIMSE failure statuses: every failure carries an Error Comment (LO: at most 64 characters)."""

from __future__ import annotations

from pydicom import Dataset


def failure(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status
