"""The leaderboard: the runs of a results file (``harness/runs/results_file.py``) folded into one entry per arm
(task, objective, n_t, mu, steps, training-rollout variant), written as Markdown (for reviews), CSV (raw numbers,
for scripts) and one static HTML page (sortable table and plots) that opens offline from ``file://``.

Rules:
    1. Accuracy after is the mean over the seeds whose outcome is ``ok``. Its brackets are the run's 95% CI when one
       seed is ok, and the [min, max] of the seed means (the range over seeds) when several are; three seeds make a
       range more honest than an interval.
    2. Delta is after minus before over the same ok seeds, in points. Peak memory is the max over all seeds that
       measured it (an oom run's peak is informative); step time and its ratio are medians over seeds.
    3. An arm with no ok seed stays on the board, accuracy "-", so failures are seen, and sorts last in its task.

Departures and simplifications:
    1. matplotlib is drawn on a figure-owned Agg canvas (as in ``harness/report/plots.py``) and embedded as base64
       PNG, so the page references no URL at all.
    2. The reward curve of an arm is the mean over the seeds that reached each step (a failed seed's curve stops).
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from statistics import mean, median
from typing import Any

from harness.runs.config import Arm, objective_label
from harness.runs.summary import OUTCOMES, RunSummary

CSV_FIELDS = ("task", "objective", "variant", "n_t", "mu", "steps", "metric", "seeds", "outcomes", "interval",
              "after_pct", "after_low_pct", "after_high_pct", "before_pct", "delta_pts", "peak_total_mb",
              "peak_activations_mb", "step_s", "step_time_ratio", "paired_reference", "paired_pts", "paired_low_pts",
              "paired_high_pts", "paired_p")
"""Columns of ``leaderboard.csv``; percentages are 0..100 floats, an empty cell is a missing value."""
RANGE_MARK = "\u2020"
"""Marks an accuracy whose brackets are the range over seeds, not a 95% CI."""
COLUMNS = (("task", "task", False), ("objective", "objective", False), ("n_t", "n_t", True), ("mu", "mu", True),
           ("steps", "steps", True), ("seeds", "seeds", True), ("outcomes", "outcomes", False),
           ("after_pct", "acc after %", True),
           ("delta_pts", "delta pts", True), ("paired", "vs reference: pts [95% CI] p", False),
           ("peak_total_mb", "peak total MB", True),
           ("peak_activations_mb", "peak act MB", True), ("step_s", "step s", True),
           ("step_time_ratio", "step-time ratio", True))
"""(entry key, header, numeric) of the Markdown and HTML tables."""
NOTES = (
    "One entry per (task, objective, n_t, mu, RL steps, training decoding); seeds = runs; outcomes: how runs ended "
    "(ok, nan, diverged, oom, error). An objective in brackets, e.g. [threshold0.9], trained on rollouts decoded "
    "otherwise than LLaDA's fixed schedule.",
    "acc after %: mean over ok seeds of the accuracy after training. Brackets: the 95% CI of the run when one seed is "
    f"ok; [min, max] over seeds (the range over seeds, marked {RANGE_MARK}) when several are. '-': no ok seed.",
    "delta pts: acc after minus acc before (base policy), same ok seeds, in percentage points.",
    "vs reference: acc after minus the reference arm's (paired_reference) on the same items and seeds, in points, "
    "with a 95% paired-bootstrap interval and two-sided p-value (harness/report/paired.py); 'ref' marks the "
    "reference, '-' an arm with nothing to pair (no run records beside the results file, or no common items).",
    "peak total / act MB: largest peak memory (total, activations) over seeds. step s: median seconds per step over "
    "seeds; step-time ratio: median over seeds of step time / reference step time.",
)


def _outcomes(rows: Sequence[RunSummary]) -> str:
    """'2 ok, 1 nan': counts in the order of OUTCOMES, unknown outcomes after them."""
    names = dict.fromkeys([*OUTCOMES, *(r.outcome for r in rows)])
    return ", ".join(f"{n} {o}" for o in names if (n := sum(r.outcome == o for r in rows)))


def _pct(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


def _present(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def entry(rows: Sequence[RunSummary]) -> dict[str, Any]:
    """One leaderboard entry (a CSV row, ``CSV_FIELDS``) from the runs (seeds) of one arm; see the module rules."""
    first, ok = rows[0], [r for r in rows if r.ok and r.after is not None]
    after = [r.after.mean for r in ok]
    low, high = (min(after), max(after)) if len(ok) > 1 else (None, None)
    if len(ok) == 1:
        low, high = ok[0].after.low, ok[0].after.high
    before = [r.before.mean for r in ok if r.before is not None]
    curves = [r.reward_curve for r in rows]
    return {"task": first.task, "objective": first.objective, "variant": first.variant, "n_t": first.n_t,
            "mu": first.mu, "steps": first.steps,
            "metric": first.metric or "", "seeds": len(rows), "outcomes": _outcomes(rows),
            "interval": "" if not ok else "ci95" if len(ok) == 1 else "seed_range",
            "after_pct": _pct(mean(after)) if ok else None, "after_low_pct": _pct(low), "after_high_pct": _pct(high),
            "before_pct": _pct(mean(before)) if before else None,
            "delta_pts": 100 * (mean(after) - mean(before)) if ok and len(before) == len(ok) else None,
            "peak_total_mb": max(_present(r.peak_total_mb for r in rows), default=None),
            "peak_activations_mb": max(_present(r.peak_activations_mb for r in rows), default=None),
            "step_s": median(v) if (v := _present(r.step_s for r in rows)) else None,
            "step_time_ratio": median(v) if (v := _present(r.step_time_ratio for r in rows)) else None,
            "reward_curve": [mean(c[s] for c in curves if len(c) > s) for s in range(max(map(len, curves)))]}


def aggregate(rows: Sequence[RunSummary]) -> list[dict[str, Any]]:
    """Entries of all arms, sorted by task, then accuracy after descending (arms without an ok seed last)."""
    arms: dict[Arm, list[RunSummary]] = {}
    for row in rows:
        arms.setdefault(row.arm, []).append(row)
    entries = [entry(sorted(group, key=lambda r: r.seed)) for group in arms.values()]
    return sorted(entries, key=lambda e: (e["task"], e["after_pct"] is None, -(e["after_pct"] or 0), e["objective"],
                                          e["variant"], e["n_t"] is not None, e["n_t"] or 0, e["mu"], e["steps"] or 0))


def cell(e: dict[str, Any], key: str) -> str:
    """The text of one table cell; '-' where the value is missing."""
    value = e.get(key)
    if value is None:
        return "-"
    if key == "after_pct":
        mark = RANGE_MARK if e["interval"] == "seed_range" else ""
        return f"{value:.1f} [{e['after_low_pct']:.1f}, {e['after_high_pct']:.1f}]{mark}"
    if key == "delta_pts":
        return f"{value:+.1f}"
    if key == "objective":
        return objective_label(value, e.get("variant", ""))
    if key in ("step_s", "step_time_ratio"):
        return f"{value:.2f}"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def _metric_note(entries: Sequence[dict[str, Any]]) -> str:
    metrics = dict.fromkeys(f"{e['task']}: {e['metric']}" for e in entries if e["metric"])
    return "Accuracy metric per task: " + "; ".join(metrics) + "." if metrics else ""


def markdown(entries: Sequence[dict[str, Any]], title: str) -> str:
    """Title, the table and the notes that say how to read it (a table without its interval rule misleads)."""
    lines = [f"# {title}", "", "| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(e, k).replace("|", "\\|") for k, _, _ in COLUMNS) + " |" for e in entries]
    references = dict.fromkeys(e["paired_reference"] for e in entries if e.get("paired_reference"))
    notes = [*NOTES, _metric_note(entries), f"Reference arm: {', '.join(references)}." if references else ""]
    return "\n".join(lines + [""] + [f"- {n}" for n in notes if n]) + "\n"


def write_csv(entries: Sequence[dict[str, Any]], path: Path) -> Path:
    """Raw numbers (percent, MB, s), one entry a line, for scripts; missing values are empty cells."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(entries)
    return path


