"""LLaDA's rollout sampler: semi-autoregressive blocks, a fixed reveal schedule or a confidence threshold,
low-confidence remasking.

Reference: LLaDA ``generate.py`` (github ML-GSAI/LLaDA, ``generate``, ``get_num_transfer_tokens``,
``add_gumbel_noise``) and algorithms.md §2. The completion starts as ``gen_length`` mask tokens after the
left-padded prompt. Blocks of ``block_length`` are denoised left to right, ``steps / num_blocks`` steps each. At every
step the bidirectional mask predictor sees the whole sequence; a token x0 is sampled for each masked position of the
current block and the ``k_s`` most confident of them are revealed and kept fixed, with
``k_s = floor(m / S) + 1[s < m mod S]`` for ``m`` masked tokens in the block and ``S`` steps per block.

``decode='threshold'`` and ``decode='factor'`` replace the fixed count by Fast-dLLM's parallel decoding (arXiv
2505.22618, §3.3, Alg. 1; its code's ``get_transfer_index`` and ``get_transfer_index_dynamic``): a step reveals every
masked position of the block whose confidence reaches ``threshold`` (or the longest confident prefix of the factor
rule), always at least the most confident one, and each block is denoised until it has no mask.

Departures from LLaDA's ``generate.py``, each deliberate:
1. Gumbel-max is computed as ``argmax(logits / T + g)`` with ``g = -log(-log U)`` in float64, never as
   ``exp(logits) / (-log U) ** T``: the same argmax (take the log and divide by T) without the overflow of
   ``exp(logits)`` for large logits (pitfall P14).
2. All randomness (Gumbel noise, the confidence of ``remasking='random'``) comes from the explicit ``generator``
   argument, one per row in training (a row's completion depends on its own seed only: the same on whichever process
   or in whichever micro-batch it is decoded); the global RNGs are never touched (pitfall P1). Numbers are drawn
   on the generator's device and then moved to the policy's device, so a CPU generator can drive a sampler on an
   accelerator and the draws are identical whatever device the policy is on.
3. Only the current block is sampled: logits are sliced to the block before the float64 copy, so the sampler
   holds [N, block_length, V] float64 tensors rather than [N, T, V] ones. LLaDA samples every position and then
   discards those outside the block; the revealed tokens are the same, the random stream is not.
4. The mask token itself can never be sampled (its logit is set to -inf before sampling), so a reveal always
   removes a mask. Confidence is the softmax probability of x0 under that distribution (no temperature).
5. A step whose schedule reveals nothing in every row (possible when ``steps_per_block > block_length``) is
   skipped instead of spending a forward pass on it. With ``steps <= gen_length`` the policy is called exactly
   ``steps`` times.
6. The per-row top-k is vectorised (a stable sort and a rank threshold) instead of a Python loop over rows; ties
   go to the leftmost position.
7. Left-padded prompts get an attention mask (False on padding), as the LLaDA demo does and d1 does not
   (pitfall P6). No classifier-free guidance and no ``logits_eos_inf`` / ``confidence_eos_eot_inf`` options
   (d1 runs with ``cfg_scale = 0``).
8. The answer mask is computed here with d1's convention: tokens up to and including the first EOS
   (``Rollout.completion_mask``); for LLaDA-8B-Instruct the first EOS or end-of-turn token (``policy.stop_ids``).
9. Decoding runs under ``torch.inference_mode`` (no autograd bookkeeping at all) and ``micro_batch_size`` rows at a
   time; the returned tensors are ordinary ones, usable in the update's autograd graph.
10. Threshold and factor decoding (Fast-dLLM's code): a row whose block has no mask left draws no noise and reveals
   nothing while the other rows finish theirs (Fast-dLLM decodes one prompt at a time), so a row's completion still
   depends on its own seed only. The factor rule reveals exactly the longest prefix n of the sorted confidences with
   (n + 1)(1 - c_(n)) <= f: Fast-dLLM also reveals the last candidate when only it fails (an off-by-one in its
   ``top_i`` fix-up). The rules read the model's confidence, so they refuse ``remasking='random'`` (Fast-dLLM would
   compare uniform noise with the threshold). An optional cap (``max_tokens_per_step``) keeps the most confident of
   the chosen positions, as §6.5 of objectives-more.md suggests against the overconfidence d1's author met in RL.
11. Every rollout records what it cost (``Rollout.decode``, ``DecodeStats``): forward passes, tokens revealed per
   step (mean and max), decode seconds and completion tokens per second, and the positions the model computed.
12. ``cache='prefix'`` or ``'dual'``: Fast-dLLM's block-wise approximate KV cache (``kv_cache.py``): the block's first
   step is a full forward that refreshes the cache, its other steps run on a window of positions against it.
13. Every rollout records its trajectory (``Rollout.trajectory``, ``trajectory.py``): the row's step that committed
   each position and the committed token's log-probability under the conditional sampled from.
14. CJ-GRPO (arXiv 2509.23924; its code's ``cj_grpo_trainer_eoser*.py``): ``decode='ass'`` reveals 2^i tokens at a
   block's step i (``reveal.ass_schedule``). EOSER (``eos_gamma_min`` < 1) scales the ranking confidence of stop-token
   candidates (``policy.stop_ids``; its code: the EOS id only) by gamma rising to 1 over a block's steps
   (``reveal.eos_gamma``), never the conditional sampled from. Its code peels off blocks of powers of two
   (``get_block_sizes``) and trains on one block; here blocks keep ``block_length``, ASS and gamma restart in each.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from harness.model.bounds import check_bounds
from harness.model.elbo import micro_batches
from harness.model.kv_cache import BLOCK_REFRESH, CACHES, NO_CACHE, REFRESHES, BlockCache
from harness.model.predictor import MaskPredictor
from harness.model.reveal import (
    ass_schedule,
    cap_reveal,
    eos_gamma,
    factor_rule,
    reject_eos,
    reveal_schedule,
    threshold_rule,
    top_k_mask,
)
from harness.model.structs import DecodeStats, Rollout, Trajectory
from harness.model.trajectory import TrajectoryRecorder, behaviour_logprobs

DECODE_RULES = SCHEDULE, THRESHOLD, FACTOR, ASS = ("schedule", "threshold", "factor", "ass")
"""How many tokens a step reveals: LLaDA's fixed schedule, Fast-dLLM's threshold or factor rule, or CJ-GRPO's
ascending step sizes (fixed too)."""
PARALLEL_RULES = (THRESHOLD, FACTOR)
"""The rules that read the confidence to decide how many tokens a step reveals."""


@dataclass(frozen=True)
class RolloutConfig:
    """LLaDA decoding protocol (low-confidence remasking, semi-autoregressive blocks)."""

    gen_length: int = field(default=24, metadata={"min": 1})
    """Completion length L in tokens; the completion starts as L mask tokens."""
    block_length: int = field(default=8, metadata={"min": 1})
    """Semi-autoregressive block size; must divide gen_length."""
    steps: int = field(default=12, metadata={"min": 1})
    """Total denoising steps; steps / (gen_length / block_length) per block, must divide evenly (decode='schedule';
    'threshold' and 'factor' only validate it, 'ass' ignores it)."""
    temperature: float = field(default=0.0, metadata={"min": 0})
    """Gumbel-max temperature; 0 is greedy."""
    remasking: str = field(default="low_confidence", metadata={"choices": ("low_confidence", "random")})
    """'low_confidence' (LLaDA default) or 'random'."""
    micro_batch_size: int = field(default=0, metadata={"min": 0})
    """Rows decoded together (0 = all); a memory knob only, rows never interact."""
    decode: str = field(default=SCHEDULE, metadata={"choices": DECODE_RULES})
    """Tokens revealed per step: 'schedule' (the fixed count set by steps), 'threshold' or 'factor' (Fast-dLLM's rules
    on the confidence, at least one token per step), 'ass' (CJ-GRPO's ascending step sizes: 1, 2, 4, ... and the
    remainder, floor(log2 block_length) steps per block, steps unused). 'threshold' and 'factor' denoise each block
    until it has no mask, so their forward passes depend on the model: steps is then only validated, never used."""
    threshold: float = field(default=0.9, metadata={"min": 0})
    """tau of decode='threshold': reveal every masked token of the block whose confidence is >= tau (Fast-dLLM's
    default 0.9; 1.0 reveals one token per step)."""
    factor: float = field(default=1.0, metadata={"min": 0})
    """f of decode='factor': reveal the longest prefix n of the block's confidences, sorted descending, with
    (n + 1)(1 - c_(n)) <= f."""
    max_tokens_per_step: int = field(default=0, metadata={"min": 0})
    """With 'threshold' or 'factor': reveal at most this many tokens per row and step, the most confident (0 = no
    cap; 'schedule' ignores it)."""
    eos_gamma_min: float = field(default=1.0, metadata={"min": 0, "max": 1})
    """EOSER (CJ-GRPO): the factor on a stop-token candidate's ranking confidence at a block's first step, rising
    linearly to 1 over its steps (with 'ass': by the share revealed); 1 = off. CJ-GRPO's default 0.4, its train.yaml
    0.01. Fixed schedules ('schedule', 'ass') with remasking='low_confidence' only."""
    cache: str = field(default=NO_CACHE, metadata={"choices": CACHES})
    """Fast-dLLM's block-wise KV cache (kv_cache.py): 'prefix' keeps the prompt and finished blocks, 'dual' also the
    masked suffix; refreshed by the block's first forward. Approximate (cached keys go stale inside a block); needs
    a native family (Llama or Qwen2 classes, no remote code)."""
    cache_refresh: str = field(default=BLOCK_REFRESH, metadata={"choices": REFRESHES})
    """'block': rebuild the cache once per block (Fast-dLLM). 'step': rebuild it from the current tokens before every
    step and still decode through it, an extra full forward per step that makes the cached path exact: a check that
    a family's cached attention (positions, padding) equals the uncached sampler, not a speed-up."""

    def validate(self) -> None:
        """The fields' bounds (their metadata) and the rules between fields; ValueError naming the field."""
        check_bounds(self)
        if self.gen_length % self.block_length:
            raise ValueError(f"block_length={self.block_length} must divide gen_length={self.gen_length}")
        blocks = self.gen_length // self.block_length
        if self.steps % blocks and self.decode != ASS:
            raise ValueError(f"steps={self.steps} must be a multiple of the number of blocks ({blocks})")
        if self.eos_gamma_min != 1 and (self.decode in PARALLEL_RULES or self.remasking == RANDOM):
            raise ValueError(f"eos_gamma_min={self.eos_gamma_min} scales the confidence a fixed schedule ranks by: it "
                             f"needs decode='{SCHEDULE}' or '{ASS}' and remasking='{LOW_CONFIDENCE}'")
        if self.decode in PARALLEL_RULES and self.remasking == RANDOM:
            raise ValueError(f"decode={self.decode!r} reads the model's confidence: it needs remasking="
                             f"'{LOW_CONFIDENCE}', not '{RANDOM}'")

