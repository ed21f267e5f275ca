"""Typed records passed between the stages of one RL step.

Named dimensions used in shape comments throughout the project:
    B  prompts in a rollout batch          G  completions per prompt (group size)
    N  sequences = B * G                   P  prompt length (left-padded)
    L  completion length (gen_length)      T  total length P + L
    V  vocabulary size                     K  n_t, Monte Carlo draws of the ELBO
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

ROLLOUT_STREAM, DRAWS_STREAM, PROMPT_MASK_STREAM = 0, 1, 2
"""The random streams of one sequence (row): its rollout noise, its ELBO draws, its prompt masks (diffu-GRPO)."""


def stream_seed(*parts: int | str) -> int:
    """A 63-bit seed from integers (and names), e.g. (run seed, step, global row), (row seed, stream) or (seed, task
    name, document, choice): distinct tuples give unrelated seeds, so every row of every step draws its own noise,
    whatever process it lands on. Integer tuples hash as they always have (names are new parts, not new digests)."""
    key = tuple(p if isinstance(p, str) else int(p) for p in parts)
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def row_seeds(seed: int, n: int) -> tuple[int, ...]:
    """Seeds of rows 0..n-1 of a batch seeded ``seed`` (fixed batches of benchmarks and tests)."""
    return tuple(stream_seed(seed, row) for row in range(n))


def generators(seeds: list[int] | tuple[int, ...], stream: int, *extra: int) -> list[torch.Generator]:
    """One CPU generator per row for ``stream`` (and ``extra`` parts, e.g. the update index)."""
    return [torch.Generator().manual_seed(stream_seed(seed, stream, *extra)) for seed in seeds]


@dataclass(frozen=True)
class DecodeStats:
    """What decoding a batch cost: the numbers Fast-dLLM reports (arXiv 2505.22618, §4: forward passes, tokens/s) and
    the tokens revealed per step, whose upward drift is how threshold decoding fails in online RL (d1 issue 25).
    Stats of several micro-batches or batches add up (``+``)."""

    forwards: int = 0
    """Forward passes of the policy (summed over micro-batches)."""
    row_steps: int = 0
    """(step, row) pairs in which the row revealed at least one token."""
    revealed: int = 0
    """Tokens revealed (rows times gen_length)."""
    max_tokens_per_step: int = 0
    """The most tokens one row revealed in one step."""
    completion_tokens: int = 0
    """Answer tokens (up to and including the first EOS): Fast-dLLM's throughput counts output tokens up to EOS."""
    seconds: float = 0.0
    """Wall seconds of the decoding."""
    positions: int = 0
    """Query positions the model computed, summed over forwards and rows: a KV cache saves these, not forwards."""

    @property
    def tokens_per_step(self) -> float:
        """Mean tokens a row revealed per step, over the steps and rows that revealed any."""
        return self.revealed / max(self.row_steps, 1)

    @property
    def tokens_per_s(self) -> float:
        """Completion tokens per wall second."""
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    def __add__(self, other: DecodeStats) -> DecodeStats:
        return DecodeStats(self.forwards + other.forwards, self.row_steps + other.row_steps,
                           self.revealed + other.revealed, max(self.max_tokens_per_step, other.max_tokens_per_step),
                           self.completion_tokens + other.completion_tokens, self.seconds + other.seconds,
                           self.positions + other.positions)


NOT_REVEALED = -1
"""reveal_step of a position the sampler never committed (never in a finished rollout)."""


@dataclass(frozen=True)
class Trajectory:
    """What the sampler did, per completion position: when it committed the token, and how likely it was."""

    reveal_step: torch.Tensor  # [N, L] long, the row's step that committed the position (NOT_REVEALED: never)
    behaviour_logp: torch.Tensor  # [N, L] float64, log p of the committed token under the sampler's conditional
    temperature: float  # the rollout's temperature (the conditional is logits / T; 0: greedy, scored untempered)

    @property
    def steps(self) -> int:
        """Steps of the longest row's trajectory (windows cover [0, steps))."""
        return int(self.reveal_step.max()) + 1 if self.reveal_step.numel() else 0

    @property
    def row_steps(self) -> torch.Tensor:
        """[N] long: each row's own step count (its last reveal step + 1)."""
        return self.reveal_step.max(dim=1).values + 1

    def state(self, completion_ids: torch.Tensor, mask_id: int, step: int | torch.Tensor) -> torch.Tensor:
        """The completion [N, L] as it stood before ``step`` (one for all rows, or [N], one per row): committed
        tokens, mask elsewhere."""
        before = step if isinstance(step, int) else step.unsqueeze(1)
        committed = (self.reveal_step >= 0) & (self.reveal_step < before)
        return torch.where(committed, completion_ids, torch.full_like(completion_ids, mask_id))

    def window(self, lo: int | torch.Tensor, hi: int | torch.Tensor) -> torch.Tensor:
        """[N, L] bool: the positions committed in steps [lo, hi) (bounds for all rows, or [N], one per row)."""
        lo, hi = (b if isinstance(b, int) else b.unsqueeze(1) for b in (lo, hi))
        return (self.reveal_step >= lo) & (self.reveal_step < hi)


@dataclass(frozen=True)
class Rollout:
    """Completions sampled from the policy for a batch of prompts.

    ``completion_mask`` marks the tokens that belong to the answer y: every position up to and including the
    first EOS (d1's convention); the EOS padding after it is excluded from every log-likelihood.
    """

    prompt_ids: torch.Tensor  # [N, P] long, left-padded with the pad id
    prompt_mask: torch.Tensor  # [N, P] bool, False on left padding
    completion_ids: torch.Tensor  # [N, L] long
    completion_mask: torch.Tensor  # [N, L] bool, True up to and including the first EOS
    texts: list[str]  # N decoded completions (up to the first EOS, special tokens dropped)
    block_length: int | None = None  # the sampler's semi-autoregressive block (None: not sampled by it)
    decode: DecodeStats = field(default_factory=DecodeStats)  # what sampling it cost (empty: not sampled)
    trajectory: Trajectory | None = None  # when each token was committed, and how likely (None: not sampled)

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)  # [N, T]

    @property
    def attention_mask(self) -> torch.Tensor:
        ones = torch.ones_like(self.completion_mask)
        return torch.cat([self.prompt_mask, ones], dim=1)  # [N, T]


@dataclass(frozen=True)
class Batch:
    """A scored rollout batch: what every objective consumes."""

    rollout: Rollout
    rewards: torch.Tensor  # [N] float
    advantages: torch.Tensor  # [N] float, group-relative
    group_size: int  # G
    row_seeds: tuple[int, ...]  # [N] seed of each sequence, from its global row: its draws and prompt masks
    world_size: int = 1  # processes sharing the global batch (each holds N of its rows)
    global_tokens: int | None = None  # completion tokens of the global batch (token means are global); None: local
    micro_batch_size: int = 0  # sequences per objective forward/backward pass (0: all N): the run's TrainConfig's
    global_steps: int | None = None  # the longest trajectory of the global batch (every process runs as many windows)

    @property
    def trajectory_steps(self) -> int:
        """Steps of the global batch's longest trajectory: a windowed objective's windows cover [0, this) on every
        process, so all processes run as many backward passes (DDP reduces at each)."""
        trajectory = self.rollout.trajectory
        local = trajectory.steps if trajectory is not None else 0
        return self.global_steps if self.global_steps is not None else local

    @property
    def token_total(self) -> int:
        """Completion tokens of the global batch (the denominator of a global token mean)."""
        local = int(self.rollout.completion_mask.sum())
        return max(self.global_tokens if self.global_tokens is not None else local, 1)
