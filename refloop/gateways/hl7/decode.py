"""Bytes off the wire -> HL7 text python-hl7 can parse.

Two things senders get wrong that must not cost us a message:
- the character set: MSH-18 names it (HL7 table 0211); absent means the sender did not say.
- the segment separator: HL7 says CR, files and many interfaces use LF or CRLF.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

from refloop.gateways.hl7.errors import Hl7Error

UTF8_BOM = b"\xef\xbb\xbf"

# HL7 table 0211 (plus spellings seen in the field) -> Python codec.
CHARSETS: dict[str, str] = {
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "8859/1": "latin_1",
    "8859/2": "iso8859_2",
    "8859/3": "iso8859_3",
    "8859/4": "iso8859_4",
    "8859/5": "iso8859_5",
    "8859/6": "iso8859_6",
    "8859/7": "iso8859_7",
    "8859/8": "iso8859_8",
    "8859/9": "iso8859_9",
    "8859/15": "iso8859_15",
    "ISO IR100": "latin_1",
    "ISO IR192": "utf_8",
    "ISO IR87": "iso2022_jp",
    "UNICODE": "utf_8",  # deprecated in 0211; senders mean UTF-8
    "UNICODE UTF-8": "utf_8",
    "UTF-8": "utf_8",
    "UTF8": "utf_8",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
}



def _charset_key(name: str) -> str:
    return re.sub(r"[\s_]", "", name.upper())


_CODECS = {_charset_key(name): codec for name, codec in CHARSETS.items()}

# C1 control bytes are not text in any ISO 8859 part; in UTF-8 they are continuation bytes.
_C1 = re.compile(rb"[\x80-\x9f]")


@dataclass(frozen=True)
class Decoded:
    text: str  # as received (separators untouched): what the inbox keeps
    charset: str  # the codec actually used
    note: str = ""  # why it differs from what MSH-18 declared, if it does

    @property
    def normalised(self) -> str:
        return normalise_segments(self.text)


def declared_charset(data: bytes) -> str:
    """MSH-18 (its first repetition), read from the bytes before decoding. '' if absent."""
    start = data.find(b"MSH")
    if start < 0 or len(data) < start + 4:
        return ""
    line = re.split(rb"[\r\n]", data[start:], maxsplit=1)[0]
    sep = line[3:4]
    fields = line.split(sep)
    if len(fields) < 18:
        return ""
    # MSH-1 is the separator itself, so MSH-n is fields[n - 1].
    value = fields[17].split(b"~")[0].split(b"^")[0]
    return value.decode("ascii", "replace").strip()


def decode_message(data: bytes) -> Decoded:
    """Decode with the character set MSH-18 declares; raise Hl7Error if it is not one we know."""
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM) :]
    declared = declared_charset(data)
    if not declared:
        # HL7's default is ASCII; senders that say nothing mostly send UTF-8, else Latin-1.
        try:
            return Decoded(data.decode("utf_8"), "utf_8")
        except UnicodeDecodeError:
            return Decoded(data.decode("latin_1"), "latin_1", "no MSH-18 and not UTF-8: read as ISO 8859-1")
    codec = _CODECS.get(_charset_key(declared))
    if codec is None:
        raise Hl7Error(
            103,
            f"character set {declared!r} in MSH-18 is not supported; use one of: {', '.join(sorted(CHARSETS))}",
            "MSH",
            field=18,
        )
    single_byte = codecs.lookup(codec).name.startswith(("iso8859", "latin"))
    if single_byte and _C1.search(data) and _is_utf8(data):
        # A common sender bug (seen in public samples): 8859/x declared, UTF-8 sent.
        return Decoded(data.decode("utf_8"), "utf_8", f"MSH-18 says {declared} but the bytes are UTF-8")
    try:
        return Decoded(data.decode(codec), codec)
    except UnicodeDecodeError:
        if _is_utf8(data):
            return Decoded(data.decode("utf_8"), "utf_8", f"MSH-18 says {declared} but the bytes are UTF-8")
        raise Hl7Error(102, f"the message bytes are not valid {declared} (MSH-18)", "MSH", field=18) from None


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf_8")
    except UnicodeDecodeError:
        return False
    return True


def normalise_segments(text: str) -> str:
    """CR, LF or CRLF between segments -> CR; blank lines dropped (python-hl7 splits on CR only)."""
    lines = re.split(r"\r\n|\r|\n", text)
    return "\r".join(line for line in lines if line.strip())


def encode_reply(text: str, charset: str) -> bytes:
    """The ACK goes back in the character set the message came in."""
    return text.encode(charset, errors="replace")
