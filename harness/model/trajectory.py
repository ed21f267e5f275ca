"""The sampler's trajectory as data (objectives-trajectory.md §9), and the one windowed likelihood on it.

The harness's sampler never re-masks a committed token (the fixed schedule and Fast-dLLM's rules alike), so one
integer per completion position, the step at which the row committed it, gives every intermediate state:
x_s = where(reveal_step < s, y, mask). Steps are counted per row (the steps in which the row revealed a token): a row
decoded alone would count the same, whatever batch it was decoded in. Beside it the sampler records the
log-probability of each committed token under the conditional it actually sampled from (logits / T over the
vocabulary without the mask token; T = 0, greedy, has no density: the untempered one), which is pi_old of every
windowed objective without an old pass, and a check of the learner: on the same state at update 0 the learner's
log-probability equals it exactly when the rollout temperature is 1 (``behaviour_mismatch``).

Every trajectory objective (CJ-GRPO: windows of one step; TraceRL: ``shrink`` steps; d2-StepMerge: one random
window of S / N steps) scores "the tokens committed in steps [lo, hi) from the state at lo": ``window_logprobs``.
"""

from __future__ import annotations

import torch

from harness.model.structs import NOT_REVEALED, Rollout, Trajectory


class TrajectoryRecorder:
    """Fills a ``Trajectory`` while the sampler decodes one slice of rows."""

    def __init__(self, rows: int, gen_length: int, prompt_length: int, device: torch.device) -> None:
        self.reveal_step = torch.full((rows, gen_length), NOT_REVEALED, dtype=torch.long, device=device)
        self.behaviour_logp = torch.zeros((rows, gen_length), dtype=torch.float64, device=device)
        self.row_step = torch.zeros(rows, dtype=torch.long, device=device)  # [n] steps each row has taken
        self.prompt_length = prompt_length

    def record(self, block: slice, reveal: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
        """One step on the sequence's ``block`` positions: ``reveal`` [n, Lb] bool, ``logp`` [n, Lb] of the sampled
        tokens. Returns the tokens each row revealed, [n]."""
        columns = slice(block.start - self.prompt_length, block.stop - self.prompt_length)
        self.reveal_step[:, columns] = torch.where(reveal, self.row_step.unsqueeze(1), self.reveal_step[:, columns])
        self.behaviour_logp[:, columns] = torch.where(reveal, logp.double(), self.behaviour_logp[:, columns])
        counts = reveal.sum(dim=1)  # [n]
        self.row_step += (counts > 0).long()
        return counts


def behaviour_logprobs(logits: torch.Tensor, x0: torch.Tensor, confidence: torch.Tensor, temperature: float
                       ) -> torch.Tensor:
    """log p(x0) under the sampler's conditional: logits [N, Lb, V] (the mask token already at -inf), x0 and its
    untempered softmax probability ``confidence`` [N, Lb] -> [N, Lb]; softmax(logits / T), untempered at T = 0. At
    T = 0 or 1 it is log(confidence): no second pass over the [N, Lb, V] logits (2 GB in float64 at LLaDA's
    vocabulary, block 32 and 64 rows)."""
    if temperature in (0.0, 1.0):
        return confidence.log()
    scaled = logits / temperature
    return scaled.gather(-1, x0.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(scaled, dim=-1)


def window_logprobs(policy, rollout: Rollout, lo: int | torch.Tensor, hi: int | torch.Tensor,  # noqa: ANN001
                    rows: slice = slice(None), reference: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The learner's log p of the tokens committed in steps [lo, hi), from the state before lo, over the vocabulary
    without the mask token (the sampler's support), for ``rows`` (``reference``: under the KL reference): (log-probs
    [n, L] with grad where enabled, zero outside the window; the window [n, L] bool). One forward over the rows. The
    bounds are one for all the rows, or [n], one per row."""
    trajectory = rollout.trajectory
    if trajectory is None:
        raise ValueError("the rollout carries no trajectory (it was not sampled by harness.model.rollout.generate)")
    completion = rollout.completion_ids[rows]  # [n, L]
    reveal = Trajectory(trajectory.reveal_step[rows], trajectory.behaviour_logp[rows], trajectory.temperature)
    ids = torch.cat([rollout.prompt_ids[rows], reveal.state(completion, policy.mask_id, lo)], dim=1)  # [n, T]
    logp = policy.token_logprobs(ids, rollout.attention_mask[rows], completion, rollout.prompt_ids.shape[1],
                                 reference=reference, exclude_mask=True)  # [n, L]
    window = reveal.window(lo, hi)
    return logp * window, window


def behaviour_mismatch(policy, rollout: Rollout) -> float:  # noqa: ANN001
    """Mean over answer tokens of the sampler's log-probability minus the learner's on the same state (one no-grad
    forward per step): 0 when the learner rebuilds the sampler's conditional (T = 1), not otherwise."""
    trajectory = rollout.trajectory
    if trajectory is None:
        raise ValueError("the rollout carries no trajectory (it was not sampled by harness.model.rollout.generate)")
    learner = torch.zeros_like(trajectory.behaviour_logp)  # [N, L]
    with torch.no_grad():
        for step in range(trajectory.steps):
            logp, window = window_logprobs(policy, rollout, step, step + 1)
            learner = learner + logp.double() * window
    answer = rollout.completion_mask
    gap = (trajectory.behaviour_logp - learner) * answer
    return float(gap.sum() / answer.sum().clamp_min(1))
