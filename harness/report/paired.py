"""The paired column: every arm against a reference arm on the same evaluation items, so "within noise" is printed.

An arm is (task, objective, n_t, mu, RL steps, training-rollout variant); its runs are its seeds. The difference
is the arm's after-training accuracy minus the reference arm's, per item (the task's headline metric, item by item,
matched by item id) and per seed where both arms have the seed, with a 95% paired-bootstrap interval and a two-sided
p-value (``stats.paired_bootstrap_seeds``: items resampled, and seeds too when there are several). Pairing on items
removes the item-to-item variance that makes two unpaired intervals overlap when the arms differ.

The reference is ``objective`` or ``objective:n_t`` (default: the first run's objective); for each protocol (task,
mu, RL steps) it is the first arm, in run order, that matches, so an arm is only ever compared with the reference
trained the same way; an arm whose training rollouts decode with the default (no ``variant``) goes first, so a
threshold-decoded arm of the reference objective is compared with the plain one rather than made the reference. Arms
with no finished run, no reference in their protocol, or sharing no seed or item with the reference, show "-".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from harness.loop.stats import DEFAULT_TEST_RESAMPLES, Estimate, paired_bootstrap_seeds
from harness.runs.config import Arm
from harness.runs.records import RunRecord
from harness.runs.registry import lookup
from tasks import TASKS


@dataclass(frozen=True)
class Paired:
    """An arm minus the reference arm: the mean difference (a fraction), its interval, the p-value, the cells."""

    difference: Estimate
    p_value: float
    seeds: int

    def text(self) -> str:
        """'+2.1 [-0.3, +4.5] p=0.09' in points; a p-value below the bootstrap's resolution reads 'p<0.0001'."""
        d = self.difference
        p = f"p<{1 / DEFAULT_TEST_RESAMPLES:g}" if self.p_value == 0 else f"p={self.p_value:.2g}"
        return f"{100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}] {p}"


def arm_of(record: RunRecord) -> Arm:
    return record.config.arm


def parse_reference(reference: str) -> tuple[str, int | None]:
    """'bgpo' -> ('bgpo', None); 'vrpo:16' -> ('vrpo', 16); ValueError naming a bad value."""
    name, _, n_t = reference.partition(":")
    if not name or (n_t and not n_t.isdigit()):
        raise ValueError(f"--reference {reference!r}: expected OBJECTIVE or OBJECTIVE:N_T, e.g. bgpo or vrpo:16")
    return name, int(n_t) if n_t else None


def protocol_of(arm: Arm) -> tuple[str, int, int]:
    """(task, mu, steps): what an arm shares with the reference it is compared with."""
    return arm.task, arm.mu, arm.steps


def reference_arms(records: Sequence[RunRecord], reference: str | None) -> dict[tuple[str, int, int], Arm]:
    """Per protocol (``protocol_of``), the reference arm (see the module docstring); none where no arm matches."""
    if not records:
        return {}
    name, n_t = parse_reference(reference) if reference else (records[0].objective, None)
    arms: dict[tuple[str, int, int], Arm] = {}
    for record in records:
        arm = arm_of(record)
        held = arms.get(protocol_of(arm))
        if arm.objective == name and (n_t is None or arm.n_t == n_t) and (
                held is None or (held.variant and not arm.variant)):  # the default decoding's arm first
            arms[protocol_of(arm)] = arm
    return arms


def scores_by_seed(records: Sequence[RunRecord]) -> dict[int, dict[str, float]]:
    """seed -> item id -> the after-training score of the task's headline metric (finished runs only)."""
    tables = {}
    for record in records:
        if record.after is not None:
            metric = lookup("task", record.task, TASKS).metric
            tables[record.seed] = {item["id"]: float(item[metric]) for item in record.after.items}
    return tables


def paired(arm: Sequence[RunRecord], reference: Sequence[RunRecord]) -> Paired | None:
    """``arm`` minus ``reference`` on their common seeds and items; None when they share none."""
    mine, theirs = scores_by_seed(arm), scores_by_seed(reference)
    seeds = sorted(set(mine) & set(theirs))
    common = set.intersection(*(set(mine[s]) & set(theirs[s]) for s in seeds)) if seeds else set()
    items = [i for i in theirs[seeds[0]] if i in common] if common else []  # the reference's item order
    if not items:
        return None
    a = np.array([[mine[s][i] for i in items] for s in seeds])  # [S, n]
    b = np.array([[theirs[s][i] for i in items] for s in seeds])  # [S, n]
    difference, p_value = paired_bootstrap_seeds(a, b)
    return Paired(difference, p_value, len(seeds))


def paired_results(records: Sequence[RunRecord], reference: str | None = None,
                   ) -> tuple[dict[Arm, Paired | None], set[Arm]]:
    """(arm -> its difference to its task's reference arm, or None; the reference arms)."""
    by_arm: dict[Arm, list[RunRecord]] = {}
    for record in records:
        by_arm.setdefault(arm_of(record), []).append(record)
    references = reference_arms(records, reference)
    results = {}
    for arm, runs in by_arm.items():
        ref = references.get(protocol_of(arm))
        results[arm] = paired(runs, by_arm[ref]) if ref is not None and ref != arm else None
    return results, set(references.values())


def paired_column(records: Sequence[RunRecord], reference: str | None = None) -> dict[Arm, str]:
    """Arm -> its cell: 'ref' for the reference arm, the paired difference in points, or '-'."""
    results, references = paired_results(records, reference)
    return {arm: "ref" if arm in references else result.text() if result else "-" for arm, result in results.items()}


def column_header(records: Sequence[RunRecord], reference: str | None = None) -> str:
    name = reference or (records[0].objective if records else "reference")
    return f"vs {name}: pts [95% CI] p"
