"""A hypothesis grammar for vramwatch.toml: every key, right and wrong values, broken bytes.

Documents are built as tables of ``key = value`` lines, so most inputs get
past the TOML parser and reach validation; values mix the right types with
wrong ones, Unicode digits and spaces, huge and negative numbers, NUL and
control characters, nested tables and duplicate tenants; a share of the
documents then has its bytes broken (NUL, non-UTF-8, cut short).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from hypothesis import strategies as st

from vramwatch import config
from vramwatch.config import Config, ConfigError

TABLES: dict[str, tuple[str, ...]] = {
    "daemon": (
        "interval",
        "dry_run",
        "bus",
        "cooldown",
        "max_restarts",
        "restart_window",
        "reclaim_timeout",
    ),
    "gpu": ("min_free_vram", "grace"),
    "host": ("min_available_ram", "grace"),
    "metrics": ("listen", "textfile"),
}
TENANT_KEYS = ("unit", "vram", "ram", "action", "protected")
TYPOS = ("intervall", "dryrun", "Bus", "min_free", "grce", "vrm", "protect", "gpu", "x", "")

# Digits and spaces that str.isdigit()/str.isspace() accept and int() or the
# unit grammar may not: superscripts, Arabic-Indic, fullwidth, NBSP, em space.
ODD_DIGITS = ("²", "٣", "１", "𝟗", "〇", "Ⅻ", "½")
ODD_SPACES = ("\u00a0", "\u2003", "\u3000", "\u200b", "\t", "\n", "\x00", "\x1b")

NUMBERS = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, -1, 65535, 65536, 2**31, 2**63 - 1, -(2**63), 10**18]),
)
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.5, 1e308, -1e-308]),
)
MAGNITUDES = st.one_of(
    st.sampled_from(["0", "1", "1.5", "0.0000001", "100", "99999999999999999999", "1" * 40]),
    st.integers(min_value=0, max_value=5000).map(str),
    st.integers(min_value=0, max_value=10**25).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
)
SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "kB", "MB", "GB", "TB", "PiB", "G", "mib", "")
DURATION_UNITS = ("ms", "s", "m", "h", "d", "us", "S", "min", "")


@st.composite
def mangled(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    """A value string, sometimes with odd digits, odd spaces or a sign put in."""
    text = draw(base)
    how = draw(st.sampled_from([*["none"] * 9, "digit", "space", "sign"]))
    if how == "digit" and text:
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(ODD_DIGITS)) + text[at:]
    elif how == "space":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(ODD_SPACES)) + text[at:]
    elif how == "sign":
        text = draw(st.sampled_from(["-", "+", " ", "0x", "∞"])) + text
    return text


SIZES = mangled(st.builds(lambda n, u: n + u, MAGNITUDES, st.sampled_from(SIZE_UNITS)))
DURATIONS = mangled(st.builds(lambda n, u: n + u, MAGNITUDES, st.sampled_from(DURATION_UNITS)))
PERCENTS = mangled(st.builds(lambda n: n + "%", MAGNITUDES))
UNITS = mangled(
    st.one_of(
        st.sampled_from(
            ["a.service", "llama.service", "job.scope", "x@1.service", "x@.service", ".service"]
        ),
        st.builds(
            lambda stem, suffix: stem + suffix,
            st.text(min_size=0, max_size=300),
            st.sampled_from([".service", ".scope", ".socket", ""]),
        ),
    )
)
ADDRESSES = mangled(
    st.builds(
        lambda host, port: f"{host}:{port}",
        st.sampled_from(["127.0.0.1", "[::1]", "::1", "localhost", "a b", "[nope]", ""]),
        st.one_of(MAGNITUDES, st.sampled_from(ODD_DIGITS)),
    )
)
PATHS = mangled(
    st.one_of(
        st.sampled_from(["/var/lib/node_exporter/vramwatch.prom", "/x/.prom", "rel.prom", "/"]),
        st.text(max_size=60).map(lambda t: "/" + t + ".prom"),
    )
)

GOOD: dict[str, st.SearchStrategy[str]] = {
    "interval": DURATIONS,
    "cooldown": DURATIONS,
    "restart_window": DURATIONS,
    "reclaim_timeout": DURATIONS,
    "grace": DURATIONS,
    "min_free_vram": st.one_of(SIZES, PERCENTS),
    "min_available_ram": st.one_of(SIZES, PERCENTS),
    "vram": SIZES,
    "ram": SIZES,
    "unit": UNITS,
    "bus": mangled(st.sampled_from(["system", "user", "session", "System"])),
    "action": mangled(st.sampled_from(["restart", "stop", "kill", "Restart"])),
    "listen": ADDRESSES,
    "textfile": PATHS,
}
BOOL_KEYS = ("dry_run", "protected")
INT_KEYS = ("max_restarts",)


def toml_string(text: str) -> str:
    """A TOML basic string for any text (control characters as \\u escapes)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0xD800 else "?")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_float(value: float) -> str:
    if value != value:
        return "nan"
    if value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    return repr(value)


SCALARS = st.one_of(
    NUMBERS.map(str),
    FLOATS.map(toml_float),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(max_size=30).map(toml_string),
    st.sampled_from(["1979-05-27", "07:32:00", "1979-05-27T07:32:00Z", "'literal'", '""']),
)
WRONG = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
    st.sampled_from(["{}", "{ a = 1 }", "[[1], [2]]", '"""multi\nline"""']),
)


