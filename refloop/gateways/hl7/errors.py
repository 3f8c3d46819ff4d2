"""What was wrong with a message, and where: becomes the ACK's ERR segment."""

from __future__ import annotations

# HL7 table 0357 (message error condition codes).
ERROR_NAMES = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}


class Hl7Error(Exception):
    """A message we cannot accept as it is. `segment`/`sequence`/`field` locate the problem
    (ERR-2: segment ID, which occurrence of that segment, field position; 0 = whole segment)."""

    def __init__(self, code: int, reason: str, segment: str = "", sequence: int = 1, field: int = 0, component: int = 0):
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.segment = segment
        self.sequence = sequence
        self.field = field
        self.component = component

    @property
    def name(self) -> str:
        return ERROR_NAMES.get(self.code, "Error")

    @property
    def location(self) -> str:
        """Human form, e.g. `ORC[2]-1` or `SCH`."""
        if not self.segment:
            return ""
        where = self.segment + (f"[{self.sequence}]" if self.sequence > 1 else "")
        if self.field:
            where += f"-{self.field}" + (f".{self.component}" if self.component else "")
        return where

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}" if self.location else self.reason
