"""The names of a step's metrics, declared once, and the one function that assembles a step's metrics.

Names follow TRL's GRPOTrainer where it has one (``reward``, ``reward_std``, ``frac_reward_zero_std``,
``completions/mean_length``, ``grad_norm``), so a curve logged here sits beside one logged there. Every writer (the
trainer, the meter, the trackers through accelerate) and every reader (records, results rows, tables, figures,
benchmarks) uses these constants; an objective's own statistics (``LossTerm.stats``) are named in objectives/base.py.
"""

from __future__ import annotations

from collections.abc import Mapping

from harness.model.structs import DecodeStats

REWARD = "reward"
REWARD_STD = "reward_std"
FRAC_REWARD_ZERO_STD = "frac_reward_zero_std"
"""Fraction of groups whose rewards are all equal (zero advantage: no signal)."""
MEAN_LENGTH = "completions/mean_length"
LR = "lr"
ROLLOUT_FORWARDS = "rollout/forwards"
"""Forward passes of the policy in the step's rollout (data-dependent under threshold decoding)."""
ROLLOUT_TOKENS_PER_STEP = "rollout/tokens_per_step"
"""Mean tokens a row revealed per denoising step: its upward drift is threshold decoding's failure mode in RL."""
ROLLOUT_TOKENS_PER_STEP_MAX = "rollout/tokens_per_step_max"
"""The most tokens one row revealed in one step of the rollout."""
ROLLOUT_TOKENS_PER_S = "rollout/tokens_per_s"
"""Completion tokens (up to the first EOS) decoded per wall second."""
ROLLOUT_POSITIONS = "rollout/positions"
"""Query positions the model computed in the step's rollout, over rows and forwards: what a KV cache saves."""
DECODE_S = "time/decode_s"
"""Wall seconds of the rollout's decoding (the sampler alone, inside the rollout phase)."""
LOSS = "loss/policy"
"""The objective's loss summed over its terms, averaged over the mu updates."""
GRAD_NORM = "grad_norm"
"""The gradient norm before clipping, averaged over the mu updates."""
TIME_PREFIX = "time/"
MEMORY_PREFIX = "mem/"
STEP_S = "time/step_s"
"""Wall seconds of the whole RL step."""
MEM_TRACKED = "mem_tracked"
"""1.0 when the step ran under the memory tracker (it slows a CPU step, so step times leave those steps out)."""
PEAK_TOTAL_MB = "mem/peak_total_mb"
PEAK_PARAMS_MB = "mem/peak_params_mb"
PEAK_GRADS_MB = "mem/peak_grads_mb"
PEAK_OPTIMIZER_MB = "mem/peak_optimizer_mb"
PEAK_ACTIVATIONS_MB = "mem/peak_activations_mb"
PEAKS_MB = (PEAK_TOTAL_MB, PEAK_PARAMS_MB, PEAK_GRADS_MB, PEAK_OPTIMIZER_MB, PEAK_ACTIVATIONS_MB)
"""The peak-memory split, in MiB (measure.MemorySplit): total = params + grads + optimizer + activations."""
CUDA_MAX_ALLOCATED_MB = "cuda_max_allocated_mb"
"""On a GPU, the allocator's largest allocated bytes over the step: the figure an out-of-memory error is judged by."""
CUDA_MAX_RESERVED_MB = "cuda_max_reserved_mb"
"""On a GPU, the allocator's largest reserved bytes: allocated plus the caching allocator's fragmentation."""
UPDATE_TRACKED_S = "time/update_tracked_s"
"""Wall seconds of one tracked optimizer update (memory probes: the tracker slows it)."""
EVAL_PREFIX = "eval/"
"""Evaluations are logged as ``eval/<task metric>``."""
PHASES = ROLLOUT_PHASE, REWARD_PHASE, UPDATE_PHASE = ("rollout", REWARD, "update")
"""The phases of an RL step the meter times (``phase_seconds`` names their metrics); the reward phase is named after
what it computes."""


def phase_seconds(phase: str) -> str:
    """The metric of a phase's wall seconds: ``time/rollout_s``."""
    return f"{TIME_PREFIX}{phase}_s"


def is_peak(name: str) -> bool:
    """Times and memory are reduced over processes by their maximum (the slowest, the largest), the rest by mean."""
    return name.startswith((TIME_PREFIX, MEMORY_PREFIX))


def decode_metrics(stats: DecodeStats) -> dict[str, float]:
    """What a rollout's decoding cost (``Rollout.decode``), as a step's metrics."""
    return {ROLLOUT_FORWARDS: float(stats.forwards), ROLLOUT_TOKENS_PER_STEP: stats.tokens_per_step,
            ROLLOUT_TOKENS_PER_STEP_MAX: float(stats.max_tokens_per_step), ROLLOUT_TOKENS_PER_S: stats.tokens_per_s,
            ROLLOUT_POSITIONS: float(stats.positions), DECODE_S: stats.seconds}


def step_metrics(rollout: Mapping[str, float], updates: Mapping[str, list[float]], measured: Mapping[str, float],
                 step_s: float, tracked: bool) -> dict[str, float]:
    """A step's flat metrics, in one place: the rollout's (reward statistics, length, lr, ``decode_metrics``), the
    updates' (loss terms' statistics, loss, gradient norm: means over the mu updates), the meter's
    (``MeterReading.to_metrics``: phase times, memory peaks when tracked), the step's wall seconds and whether memory
    was tracked."""
    metrics = dict(rollout)
    metrics |= {key: sum(values) / len(values) for key, values in updates.items()}
    metrics |= measured
    metrics[STEP_S] = step_s
    metrics[MEM_TRACKED] = float(tracked)
    return metrics
