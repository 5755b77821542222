"""ER7 (pipe-and-hat) parser for HL7 v2.3–v2.8 messages.

Speed comes from doing as little as possible up front: the message is split into
segment lines once, a segment's fields are split on first access, and components,
subcomponents and escape sequences are only processed for the values a caller asks
for. Everything is plain ``str`` slicing and ``str.split``: no per-value objects.

Addressing follows the standard's numbering: ``seg[3]`` is field 3 (``PID-3``),
and for MSH ``msh[1]`` is the field separator itself, as the standard counts it.
Repetitions, components and subcomponents are 1-based in :meth:`Segment.get`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ingest.hl7v2.errors import ErrorCode, HL7ParseError

NULL = '""'
"""The HL7 explicit null: the sender says "delete this value", unlike an empty field."""

_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")

# MSH-18 character set names (HL7 table 0211) to Python codecs.
CHARSETS: dict[str, str] = {
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859_2",
    "8859/3": "iso8859_3",
    "8859/4": "iso8859_4",
    "8859/5": "iso8859_5",
    "8859/6": "iso8859_6",
    "8859/7": "iso8859_7",
    "8859/8": "iso8859_8",
    "8859/9": "iso8859_9",
    "8859/15": "iso8859_15",
    "ISO IR6": "ascii",
    "ISO IR100": "latin-1",
    "ISO IR192": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "UNICODE UTF-16": "utf-16",
    "UNICODE UTF-32": "utf-32",
    "UNICODE": "utf-8",
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp_2",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "CNS 11643-1992": "big5",
    "BIG-5": "big5",
    "WINDOWS-1252": "cp1252",
}

_FORMAT_ESCAPES = {".br": "\n", ".sp": "\n", ".fi": "", ".nf": "", "H": "", "N": "", ".ce": "\n"}


@dataclass(frozen=True, slots=True)
class Delimiters:
    """The encoding characters declared in MSH-1/MSH-2 (v2.7 adds a truncation character)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    @property
    def encoding_characters(self) -> str:
        """MSH-2 as it must be written back (ACKs echo the sender's delimiters)."""
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation

    def escape_text(self, text: str) -> str:
        """Escape a plain value so it can be written into a field (inverse of unescape)."""
        e = self.escape
        out = text.replace(e, f"{e}E{e}") if e else text
        for char, code in (
            (self.field, "F"),
            (self.component, "S"),
            (self.subcomponent, "T"),
            (self.repetition, "R"),
            (self.truncation, "P"),
        ):
            if char:
                out = out.replace(char, f"{e}{code}{e}")
        return out.replace("\r", f"{e}.br{e}").replace("\n", f"{e}.br{e}")

    def unescape(self, value: str) -> str:
        """Resolve \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\P\\ \\Xhh\\ \\.br\\ and friends.

        Highlighting and charset-switch escapes (\\H\\ \\N\\ \\Cxxyy\\ \\Mxxyyzz\\) carry no
        text and are dropped; an unterminated escape is kept literally rather than lost.
        """
        e = self.escape
        if not e or e not in value:
            return value
        parts = value.split(e)
        if len(parts) % 2 == 0:  # odd number of escape characters: the last one is literal
            last = parts.pop()
            parts[-1] += e + last
        out = [parts[0]]
        for i in range(1, len(parts), 2):
            out.append(self._resolve(parts[i]))
            out.append(parts[i + 1])
        return "".join(out)

    def _resolve(self, seq: str) -> str:
        simple = {
            "F": self.field,
            "S": self.component,
            "T": self.subcomponent,
            "R": self.repetition,
            "E": self.escape,
            "P": self.truncation,
        }
        if seq in simple:
            return simple[seq]
        if seq in _FORMAT_ESCAPES:
            return _FORMAT_ESCAPES[seq]
        head = seq[:1]
        if head == "X":
            try:
                return bytes.fromhex(seq[1:]).decode("utf-8", errors="replace")
            except ValueError:
                return f"{self.escape}{seq}{self.escape}"
        if head in ("C", "M", "Z") or seq[:3] in (".sk", ".in", ".ti", ".sp"):
            return "\n" if seq.startswith(".sp") else ""
        return f"{self.escape}{seq}{self.escape}"


