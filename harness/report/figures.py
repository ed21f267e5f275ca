"""The BGPO paper's figures from existing results, no training: ``harness figures RESULTS_DIR``.

Each figure is a CSV (the numbers, long format) and a PNG drawn from that CSV's rows:

- ``memory_vs_nt`` (Fig. 1), from the run records: per task, objective, n_t, the largest peak total and activation
  MB over seeds.
- ``accuracy_vs_nt``, from the run records: per task, objective, n_t, mu, the after-training accuracy (mean, min,
  max over seeds).
- ``reward_vs_step`` (Fig. 2), from the run records: per task, objective, n_t, mu and step, the training reward
  (mean, min, max over seeds).
- ``step_time`` (Fig. 5), from the run records: per task, objective, n_t, mu, seconds per step in rollout, reward
  and update (the median over a run's untracked steps, then the mean over seeds).
- ``gradstats`` (Figs. 3-4), from gradstats/gradstats.json: per objective, estimator, phase, n_t, the gradient std
  and bias (medians over parameters).

Objectives without n_t (diffu-GRPO) have an empty n_t and are drawn as a horizontal line in the n_t plots. Failed
runs count in memory (an OOM's peak is informative) but not in accuracy, reward or time.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import mean, median
from typing import Any

from harness.loop import metrics
from harness.loop.metrics import PHASES
from harness.runs.config import objective_label
from harness.runs.records import RunRecord

DPI = 120


def _n_t(value: Any) -> str:
    return "" if value is None else str(value)


def _grouped(records: Sequence[RunRecord], with_mu: bool) -> dict[tuple, list[RunRecord]]:
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        key = (r.task, objective_label(r.objective, r.variant), _n_t(r.n_t)) + ((r.mu,) if with_mu else ())
        groups.setdefault(key, []).append(r)
    return groups


def memory_rows(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    rows = []
    for (task, objective, n_t), runs in _grouped(records, with_mu=False).items():
        peaks = [r.peak_memory() for r in runs]
        rows.append({"task": task, "objective": objective, "n_t": n_t,
                     "peak_total_mb": max(p[metrics.PEAK_TOTAL_MB] for p in peaks),
                     "peak_activations_mb": max(p[metrics.PEAK_ACTIVATIONS_MB] for p in peaks)})
    return rows


def accuracy_rows(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    rows = []
    for (task, objective, n_t, mu), runs in _grouped(records, with_mu=True).items():
        summaries = [r.summary() for r in runs]
        after = [s.accuracy for s in summaries if s.accuracy is not None]
        if after:
            rows.append({"task": task, "objective": objective, "n_t": n_t, "mu": mu, "metric": summaries[0].metric,
                         "seeds": len(after), "mean": mean(after), "min": min(after), "max": max(after)})
    return rows


def reward_rows(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    rows = []
    for (task, objective, n_t, mu), runs in _grouped(records, with_mu=True).items():
        curves = [[s.reward for s in r.steps] for r in runs if r.ok]
        for step in range(max(map(len, curves), default=0)):
            values = [c[step] for c in curves if len(c) > step]
            rows.append({"task": task, "objective": objective, "n_t": n_t, "mu": mu, "step": step,
                         "seeds": len(values), "mean": mean(values), "min": min(values), "max": max(values)})
    return rows


def step_time_rows(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    rows = []
    for (task, objective, n_t, mu), runs in _grouped(records, with_mu=True).items():
        per_run = []
        for r in (r for r in runs if r.ok):
            steps = r.untracked_steps()
            per_run.append({p: median(s.metrics.get(metrics.phase_seconds(p), 0.0) for s in steps) for p in PHASES})
        if per_run:
            rows.append({"task": task, "objective": objective, "n_t": n_t, "mu": mu, "seeds": len(per_run),
                         **{f"{p}_s": mean(t[p] for t in per_run) for p in PHASES}})
    return rows


def gradstats_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{k: r[k] for k in ("objective", "estimator", "phase", "n_t", "std_median", "bias_median")}
            for r in result["rows"]]


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["empty"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _lines_vs_nt(ax: Any, rows: Sequence[Mapping[str, Any]], series: Sequence[str], y: str, label: str) -> None:
    """One line per ``series`` key tuple against n_t (log2 axis); rows without n_t as a dashed horizontal line."""
    keys = list(dict.fromkeys(tuple(r[k] for k in series) for r in rows))
    for index, key in enumerate(keys):
        mine = [r for r in rows if tuple(r[k] for k in series) == key]
        color, name = f"C{index % 10}", " ".join(map(str, key))
        with_nt = sorted((r for r in mine if r["n_t"] != ""), key=lambda r: int(r["n_t"]))
        if with_nt:
            ax.plot([int(r["n_t"]) for r in with_nt], [float(r[y]) for r in with_nt], marker="o", color=color,
                    label=name)
        for r in (r for r in mine if r["n_t"] == ""):
            ax.axhline(float(r[y]), color=color, linestyle="--", label=f"{name} (no n_t)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("n_t")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")


def draw(name: str, rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """The PNG of figure ``name`` from its rows."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 4.5), dpi=DPI, layout="constrained")
    ax = figure.subplots()
    if name == "memory_vs_nt":
        _lines_vs_nt(ax, rows, ("task", "objective"), "peak_total_mb", "peak memory of a step, MB")
        ax.set_yscale("log")
    elif name == "accuracy_vs_nt":
        _lines_vs_nt(ax, rows, ("task", "objective", "mu"), "mean", "accuracy after training (mean over seeds)")
    elif name == "gradstats":
        _lines_vs_nt(ax, rows, ("objective", "estimator", "phase"), "std_median", "gradient std / |theta| (median)")
        ax.set_yscale("log")
    elif name == "reward_vs_step":
        keys = list(dict.fromkeys((r["task"], r["objective"], r["n_t"], r["mu"]) for r in rows))
        for index, key in enumerate(keys):
            mine = [r for r in rows if (r["task"], r["objective"], r["n_t"], r["mu"]) == key]
            steps = [int(r["step"]) for r in mine]
            ax.plot(steps, [float(r["mean"]) for r in mine], color=f"C{index % 10}",
                    label=f"{key[1]} n_t={key[2] or '-'} mu={key[3]} ({key[0]})")
            ax.fill_between(steps, [float(r["min"]) for r in mine], [float(r["max"]) for r in mine],
                            color=f"C{index % 10}", alpha=0.2, linewidth=0)
        ax.set_xlabel("RL step")
        ax.set_ylabel("training reward (band: min-max over seeds)")
        ax.legend(fontsize="x-small")
    else:  # step_time: stacked bars per arm
        labels = [f"{r['objective']} {r['n_t'] or '-'} mu{r['mu']}" for r in rows]
        bottom = [0.0] * len(rows)
        for phase in PHASES:
            heights = [float(r[f"{phase}_s"]) for r in rows]
            ax.bar(labels, heights, bottom=bottom, label=phase)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ax.set_ylabel("seconds per RL step")
        ax.tick_params(axis="x", rotation=45, labelsize="small")
        ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def write_figures(records: Sequence[RunRecord], out: Path, gradstats: Mapping[str, Any] | None = None,
                  ) -> dict[str, Path]:
    """Every figure the inputs allow: {name: PNG path}; each CSV lies beside its PNG."""
    tables = {"memory_vs_nt": memory_rows(records), "accuracy_vs_nt": accuracy_rows(records),
              "reward_vs_step": reward_rows(records), "step_time": step_time_rows(records)}
    if gradstats is not None:
        tables["gradstats"] = gradstats_rows(gradstats)
    written = {}
    for name, rows in tables.items():
        if rows:
            write_csv(rows, out / f"{name}.csv")
            written[name] = draw(name, rows, out / f"{name}.png")
    return written


def read_gradstats(results_dir: Path) -> dict[str, Any] | None:
    path = results_dir / "gradstats" / "gradstats.json"
    return json.loads(path.read_text()) if path.is_file() else None
