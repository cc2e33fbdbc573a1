"""``replay --plot``: the trace as a picture for the post-mortem (matplotlib, optional).

One panel per GPU (free VRAM and its effective floor, each tenant's VRAM and
its budget) and one for the host (MemAvailable and its floor, each tenant's
RAM and its budget); time under a floor is shaded, actions are marked and
labelled. matplotlib is the ``plot`` extra and is imported only
here, only when ``--plot`` is given.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from vramwatch.model import RAM, VRAM
from vramwatch.record.replay import Result, floor_name
from vramwatch.record.report import ACTION_EVENTS

GIB = 1024**3
# Colours that stay apart in print and for the colour-blind (Okabe-Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
ACTION_STYLES = ("#D55E00", "#7B3294")


def available() -> str | None:
    """None when plotting works; else how to make it work."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        from vramwatch.extras import install_hint

        return "needs matplotlib, which is not installed: " + install_hint(
            "plot", "python3-matplotlib"
        )
    return None


def _times(ms: list[int]) -> list[dt.datetime]:
    return [dt.datetime.fromtimestamp(t / 1000, tz=dt.UTC) for t in ms]


def _gib(values: list[int | None]) -> list[float]:
    return [float("nan") if v is None else v / GIB for v in values]


def draw(results: list[Result], out: Path) -> None:
    """Draw the first result's samples and every result's actions to ``out`` (.png/.svg)."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    base = results[0]
    series = base.series
    assert series is not None
    times = _times(series.wall_ms)
    panels: list[tuple[str, Any]] = [(f"GPU {i}", i) for i in sorted(series.gpu)]
    panels.append(("host RAM", None))
    fig = Figure(figsize=(11, 2.6 * len(panels) + 0.6), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    colours = {unit: PALETTE[i % len(PALETTE)] for i, unit in enumerate(sorted(series.tenants))}
    for ax, (title, index) in zip(axes, panels, strict=True):
        if index is not None:
            points = series.gpu[index]
            resource, free_label = VRAM, "free VRAM"
        else:
            points = series.host
            resource, free_label = RAM, "MemAvailable"
        free = [p[0] for p in points]
        floor = [p[1] for p in points]
        ax.plot(times, _gib(free), color="black", linewidth=1.4, label=free_label)
        ax.plot(times, _gib(floor), color="black", linestyle="--", linewidth=1, label="floor")
        under = [
            f is not None and fl is not None and f < fl for f, fl in zip(free, floor, strict=True)
        ]
        if any(under):
            ax.fill_between(
                times,
                0,
                1,
                where=under,
                transform=ax.get_xaxis_transform(),
                color="#D55E00",
                alpha=0.15,
                linewidth=0,
                label="under the floor",
            )
        for unit, per in sorted(series.tenants.items()):
            used = per[resource]
            if not any(v for v in used):
                continue
            colour = colours[unit]
            ax.plot(times, _gib(used), color=colour, linewidth=1.1, label=unit)
            budget = series.budgets.get(unit, {}).get(resource)
            if budget is not None:
                ax.axhline(budget / GIB, color=colour, linestyle=":", linewidth=1)
        for n, result in enumerate(results):
            style = ACTION_STYLES[n % len(ACTION_STYLES)]
            for s in result.events:
                e = s.event
                if e.name not in ACTION_EVENTS:
                    continue
                if floor_name(e.fields) != title:
                    continue
                when = _times([s.wall_ms])[0]
                ax.axvline(when, color=style, linewidth=1.2)
                text = f"{e.name} {e.fields.get('unit', '')}"
                if len(results) > 1:
                    text += f" [{result.label}]"
                ax.annotate(
                    text,
                    (when, 0.97 - 0.12 * n),
                    xycoords=("data", "axes fraction"),
                    rotation=0,
                    fontsize=8,
                    color=style,
                    ha="left",
                    va="top",
                    xytext=(3, 0),
                    textcoords="offset points",
                )
        ax.set_title(title, loc="left", fontsize=10)
        ax.set_ylabel("GiB")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    locator = AutoDateLocator()  # type: ignore[no-untyped-call]
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    axes[-1].set_xlabel("time (UTC)")
    label = base.label if len(results) == 1 else " vs ".join(r.label for r in results)
    fig.suptitle(f"vramwatch replay: {label}", fontsize=11)
    fig.savefig(out, dpi=80)