DEFAULT_DELIMITERS = Delimiters()


class Segment:
    """One segment line; fields are split lazily on first access."""

    __slots__ = ("id", "seq", "_line", "_fields", "_d")

    def __init__(self, line: str, seq: int, delimiters: Delimiters) -> None:
        self.id = line[:3]
        self.seq = seq
        self._line = line
        self._fields: list[str] | None = None
        self._d = delimiters

    @property
    def fields(self) -> list[str]:
        """Raw (still escaped) field strings; index = HL7 field number."""
        f = self._fields
        if f is None:
            f = self._line.split(self._d.field)
            if self.id in ("MSH", "FHS", "BHS"):
                f.insert(1, self._d.field)
            self._fields = f
        return f

    @property
    def delimiters(self) -> Delimiters:
        return self._d

    @property
    def raw(self) -> str:
        return self._line

    def __len__(self) -> int:
        return len(self.fields) - 1

    def __getitem__(self, n: int) -> str:
        """Raw field ``n`` (escaped, with repetitions); ``""`` when absent."""
        f = self.fields
        return f[n] if n < len(f) else ""

    def has(self, n: int) -> bool:
        """True when field ``n`` is valued (present, non-empty, not the explicit null)."""
        v = self[n]
        return bool(v) and v != NULL

    def reps(self, n: int) -> list[str]:
        """Raw repetitions of field ``n`` (empty list when the field is empty or null)."""
        v = self[n]
        if not v or v == NULL:
            return []
        if n == 2 and self.id in ("MSH", "FHS", "BHS"):
            return [v]
        return v.split(self._d.repetition)

    def components(self, n: int, rep: int = 1) -> list[str]:
        """Raw components of one repetition of field ``n``."""
        r = self.reps(n)
        if len(r) < rep:
            return []
        return r[rep - 1].split(self._d.component)

    def get(self, n: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
        """Unescaped value at ``field[rep].comp.sub``; ``""`` when absent.

        The explicit null ``""`` is returned as the two-character string :data:`NULL`
        so callers can tell "delete" from "not sent".
        """
        v = self[n]
        if not v:
            return ""
        d = self._d
        if n <= 2 and self.id in ("MSH", "FHS", "BHS"):
            return v
        if d.repetition in v:
            r = v.split(d.repetition)
            if len(r) < rep:
                return ""
            v = r[rep - 1]
        elif rep != 1:
            return ""
        if d.component in v:
            c = v.split(d.component)
            if len(c) < comp:
                return ""
            v = c[comp - 1]
        elif comp != 1:
            return ""
        if d.subcomponent in v:
            s = v.split(d.subcomponent)
            if len(s) < sub:
                return ""
            v = s[sub - 1]
        elif sub != 1:
            return ""
        return d.unescape(v) if d.escape in v else v

    def value(self, path: str) -> str:
        """Value addressed as ``"3.4.1"`` (field.component.subcomponent, first repetition)."""
        parts = [int(p) for p in path.split(".")]
        return self.get(parts[0], 1, *(parts[1:] or [1]))

    def __repr__(self) -> str:
        return f"Segment({self._line[:60]!r}, seq={self.seq})"


class Message:
    """A parsed HL7 v2 message: its segments in order and the header fields callers need."""

    __slots__ = ("raw", "delimiters", "segments", "_index")

    def __init__(self, raw: str, delimiters: Delimiters, segments: list[Segment]) -> None:
        self.raw = raw
        self.delimiters = delimiters
        self.segments = segments
        self._index: dict[str, list[Segment]] | None = None

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def _idx(self) -> dict[str, list[Segment]]:
        idx = self._index
        if idx is None:
            idx = {}
            for s in self.segments:
                idx.setdefault(s.id, []).append(s)
            self._index = idx
        return idx

    def segment(self, seg_id: str) -> Segment | None:
        """First segment with this id, or None."""
        found = self._idx().get(seg_id)
        return found[0] if found else None

    def all(self, seg_id: str) -> list[Segment]:
        """Every segment with this id, in message order."""
        return self._idx().get(seg_id, [])

    @property
    def message_type(self) -> str:
        """MSH-9.1, e.g. ``ORU``."""
        return self.msh.get(9, 1, 1)

    @property
    def trigger_event(self) -> str:
        """MSH-9.2, e.g. ``R01``."""
        return self.msh.get(9, 1, 2)

    @property
    def structure_id(self) -> str:
        """MSH-9.3 when sent (``ORU_R01``), else ``TYPE_TRIGGER``; callers normalise it."""
        return self.msh.get(9, 1, 3) or f"{self.message_type}_{self.trigger_event}"

    @property
    def control_id(self) -> str:
        """MSH-10, echoed in MSA-2 of the acknowledgement."""
        return self.msh.get(10)

    @property
    def version(self) -> str:
        """MSH-12.1, e.g. ``2.5.1``."""
        return self.msh.get(12, 1, 1)

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    def __repr__(self) -> str:
        return f"Message({self.structure_id}, control_id={self.control_id!r}, segments={len(self.segments)})"


def decode(data: bytes) -> str:
    """Decode bytes using the character set named in MSH-18 (UTF-8 when unnamed).

    MSH-18 is itself ASCII, so it can be read from a Latin-1 view of the bytes before
    the real decoding is chosen. A leading UTF-8 BOM is dropped.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    head = data[:2048].decode("latin-1")
    codec = "utf-8"
    first = head.split("\r", 1)[0].split("\n", 1)[0]
    if first.startswith("MSH") and len(first) > 3:
        fields = first.split(first[3])
        if len(fields) > 17 and fields[17]:
            name = fields[17].split(fields[1][1:2] or "~")[0].strip().upper()
            codec = CHARSETS.get(name, codec)
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def split_segments(text: str) -> list[str]:
    """Split on CR, LF or CRLF; drop blank lines, a BOM and MLLP framing bytes."""
    if text[:1] == "\ufeff":
        text = text[1:]
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    lines = text.split("\r")
    if "\x0b" in text or "\x1c" in text:
        lines = [line.strip("\x0b\x1c") if line[:1] in "\x0b\x1c" or line[-1:] in "\x0b\x1c" else line
                 for line in lines]
    return [line for line in lines if line and not line.isspace()]


def read_delimiters(header: str, seq: int = 1) -> Delimiters:
    """Delimiters from an MSH/FHS/BHS line: MSH-1 and the 4–5 characters of MSH-2."""
    fsep = header[3:4]
    known = _DECLARED.get(header[3:header.find(fsep, 4) + 1]) if fsep else None
    if known is not None:
        return known
    seg_id = header[:3]
    if len(header) < 8:
        raise HL7ParseError(
            f"{seg_id} too short to declare delimiters",
            code=ErrorCode.REQUIRED_FIELD_MISSING,
            segment_id=seg_id,
            segment_seq=seq,
            field=2,
        )
    fsep = header[3]
    enc_end = header.find(fsep, 4)
    enc = header[4:] if enc_end < 0 else header[4:enc_end]
    if len(enc) < 4 or len(set(enc + fsep)) != len(enc) + 1 or fsep.isalnum():
        raise HL7ParseError(
            f"invalid encoding characters {enc!r} in {seg_id}-2",
            code=ErrorCode.DATA_TYPE_ERROR,
            segment_id=seg_id,
            segment_seq=seq,
            field=2,
        )
    d = Delimiters(fsep, enc[0], enc[1], enc[2], enc[3], enc[4] if len(enc) > 4 else "")
    d = DEFAULT_DELIMITERS if d == DEFAULT_DELIMITERS else d  # one shared object: cheap to compare
    if enc_end >= 0 and len(_DECLARED) < 64:
        _DECLARED[header[3:enc_end + 1]] = d
    return d


_DECLARED: dict[str, Delimiters] = {}
"""MSH-1, MSH-2 and the field separator after them, as a header declares them → the
delimiters: a feed declares the same few, so they are read and checked once."""


_VALID_IDS: set[str] = set()
"""Segment ids already checked against :data:`_SEGMENT_ID` (a feed sends a few dozen)."""


def _valid_id(seg_id: str) -> bool:
    if not _SEGMENT_ID.match(seg_id):
        return False
    if len(_VALID_IDS) < 4096:
        _VALID_IDS.add(seg_id)
    return True


def parse_segments(lines: list[str], raw: str = "") -> Message:
    """Build a :class:`Message` from segment lines whose first line is MSH."""
    if not lines:
        raise HL7ParseError("empty message: no MSH segment", code=ErrorCode.SEGMENT_SEQUENCE_ERROR)
    header = lines[0]
    if not header.startswith("MSH"):
        raise HL7ParseError(
            f"message must start with MSH, found {header[:3]!r}",
            code=ErrorCode.SEGMENT_SEQUENCE_ERROR,
            segment_id=header[:3],
            segment_seq=1,
        )
    d = read_delimiters(header)
    segments = []
    fsep = d.field
    for i, line in enumerate(lines, 1):
        seg_id = line[:3]
        if (seg_id not in _VALID_IDS and not _valid_id(seg_id)) or (len(line) > 3 and line[3] != fsep):
            raise HL7ParseError(
                f"invalid segment id {line[:8]!r}",
                code=ErrorCode.SEGMENT_SEQUENCE_ERROR,
                segment_id=seg_id,
                segment_seq=i,
            )
        if seg_id == "MSH" and i > 1:
            raise HL7ParseError(
                "second MSH inside one message (use iter_messages for batches)",
                code=ErrorCode.SEGMENT_SEQUENCE_ERROR,
                segment_id="MSH",
                segment_seq=i,
            )
        segments.append(Segment(line, i, d))
    msg = Message(raw, d, segments)
    _check_header(msg)
    return msg


def _check_header(msg: Message) -> None:
    """Refuse (AR) what HL7 says a receiver must not accept: required MSH fields missing, a processing id
    (MSH-11) or version id (MSH-12) outside HL7 tables 0103 and 0104."""
    msh = msg.msh
    fields = msh.fields
    if len(fields) > 12 and msh.has(9) and msh.has(10) and (fields[11], fields[12]) in _CHECKED_IDS:
        return
    for field, what in ((9, "message type"), (10, "message control id"), (12, "version id")):
        if not msh.has(field):
            raise HL7ParseError(
                f"MSH-{field} ({what}) is required",
                code=ErrorCode.REQUIRED_FIELD_MISSING,
                segment_id="MSH",
                segment_seq=1,
                field=field,
            )
    processing_ids, versions = _header_tables()
    for field, allowed, code, what in ((11, processing_ids, ErrorCode.UNSUPPORTED_PROCESSING_ID, "processing id"),
                                       (12, versions, ErrorCode.UNSUPPORTED_VERSION_ID, "version id")):
        value = msh.get(field, 1, 1)
        if value and value not in allowed:
            raise HL7ParseError(
                f"MSH-{field} {what} {value!r} is not one of {', '.join(allowed)} (HL7 table "
                f"{'0103' if field == 11 else '0104'})",
                code=code,
                segment_id="MSH",
                segment_seq=1,
                field=field,
            )
    if len(fields) > 12 and len(_CHECKED_IDS) < 256:
        _CHECKED_IDS.add((fields[11], fields[12]))


_CHECKED_IDS: set[tuple[str, str]] = set()
"""MSH-11 and MSH-12 texts found in HL7 tables 0103 and 0104 (a feed sends a few)."""


def forget() -> None:
    """Drop what the parser remembers of headers and segment ids it has checked: it then checks
    everything as on its first message (what its shortcuts are tested against)."""
    _DECLARED.clear()
    _VALID_IDS.clear()
    _CHECKED_IDS.clear()


@cache
def _header_tables() -> tuple[tuple[str, ...], tuple[str, ...]]:
    tables = json.loads((Path(__file__).with_name("data") / "header_tables.json").read_text())
    return tuple(tables["0103"]), tuple(tables["0104"])


def parse_message(data: str | bytes) -> Message:
    """Parse one ER7 message (str, or bytes decoded by MSH-18).

    Raises :class:`HL7ParseError` with segment/field location and an HL7 0357 code.
    """
    text = decode(data) if isinstance(data, bytes | bytearray) else data
    lines = split_segments(text)
    return parse_segments(lines, text)
