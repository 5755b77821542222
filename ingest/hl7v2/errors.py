"""Errors raised while reading HL7 v2 messages.

Every error carries *where* (segment id, its 1-based sequence in the message, field
position) and *what* as an HL7 table 0357 code, because an ACK must echo exactly
that in its ERR segment; a bare message string would force the ACK builder to guess.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """HL7 table 0357 (message error condition codes)."""

    ACCEPTED = 0
    SEGMENT_SEQUENCE_ERROR = 100
    REQUIRED_FIELD_MISSING = 101
    DATA_TYPE_ERROR = 102
    TABLE_VALUE_NOT_FOUND = 103
    VALUE_TOO_LONG = 104
    UNSUPPORTED_MESSAGE_TYPE = 200
    UNSUPPORTED_EVENT_CODE = 201
    UNSUPPORTED_PROCESSING_ID = 202
    UNSUPPORTED_VERSION_ID = 203
    UNKNOWN_KEY_IDENTIFIER = 204
    DUPLICATE_KEY_IDENTIFIER = 205
    APPLICATION_RECORD_LOCKED = 206
    APPLICATION_INTERNAL_ERROR = 207

    @property
    def text(self) -> str:
        """The table's display text, used in ERR-3.2."""
        return self.name.replace("_", " ").capitalize()


class HL7Error(ValueError):
    """A problem in an HL7 v2 message, located precisely enough to fill an ERR segment.

    ``severity`` follows HL7 table 0516 (E error, W warning, I information, F fatal).
    ``rejects`` tells the ACK builder whether the message must be rejected (AR/CR:
    the receiver could not even understand it) or only errored (AE/CE: understood,
    but not processable).
    """

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode = ErrorCode.SEGMENT_SEQUENCE_ERROR,
        segment_id: str | None = None,
        segment_seq: int | None = None,
        field: int | None = None,
        component: int | None = None,
        severity: str = "E",
        rejects: bool = True,
    ) -> None:
        super().__init__(message)
        self.text = message
        self.code = code
        self.segment_id = segment_id
        self.segment_seq = segment_seq
        self.field = field
        self.component = component
        self.severity = severity
        self.rejects = rejects

    def location(self) -> str:
        """Human-readable ``PID[3]-5.1`` style location, empty when unknown."""
        if not self.segment_id:
            return ""
        out = self.segment_id
        if self.segment_seq is not None:
            out += f"[{self.segment_seq}]"
        if self.field is not None:
            out += f"-{self.field}"
            if self.component is not None:
                out += f".{self.component}"
        return out

    def __str__(self) -> str:
        where = self.location()
        return f"{self.text} (at {where}, HL7 0357 code {int(self.code)})" if where else self.text


class HL7ParseError(HL7Error):
    """The bytes are not a well-formed ER7 message (AR: the receiver cannot read it)."""


class HL7StructureError(HL7Error):
    """Segments are readable but out of the order the message structure allows."""
