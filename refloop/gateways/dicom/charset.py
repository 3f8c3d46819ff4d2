"""Specific Character Set (0008,0005) for responses: the peer's own when it can carry every
value, else UTF-8 (ISO_IR 192). Omitted only when every value is plain ASCII and the peer
declared none.

pydicom encodes a person name with the character set the dataset has when the value is set,
so the character set is decided on the finished response and set on it last.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydicom import Dataset
from pydicom.charset import python_encoding
from pydicom.multival import MultiValue

from refloop.gateways.dicom.matching import SPECIFIC_CHARACTER_SET

UTF8 = "ISO_IR 192"
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})


def declared(ds: Dataset) -> str:
    """The single character set a dataset declares ('' = default repertoire or not understood)."""
    value = ds.get(SPECIFIC_CHARACTER_SET)
    values = [str(v).strip() for v in (value.value if isinstance(value.value, MultiValue) else [value.value])] if value is not None and value.value else []
    values = [v for v in values if v]
    return values[0] if len(values) == 1 and values[0] in python_encoding else ""


def _texts(ds: Dataset) -> Iterator[str]:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                yield from _texts(item)
        elif elem.VR in _TEXT_VRS and elem.value not in (None, ""):
            values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
            yield from (str(v) for v in values)


def _encodes(texts: list[str], charset: str) -> bool:
    try:
        for t in texts:
            t.encode(python_encoding[charset])
        return True
    except (UnicodeEncodeError, KeyError):
        return False


def choose(peer: str, response: Dataset) -> str | None:
    texts = list(_texts(response))
    if all(t.isascii() for t in texts):
        return peer or None
    if peer and _encodes(texts, peer):
        return peer
    return UTF8


def with_charset(response: Dataset, peer: str) -> Dataset:
    """Set the chosen Specific Character Set on a finished response."""
    charset = choose(peer, response)
    if charset:
        response.SpecificCharacterSet = charset
    return response