LOW_CONFIDENCE = "low_confidence"
"""Remasking rule: reveal the positions whose sampled token the model is most sure of (LLaDA's default)."""
RANDOM = "random"
"""Remasking rule: reveal uniformly random masked positions of the block."""
GREEDY_TEMPERATURE = 0.0
"""Temperature at which sampling becomes argmax decoding (no random numbers drawn)."""
SAMPLING_DTYPE = torch.float64
"""Precision of the Gumbel noise and the confidence (LLaDA: low-precision Gumbel-max hurts generation quality)."""


class SamplingPolicy(Protocol):
    """What the sampler needs from a policy (``harness.model.policy.Policy`` satisfies it)."""

    mask_id: int
    eos_id: int
    pad_id: int
    stop_ids: tuple[int, ...]

    @property
    def device(self) -> torch.device: ...

    @property
    def predictor(self) -> MaskPredictor: ...

    def logits(self, ids: torch.Tensor, attention_mask: torch.Tensor, positions: slice) -> torch.Tensor: ...

    def decode_completions(self, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> list[str]: ...


Generators = torch.Generator | Sequence[torch.Generator]
"""One generator for the whole batch, or one per row."""


def generate(policy: SamplingPolicy, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, cfg: RolloutConfig,
             generator: Generators) -> Rollout:
    """Sample one completion per prompt row with LLaDA's semi-autoregressive low-confidence remasking.

    Args:
        prompt_ids: [N, P] long, left-padded with ``policy.pad_id``.
        prompt_mask: [N, P] bool, False on the left padding.
        generator: the only source of randomness, one for the batch or one per row (CPU generators may drive a
            policy on another device).
    """
    cfg.validate()
    started = time.perf_counter()
    n = prompt_ids.shape[0]
    per_row = not isinstance(generator, torch.Generator)
    with torch.inference_mode():
        parts = [_generate_rows(policy, prompt_ids[rows], prompt_mask[rows], cfg,
                                generator[rows] if per_row else generator)
                 for rows in micro_batches(n, cfg.micro_batch_size if per_row else 0)]
    completion_ids = torch.cat([ids for ids, _, _ in parts]).clone()  # [N, L], ordinary tensors (outside inference)
    trajectory = Trajectory(torch.cat([t.reveal_step for _, t, _ in parts]).clone(),
                            torch.cat([t.behaviour_logp for _, t, _ in parts]).clone(), cfg.temperature)
    completion_mask = first_eos_mask(completion_ids, policy.stop_ids)  # [N, L]
    answer_tokens = int(completion_mask.sum())  # waits for the device: the time below is the decoding's
    stats = sum((part for _, _, part in parts), DecodeStats(completion_tokens=answer_tokens,
                                                            seconds=time.perf_counter() - started))
    texts = policy.decode_completions(completion_ids, completion_mask)
    return Rollout(prompt_ids=prompt_ids.to(completion_ids.device), prompt_mask=prompt_mask.to(
        device=completion_ids.device, dtype=torch.bool), completion_ids=completion_ids,
        completion_mask=completion_mask, texts=texts, block_length=cfg.block_length, decode=stats,
        trajectory=trajectory)


def _generate_rows(policy: SamplingPolicy, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, cfg: RolloutConfig,
                   generator: Generators) -> tuple[torch.Tensor, TrajectoryRecorder, DecodeStats]:
    """The completion ids [n, L] of a slice of rows, its trajectory and what decoding it cost."""
    device = policy.device
    num_blocks = cfg.gen_length // cfg.block_length
    steps_per_block = cfg.steps // num_blocks
    prompt_ids = prompt_ids.to(device)  # [N, P]
    prompt_mask = prompt_mask.to(device=device, dtype=torch.bool)  # [N, P]
    n, p = prompt_ids.shape
    masks = torch.full((n, cfg.gen_length), policy.mask_id, dtype=torch.long, device=device)  # [N, L]
    x = torch.cat([prompt_ids, masks], dim=1)  # [N, T]
    attention_mask = torch.cat([prompt_mask, torch.ones_like(masks, dtype=torch.bool)], dim=1)  # [N, T]

    cache = BlockCache(policy.predictor, cfg.cache, attention_mask, cfg.cache_refresh) if cfg.cache != NO_CACHE \
        else None
    stops = torch.tensor(policy.stop_ids, dtype=torch.long, device=device)  # [K], EOSER's EOS candidates

    def forward(block: slice) -> torch.Tensor:  # the block's logits [n, Lb, V]: through the cache, if any
        return cache.logits(x, block) if cache else policy.logits(x, attention_mask, block)

    recorder = TrajectoryRecorder(n, cfg.gen_length, p, device)
    revealed: list[torch.Tensor] = []  # per forward pass, the tokens each row revealed: [n] each
    for block in range(num_blocks):
        start = p + block * cfg.block_length
        block_slice = slice(start, start + cfg.block_length)
        if cfg.decode in PARALLEL_RULES:  # until the block has no mask in any row: one host sync per step
            while any(rows := (x[:, block_slice] == policy.mask_id).any(dim=1).tolist()):
                revealed.append(recorder.record(block_slice, *_denoise_step(
                    forward(block_slice), x, block_slice, None, cfg, generator, policy.mask_id, rows)))
            continue
        masked_per_row = (x[:, block_slice] == policy.mask_id).sum(dim=1)  # [N]
        schedule = ass_schedule(masked_per_row, cfg.block_length) if cfg.decode == ASS else \
            reveal_schedule(masked_per_row, steps_per_block)  # [N, S]
        active = schedule.any(dim=0).tolist()  # one host sync per block, not per step
        for step in range(len(active)):
            if active[step]:
                gamma = eos_gamma(cfg.eos_gamma_min, step, len(active), ascending=cfg.decode == ASS)
                revealed.append(recorder.record(block_slice, *_denoise_step(
                    forward(block_slice), x, block_slice, schedule[:, step], cfg, generator, policy.mask_id,
                    eos=(stops, gamma) if cfg.eos_gamma_min != 1 else None)))

    counts = torch.stack(revealed) if revealed else torch.zeros(0, n, dtype=torch.long)  # [F, n]
    positions = cache.positions if cache else len(revealed) * x.numel()
    return x[:, p:], recorder, DecodeStats(forwards=len(revealed), row_steps=int((counts > 0).sum()),
                                 revealed=int(counts.sum()), max_tokens_per_step=int(counts.max()) if revealed else 0,
                                 positions=positions)


def _denoise_step(logits: torch.Tensor, x: torch.Tensor, block_slice: slice, reveal_counts: torch.Tensor | None,
                  cfg: RolloutConfig, generator: Generators, mask_id: int, rows: Sequence[bool] | None = None,
                  eos: tuple[torch.Tensor, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One reverse step in place on x [N, T] from the block's logits [N, Lb, V]: reveal ``reveal_counts`` [N] masked
    tokens of the block per row (None: the tokens ``cfg.decode``'s rule picks, drawing noise only for the ``rows``
    still masked), ranked by confidence scaled at stop-token candidates by EOSER's ``eos`` (stop ids [K], gamma).
    Returns the positions revealed [N, Lb] and the sampled tokens' log-probabilities under the sampler's conditional
    [N, Lb] (``trajectory.behaviour_logprobs``)."""
    mask_column = torch.tensor([mask_id], device=logits.device)
    logits = logits.to(SAMPLING_DTYPE).index_fill(-1, mask_column, float("-inf"))  # [N, Lb, V], a fresh copy
    x0, confidence = sample_tokens(logits, cfg.temperature, generator, rows)  # [N, Lb], [N, Lb]
    logp = behaviour_logprobs(logits, x0, confidence, cfg.temperature)  # [N, Lb]
    if eos is not None:  # after logp: EOSER changes the ranking only, never the conditional sampled from
        confidence = reject_eos(confidence, x0, *eos)  # [N, Lb]
    if cfg.remasking == RANDOM:
        confidence = _uniform(confidence.shape, generator, confidence.device)  # [N, Lb]
    block = x[:, block_slice]  # [N, Lb], a view into x
    still_masked = block == mask_id  # [N, Lb]
    if reveal_counts is None:
        reveal = parallel_reveal(confidence, still_masked, cfg)  # [N, Lb]
    else:
        confidence = confidence.masked_fill(~still_masked, float("-inf"))  # revealed tokens stay fixed
        reveal = top_k_mask(confidence, reveal_counts) & still_masked  # [N, Lb]
    x[:, block_slice] = torch.where(reveal, x0, block)
    return reveal, logp


def parallel_reveal(confidence: torch.Tensor, masked: torch.Tensor, cfg: RolloutConfig) -> torch.Tensor:
    """The positions [N, Lb] bool one step of ``cfg.decode`` ('threshold' or 'factor') reveals, capped at
    ``cfg.max_tokens_per_step`` per row, from the confidences [N, Lb] and the still-masked positions [N, Lb]."""
    rule = threshold_rule(confidence, masked, cfg.threshold) if cfg.decode == THRESHOLD else \
        factor_rule(confidence, masked, cfg.factor)
    return cap_reveal(confidence, rule, cfg.max_tokens_per_step)


def sample_tokens(logits: torch.Tensor, temperature: float, generator: Generators,
                  rows: Sequence[bool] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample x0 ~ softmax(logits / T) by Gumbel-max (argmax at T = 0) and return it with its confidence.

    Args:
        logits: [N, L, V] float; cast to float64 for the noise and the confidence.
        temperature: T >= 0; T = 0 draws nothing from the generator.
        rows: with one generator per row, the rows that draw noise (None: all); the others' x0 is meaningless.

    Returns:
        x0: [N, L] long, the sampled token ids.
        confidence: [N, L] float64, softmax(logits)[x0] without temperature (LLaDA's low-confidence score).
    """
    logits = logits.to(SAMPLING_DTYPE)  # [N, L, V]
    if temperature == GREEDY_TEMPERATURE:
        x0 = logits.argmax(dim=-1)  # [N, L]
    else:
        # U = 0 would give g = -inf (never chosen) but clamping keeps the arithmetic free of infinities.
        uniform = _uniform(logits.shape, generator, logits.device, rows).clamp_min_(torch.finfo(SAMPLING_DTYPE).tiny)
        gumbel = -torch.log(-torch.log(uniform))  # [N, L, V]
        x0 = (logits / temperature + gumbel).argmax(dim=-1)  # [N, L]
    picked = logits.gather(-1, x0.unsqueeze(-1)).squeeze(-1)  # [N, L]
    confidence = torch.exp(picked - torch.logsumexp(logits, dim=-1))  # [N, L], never exp(logits) itself
    return x0, confidence


def first_eos_mask(ids: torch.Tensor, eos_id: int | Sequence[int]) -> torch.Tensor:
    """[N, L] -> [N, L] bool: True up to and including the first EOS (any of ``eos_id``) of each row, all True in
    rows without one."""
    stops = torch.tensor([eos_id] if isinstance(eos_id, int) else list(eos_id), device=ids.device)
    is_eos = torch.isin(ids, stops)  # [N, L]
    eos_before = is_eos.long().cumsum(dim=1) - is_eos.long()  # [N, L], EOS tokens strictly left of each position
    return eos_before == 0


def _uniform(shape: torch.Size, generator: Generators, device: torch.device,
             rows: Sequence[bool] | None = None) -> torch.Tensor:
    """U[0, 1) in float64, drawn on the generator's device (a CPU generator cannot fill a GPU tensor), then moved;
    with one generator per row, row i's numbers come from generator i, and rows outside ``rows`` draw none (zeros)."""
    if isinstance(generator, torch.Generator):
        return torch.rand(shape, generator=generator, device=generator.device, dtype=SAMPLING_DTYPE).to(device)
    draws = rows if rows is not None else [True] * len(generator)
    return torch.stack([torch.rand(shape[1:], generator=g, device=g.device, dtype=SAMPLING_DTYPE) if draw else
                        torch.zeros(shape[1:], device=g.device, dtype=SAMPLING_DTYPE)
                        for g, draw in zip(generator, draws, strict=True)]).to(device)