def plots(entries: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(caption, base64 PNG) of: peak total MB vs n_t, accuracy after vs n_t, training reward vs step."""
    from matplotlib.figure import Figure

    several_tasks = len({e["task"] for e in entries}) > 1

    def label(e: dict[str, Any]) -> str:
        return (f"{e['task']} " if several_tasks else "") + f"{cell(e, 'objective')} mu={e['mu']}"

    axes = [Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained").subplots() for _ in range(3)]
    for ax, key, ylabel in ((axes[0], "peak_total_mb", "peak total memory (MB)"),
                            (axes[1], "after_pct", "accuracy after (%)")):
        lines: dict[str, list[tuple[int, float]]] = {}
        for e in entries:  # an arm with no ok seed: its peak is only a lower bound, so a cross off the lines
            if e[key] is not None and e["n_t"] is not None:
                name = label(e) if e["after_pct"] is not None else "no ok seed (peak before failing)"
                lines.setdefault(name, []).append((e["n_t"], e[key]))
        for name, points in lines.items():
            style = {"marker": "o"} if name in map(label, entries) else {"marker": "x", "ls": "", "color": "red"}
            ax.plot(*zip(*sorted(points), strict=True), label=name, **style)
        for e in entries:  # objectives without Monte Carlo draws: a reference level, not a point at some n_t
            if e[key] is not None and e["n_t"] is None:
                ax.axhline(e[key], linestyle="--", color="gray", label=f"{label(e)} (no n_t, reference)")
        if lines:
            ax.set_xscale("log", base=2)
        ax.set(xlabel="n_t (Monte Carlo draws per ELBO estimate)", ylabel=ylabel)
    for e in entries:
        if e["reward_curve"]:
            name = label(e) + ("" if e["n_t"] is None else f" n_t={e['n_t']}")
            axes[2].plot(range(len(e["reward_curve"])), e["reward_curve"], marker=".", label=name)
    axes[2].set(xlabel="RL step", ylabel="training reward (mean over seeds)")
    axes[2].xaxis.get_major_locator().set_params(integer=True)
    captions = ("peak total memory vs n_t (ELBO objectives; dashed: objectives without n_t)",
                "accuracy after vs n_t (ELBO objectives; dashed: objectives without n_t)",
                "training reward vs step, one line per entry (mean over the seeds that reached each step)")
    return [(caption, _png(ax)) for caption, ax in zip(captions, axes, strict=True)]


def _png(ax: Any) -> str:
    """Grid, legend, then the figure as base64 PNG (no SVG: its namespaces are URLs, and PNG is smaller here)."""
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    buffer = io.BytesIO()
    ax.figure.savefig(buffer, format="png", metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


SORT_JS = """
document.querySelectorAll("th").forEach((th, col) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], num = th.dataset.type === "num";
  const dir = th.dataset.dir === "asc" ? -1 : 1;
  th.parentNode.querySelectorAll("th").forEach(h => delete h.dataset.dir);
  th.dataset.dir = dir === 1 ? "asc" : "desc";
  const rows = [...body.rows].sort((a, b) => {
    const x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
    if (!num) return dir * x.localeCompare(y);
    if (x === "" || y === "") return (x === "") - (y === "");  // missing numbers last either way
    return dir * (Number(x) - Number(y));
  });
  body.append(...rows);
}));
"""
CSS = """body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;
padding:4px 8px;text-align:right}.t{text-align:left}th{cursor:pointer;background:#eee}
th[data-dir=asc]::after{content:" \\25B2"}th[data-dir=desc]::after{content:" \\25BC"}
figure{display:inline-block;margin:1em}"""


def _html_row(e: dict[str, Any]) -> str:
    """One table row; each cell carries its raw value in data-value, which the sort script compares."""
    tds = (f'<td{"" if n else " class=t"} data-value="{html.escape("" if e.get(k) is None else str(e[k]))}">'
           f"{html.escape(cell(e, k))}</td>" for k, _, n in COLUMNS)
    return "<tr>" + "".join(tds) + "</tr>\n"


def html_page(entries: Sequence[dict[str, Any]], title: str) -> str:
    """A self-contained page: sortable table (click a header; again to reverse), notes and plots; no URLs."""
    esc = html.escape
    head = "".join(f'<th data-type="num">{esc(h)}</th>' if n else f'<th class="t">{esc(h)}</th>' for _, h, n in COLUMNS)
    body = "".join(map(_html_row, entries))
    notes = "".join(f"<li>{esc(n)}</li>" for n in [*NOTES, _metric_note(entries)] if n)
    figures = "".join(f'<figure><img alt="{esc(c)}" src="data:image/png;base64,{png}"><figcaption>{esc(c)}'
                      "</figcaption></figure>" for c, png in plots(entries))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>\n<table><thead><tr>{head}</tr></thead>"
            f"<tbody>\n{body}</tbody></table><ul>{notes}</ul>\n{figures}\n<script>{SORT_JS}</script></body></html>\n")


def add_paired(entries: Sequence[dict[str, Any]], paired: tuple[dict, set], reference: str) -> None:
    """Set each entry's paired difference to the reference arm (``paired.paired_results``'s output) in place."""
    results, references = paired
    for e in entries:
        arm = Arm(e["task"], e["objective"], e["n_t"], e["mu"], e["steps"] or 0, e["variant"])
        result = results.get(arm)
        e["paired_reference"] = reference
        e["paired"] = "ref" if arm in references else result.text() if result else None
        if result is not None:
            d = result.difference
            e |= {"paired_pts": 100 * d.mean, "paired_low_pts": 100 * d.low, "paired_high_pts": 100 * d.high,
                  "paired_p": result.p_value}


def write_leaderboard(rows: Sequence[RunSummary], out_dir: Path, title: str,
                      paired: tuple[dict, set] | None = None, reference: str = "") -> dict[str, Path]:
    """Write leaderboard.md, .csv and .html into ``out_dir``; returns their paths by format. ``paired``: the arms'
    paired differences to ``reference`` (from the run records; without them the column reads '-')."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = aggregate(rows)
    if paired is not None:
        add_paired(entries, paired, reference)
    paths = {kind: out_dir / f"leaderboard.{kind}" for kind in ("md", "csv", "html")}
    paths["md"].write_text(markdown(entries, title), encoding="utf-8")
    write_csv(entries, paths["csv"])
    paths["html"].write_text(html_page(entries, title), encoding="utf-8")
    return paths
