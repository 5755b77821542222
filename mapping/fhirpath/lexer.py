"""FHIRPath tokenizer (N1 grammar: identifiers, literals, operators, external constants)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mapping.fhirpath.ast import FhirPathError

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+|//[^\n]*|/\*.*?\*/)
  | (?P<datetime>@\d{4}(?:-\d{2}(?:-\d{2})?)?T(?:\d{2}(?::\d{2}(?::\d{2}(?:\.\d+)?)?)?)?(?:Z|[+-]\d{2}:\d{2})?)
  | (?P<date>@\d{4}(?:-\d{2}(?:-\d{2})?)?)
  | (?P<time>@T\d{2}(?::\d{2}(?::\d{2}(?:\.\d+)?)?)?)
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<constant>%(?:[A-Za-z_][A-Za-z0-9_]*|`(?:[^`\\]|\\.)*`|'(?:[^'\\]|\\.)*'))
  | (?P<variable>\$(?:this|index|total))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*|`(?:[^`\\]|\\.)*`)
  | (?P<op><=|>=|!=|!~|[-+*/&|<>=~.,()\[\]{}])
    """,
    re.VERBOSE | re.DOTALL,
)

_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    pos: int


def unescape(body: str) -> str:
    """Decode FHIRPath string escapes (``\\'``, ``\\n``, ``\\uXXXX``)."""
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt == "u" and i + 5 < len(body):
                out.append(chr(int(body[i + 2 : i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise FhirPathError(f"unexpected character {text[pos]!r} at {pos} in {text!r}")
        kind = m.lastgroup
        assert kind is not None
        if kind != "ws":
            tokens.append(Token(kind, m.group(), pos))
        pos = m.end()
    tokens.append(Token("eof", "", pos))
    return tokens
