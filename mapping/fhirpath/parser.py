"""FHIRPath parser: tokens to AST by precedence climbing, following the N1 grammar's precedence."""

from __future__ import annotations

from functools import lru_cache

from mapping.fhirpath.ast import (
    Binary,
    Call,
    Constant,
    FhirPathError,
    Index,
    Literal,
    Member,
    Node,
    TypeOp,
    Unary,
    Variable,
)
from mapping.fhirpath.lexer import Token, tokenize, unescape

# Lowest to highest binding; 'is'/'as' are handled at their own level (they take a type, not an expr).
_LEVELS: tuple[tuple[str, ...], ...] = (
    ("implies",),
    ("or", "xor"),
    ("and",),
    ("in", "contains"),
    ("=", "~", "!=", "!~"),
    ("<=", "<", ">", ">="),
    ("|",),
    ("is", "as"),
    ("+", "-", "&"),
    ("*", "/", "div", "mod"),
)
_WORD_OPS = {"implies", "or", "xor", "and", "in", "contains", "is", "as", "div", "mod"}


def _ident_text(tok: Token) -> str:
    return unescape(tok.text[1:-1]) if tok.text.startswith("`") else tok.text


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def fail(self, msg: str) -> FhirPathError:
        return FhirPathError(f"{msg} at {self.tok.pos} in {self.text!r}")

    def take(self, text: str | None = None, kind: str | None = None) -> Token:
        tok = self.tok
        if (text is not None and tok.text != text) or (kind is not None and tok.kind != kind):
            raise self.fail(f"expected {text or kind}, found {tok.text or 'end'!r}")
        self.i += 1
        return tok

    def at_op(self, ops: tuple[str, ...]) -> bool:
        tok = self.tok
        if tok.kind == "op":
            return tok.text in ops
        return tok.kind == "ident" and tok.text in ops and tok.text in _WORD_OPS

    def parse(self) -> Node:
        node = self.expression(0)
        if self.tok.kind != "eof":
            raise self.fail(f"unexpected {self.tok.text!r}")
        return node

    def expression(self, level: int) -> Node:
        if level == len(_LEVELS):
            return self.unary()
        ops = _LEVELS[level]
        left = self.expression(level + 1)
        while self.at_op(ops):
            op = self.take().text
            if op in ("is", "as"):
                left = TypeOp(op, left, self.type_specifier())
            else:
                left = Binary(op, left, self.expression(level + 1))
        return left

    def type_specifier(self) -> str:
        parts = [_ident_text(self.take(kind="ident"))]
        while self.tok.text == "." and self.tokens[self.i + 1].kind == "ident":
            self.take(".")
            parts.append(_ident_text(self.take(kind="ident")))
        return ".".join(parts)

    def unary(self) -> Node:
        if self.tok.kind == "op" and self.tok.text in ("+", "-"):
            op = self.take().text
            return Unary(op, self.unary())
        return self.postfix(self.term())

    def postfix(self, node: Node) -> Node:
        while True:
            if self.tok.text == "." and self.tok.kind == "op":
                self.take(".")
                node = self.invocation(node)
            elif self.tok.text == "[" and self.tok.kind == "op":
                self.take("[")
                index = self.expression(0)
                self.take("]")
                node = Index(node, index)
            else:
                return node

    def invocation(self, target: Node | None) -> Node:
        tok = self.tok
        if tok.kind == "variable":
            self.take()
            return Variable(tok.text[1:])
        name = _ident_text(self.take(kind="ident"))
        if self.tok.text == "(" and self.tok.kind == "op":
            self.take("(")
            args: list[Node] = []
            if self.tok.text != ")":
                args.append(self.expression(0))
                while self.tok.text == ",":
                    self.take(",")
                    args.append(self.expression(0))
            self.take(")")
            return Call(target, name, tuple(args))
        return Member(target, name)

    def term(self) -> Node:
        tok = self.tok
        if tok.kind == "op" and tok.text == "(":
            self.take("(")
            node = self.expression(0)
            self.take(")")
            return node
        if tok.kind == "op" and tok.text == "{":
            self.take("{")
            self.take("}")
            return Literal("empty", None)
        if tok.kind == "string":
            self.take()
            return Literal("string", unescape(tok.text[1:-1]))
        if tok.kind == "number":
            self.take()
            if self.tok.kind == "string" or (self.tok.kind == "ident" and self.tok.text not in _WORD_OPS):
                unit = self.take().text
                return Literal("quantity", float(tok.text), unit.strip("'"))
            if "." in tok.text:
                return Literal("decimal", tok.text)
            return Literal("integer", int(tok.text))
        if tok.kind in ("date", "datetime", "time"):
            self.take()
            kind = {"date": "date", "datetime": "dateTime", "time": "time"}[tok.kind]
            return Literal(kind, tok.text[2:] if kind == "time" else tok.text[1:])
        if tok.kind == "constant":
            self.take()
            name = tok.text[1:]
            return Constant(unescape(name[1:-1]) if name[0] in "`'" else name)
        if tok.kind == "ident" and tok.text in ("true", "false"):
            self.take()
            return Literal("boolean", tok.text == "true")
        if tok.kind in ("ident", "variable"):
            return self.invocation(None)
        raise self.fail(f"unexpected {tok.text or 'end'!r}")


@lru_cache(maxsize=4096)
def parse(text: str) -> Node:
    """Parse a FHIRPath expression; raises FhirPathError on bad syntax."""
    if not isinstance(text, str) or not text.strip():
        raise FhirPathError(f"empty or non-string FHIRPath expression: {text!r}")
    return _Parser(text).parse()
