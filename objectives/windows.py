"""Token-level clipped objectives on windows of the sampler's own trajectory (objectives-trajectory.md §0, §9).

CJ-GRPO (windows of one step), TraceRL (``shrink`` steps), d2-StepMerge (one of N segments, times N) and JustGRPO
(one position of a left-to-right trajectory) share one estimator: the log-probability of the tokens committed in
steps [lo, hi), from the state before lo (``harness.model.trajectory.window_logprobs``), in a per-token PPO ratio
against the old policy on the same state. Each window is one forward and one ``LossTerm``: one graph alive whatever
the number of windows (the official CJ-GRPO keeps all S step graphs in one backward, P-CJ2). They differ in their
windows and in how tokens are averaged (``AGGREGATES``).

Shared departures from the official code, each deliberate:
1. Tokens after the first EOS are never scored (CJ-GRPO and JustGRPO score every revealed position, P-CJ3, P-JG1);
   left padding is hidden by the attention mask (P-CJ3, P-TR4).
2. The learner scores over the vocabulary without the mask token, the sampler's support; the mismatch with the
   sampler's own log-probabilities (``behaviour_logp``) is reported at update 0 (``TRAJECTORY_MISMATCH``): 0 when
   the rollout temperature is 1, the official codes' silent bug otherwise (§0 point 4).
3. Update 0 is on-policy: pi_old is pi_theta detached (no extra forward); the old terms of later updates come from
   one no-grad pass per window in ``prepare`` (the harness's rule for every objective).
4. The 'window' and 'row' means are over the process's own rows; under several processes the gradients average
   those means (the global count would cost one all-reduce per window). Every process runs the windows of the
   global batch's longest trajectory (``Batch.trajectory_steps``), so all run as many backward passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from harness.model.elbo import micro_batches
from harness.model.policy import Policy
from harness.model.structs import Batch
from harness.model.trajectory import window_logprobs
from objectives.base import TRAJECTORY_MISMATCH, LossTerm
from objectives.common import masked_mean, token_ppo

Bound = int | torch.Tensor
Window = tuple[Bound, Bound]
"""Steps [lo, hi) of the rows' trajectories: one bound for all rows, or [N] bounds, one per row."""
AGGREGATES = WINDOW_MEAN, ROW_MEAN, TOKEN_MEAN = ("window", "row", "token")
"""How scored tokens are averaged. 'window' (CJ-GRPO): each window's token mean over the batch, averaged over the
windows. 'row' (TraceRL): each (row, window) pair's token mean, averaged over the non-empty pairs. 'token' (d2,
JustGRPO as DARE runs it): the sum over every window's tokens over the global batch's answer tokens. A row's
tokens may weigh more (``row_weight``: d2-StepMerge's segment count)."""
KL_TO = ("reference", "old")
"""What the k3 term pulls towards: the reference (base) model, or the old policy (TraceRL's trust region)."""


def step_windows(steps: int, width: int) -> list[Window]:
    """[0, steps) cut into consecutive windows of ``width`` steps (the last may be shorter)."""
    return [(lo, min(lo + width, steps)) for lo in range(0, steps, width)]


@dataclass(frozen=True)
class WindowLoss:
    """The settings of a windowed objective's loss."""

    clip_eps: float
    beta: float
    kl_to: str = "reference"
    aggregate: str = WINDOW_MEAN


@dataclass
class WindowBatch:
    """A batch prepared for a windowed objective: each update's windows, the rows kept, and old and reference
    log-probs of every window."""

    batch: Batch
    windows: list[list[Window]]  # per update, its windows
    keep: torch.Tensor  # [N] bool: rows in the loss (TraceRL's group filter drops whole groups)
    row_weight: torch.Tensor  # [N] float64: multiplies each row's tokens (d2-StepMerge: the row's segment count)
    old_logps: list[list[torch.Tensor]]  # per update k >= 1, per window: [N, L] pi_old ([] for k = 0)
    ref_logps: list[list[torch.Tensor | None]]  # per update, per window: [N, L] pi_ref (None: no reference KL)
    row_pairs: list[float]  # per update: non-empty (row, window) pairs (the 'row' mean's denominator)

    @property
    def answer(self) -> torch.Tensor:
        """[N, L] bool: the tokens that can be scored, the answers (up to the first EOS) of the rows kept."""
        mask = self.batch.rollout.completion_mask
        return mask & self.keep.to(mask.device).unsqueeze(1)


