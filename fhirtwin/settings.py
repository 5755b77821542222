"""Settings from flags and the environment; flags win, then ``FHIRTWIN_*`` variables, then defaults.

These names are a stable interface that other tools script against.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from store.store import Store

DEFAULT_DB = "./fhirtwin.duckdb"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MLLP_PORT = 2575
DEFAULT_MLLP_ACK_AFTER = "processed"
MLLP_ACK_AFTER_CHOICES = ("processed", "commit")
DEFAULT_MLLP_MAP_TIMEOUT_S = 60.0
DEFAULT_HL7_TIMEZONE = "UTC"  # ingest.hl7v2.timezone.DEFAULT_TIMEZONE, checked by a test
DEFAULT_CACHE_MB = 2048  # the store's own default (store.store.DEFAULT_CACHE_MB, checked by a test)

T = TypeVar("T")


def env_default(name: str, fallback: str) -> str:
    """The value of ``FHIRTWIN_<NAME>`` or the fallback."""
    return os.environ.get(f"FHIRTWIN_{name}", fallback)


def _env_parsed(name: str, fallback: T, parse: Callable[[str], T], expected: str) -> T:
    """``FHIRTWIN_<NAME>`` parsed, or the fallback when unset; a clear error when malformed."""
    raw = os.environ.get(f"FHIRTWIN_{name}")
    if raw is None or raw == "":
        return fallback
    try:
        return parse(raw)
    except ValueError:
        raise SystemExit(f"FHIRTWIN_{name} must be {expected}, got {raw!r}") from None


def port(text: str) -> int:
    """A TCP port number, 0 to 65535 (ValueError otherwise: argparse reports it for flags)."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"not a port number (0 to 65535): {text!r}")
    return value


def env_port(name: str, fallback: int) -> int:
    """A port number from the environment."""
    return _env_parsed(name, fallback, port, "a port number from 0 to 65535")


def _positive(text: str, unit: str, *, finite: bool) -> float:
    value = float(text)
    if not value > 0 or (finite and value == float("inf")):  # "not >" also refuses nan
        raise ValueError(f"not a positive number of {unit}: {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """A positive number of seconds (ValueError otherwise: argparse reports it for flags)."""
    return _positive(text, "seconds", finite=False)


def megabytes(text: str) -> float:
    """A positive amount of memory in MB (ValueError otherwise: argparse reports it for flags)."""
    return _positive(text, "megabytes", finite=True)


def env_megabytes(name: str, fallback: float | None) -> float | None:
    """A positive amount of memory in MB from the environment."""
    return _env_parsed(name, fallback, megabytes, "a positive number of megabytes")


def hl7_timezone(text: str) -> str:
    """A sender time zone (UTC, +hh:mm or an IANA name; ValueError otherwise: argparse reports it)."""
    from ingest.hl7v2.timezone import check_timezone

    return check_timezone(text)


def env_hl7_timezone(name: str, fallback: str) -> str:
    """A sender time zone from the environment."""
    return _env_parsed(name, fallback, hl7_timezone, "UTC, a UTC offset (+hh:mm) or an IANA time zone name")


def env_seconds(name: str, fallback: float) -> float:
    """A positive number of seconds from the environment."""
    return _env_parsed(name, fallback, positive_seconds, "a positive number of seconds")


def env_choice(name: str, fallback: str, choices: tuple[str, ...]) -> str:
    """A setting from the environment that must be one of ``choices``, with a clear error otherwise."""
    raw = os.environ.get(f"FHIRTWIN_{name}") or fallback
    if raw not in choices:
        raise SystemExit(f"FHIRTWIN_{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


@dataclass(frozen=True)
class Settings:
    """Resolved settings for one command."""

    db: str
    host: str
    port: int
    mllp_port: int
    mllp_ack_after: str = DEFAULT_MLLP_ACK_AFTER
    mllp_map_timeout_s: float = DEFAULT_MLLP_MAP_TIMEOUT_S
    cache_mb: float = DEFAULT_CACHE_MB
    db_memory_mb: float | None = None
    hl7_timezone: str = DEFAULT_HL7_TIMEZONE

    def open_store(self, *, read_only: bool = False) -> Store:
        """The store these settings name."""
        from store.store import Store

        return Store(self.db, read_only=read_only, cache_mb=self.cache_mb, db_memory_mb=self.db_memory_mb)
