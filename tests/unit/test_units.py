"""Sizes, percentages and durations: what operators write, and what people read."""

from __future__ import annotations

import pytest

from vramwatch import units
from vramwatch.units import GIB, KIB, MIB, TIB, UnitError

SIZE_ERROR = 'expected a size such as "3000MiB" or "2GiB", got "{}"'
DURATION_ERROR = 'expected a duration such as "500ms", "2s", "5m" or "1h", got "{}"'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0B", 0),
        ("512B", 512),
        ("1KiB", KIB),
        ("3000MiB", 3000 * MIB),
        ("2GiB", 2 * GIB),
        ("1TiB", TIB),
        ("1kB", 1000),
        ("5MB", 5 * 1000**2),
        ("16GB", 16 * 1000**3),
        ("2TB", 2 * 1000**4),
        ("1.5GiB", 3 * GIB // 2),
        ("0.5KiB", 512),
        ("1.1TB", 1_100_000_000_000),
        ("  2GiB  ", 2 * GIB),
        ("2 GiB", 2 * GIB),
        ("2\tGiB", 2 * GIB),
    ],
)
def test_parse_size_accepts_binary_and_decimal_units(text: str, expected: int) -> None:
    """Binary units are powers of 1024, decimal ones (kB, MB, GB, TB) powers of 1000."""
    actual = units.parse_size(text)

    assert expected == actual


@pytest.mark.parametrize(
    "text",
    [
        "8G",  # systemd-style suffix: ambiguous, so refused
        "3000mib",  # units are case-sensitive
        "3000MIB",
        "1KB",  # kilo is a lower-case k
        "1kiB",
        "1Gb",  # bits are not a memory size
        "-1GiB",
        "-0.5MiB",
        "",
        "   ",
        "GiB",
        "3000",
        "1e3MiB",
        "1,5GiB",
        ".5GiB",
        "5.GiB",
        "1GiB 2MiB",
        "1 2GiB",
    ],
)
def test_parse_size_rejects_what_is_not_a_size_with_the_text_it_got(text: str) -> None:
    with pytest.raises(UnitError) as raised:
        units.parse_size(text)

    assert SIZE_ERROR.format(text) == str(raised.value)


def test_parse_size_keeps_large_byte_counts_exact() -> None:
    actual = units.parse_size("9007199254740993B")

    assert 2**53 + 1 == actual


def test_parse_size_of_an_absurdly_long_number_is_a_unit_error() -> None:
    """A typo of many digits must read as a bad value, not crash the config loader."""
    text = "1" * 300 + "TiB"

    with pytest.raises(UnitError):
        units.parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10%", 10.0),
        ("0%", 0.0),
        ("99.5%", 99.5),
        ("150%", 150.0),
        (" 10 %", 10.0),
        ("10GiB", None),
        ("10", None),
        ("%", None),
        ("-10%", None),
        ("ten%", None),
        ("", None),
    ],
)
def test_parse_percent_returns_the_number_or_none_when_not_a_percentage(
    text: str, expected: float | None
) -> None:
    """Range checks belong to the caller: "150%" parses, and config.py refuses it."""
    actual = units.parse_percent(text)

    assert expected == actual


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", 500_000_000),
        ("2s", 2 * 10**9),
        ("5m", 300 * 10**9),
        ("1h", 3600 * 10**9),
        ("7d", 7 * 86400 * 10**9),  # record_keep
        ("1.5s", 1_500_000_000),
        ("0.5h", 1800 * 10**9),
        ("0s", 0),
        (" 10s ", 10 * 10**9),
        ("10 s", 10 * 10**9),
    ],
)
def test_parse_duration_ns_gives_nanoseconds(text: str, expected: int) -> None:
    actual = units.parse_duration_ns(text)

    assert expected == actual


@pytest.mark.parametrize(
    "text",
    ["10", "10sec", "2S", "1D", "1us", "-1s", "", "s", "1m30s", "1h 2m", "10ns", "five s"],
)
def test_parse_duration_ns_rejects_other_spellings_with_the_text_it_got(text: str) -> None:
    with pytest.raises(UnitError) as raised:
        units.parse_duration_ns(text)

    assert DURATION_ERROR.format(text) == str(raised.value)


@pytest.mark.parametrize(
    ("n_bytes", "expected"),
    [
        (None, "unknown"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (512 * MIB, "512 MiB"),
        (3000 * MIB, "2.9 GiB"),
        (int(1.2 * GIB), "1.2 GiB"),
        (2 * GIB, "2 GiB"),
        (int(10.5 * GIB), "10.5 GiB"),
        (150 * GIB, "150 GiB"),
        (2 * TIB, "2 TiB"),
        (-1536, "-1.5 KiB"),
        (-2 * GIB, "-2 GiB"),
    ],
)
def test_format_size_uses_binary_units_with_at_most_one_decimal(
    n_bytes: int | None, expected: str
) -> None:
    actual = units.format_size(n_bytes)

    assert expected == actual


@pytest.mark.parametrize(
    ("ns", "expected"),
    [
        (0, "0ms"),
        (500_000_000, "500ms"),
        (999_000_000, "999ms"),
        (10**9, "1s"),
        (10 * 10**9, "10s"),
        (1_500_000_000, "1.5s"),
        (1_250_000_000, "1.2s"),
        (90 * 10**9, "90s"),
        (120 * 10**9, "2m"),
        (300 * 10**9, "5m"),
        (3600 * 10**9, "1h"),
        (9000 * 10**9, "150m"),
        (24 * 3600 * 10**9, "24h"),
    ],
)
def test_format_duration_picks_the_largest_exact_unit(ns: int, expected: str) -> None:
    actual = units.format_duration(ns)

    assert expected == actual


def test_format_duration_never_writes_exponents() -> None:
    actual = units.format_duration(10**6 * 10**9)

    assert "1000000s" == actual


@pytest.mark.parametrize("text", ["500ms", "2s", "10s", "90s", "2m", "5m", "1h", "150m", "1.5s"])
def test_format_duration_reads_back_as_the_same_duration(text: str) -> None:
    """What vramwatch prints can be pasted back into the config."""
    ns = units.parse_duration_ns(text)

    assert ns == units.parse_duration_ns(units.format_duration(ns))


@pytest.mark.parametrize(
    "number",
    [
        "0",
        "1",
        "7",
        "0.5",
        "1.5",
        "2.5",
        "0.0000001",
        "0.00000005",
        "0.00000015",
        "3.14159",
        "12345678901234567890.123456789",
        "0.499999999",
        "1.000",
        "09.50",
    ],
)
@pytest.mark.parametrize("factor", [1, 3, 1000, 1024, MIB, 10**9, 3600 * 10**9])
def test_scaled_is_the_exact_product_rounded_half_to_even(number: str, factor: int) -> None:
    """What ``round(Fraction(number) * factor)`` gave before, without importing fractions."""
    from fractions import Fraction

    assert round(Fraction(number) * factor) == units.scaled(number, factor)


@pytest.mark.parametrize(
    ("ns", "expected"),
    [
        (0, "0s"),
        (44_600_000_000, "45s"),
        (3198_600_000_000, "53m"),  # issue 23: the growing forecast said "~3198.6s"
        (3599 * 10**9, "1h"),
        (16_500 * 10**9, "4h35m"),
        (2 * 86400 * 10**9, "2d"),
        ((2 * 86400 + 3 * 3600 + 600) * 10**9, "2d3h"),
    ],
)
def test_format_approximate_rounds_as_a_person_would(ns: int, expected: str) -> None:
    assert expected == units.format_approximate(ns)
