"""Token-level clipped objectives on windows of the sampler's own trajectory (objectives-trajectory.md §0, §9).

CJ-GRPO (windows of one step), TraceRL (``shrink`` steps) and d2-StepMerge (one of N windows, times N) share one
estimator: the log-probability of the tokens committed in steps [lo, hi), from the state before lo
(``harness.model.trajectory.window_logprobs``), in a per-token PPO ratio against the old policy on the same state.
Each window is one forward and one ``LossTerm``: one graph alive whatever the number of windows (the official
CJ-GRPO keeps all S step graphs in one backward, P-CJ2).

Shared departures from the official code, each deliberate:
1. Tokens after the first EOS are never scored (CJ-GRPO scores every revealed position, P-CJ3); left padding is
   hidden by the attention mask (P-CJ3, P-TR4).
2. The learner scores over the vocabulary without the mask token, the sampler's support; the mismatch with the
   sampler's own log-probabilities (``behaviour_logp``) is reported at update 0 (``TRAJECTORY_MISMATCH``): 0 when
   the rollout temperature is 1, the official codes' silent bug otherwise (§0 point 4).
3. Update 0 is on-policy: pi_old is pi_theta detached (no extra forward); the old terms of later updates come from
   one no-grad pass per window in ``prepare`` (the harness's rule for every objective).
4. A window's token mean is over the process's own rows; under several processes the gradients average those means
   (the window's global token count would cost one all-reduce per window).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from harness.model.elbo import micro_batches
from harness.model.policy import Policy
from harness.model.structs import Batch
from harness.model.trajectory import window_logprobs
from objectives.base import TRAJECTORY_MISMATCH, LossTerm
from objectives.common import masked_mean, token_ppo

Window = tuple[int, int]
"""Steps [lo, hi) of the rows' trajectories."""


def step_windows(steps: int, width: int) -> list[Window]:
    """[0, steps) cut into consecutive windows of ``width`` steps (the last may be shorter)."""
    return [(lo, min(lo + width, steps)) for lo in range(0, steps, width)]


@dataclass
class WindowBatch:
    """A batch prepared for a windowed objective: its windows, their weight, and each window's old log-probs."""

    batch: Batch
    windows: list[Window]
    scale: float  # multiplies every window's loss (d2-StepMerge: N windows, one scored)
    old_logps: list[list[torch.Tensor]]  # per update k >= 1, per window: [N, L] pi_old ([] for mu = 1)
    ref_logps: list[torch.Tensor | None]  # per window: [N, L] pi_ref (None: no KL to a reference)


def prepare_windows(policy: Policy, batch: Batch, windows: Sequence[Window], mu: int, scale: float = 1.0,
                    reference: bool = False) -> WindowBatch:
    """Old (mu > 1) and reference log-probs of every window, without grad, in the updates' micro-batches."""
    chunks = micro_batches(batch.advantages.numel(), batch.micro_batch_size)

    def scored(lo: int, hi: int, ref: bool) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([window_logprobs(policy, batch.rollout, lo, hi, rows, reference=ref)[0]
                              for rows in chunks])  # [N, L]

    old = [scored(lo, hi, False) for lo, hi in windows] if mu > 1 else []
    ref = [scored(lo, hi, True) if reference else None for lo, hi in windows]
    return WindowBatch(batch, list(windows), scale, [old] * (mu - 1), ref)


def window_loss_terms(policy: Policy, prepared: WindowBatch, inner: int, clip_eps: float, beta: float
                      ) -> Iterator[LossTerm]:
    """One term per (window, micro-batch): -min(rho A, clip(rho) A) + beta k3 per scored token, as a token mean over
    the batch's answer tokens of that window (departure 4), times ``prepared.scale``, averaged over the windows."""
    batch = prepared.batch
    answer = batch.rollout.completion_mask  # [N, L]
    behaviour = batch.rollout.trajectory.behaviour_logp  # [N, L]
    for index, (lo, hi) in enumerate(prepared.windows):
        for rows in micro_batches(batch.advantages.numel(), batch.micro_batch_size):
            logp, window = window_logprobs(policy, batch.rollout, lo, hi, rows)  # [n, L]
            scored = window & answer[rows]  # [n, L]
            old = logp.detach() if inner == 0 else prepared.old_logps[inner - 1][index][rows].to(logp)
            adv = batch.advantages[rows].to(logp).unsqueeze(1)  # [n, 1]
            ref = prepared.ref_logps[index]
            per_token, stats = token_ppo(logp, old, adv, scored, clip_eps, beta,
                                         None if ref is None else ref[rows])  # [n, L]
            if inner == 0:
                stats[TRAJECTORY_MISMATCH] = masked_mean(behaviour[rows].to(logp) - logp.detach(), scored)
            tokens = window_tokens(prepared, index)
            yield LossTerm(prepared.scale * (per_token * scored).sum() / tokens / len(prepared.windows), stats)


def window_tokens(prepared: WindowBatch, index: int) -> float:
    """Answer tokens of window ``index`` in the local batch (at least 1): the token mean's denominator."""
    lo, hi = prepared.windows[index]
    rollout = prepared.batch.rollout
    return float((rollout.trajectory.window(lo, hi) & rollout.completion_mask).sum().clamp_min(1))
