"""Gradient statistics (BGPO Figs. 3-4): how the Monte Carlo noise of each ELBO objective's gradient falls with n_t.

The paper's mechanism is that a larger n_t lowers the variance and bias of the gradient. Its protocol (section 4.3):
"compute the gradient of a batch 8 times with different MC sample sizes, and then calculate the standard deviation
for each parameter", with the bias against the gradient at n_t = 256. Here:

1. One rollout batch of the base policy (seeded), with its group advantages: the same completions throughout.
2. For each objective, ELBO estimator, phase and n_t, R repetitions draw new Monte Carlo masks (new row seeds; at a
   given repetition every objective gets the same draws, so on-policy BGPO and VRPO-OL see identical ones) and give
   R gradients g_r. On-policy: update 0 at theta_old. Off-policy: mu = 2's second update, the draws' old terms at
   theta_old and the gradient at theta_1, the policy after one BGPO update (n_t = 16, the trainer's own update) of
   the same batch.
3. std_i = the standard deviation over r of g_r[i] divided by |theta_i| (parameters with |theta_i| < 1e-6 left
   out), reported as its median and mean over parameters, and ||std|| / ||theta|| (the paper does not say how it
   aggregates). bias_i = |mean_r g_r[i] - g_ref[i]| / |theta_i| likewise, and ||mean g - g_ref|| / ||g_ref||, with
   g_ref the objective's gradient from ``reference_nt`` l-stratified draws (VRPO-OL's through VRPO-exact: the same
   gradient at flat memory). The bias includes the sampling floor std / sqrt(R).
4. The slope of log(median std) against log(n_t), least squares, with a 95% interval from resampling the
   repetitions (with replacement, per n_t). Independent draws give -0.5.

Everything runs in float64 (the policy too), so on-policy BGPO and VRPO-OL agree to rounding, as Eq. 15-17 promise.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from harness.loop.trainer import TrainConfig, make_optimizer, update
from harness.model.policy import Policy
from harness.model.structs import Batch, row_seeds, stream_seed
from harness.runs.sweep import RECIPES, objective_config
from objectives import OBJECTIVES
from objectives.advantages import group_advantages

PHASES = ("on-policy", "off-policy")
MIN_ABS_PARAMETER = 1e-6
OFF_POLICY_STEP = ("bgpo", 16)
"""The update that takes theta_old to theta_1 for the off-policy phase: (objective, n_t)."""
REPEAT_STREAM = 7
BOOTSTRAP_PARAMETERS = 50_000
GRADSTATS_RECIPE = dataclasses.replace(
    RECIPES["compare"], objectives=("bgpo", "vrpo"), nt=(1, 2, 4, 8, 16, 32), estimator="l-stratified",
    vary=(("estimator", ("l-stratified", "t-iid")),),
    train=dataclasses.replace(RECIPES["compare"].train, prompts_per_step=2, group_size=8))
"""Defaults of `harness gradstats`'s sweep settings: BGPO and VRPO-OL, n_t = 1..32, both estimators the paper
compares (a comma list of --estimator is every one of them), one rollout batch of 2 prompts x 8, seed 0."""


@dataclass(frozen=True)
class GradstatsBench:
    """The settings of `harness gradstats` that are its own (the objectives, n_t, estimator, batch and seed are the
    sweep spec's, under compare's flags)."""

    repeats: int = field(default=8, metadata={"min": 2})
    """Gradients per n_t, each with new draws (the paper: 8); a standard deviation needs at least 2."""
    reference_nt: int = field(default=256, metadata={"min": 1})
    """Draws of the reference gradient (the paper: 256)."""


def scored_batch(policy: Policy, task: Any, prompts: int, group: int, seed: int) -> Batch:
    """One rollout batch of the task's train split with its rewards and group advantages (scale by std)."""
    from harness.runs.budget import fixed_batch

    batch = fixed_batch(policy, task, prompts, group, seed)
    rewards = batch.rewards.double()
    return dataclasses.replace(batch, rewards=rewards, advantages=group_advantages(rewards, group, True))


def redrawn(batch: Batch, seed: int, repetition: int) -> Batch:
    """The batch with new row seeds: new Monte Carlo draws, the same completions and advantages."""
    return dataclasses.replace(batch, row_seeds=row_seeds(stream_seed(seed, REPEAT_STREAM, repetition),
                                                          batch.advantages.numel()))


def flat_gradient(policy: Policy, objective: Any, prepared: Any, inner: int) -> torch.Tensor:
    """The update's gradient (every loss term back-propagated, as the trainer does) as one flat vector."""
    policy.model.zero_grad(set_to_none=True)
    for term in objective.loss_terms(policy, prepared, inner):
        term.loss.backward()
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                      for p in policy.trainable_parameters()])


OWN = "own"
"""The estimator value that keeps each objective's own (SPG's block masks, ESPO's pairs, GDPO's Gauss nodes)."""