def value_for(key: str) -> st.SearchStrategy[str]:
    """Mostly the right kind of value for ``key``, sometimes anything at all."""
    if key in BOOL_KEYS:
        right: st.SearchStrategy[str] = st.sampled_from(["true", "false"])
    elif key in INT_KEYS:
        right = NUMBERS.map(str)
    elif key in GOOD:
        right = GOOD[key].map(toml_string)
    else:
        return WRONG
    return st.one_of(*([right] * 19), WRONG)


def _line(key: str) -> st.SearchStrategy[str]:
    shown = key if key and key.replace("_", "").isalnum() and key.isascii() else f'"{key}"'
    return value_for(key).map(lambda value: f"{shown} = {value}")


# Built once: building strategies inside a draw costs more than the whole check.
LINES = {key: _line(key) for keys in (*TABLES.values(), TENANT_KEYS, TYPOS) for key in keys}
TYPO_LINE = st.sampled_from(TYPOS).flatmap(lambda key: LINES[key])


@st.composite
def _table(
    draw: st.DrawFn, chosen: st.SearchStrategy[list[str]], odd: st.SearchStrategy[str]
) -> list[str]:
    keys = draw(chosen)
    if draw(st.sampled_from([*[False] * 15, True])):
        keys.append(draw(odd))
    return [draw(LINES[key]) for key in keys]


def table(keys: tuple[str, ...]) -> st.SearchStrategy[list[str]]:
    """``key = value`` lines: each known key at most once, now and then a typo."""
    chosen = st.lists(st.sampled_from(keys), unique=True, max_size=len(keys))
    return _table(chosen, st.sampled_from(TYPOS))


TABLE_LINES = {name: table(keys) for name, keys in TABLES.items()}
TENANT_LINES = st.tuples(
    st.sampled_from([*[True] * 15, False]), LINES["unit"], table(TENANT_KEYS[1:])
).map(lambda t: [t[1], *t[2]] if t[0] else t[2])


@st.composite
def document(draw: st.DrawFn) -> str:
    """A whole config file, tables in any order, tenants possibly duplicated."""
    sections: list[list[str]] = []
    for name in draw(st.lists(st.sampled_from(sorted(TABLES)), unique=True, max_size=4)):
        sections.append([f"[{name}]", *draw(TABLE_LINES[name])])
    tenants = draw(st.lists(TENANT_LINES, max_size=4))
    if tenants:  # (not `tenants and draw(...)`: mypy types draw() by the left operand)
        if draw(st.booleans()):
            tenants.append(list(tenants[0]))  # the same unit twice
    for body in tenants:
        sections.append(["[[tenant]]", *body])
    # Hypothesis favours the first choice (where it shrinks to): make it the plain one.
    extra = draw(st.sampled_from([*["none"] * 26, "sub", "table", "top", "nested"]))
    if extra == "sub":
        sections.append(["[daemon.sub]", "x = 1"])
    elif extra == "table":
        sections.append(["[tenant]", 'unit = "a.service"'])
    elif extra == "top":
        sections.insert(0, [f"{draw(st.sampled_from(TYPOS + ('tenant', 'daemon')))} = 1"])
    elif extra == "nested":
        sections.append(["[[tenant]]", "[tenant.nested]", "a = 1"])
    order = draw(st.permutations(range(len(sections)))) if sections else []
    return "\n".join("\n".join(sections[i]) for i in order) + "\n"


@st.composite
def config_bytes(draw: st.DrawFn) -> bytes:
    """A document's bytes, a quarter of them broken; and some plain random bytes."""
    if draw(st.sampled_from([*["toml"] * 19, "bytes"])) == "bytes":
        return draw(st.binary(max_size=300))
    raw = draw(document()).encode("utf-8", "surrogatepass")
    how = draw(st.sampled_from([*["none"] * 21, "nul", "byte", "cut"]))
    if how == "nul" and raw:
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + b"\x00" + raw[at:]
    elif how == "byte" and raw:
        at = draw(st.integers(0, len(raw)))
        raw = (
            raw[:at]
            + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80"]))
            + raw[at:]
        )
    elif how == "cut" and raw:
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


BUG = "this is a bug in vramwatch"


def check_config(path: Path, raw: bytes) -> str:
    """Load ``raw`` from ``path``: a Config, or a ConfigError naming the file; returns which."""
    path.write_bytes(raw)
    try:
        loaded = config.load(path)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(f"{path}: "), message
        assert BUG not in message, message
        return "ConfigError"
    assert isinstance(loaded, Config)
    daemon = loaded.daemon
    assert config.INTERVAL_RANGE_NS[0] <= daemon.interval_ns <= config.INTERVAL_RANGE_NS[1]
    assert daemon.cooldown_ns <= config.COOLDOWN_RANGE_NS[1]
    assert 0 < daemon.restart_window_ns <= config.RESTART_WINDOW_RANGE_NS[1]
    assert 0 < daemon.reclaim_timeout_ns <= config.RECLAIM_TIMEOUT_RANGE_NS[1]
    assert 1 <= daemon.max_restarts <= config.MAX_RESTARTS_MAX
    for floor in (loaded.gpu, loaded.host):
        assert 0 <= floor.grace_ns <= config.GRACE_RANGE_NS[1]
        assert floor.floor.bytes is None or 0 < floor.floor.bytes <= config.MAX_SIZE_BYTES
    for tenant in loaded.tenants:
        for budget in (tenant.vram_bytes, tenant.ram_bytes):
            assert budget is None or 0 < budget <= config.MAX_SIZE_BYTES
    assert len({t.unit for t in loaded.tenants}) == len(loaded.tenants)
    return "Config"


def tally() -> Counter[str]:
    return Counter()
