"""Build HL7 v2 acknowledgements (ACK) for a received message.

Original mode answers AA/AE/AR (application accept/error/reject); enhanced mode
(the sender valued MSH-15 or MSH-16) answers with a commit ACK CA/CE/CR once the
message is safely stored. MSA-2 always echoes MSH-10 so the sender can match it.

An ACK must be buildable even when the message could not be parsed, so the header
fields are read with :func:`sniff_header`, which tolerates everything but a missing
MSH: in that case the ACK still goes out, with an empty MSA-2.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from ingest.hl7v2.er7 import DEFAULT_DELIMITERS, Delimiters, Message, split_segments
from ingest.hl7v2.errors import ErrorCode, HL7Error


class AckCode(StrEnum):
    """HL7 table 0008 acknowledgment codes."""

    AA = "AA"
    AE = "AE"
    AR = "AR"
    CA = "CA"
    CE = "CE"
    CR = "CR"


@dataclass(frozen=True, slots=True)
class Header:
    """The MSH fields an ACK echoes or swaps, read leniently from the raw message."""

    delimiters: Delimiters = DEFAULT_DELIMITERS
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    trigger_event: str = ""
    control_id: str = ""
    processing_id: str = "P"
    version: str = "2.5"
    accept_ack_type: str = ""
    application_ack_type: str = ""

    @property
    def enhanced(self) -> bool:
        """Enhanced acknowledgement mode is asked for by valuing MSH-15 or MSH-16."""
        return bool(self.accept_ack_type or self.application_ack_type)


def header_of(msg: Message) -> Header:
    """Header of an already parsed message."""
    return _header_from_line(msg.msh.raw, msg.delimiters)


def sniff_header(raw: str | bytes) -> Header:
    """Header of a raw message that may not parse; defaults when MSH is unreadable."""
    text = raw.decode("latin-1") if isinstance(raw, bytes | bytearray) else raw
    for line in split_segments(text):
        if line.startswith("MSH") and len(line) >= 8:
            fsep = line[3]
            enc = line[4:].split(fsep, 1)[0]
            if len(enc) >= 4:
                d = Delimiters(fsep, enc[0], enc[1], enc[2], enc[3], enc[4] if len(enc) > 4 else "")
            else:
                d = DEFAULT_DELIMITERS
            return _header_from_line(line, d)
    return Header()


def _header_from_line(line: str, d: Delimiters) -> Header:
    f = line.split(d.field)
    f.insert(1, d.field)

    def at(n: int) -> str:
        return f[n] if n < len(f) else ""

    msg_type = at(9).split(d.component)
    return Header(
        delimiters=d,
        sending_application=at(3),
        sending_facility=at(4),
        receiving_application=at(5),
        receiving_facility=at(6),
        trigger_event=msg_type[1] if len(msg_type) > 1 else "",
        control_id=at(10),
        processing_id=at(11) or "P",
        version=at(12).split(d.component)[0] or "2.5",
        accept_ack_type=at(15),
        application_ack_type=at(16),
    )


def ack_code_for(errors: Iterable[HL7Error], *, enhanced: bool) -> AckCode:
    """AR/CR when any error rejects the message, AE/CE for other errors, else AA/CA."""
    errs = [e for e in errors if e.severity in ("E", "F")]
    if not errs:
        return AckCode.CA if enhanced else AckCode.AA
    if any(e.rejects for e in errs):
        return AckCode.CR if enhanced else AckCode.AR
    return AckCode.CE if enhanced else AckCode.AE


def _version_tuple(version: str) -> tuple[int, ...]:
    out = []
    for part in version.split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


def err_segment(error: HL7Error, header: Header) -> str:
    """One ERR segment for ``error``, in the layout the message's version expects.

    v2.5 and later: ERR-2 location (ERL), ERR-3 HL7 0357 code, ERR-4 severity, ERR-8
    user message. Before 2.5: ERR-1 (ELD) ``segment^sequence^field^code&text``.
    """
    d = header.delimiters
    text = d.escape_text(error.text)
    code = int(error.code)
    code_text = d.escape_text(ErrorCode(code).text)
    seq = "" if error.segment_seq is None else str(error.segment_seq)
    fld = "" if error.field is None else str(error.field)
    seg = error.segment_id or ""
    c, s = d.component, d.subcomponent
    if _version_tuple(header.version) >= (2, 5):
        location = ""
        if seg:
            parts = [seg, seq, fld]
            if error.component is not None:
                parts += ["1", str(error.component)]
            location = c.join(parts).rstrip(c)
        fields = [
            "ERR",
            "",
            location,
            f"{code}{c}{code_text}{c}HL70357",
            error.severity,
            "",
            "",
            "",
            text,
        ]
        return d.field.join(fields)
    eld = c.join([seg, seq, fld, f"{code}{s}{code_text}{s}HL70357"])
    return d.field.join(["ERR", eld])


def build_ack(
    message: Message | Header | str | bytes,
    *,
    errors: Iterable[HL7Error] = (),
    code: AckCode | None = None,
    mode: str | None = None,
    control_id: str | None = None,
    text: str = "",
    now: datetime | None = None,
) -> str:
    """The ACK for ``message`` as CR-separated ER7 (without MLLP framing).

    ``mode`` is ``"original"`` or ``"enhanced"``; by default it follows MSH-15/16.
    ``code`` defaults to what :func:`ack_code_for` derives from ``errors``.
    ``control_id`` is the ACK's own MSH-10 (default: ``ACK`` + the original id).
    ``message`` may be the :class:`Header` already read from it (receipt reads it once).
    """
    if isinstance(message, Header):
        header = message
    else:
        header = header_of(message) if isinstance(message, Message) else sniff_header(message)
    errs = list(errors)
    enhanced = header.enhanced if mode is None else mode == "enhanced"
    ack = code or ack_code_for(errs, enhanced=enhanced)
    d = header.delimiters
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S%z")
    msh = d.field.join(
        [
            "MSH",
            d.encoding_characters,
            header.receiving_application,
            header.receiving_facility,
            header.sending_application,
            header.sending_facility,
            stamp,
            "",
            d.component.join(["ACK", header.trigger_event, "ACK"]).rstrip(d.component),
            control_id or f"ACK{header.control_id}"[:199],
            header.processing_id,
            header.version,
        ]
    )
    msa_text = d.escape_text(text or (errs[0].text if errs else ""))
    msa = d.field.join(["MSA", ack.value, header.control_id, msa_text]).rstrip(d.field)
    segments = [msh, msa] + [err_segment(e, header) for e in errs]
    return "\r".join(segments) + "\r"
