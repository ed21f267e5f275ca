"""``harness bench memory``'s trajectory table: the peak memory of one update vs the number of windows a trajectory
objective scores, at a fixed sequence length (objectives-trajectory.md §0 point 2: each window's loss is its own
backward, so the peak should not grow with the windows).

The batch is synthetic (random tokens, advantages +-1) with a trajectory of W steps: every row commits its
completion in W equal parts, left to right. CJ-GRPO scores W windows of one step; TraceRL (shrink 1, no group
filter) the same W; d2-StepMerge one of W segments of a 32-step trajectory; JustGRPO W positions at the end of a
sequence of the same total length (W completion tokens after a longer prompt); coupled-GRPO always three
forwards, measured beside diffu-GRPO's one forward on the same batch (its 'one window').
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from harness.loop import metrics
from harness.model.policy import Policy
from harness.model.structs import Batch, Trajectory
from harness.runs.budget import probe_update
from objectives import OBJECTIVES

WINDOWED = ("cj-grpo", "tracerl", "d2-stepmerge", "justgrpo", "coupled-grpo")
"""The objectives of the table, in the README's order."""
ONE_FORWARD = "diffu-grpo"
"""coupled-GRPO's 'one window': one forward of the same batch, one graph."""
D2_STEPS = 32
"""d2-StepMerge's trajectory length: W segments of it."""


def with_trajectory(batch: Batch, steps: int) -> Batch:
    """``batch`` whose rows committed their completion left to right in ``steps`` equal parts (the last parts one
    token shorter where L is not a multiple)."""
    completion = batch.rollout.completion_ids  # [N, L]
    length = completion.shape[1]
    reveal = (torch.arange(length, device=completion.device) * steps // length).expand_as(completion)  # [N, L]
    trajectory = Trajectory(reveal.clone(), torch.zeros(completion.shape, dtype=torch.float64), 1.0)
    return dataclasses.replace(batch, rollout=dataclasses.replace(batch.rollout, trajectory=trajectory))


def positions_batch(batch: Batch, positions: int) -> Batch:
    """``batch`` cut so that its last ``positions`` tokens are the completion (the same total length)."""
    rollout = batch.rollout
    ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], dim=1)  # [N, T]
    mask = torch.cat([rollout.prompt_mask, rollout.completion_mask], dim=1)  # [N, T]
    cut = ids.shape[1] - positions
    rollout = dataclasses.replace(rollout, prompt_ids=ids[:, :cut], prompt_mask=mask[:, :cut],
                                  completion_ids=ids[:, cut:], completion_mask=mask[:, cut:], trajectory=None)
    return with_trajectory(dataclasses.replace(batch, rollout=rollout), positions)


def windowed_case(name: str, batch: Batch, windows: int) -> tuple[Any, Batch]:
    """(objective, batch) of ``name`` scoring ``windows`` windows."""
    objective_type = OBJECTIVES[name]
    config = objective_type().config
    if name == "tracerl":
        config = dataclasses.replace(config, shrink=1, pass_rate_low=0.0, pass_rate_high=1.0)
    if name == "d2-stepmerge":
        return objective_type(dataclasses.replace(config, segments=windows)), with_trajectory(batch, D2_STEPS)
    if name == "justgrpo":
        return objective_type(config), positions_batch(batch, windows)
    return objective_type(config), with_trajectory(batch, windows)


def window_rows(load: Callable[[], Policy], batch: Batch, names: Sequence[str], windows: Sequence[int],
                device: torch.device) -> list[dict[str, Any]]:
    """One measured update per (objective, window count); coupled-GRPO once, beside diffu-GRPO's one forward."""
    rows = []
    for name in names:
        policy = load()
        if OBJECTIVES[name]().needs_reference or name == "coupled-grpo":  # diffu-GRPO's KL, beside coupled-GRPO
            policy.snapshot_reference()
        counts = [3] if name == "coupled-grpo" else sorted(windows)
        for count in counts:
            objective, case = windowed_case(name, batch, count)
            rows.append({"objective": name, "windows": count, **probe_update(policy, objective, case, device)})
        if name == "coupled-grpo":
            one = OBJECTIVES[ONE_FORWARD]()
            rows.append({"objective": f"{ONE_FORWARD} (one forward)", "windows": 1,
                         **probe_update(policy, one, batch, device)})
    return rows


def window_growth(rows: Sequence[dict[str, Any]], key: str = metrics.PEAK_ACTIVATIONS_MB) -> dict[str, float]:
    """Per objective: the peak at its most windows over the peak at its fewest (coupled-GRPO: over diffu-GRPO's)."""
    ok = [r for r in rows if r["outcome"] == "ok"]
    growth = {}
    for name in dict.fromkeys(r["objective"] for r in ok if r["objective"] in WINDOWED):
        own = sorted((r for r in ok if r["objective"] == name), key=lambda r: r["windows"])
        base = next((r for r in ok if r["objective"].startswith(ONE_FORWARD)), None) if name == "coupled-grpo" \
            else own[0]
        if base is not None:
            growth[name] = own[-1][key] / base[key]
    return growth


def windows_markdown(result: dict[str, Any]) -> list[str]:
    """The trajectory table's lines for memory.md."""
    lines = ["", "## Trajectory objectives: peak memory vs windows scored", "",
             f"{result['windows_batch']} Each window is one forward and one backward: the peak should not grow with "
             "the windows (issue #24's bar: at most 1.10x the one-window peak at 32). The peak total also holds the "
             "gradients, which one window's update never has alongside its activations.", "",
             "| objective | windows | outcome | peak activations MB | peak total MB | update s |",
             "|---|---|---|---|---|---|"]
    for r in result["window_rows"]:
        cells = [r["objective"], str(r["windows"]), r["outcome"]]
        cells += [f"{r[k]:.1f}" if k in r else "-" for k in (metrics.PEAK_ACTIVATIONS_MB, metrics.PEAK_TOTAL_MB)]
        cells.append(f"{r[metrics.UPDATE_TRACKED_S]:.2f}" if metrics.UPDATE_TRACKED_S in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"- {name}: peak activations at the most windows / at one window = **{ratio:.3f}x**"
                     for name, ratio in result["window_growth"].items()]
    return lines
