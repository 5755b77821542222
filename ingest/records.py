"""One unit of input as read from a file or a request, before it reaches the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from store.merge import Merge


@dataclass(slots=True)
class Problem:
    """Why a record was refused: an OperationOutcome issue in plain fields."""

    diagnostics: str
    expression: str | None = None
    code: str = "invalid"
    severity: str = "error"

    def as_issue(self) -> dict[str, Any]:
        """This problem as an OperationOutcome.issue element."""
        issue: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            issue["expression"] = [self.expression]
        return issue


@dataclass(slots=True)
class Record:
    """A resource read from ``source`` at ``line`` (1-based), or the reasons it could not be."""

    source: str
    line: int | None
    raw: str | bytes
    resources: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    format: str = "json"
    create_only: frozenset[int] = frozenset()
    """Positions of ``resources`` written only when missing (``Store.write(if_absent=…)``)."""
    merges: dict[int, Merge] = field(default_factory=dict)
    """Positions of ``resources`` combined with their stored version (``Store.write(merge=…)``)."""
    warnings: list[str] = field(default_factory=list)
    """What was accepted with a caveat (a value type the sender left out, inferred), for people."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def where(self) -> str:
        """``file:line`` for messages to people."""
        return f"{self.source}:{self.line}" if self.line else self.source