def estimator_of(name: str, estimator: str) -> str:
    """The estimator objective ``name`` runs with under ``estimator`` (``OWN``: its config's)."""
    return objective_config(name).elbo.estimator if estimator == OWN else estimator


def check_admissible(names: Sequence[str], estimators: Sequence[str], nts: Sequence[int]) -> None:
    """ValueError naming the first (objective, estimator, n_t) the objective does not admit (SPG's EUBO at one
    draw, an odd number of complementary draws)."""
    for name, estimator, n_t in itertools.product(names, estimators, nts):
        settings = [] if estimator == OWN else [("elbo.estimator", estimator)]
        try:
            objective_config(name, n_t, settings).elbo.check_draws(n_t)
        except ValueError as error:
            raise ValueError(f"--nt {n_t} with {name} ({estimator_of(name, estimator)}): {error}") from None


def gradient(base: Policy, moved: Policy, name: str, n_t: int, estimator: str, phase: str,
             batch: Batch) -> torch.Tensor:
    """One gradient of objective ``name`` on ``batch``'s draws: at theta_old (on-policy) or at theta_1 with the
    old terms of theta_old (off-policy)."""
    settings = [] if estimator == OWN else [("elbo.estimator", estimator)]
    objective = OBJECTIVES[name](objective_config(name, n_t, settings))
    prepared = objective.prepare(base, batch, mu=2)
    if phase == "on-policy":
        return flat_gradient(base, objective, prepared, inner=0)
    return flat_gradient(moved, objective, prepared, inner=1)


def one_update(policy: Policy, batch: Batch) -> Policy:
    """A copy of ``policy`` after the trainer's first update of OFF_POLICY_STEP on ``batch``."""
    from accelerate import Accelerator

    moved = copy.deepcopy(policy)
    name, n_t = OFF_POLICY_STEP
    objective = OBJECTIVES[name](objective_config(name, n_t))
    cfg = TrainConfig(mu=2)
    optimizer, scheduler = make_optimizer(moved, cfg)
    update(moved, objective, objective.prepare(moved, batch, cfg.mu), 0, cfg, optimizer, scheduler,
           Accelerator(cpu=True), defaultdict(list))
    return moved


def normalised(values: torch.Tensor, theta: torch.Tensor) -> np.ndarray:
    """values [..., P] divided by |theta| on the parameters with |theta| >= MIN_ABS_PARAMETER -> [..., P']."""
    keep = theta.abs() >= MIN_ABS_PARAMETER
    return (values[..., keep] / theta[keep].abs()).numpy()


def spread(grads: torch.Tensor, theta: torch.Tensor) -> dict[str, float]:
    """Per-parameter standard deviation over repetitions [R, P] normalised by |theta| [P]: median, mean, norm ratio."""
    std = grads.std(dim=0)  # [P], unbiased over R
    relative = normalised(std, theta)  # [P']
    return {"std_median": float(np.median(relative)), "std_mean": float(relative.mean()),
            "std_norm": float(std.norm() / theta.norm())}


