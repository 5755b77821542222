"""FHIRPath abstract syntax tree: what the parser produces and the SQL compiler consumes."""

from __future__ import annotations

from dataclasses import dataclass


class FhirPathError(ValueError):
    """An expression that cannot be parsed or compiled (syntax, unknown function, type misuse)."""


@dataclass(frozen=True)
class Node:
    """Base of all expression nodes."""


@dataclass(frozen=True)
class Literal(Node):
    """``kind`` is one of string, integer, decimal, boolean, date, dateTime, time, quantity, empty."""

    kind: str
    value: object
    unit: str | None = None


@dataclass(frozen=True)
class Member(Node):
    """``target.name``; a leading identifier has ``target`` None (it applies to ``$this``)."""

    target: Node | None
    name: str


@dataclass(frozen=True)
class Call(Node):
    """``target.name(args)``; ``target`` None for a function applied to ``$this``."""

    target: Node | None
    name: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Index(Node):
    target: Node
    index: Node


@dataclass(frozen=True)
class Binary(Node):
    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Unary(Node):
    op: str
    operand: Node


@dataclass(frozen=True)
class TypeOp(Node):
    """``operand is T`` / ``operand as T``."""

    op: str
    operand: Node
    type_name: str


@dataclass(frozen=True)
class Variable(Node):
    """``$this``, ``$index`` or ``$total``."""

    name: str


@dataclass(frozen=True)
class Constant(Node):
    """An external constant ``%name``."""

    name: str
