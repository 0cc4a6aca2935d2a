"""Charts of the report, drawn with matplotlib (no pyplot, no network).

Each ``draw_*`` function takes plain numbers and draws one chart on the Axes it
is given: the HTML report puts each on a figure of its own and inlines it as
SVG (:func:`svg_chart`: texts stay text, ``svg.fonttype = none``, so the labels
can be read and searched; the XML prolog and DOCTYPE are dropped so the
element can sit inside HTML); the PDF report draws them on its pages.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

__all__ = ["Draw", "RC", "svg_chart", "svg_of", "style", "draw_stacked_area", "draw_lines", "draw_bars",
           "draw_grouped_bars"]

Draw = Callable[[Axes], None]
RC: dict[Any, Any] = {"svg.fonttype": "none", "svg.hashsalt": "ilm", "font.size": 9, "axes.spines.top": False,
                      "axes.spines.right": False}
_COLOURS = ["#d62728", "#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def svg_of(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None, "Format": None,
                                                                   "Type": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    # Inline SVG in HTML needs no namespace declarations: the file then names no URL at all.
    return text.replace(' xmlns:xlink="http://www.w3.org/1999/xlink"', "").replace(
        ' xmlns="http://www.w3.org/2000/svg"', "")


def svg_chart(draw: Draw) -> str:
    """One chart on a figure of its own, as an ``<svg>`` element."""
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(7.2, 3.4))
        draw(fig.add_subplot())
        return svg_of(fig)


def _bytes(v: float, _pos: object = None) -> str:
    for unit, f in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if abs(v) >= f:
            return f"{v / f:g} {unit}"
    return f"{v:g} B"


def _money(v: float, _pos: object = None) -> str:
    return f"{v:,.0f}"


def style(ax: Axes, title: str, ylabel: str) -> None:
    ax.set_title(title, loc="left")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def draw_stacked_area(ax: Axes, title: str, x: Sequence[float], series: Mapping[str, Sequence[float]], *,
                      xlabel: str, now: float | None = None) -> None:
    """Bytes per series (tiers) stacked over x (years); a dashed line at ``now`` when given."""
    style(ax, title, "stored")
    names = list(series)
    ax.stackplot(list(x), *[[float(v) for v in series[n]] for n in names], labels=names,
                 colors=_COLOURS[:len(names)], alpha=0.85)
    if now is not None:
        ax.axvline(now, color="#333333", linestyle="--", linewidth=0.8)
    ax.yaxis.set_major_formatter(FuncFormatter(_bytes))
    ax.set_xlabel(xlabel)
    ax.legend(loc="upper left", frameon=False)


def draw_lines(ax: Axes, title: str, x: Sequence[int], series: Mapping[str, Sequence[float]], *, xlabel: str,
               ylabel: str) -> None:
    """One line per series (scenarios), money on the y axis."""
    style(ax, title, ylabel)
    for i, (name, ys) in enumerate(series.items()):
        ax.plot(list(x), [float(v) for v in ys], marker="o", markersize=3, label=name,
                color=_COLOURS[i % len(_COLOURS)])
    ax.yaxis.set_major_formatter(FuncFormatter(_money))
    ax.set_xlabel(xlabel)
    ax.legend(loc="upper left", frameon=False)


def draw_bars(ax: Axes, title: str, labels: Sequence[str], values: Sequence[float], *, series: str, ylabel: str,
              percent: bool = False, as_bytes: bool = False) -> None:
    style(ax, title, ylabel)
    ax.bar(range(len(labels)), [float(v) for v in values], color=_COLOURS[2], label=series)
    ax.set_xticks(range(len(labels)), list(labels), rotation=30 if len(labels) > 8 else 0,
                  ha="right" if len(labels) > 8 else "center")
    if percent:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:.1%}"))
    elif as_bytes:
        ax.yaxis.set_major_formatter(FuncFormatter(_bytes))
    ax.legend(loc="upper right", frameon=False)


def draw_grouped_bars(ax: Axes, title: str, groups: Sequence[str], series: Mapping[str, Sequence[float]], *,
                      ylabel: str, as_bytes: bool = False) -> None:
    """Bars of each series (policies) side by side in each group."""
    style(ax, title, ylabel)
    n = max(1, len(series))
    width = 0.8 / n
    for i, (name, ys) in enumerate(series.items()):
        ax.bar([g + i * width - 0.4 + width / 2 for g in range(len(groups))], [float(v) for v in ys], width,
               label=name, color=_COLOURS[i % len(_COLOURS)])
    ax.set_xticks(range(len(groups)), list(groups))
    if as_bytes:
        ax.yaxis.set_major_formatter(FuncFormatter(_bytes))
    ax.legend(loc="upper right", frameon=False)
