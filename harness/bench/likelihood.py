"""`harness bench likelihood`: forwards per answer that each ELBO estimator needs for a standard error of 0.05 nats,
measured on the tiny default (issue #25).

lm-eval's loglikelihood asks for log p(answer | question); a dLLM answers with a Monte Carlo ELBO, one forward per
draw (``model/likelihood.py``). The answers here are the tiny model's Sudoku completions at two lengths: the last
row (4 tokens) after the first three rows, as a multiple-choice answer of the shipped lm-eval task, and the whole
grid (16 tokens) after ``<answer>``. For each answer, estimator and number of draws K, the estimate is repeated
``repeats`` times with independent seeds and its spread (the standard deviation over repeats) is the true standard
error at K, whatever the estimator's dependence between draws. The forwards needed for the target are read off the
spread's curve in K (log-log interpolation between the grid's points; beyond the grid, the 1/K law from its last
point). Beside it: the standard error the estimate logs (the i.i.d. formula), to show how far it is from the truth.

The table reports, per answer length and estimator, the median forwards over answers and the median of each
answer's ratio to `harness lm-eval`'s default estimator's (complementary); t-iid is the form of LLaDA's Eq. 6;
'llada-strata' is LLaDA's lm-eval script, which stratifies l within each mini-batch of 8 draws. The spread of 16
repeats is itself uncertain (about 18% for normal estimates, more for heavy tails), so forwards, which go as its
square, carry about +-40%: ratios of 2x and more are resolved, not those near 1.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.loop.lm_requests import LmEvalModelConfig, encode
from harness.model.elbo import Draws, ElboConfig, sample_draws
from harness.model.likelihood import continuation_elbo, token_terms
from harness.model.policy import Policy
from harness.model.structs import stream_seed
from tasks.sudoku import Sudoku

DEFAULT_ESTIMATOR = LmEvalModelConfig().estimator
"""The reference of the ratios: `harness lm-eval`'s default."""
LLADA_STRATA = 8
"""LLaDA's eval_llada.py stratifies l within each mini-batch of ``batch_size`` draws (8 in its lm-eval commands)."""
LLADA = "llada-strata"
"""LLaDA's script's estimate, measured: the mean of K / 8 independent 8-draw l-stratified estimates (K >= 8)."""
LENGTHS = {"last row (4 tokens)": 12, "grid (16 tokens)": 0}
"""Answer shapes: name -> solution digits given before the answer (the answer is the rest of the grid)."""


@dataclass(frozen=True)
class LikelihoodBench:
    """The settings of `harness bench likelihood` besides the sweep settings it shares (model, threads)."""

    answers: int = field(default=8, metadata={"min": 1})
    """Test puzzles; each gives one answer of each length."""
    draws: tuple[int, ...] = (4, 8, 16, 32, 64, 128, 256)
    """The grid of K (even: the complementary estimator draws pairs)."""
    repeats: int = field(default=16, metadata={"min": 2})
    """Independent estimates per (answer, estimator, K): their spread is the true standard error."""
    target: float = field(default=0.05, metadata={"min": 0})
    """The standard error asked for, in nats."""
    estimators: tuple[str, ...] = ("complementary", "l-stratified", "t-iid", LLADA)
    """Estimators compared (the ratios' reference is `harness lm-eval`'s default, complementary); 'llada-strata'
    is LLaDA's script's form (``LLADA``)."""
    name: str = ""
    """Output stem under OUT/bench ('' = likelihood)."""


