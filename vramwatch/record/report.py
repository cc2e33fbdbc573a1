"""What ``vramwatch replay`` prints: each decision, in the journal's words or as JSON,
and the summary (actions per tenant, cancelled actions, breaches of each floor and
the time under it), for one config or two side by side."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from vramwatch.record.replay import Result, Stamped, iso
from vramwatch.units import format_duration

# The events that are an action (or, in dry run, would have been): the summary's
# actions per tenant, and what --plot marks.
ACTION_EVENTS = frozenset({"restart", "stop", "would_restart", "would_stop", "released"})


def summary(result: Result) -> dict[str, Any]:
    """The summary of one replay, as ``--json`` prints it."""
    actions: dict[str, dict[str, int]] = {}
    cancelled: dict[str, int] = {}
    for s in result.events:
        e = s.event
        unit = str(e.fields.get("unit", ""))
        if e.name in ACTION_EVENTS:
            per = actions.setdefault(unit, {})
            per[e.name] = per.get(e.name, 0) + 1
        elif e.name == "action_cancelled":
            cancelled[unit] = cancelled.get(unit, 0) + 1
    return {
        "ticks": result.ticks,
        "from": iso(result.first_ms) if result.first_ms is not None else None,
        "to": iso(result.last_ms) if result.last_ms is not None else None,
        "actions": {u: dict(sorted(a.items())) for u, a in sorted(actions.items())},
        "cancelled": dict(sorted(cancelled.items())),
        "breaches": dict(sorted(result.breaches.items())),
        "under_floor_s": {k: v / 1e9 for k, v in sorted(result.under_ns.items())},
    }


def one(result: Result, as_json: bool) -> list[str]:
    """The lines ``replay`` prints for one config: its decisions, then its summary."""
    out = []
    for s in result.events:
        if as_json:
            out.append(json.dumps(event_json(s)))
        else:
            out.append(f"{s.time_text()} {s.event.name}: {s.event.message}")
    if as_json:
        out.append(json.dumps({"summary": summary(result)}))
    else:
        out.append("")
        out.extend(summary_text([(result.label, summary(result))]))
    return out


def compare(a: Result, b: Result, as_json: bool) -> list[str]:
    """Both configs' decisions in time order: once when they agree, each labelled when
    not; then both summaries."""
    out = []
    for _when, label, s in _merge(a, b):
        if as_json:
            out.append(json.dumps(event_json(s, label)))
        else:
            out.append(f"{s.time_text()} [{label}] {s.event.name}: {s.event.message}")
    summaries = [(a.label, summary(a)), (b.label, summary(b))]
    if as_json:
        out.append(json.dumps({"summary": dict(summaries)}))
    else:
        out.append("")
        out.extend(summary_text(summaries))
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def event_json(s: Stamped, label: str | None = None) -> dict[str, Any]:
    e = s.event
    out: dict[str, Any] = {"timestamp": s.time_text(), "level": e.level, "event": e.name}
    out["message"] = e.message
    if label is not None:
        out["config"] = label
    out.update({k: _jsonable(v) for k, v in e.fields.items() if v is not None})
    out["mono_ns"] = s.mono_ns
    return out


def summary_text(summaries: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The summary as rows; one column per config."""
    rows: list[tuple[str, list[str]]] = []
    units = sorted({u for _, s in summaries for u in s["actions"]})
    for unit in units:
        cells = []
        for _, s in summaries:
            per = s["actions"].get(unit, {})
            cells.append(", ".join(f"{n} {name}" for name, n in per.items()) or "0")
        rows.append((f"actions on {unit}", cells))
    cancelled = sorted({u for _, s in summaries for u in s["cancelled"]})
    for unit in cancelled:
        rows.append(
            (f"cancelled on {unit}", [str(s["cancelled"].get(unit, 0)) for _, s in summaries])
        )
    wheres = sorted({w for _, s in summaries for w in (*s["breaches"], *s["under_floor_s"])})
    for where in wheres:
        rows.append(
            (f"breaches of {where} floor", [str(s["breaches"].get(where, 0)) for _, s in summaries])
        )
    for where in wheres:
        rows.append(
            (
                f"time under {where} floor",
                [
                    format_duration(int(s["under_floor_s"].get(where, 0) * 1e9))
                    for _, s in summaries
                ],
            )
        )
    if not units:
        rows.insert(0, ("actions", ["none"] * len(summaries)))
    width = max([len(r[0]) for r in rows] + [7])
    cols = [
        max([len(label)] + [len(r[1][i]) for r in rows]) for i, (label, _) in enumerate(summaries)
    ]
    lines = []
    first = summaries[0][1]
    span = (
        f"{first['ticks']} samples, {first['from']} .. {first['to']}"
        if first["ticks"]
        else "no samples"  # an empty trace has no first or last time
    )
    lines.append(f"summary ({span}):")
    if len(summaries) > 1:
        lines.append(
            "  "
            + " " * width
            + "  "
            + "  ".join(n.ljust(c) for (n, _), c in zip(summaries, cols, strict=True))
        )
    for name, cells in rows:
        lines.append(
            "  "
            + name.ljust(width)
            + "  "
            + "  ".join(v.ljust(c) for v, c in zip(cells, cols, strict=True))
        )
    return [line.rstrip() for line in lines]


def _merge(a: Result, b: Result) -> list[tuple[int, str, Stamped]]:
    def key(s: Stamped) -> tuple[int, str, str]:
        return (s.mono_ns, s.event.name, s.event.message)

    rest: dict[tuple[int, str, str], list[Stamped]] = {}
    for s in b.events:
        rest.setdefault(key(s), []).append(s)
    merged: list[tuple[int, int, str, Stamped]] = []
    for i, s in enumerate(a.events):
        same = rest.get(key(s))
        if same:
            same.pop(0)
            merged.append((s.wall_ms, i, "both", s))
        else:
            merged.append((s.wall_ms, i, a.label, s))
    left = [s for items in rest.values() for s in items]
    order = {id(s): j for j, s in enumerate(b.events)}
    for s in left:
        merged.append((s.wall_ms, len(a.events) + order[id(s)], b.label, s))
    merged.sort(key=lambda m: (m[0], m[1]))
    return [(w, label, s) for w, _, label, s in merged]
