"""Figures of the learning benchmark: training reward and test accuracy against RL step, one line per arm.

Input is the long-format curve rows of ``harness.learn.curve_rows`` (or the same rows read back from ``curves.csv``,
where every value is a string). Each (objective, training-rollout variant, n_t, mu) is one line, the mean over seeds
at each step, with a shaded band from the minimum to the maximum over seeds.

Departures and simplifications:
    1. The band is min-max over seeds, not an interval: with three seeds a percentile interval would mean little.
    2. matplotlib is imported lazily and drawn on an Agg canvas owned by the figure (``matplotlib.figure.Figure``),
       so no global backend is switched and nothing needs a display.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from harness.runs.config import objective_label

PANELS = (("train_reward", "training reward (rollout batch mean)"),
          ("test_cell_accuracy", "test cell accuracy (greedy)"))
"""(curve kind, y-axis label) per panel, left to right."""
TOKENS_PANELS = (("tokens_per_step", "tokens revealed per denoising step (training rollouts)"),)
"""The panel of tokens-per-step.png: how parallel the training rollouts decode, step by step."""
LINE_STYLES = ("-", "--", ":", "-.")
"""One per mu, in ascending order."""
FIGURE_SIZE = (12.0, 4.5)
DPI = 120
BAND_ALPHA = 0.2


def arm_label(objective: str, n_t: Any, mu: Any) -> str:
    return objective + (f" n_t={n_t}" if n_t not in (None, "") else "") + f" mu={mu}"


def curve_name(row: Mapping[str, Any]) -> str:
    """The row's objective with its variant ('diffu-grpo [threshold0.9]'); rows written before the column have none."""
    return objective_label(str(row["objective"]), str(row.get("variant") or ""))


def band_series(rows: Iterable[Mapping[str, Any]], kind: str) -> dict[tuple[str, str, int], dict[int, list[float]]]:
    """(objective [variant], n_t, mu) -> step -> the value of each seed at that step, for one curve kind."""
    series: dict[tuple[str, str, int], dict[int, list[float]]] = {}
    for row in rows:
        if row["kind"] != kind:
            continue
        key = (curve_name(row), "" if row["n_t"] in (None, "") else str(row["n_t"]), int(row["mu"]))
        series.setdefault(key, {}).setdefault(int(row["step"]), []).append(float(row["value"]))
    return series


TITLE_CHARS_PER_PANEL = 70
"""Characters of a figure title per panel's width before it wraps."""


def plot_learning_curves(rows: Iterable[Mapping[str, Any]], path: Path, title: str = "",
                         panels: tuple[tuple[str, str], ...] = PANELS) -> Path:
    """One panel per (curve kind, y label) of ``panels`` (default: training reward, test cell accuracy) vs step; mean
    over seeds with a min-max band. Saves a PNG."""
    from matplotlib.figure import Figure

    rows = list(rows)
    figure = Figure(figsize=(FIGURE_SIZE[0] * len(panels) / len(PANELS), FIGURE_SIZE[1]), dpi=DPI,
                    layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    objectives = list(dict.fromkeys(curve_name(r) for r in rows))
    mus = sorted({int(r["mu"]) for r in rows})
    for ax, (kind, label) in zip(axes, panels, strict=True):
        for (objective, n_t, mu), by_step in band_series(rows, kind).items():
            steps = sorted(by_step)
            color = f"C{objectives.index(objective) % 10}"
            ax.plot(steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], color=color, marker=".",
                    linestyle=LINE_STYLES[mus.index(mu) % len(LINE_STYLES)], label=arm_label(objective, n_t, mu))
            ax.fill_between(steps, [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps], color=color,
                            alpha=BAND_ALPHA, linewidth=0)
        ax.set_xlabel("RL step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize="small")
    if title:  # wrapped to the figure's width (a one-panel figure is half as wide)
        text = title + " (mean over seeds, band = min-max)"
        figure.suptitle(textwrap.fill(text, TITLE_CHARS_PER_PANEL * len(panels)), fontsize="medium")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def plot_gradstats(rows: Iterable[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """Gradient std (left) and bias (right) against n_t on log-log axes: one line per (objective, estimator),
    solid on-policy, dashed off-policy. Saves a PNG."""
    from matplotlib.figure import Figure

    rows = list(rows)
    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="constrained")
    axes = figure.subplots(1, 2)
    arms = list(dict.fromkeys((str(r["objective"]), str(r["estimator"])) for r in rows))
    phases = list(dict.fromkeys(str(r["phase"]) for r in rows))
    for ax, key, label in zip(axes, ("std_median", "bias_median"), ("gradient std / |theta| (median)",
                                                                    "gradient bias / |theta| (median)"), strict=True):
        for (objective, estimator), phase in ((arm, phase) for arm in arms for phase in phases):
            mine = sorted((r for r in rows if (r["objective"], r["estimator"], r["phase"]) ==
                           (objective, estimator, phase)), key=lambda r: int(r["n_t"]))
            if mine:
                ax.plot([int(r["n_t"]) for r in mine], [float(r[key]) for r in mine], marker="o",
                        color=f"C{arms.index((objective, estimator)) % 10}",
                        linestyle=LINE_STYLES[phases.index(phase) % len(LINE_STYLES)],
                        label=f"{objective} {estimator} {phase}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("n_t (Monte Carlo draws)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[-1].legend(fontsize="x-small")
    if title:
        figure.suptitle(title, fontsize="medium")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
