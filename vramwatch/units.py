"""Sizes, percentages and durations: parse what operators write, format for people.

Sizes keep bytes as ``int``; durations keep nanoseconds as ``int`` so that they
compare directly with ``time.monotonic_ns()``.
"""

from __future__ import annotations

import re

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
TIB = 1024 * GIB

SIZE_FACTORS: dict[str, int] = {
    "B": 1,
    "KiB": KIB,
    "MiB": MIB,
    "GiB": GIB,
    "TiB": TIB,
    # Decimal units are powers of 1000, as in SI and in systemd's MemoryMax=.
    "kB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
}

DURATION_FACTORS_NS: dict[str, int] = {
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
    "d": 24 * 3600 * 1_000_000_000,  # for retention such as record_keep = "7d"
}

_NUMBER = r"(?P<number>[0-9]+(?:\.[0-9]+)?)"
_SIZE_RE = re.compile(_NUMBER + r"\s*(?P<unit>[A-Za-z]+)")
_PERCENT_RE = re.compile(_NUMBER + r"\s*%")
_DURATION_RE = re.compile(_NUMBER + r"\s*(?P<unit>ms|s|m|h|d)")


class UnitError(ValueError):
    """A value that does not parse; the message says what was expected."""


# Nothing vramwatch measures comes near 2**64 bytes (systemd's "infinity");
# a longer number is a typo, and must not reach float() (OverflowError).
MAX_SIZE_BYTES = 2**64 - 1
_MAX_DIGITS = 30


def scaled(number: str, factor: int) -> int:
    """``"1.5"`` times ``factor``, rounded half to even: ``round(Fraction(number) * factor)``.

    In integers, without ``fractions``, which imports ``decimal`` (0.35 MiB
    resident for the daemon, issue 17). ``number`` is digits with at most one dot.
    """
    whole, _, decimals = number.partition(".")
    scale: int = 10 ** len(decimals)
    quotient, remainder = divmod(int(whole + decimals) * factor, scale)
    if 2 * remainder > scale or (2 * remainder == scale and quotient % 2):
        quotient += 1
    return quotient


def parse_size(text: str) -> int:
    """Parse ``"3000MiB"`` or ``"1.5GiB"`` into bytes (exactly: no float rounding)."""
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None or match["unit"] not in SIZE_FACTORS or len(match["number"]) > _MAX_DIGITS:
        raise UnitError(f'expected a size such as "3000MiB" or "2GiB", got "{text}"')
    value = scaled(match["number"], SIZE_FACTORS[match["unit"]])
    if value > MAX_SIZE_BYTES:
        raise UnitError(f'expected a size such as "3000MiB" or "2GiB", got "{text}"')
    return value


def parse_percent(text: str) -> float | None:
    """Parse ``"10%"`` into 10.0; ``None`` when the text is not a percentage."""
    match = _PERCENT_RE.fullmatch(text.strip())
    return float(match["number"]) if match else None


def parse_duration_ns(text: str) -> int:
    """Parse ``"500ms"``, ``"2s"``, ``"5m"``, ``"1h"`` or ``"7d"`` into nanoseconds."""
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None or len(match["number"]) > _MAX_DIGITS:
        raise UnitError(f'expected a duration such as "500ms", "2s", "5m" or "1h", got "{text}"')
    return scaled(match["number"], DURATION_FACTORS_NS[match["unit"]])


def format_size(n_bytes: int | None) -> str:
    """Format bytes for people with binary units: ``1.2 GiB``, ``512 MiB``."""
    if n_bytes is None:
        return "unknown"
    sign = "-" if n_bytes < 0 else ""
    value = abs(n_bytes)
    for name, factor in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if value >= factor:
            scaled = value / factor
            text = f"{scaled:.1f}".removesuffix(".0") if scaled < 100 else f"{scaled:.0f}"
            return f"{sign}{text} {name}"
    return f"{sign}{value} B"


def format_duration(ns: int) -> str:
    """Format nanoseconds as the shortest exact-enough unit: ``10s``, ``2m``, ``500ms``."""
    for name, factor in (("h", 3600 * 10**9), ("m", 60 * 10**9), ("s", 10**9)):
        if ns >= factor and ns % (factor // 10 if name == "s" else factor) == 0:
            whole, tenths = divmod(ns * 10 // factor, 10)
            return f"{whole}.{tenths}{name}" if tenths else f"{whole}{name}"
    if ns >= 10**9:
        return f"{ns / 10**9:.1f}s"
    return f"{ns // 1_000_000}ms"


def format_approximate(ns: int) -> str:
    """A forecast's span, rounded as a person says it: ``45s``, ``53m``, ``4h35m``,
    ``2d3h``; never ``3198.6s``."""
    seconds = max(0, round(ns / 10**9))
    if seconds < 60:
        return f"{seconds}s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes}m"
    if minutes < 48 * 60:
        hours, rest = divmod(minutes, 60)
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    days, hours = divmod(round(minutes / 60), 24)
    return f"{days}d{hours}h" if hours else f"{days}d"
