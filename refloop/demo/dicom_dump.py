"""DCMTK's "dump" text format (dump2dcm input, as in the sample worklist queries) as a pydicom
Dataset, so the samples can be used without DCMTK installed.

    (0008,0050) SH [ACC1]        # AccessionNumber     value in brackets...
    (0040,0001) AE  AA32\\AA33   ...or bare; backslash separates values
    (0040,0100) SQ               a sequence; its items open with (fffe,e000) and close with
      (fffe,e000) na / -         (fffe,e00d); the sequence closes with (fffe,e0dd)
"""

from __future__ import annotations

import re

from pydicom import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

ITEM, ITEM_END, SEQUENCE_END = Tag(0xFFFE, 0xE000), Tag(0xFFFE, 0xE00D), Tag(0xFFFE, 0xE0DD)
_LINE = re.compile(r"^\s*\(([0-9a-fA-F]{4}),([0-9a-fA-F]{4})\)\s+(\S+)?\s*(.*)$")
_INTEGERS, _FLOATS = {"US", "UL", "SS", "SL", "UV", "SV"}, {"FL", "FD"}


class DumpError(ValueError):
    pass


def _value(vr: str, rest: str) -> object:
    rest = rest.strip()
    if rest.startswith("["):
        text = rest[1 : rest.index("]")] if "]" in rest else rest[1:]
    else:
        text = rest.split("#", 1)[0].strip()
        if text.startswith("(no value"):
            text = ""
    if not text:
        return None
    values = text.split("\\")
    if vr in _INTEGERS:
        converted: list = [int(v) for v in values]
    elif vr in _FLOATS:
        converted = [float(v) for v in values]
    else:
        converted = values
    return converted[0] if len(converted) == 1 else converted


def parse_dump(text: str) -> Dataset:
    root = Dataset()
    stack: list[Dataset | Sequence] = [root]
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            raise DumpError(f"line {number}: not a dump element: {line.strip()!r}")
        tag = Tag(int(match[1], 16), int(match[2], 16))
        vr, rest = (match[3] or "").upper(), match[4] or ""
        top = stack[-1]
        if tag == ITEM:
            if not isinstance(top, Sequence):
                raise DumpError(f"line {number}: an item outside a sequence")
            item = Dataset()
            top.append(item)
            stack.append(item)
        elif tag in (ITEM_END, SEQUENCE_END):
            want = Dataset if tag == ITEM_END else Sequence
            if len(stack) < 2 or not isinstance(top, want):
                raise DumpError(f"line {number}: unbalanced {'item' if tag == ITEM_END else 'sequence'} end")
            stack.pop()
        elif not isinstance(top, Dataset):
            raise DumpError(f"line {number}: an element directly inside a sequence (no item)")
        elif vr == "SQ":
            seq = Sequence()
            top.add_new(tag, "SQ", seq)
            stack.append(top[tag].value)
        else:
            top.add_new(tag, vr, _value(vr, rest))
    if len(stack) != 1:
        raise DumpError("the dump ends inside a sequence or item")
    return root