def rows_of(bound: Bound, rows: slice) -> Bound:
    return bound if isinstance(bound, int) else bound[rows]


def prepare_windows(policy: Policy, batch: Batch, windows_of: Callable[[int], Sequence[Window]], mu: int,
                    reference: bool = False, keep: torch.Tensor | None = None,
                    row_weight: torch.Tensor | None = None) -> WindowBatch:
    """Each update's windows (``windows_of(inner)``); old (mu > 1) and reference log-probs of every window, without
    grad, in the updates' micro-batches."""
    chunks = micro_batches(batch.advantages.numel(), batch.micro_batch_size)
    keep = torch.ones(batch.advantages.numel(), dtype=torch.bool) if keep is None else keep
    row_weight = torch.ones(batch.advantages.numel(), dtype=torch.float64) if row_weight is None else row_weight
    windows = [list(windows_of(inner)) for inner in range(mu)]

    def scored(lo: Bound, hi: Bound, ref: bool) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([window_logprobs(policy, batch.rollout, rows_of(lo, rows), rows_of(hi, rows), rows,
                                              reference=ref)[0] for rows in chunks])  # [N, L]

    old = [[scored(lo, hi, False) for lo, hi in windows[inner]] for inner in range(1, mu)]
    ref = [[scored(lo, hi, True) if reference else None for lo, hi in update] for update in windows]
    prepared = WindowBatch(batch, windows, keep, row_weight, old, ref, [])
    prepared.row_pairs = [float(sum(int((batch.rollout.trajectory.window(lo, hi) & prepared.answer).any(1).sum())
                                    for lo, hi in update)) for update in windows]
    return prepared


def window_loss_terms(policy: Policy, prepared: WindowBatch, inner: int, loss: WindowLoss) -> Iterator[LossTerm]:
    """One term per (window, micro-batch): -min(rho A, clip(rho) A) + beta k3 per scored token, averaged as
    ``loss.aggregate`` says."""
    batch, answer = prepared.batch, prepared.answer  # [N, L]
    behaviour = batch.rollout.trajectory.behaviour_logp  # [N, L]
    windows = prepared.windows[inner]
    for index, (lo, hi) in enumerate(windows):
        weight = token_weights(prepared, inner, index, loss)  # [N, L]
        for rows in micro_batches(batch.advantages.numel(), batch.micro_batch_size):
            logp, window = window_logprobs(policy, batch.rollout, rows_of(lo, rows), rows_of(hi, rows), rows)
            scored = window & answer[rows]  # [n, L]
            old = logp.detach() if inner == 0 else prepared.old_logps[inner - 1][index][rows].to(logp)
            adv = batch.advantages[rows].to(logp).unsqueeze(1)  # [n, 1]
            ref = prepared.ref_logps[inner][index]
            anchor = old if loss.kl_to == "old" else None if ref is None else ref[rows]  # [n, L]
            per_token, stats = token_ppo(logp, old, adv, scored, loss.clip_eps, loss.beta, anchor)  # [n, L]
            if inner == 0:
                stats[TRAJECTORY_MISMATCH] = masked_mean(behaviour[rows].to(logp) - logp.detach(), scored)
            yield LossTerm((per_token * scored * weight[rows].to(logp)).sum(), stats)


def token_weights(prepared: WindowBatch, inner: int, index: int, loss: WindowLoss) -> torch.Tensor:
    """What each scored token of window ``index`` of update ``inner`` weighs in the loss: [N, L] float64."""
    batch = prepared.batch
    lo, hi = prepared.windows[inner][index]
    scored = (batch.rollout.trajectory.window(lo, hi) & prepared.answer).double()  # [N, L]
    scored = scored * prepared.row_weight.to(scored.device).unsqueeze(1)  # [N, L]
    if loss.aggregate == WINDOW_MEAN:
        return scored / scored.sum().clamp_min(1) / len(prepared.windows[inner])
    if loss.aggregate == ROW_MEAN:
        return scored / scored.sum(1, keepdim=True).clamp_min(1) / max(prepared.row_pairs[inner], 1)
    return scored / (batch.token_total / batch.world_size)  # TOKEN_MEAN: the global batch's tokens