def bias(grads: torch.Tensor, theta: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """|mean over repetitions - reference| per parameter, normalised by |theta|: median, mean; and in norm."""
    error = grads.mean(dim=0) - reference  # [P]
    relative = np.abs(normalised(error, theta))  # [P']
    return {"bias_median": float(np.median(relative)), "bias_mean": float(relative.mean()),
            "bias_norm": float(error.norm() / reference.norm())}


def fit_slope(nts: Sequence[int], values: Sequence[float]) -> float:
    """Least-squares slope of log(value) against log(n_t)."""
    return float(np.polyfit(np.log(np.asarray(nts, dtype=float)), np.log(np.asarray(values, dtype=float)), 1)[0])


def slope_interval(nts: Sequence[int], grads: Sequence[torch.Tensor], theta: torch.Tensor, resamples: int = 200,
                   seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(slope of the median std, low, high): the repetitions of each n_t resampled with replacement. The point
    slope uses every parameter; the resamples use a fixed random subset of BOOTSTRAP_PARAMETERS of them (the median
    of 50,000 is within a fraction of a percent of the median of all, and 20x cheaper)."""
    rng = np.random.default_rng(seed)
    arrays = [normalised(g, theta) for g in grads]  # per n_t: [R, P']
    point = fit_slope(nts, [float(np.median(a.std(axis=0, ddof=1))) for a in arrays])
    subset = rng.choice(arrays[0].shape[1], min(BOOTSTRAP_PARAMETERS, arrays[0].shape[1]), replace=False)
    arrays = [a[:, subset] for a in arrays]
    slopes = []
    for _ in range(resamples):
        medians = [float(np.median(a[rng.integers(0, len(a), len(a))].std(axis=0, ddof=1))) for a in arrays]
        if min(medians) > 0:  # a resample of one repetition R times has no spread: no slope
            slopes.append(fit_slope(nts, medians))
    tail = (1 - level) / 2
    low, high = np.quantile(slopes, [tail, 1 - tail]) if slopes else (float("nan"), float("nan"))
    return point, float(low), float(high)


def gradstats(base: Policy, batch: Batch, names: Sequence[str], estimators: Sequence[str], nts: Sequence[int],
              repeats: int = 8, reference_nt: int = 256, seed: int = 0, resamples: int = 200) -> dict[str, Any]:
    """Rows per (objective, estimator, phase, n_t), one fitted slope per (objective, estimator, phase), and the
    largest on-policy difference between BGPO's and VRPO-OL's gradients on the same draws."""
    moved = one_update(base, batch)
    thetas = {phase: torch.cat([p.detach().flatten() for p in policy.trainable_parameters()])
              for phase, policy in zip(PHASES, (base, moved), strict=True)}
    rows, slopes, same_draws = [], [], defaultdict(dict)
    for phase in PHASES:
        references = {name: gradient(base, moved, "vrpo-exact" if name == "vrpo" else name, reference_nt,
                                     "l-stratified", phase, redrawn(batch, seed, -1)) for name in names}
        for estimator in estimators:
            per_name: dict[str, list[torch.Tensor]] = {}
            for name in names:
                per_name[name] = [torch.stack([gradient(base, moved, name, n_t, estimator, phase,
                                                        redrawn(batch, seed, r)) for r in range(repeats)])
                                  for n_t in nts]  # per n_t: [R, P]
                for n_t, grads in zip(nts, per_name[name], strict=True):
                    rows.append({"objective": name, "estimator": estimator_of(name, estimator), "phase": phase,
                                 "n_t": n_t, "repeats": repeats, **spread(grads, thetas[phase]),
                                 **bias(grads, thetas[phase], references[name])})
                point, low, high = slope_interval(nts, per_name[name], thetas[phase], resamples, seed)
                slopes.append({"objective": name, "estimator": estimator_of(name, estimator), "phase": phase,
                               "slope": point, "low": low, "high": high})
            if phase == "on-policy" and {"bgpo", "vrpo"} <= set(per_name):
                for n_t, a, b in zip(nts, per_name["bgpo"], per_name["vrpo"], strict=True):
                    same_draws[estimator][n_t] = float((a - b).abs().max() / b.abs().max())
            del per_name
    return {"rows": rows, "slopes": slopes, "bgpo_vrpo_on_policy_max_rel_diff": dict(same_draws),
            "n_t": list(nts), "repeats": repeats, "reference_nt": reference_nt, "seed": seed,
            "sequences": batch.advantages.numel(), "off_policy_step": list(OFF_POLICY_STEP)}


CSV_FIELDS = ("objective", "estimator", "phase", "n_t", "repeats", "std_median", "std_mean", "std_norm",
              "bias_median", "bias_mean", "bias_norm")


def gradstats_markdown(result: dict[str, Any]) -> str:
    """The table, the fitted slopes with their intervals, and the on-policy BGPO / VRPO-OL check."""
    lines = [f"# Gradient statistics vs n_t ({result['model']}, {result['sequences']} sequences, "
             f"{result['repeats']} repetitions, reference {result['reference_nt']} draws, float64)", "",
             "std: per-parameter standard deviation over the repetitions / |theta| (median, mean over parameters; "
             "norm: ||std|| / ||theta||). bias: |mean gradient - reference| / |theta| (median, mean; norm: relative "
             "to ||reference||); it includes the sampling floor std / sqrt(R). Off-policy: mu = 2's second update, "
             f"after one {result['off_policy_step'][0]} update (n_t = {result['off_policy_step'][1]}).", "",
             "| objective | estimator | phase | n_t | std median | std mean | std norm | bias median | bias mean "
             "| bias norm |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['objective']} | {r['estimator']} | {r['phase']} | {r['n_t']} | {r['std_median']:.4g} "
                     f"| {r['std_mean']:.4g} | {r['std_norm']:.4g} | {r['bias_median']:.4g} | {r['bias_mean']:.4g} "
                     f"| {r['bias_norm']:.4g} |")
    lines += ["", "Log-log slope of the median std against n_t (95% interval, repetitions resampled):", ""]
    lines += [f"- {s['objective']}, {s['estimator']}, {s['phase']}: **{s['slope']:.3f}** [{s['low']:.3f}, "
              f"{s['high']:.3f}]" for s in result["slopes"]]
    for estimator, diffs in result["bgpo_vrpo_on_policy_max_rel_diff"].items():
        worst = max(diffs.values())
        lines.append(f"- on-policy, {estimator}: BGPO's and VRPO-OL's gradients on the same draws differ by at most "
                     f"{worst:.1e} (max |difference| / max |gradient|, over n_t)")
    return "\n".join(lines) + "\n"