def answer_pairs(policy: Policy, answers: int, given: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(context, answer) token ids per test puzzle: the chat-templated prompt and ``<answer>`` with the first
    ``given`` solution digits, then the remaining digits."""
    task = Sudoku()
    pairs = []
    for item in task.load("test")[:answers]:
        prompt = policy.tokenizer.apply_chat_template(task.prompt(item), add_generation_prompt=True, tokenize=False)
        pairs.append((torch.tensor(encode(policy.tokenizer, prompt + "<answer>\n" + item.answer[:given], False)),
                      torch.tensor(encode(policy.tokenizer, item.answer[given:], False))))
    return pairs


def forwards_for(curve: Sequence[tuple[int, float]], target: float) -> float:
    """The K at which the spread first reaches ``target``: log-log interpolation between the grid's points around
    the crossing; outside the grid, the 1/K law from its nearest end (at least one forward)."""
    (k, spread), *rest = curve
    if spread <= target:
        return max(1.0, k * (spread / target) ** 2)
    for k1, s1 in rest:
        if s1 <= target:
            slope = (math.log(s1) - math.log(spread)) / (math.log(k1) - math.log(k))
            return math.exp(math.log(k) + (math.log(target) - math.log(spread)) / slope)
        k, spread = k1, s1
    return k * (spread / target) ** 2


def estimate(policy: Policy, context: torch.Tensor, answer: torch.Tensor, k: int, estimator: str, seed: int
             ) -> tuple[float, float]:
    """One K-draw estimate and the standard error it logs (nan for LLaDA's form, which logs none)."""
    if estimator != LLADA:
        result = continuation_elbo(policy, context, answer, k, estimator, torch.Generator().manual_seed(seed),
                                   batch_size=256)
        return result.elbo, result.stderr
    strata = [sample_draws(torch.ones((1, answer.shape[0]), dtype=torch.bool), LLADA_STRATA,
                           ElboConfig(estimator="l-stratified"), torch.Generator().manual_seed(stream_seed(seed, j)))
              for j in range(k // LLADA_STRATA)]
    draws = Draws(masks=torch.cat([d.masks for d in strata]), weights=torch.cat([d.weights for d in strata]))
    return float(token_terms(policy, context, answer, draws, 256).mean()), math.nan


def measure(policy: Policy, context: torch.Tensor, answer: torch.Tensor, estimator: str, options: LikelihoodBench
            ) -> dict[str, Any]:
    """Spread and mean logged standard error at each K of the grid (LLaDA's form: K >= 8 only), and the forwards
    for the target."""
    grid = [k for k in options.draws if estimator != LLADA or k >= LLADA_STRATA]
    curve, logged = [], []
    for k in grid:
        estimates = [estimate(policy, context, answer, k, estimator, stream_seed(r, k)) for r in range(options.repeats)]
        curve.append((k, statistics.stdev(e for e, _ in estimates)))
        logged.append(statistics.fmean(s for _, s in estimates))
    return {"draws": grid, "spread": [s for _, s in curve], "logged": logged,
            "forwards": forwards_for(curve, options.target)}


def likelihood_bench(policy: Policy, options: LikelihoodBench) -> dict[str, Any]:
    """Every answer shape, estimator and answer measured; the medians and ratios of the table."""
    if any(k % 2 for k in options.draws) or sorted(options.draws) != list(options.draws) or len(options.draws) < 2:
        raise ValueError(f"--draws {','.join(map(str, options.draws))}: two or more even counts, increasing")
    if LLADA in options.estimators and max(options.draws) < 2 * LLADA_STRATA:
        raise ValueError(f"--draws: {LLADA} needs counts of at least {2 * LLADA_STRATA} (two strata of 8)")
    if DEFAULT_ESTIMATOR not in options.estimators:
        raise ValueError(f"--estimators: the ratios are to {DEFAULT_ESTIMATOR}; keep it in the list")
    shapes = {}
    for shape, given in LENGTHS.items():
        pairs = answer_pairs(policy, options.answers, given)
        rows = {e: [measure(policy, c, a, e, options) for c, a in pairs] for e in options.estimators}
        reference = [row["forwards"] for row in rows[DEFAULT_ESTIMATOR]]
        shapes[shape] = {e: {"forwards": statistics.median(r["forwards"] for r in rs),
                             "ratio": statistics.median(r["forwards"] / ref for r, ref in zip(rs, reference,
                                                                                              strict=True)),
                             "spread_at_max": statistics.median(r["spread"][-1] for r in rs),
                             "logged_at_max": statistics.median(r["logged"][-1] for r in rs),
                             "answers": rs} for e, rs in rows.items()}
    return {"draws": list(options.draws), "repeats": options.repeats, "target": options.target,
            "answers": options.answers, "shapes": shapes}


def likelihood_markdown(result: dict[str, Any], model: str) -> str:
    k = result["draws"][-1]
    lines = [f"# Forwards per answer for a standard error of {result['target']} nats ({model} model)", "",
             f"{result['answers']} Sudoku test answers per length; each estimate repeated {result['repeats']} times "
             f"per K in {result['draws']} (harness/bench/likelihood.py). Median over answers; ratio: each answer's "
             f"forwards over {DEFAULT_ESTIMATOR}'s, median. t-iid is LLaDA's Eq. 6, {LLADA} its lm-eval script "
             f"(l stratified within each mini-batch of {LLADA_STRATA} draws). The spread of {result['repeats']} "
             f"repeats is itself uncertain, so forwards (its square) carry about +-40%: ratios of 2x and more are "
             f"resolved, those near 1 are not.", "",
             f"| answer | estimator | forwards | ratio to {DEFAULT_ESTIMATOR} | true s.e. at K={k} | logged s.e. "
             f"at K={k} |", "|---|---|---|---|---|---|"]
    for shape, rows in result["shapes"].items():
        for estimator, row in rows.items():
            logged = "-" if math.isnan(row["logged_at_max"]) else f"{row['logged_at_max']:.4f}"
            lines.append(f"| {shape} | {estimator} | {row['forwards']:.0f} | {row['ratio']:.2f}x | "
                         f"{row['spread_at_max']:.4f} | {logged} |")
    return "\n".join(lines) + "\n"
