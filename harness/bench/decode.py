"""`harness bench decode`: the same items decoded under each decoding protocol, side by side (issue #23).

Two tables, each measured in one run so that their ratios share the machine's state:

1. **Task**: the tiny default's test puzzles under each protocol: forward passes per item (a lone prompt's count,
   Fast-dLLM's batch-1 figure; a batch waits for its slowest row, so the batch's own count is shown beside it),
   positions computed, seconds, tokens/s, accuracy with its 95% interval and the paired difference against the plain
   sampler (one token per step, Fast-dLLM's baseline) on the same items.
2. **Speed**: one prompt on a random-weight model of a given shape (LLaDA's layout at about 100M parameters by
   default) at Fast-dLLM's shape (prompt 256, completion 256, block 32): tokens/s of every protocol and its ratio to
   the plain sampler's. Random weights are never confident, so a threshold reveals one token per step there: that
   table prices the cache; the task table prices the threshold.

A protocol is written RULE[+CACHE]: RULE is 'plain' (the fixed schedule at one token per step), 'default' (the
evaluation protocol as configured), 'ass' (CJ-GRPO's ascending step sizes), 'threshold=TAU' or 'factor=F' (Fast-dLLM's
rules); CACHE is 'prefix' or 'dual'.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.bench.memory import MODEL_SHAPES, shaped_policy
from harness.loop.evaluate import evaluate
from harness.loop.stats import paired_bootstrap
from harness.model.kv_cache import DUAL, PREFIX
from harness.model.policy import Policy
from harness.model.rollout import ASS, FACTOR, SCHEDULE, THRESHOLD, RolloutConfig, generate
from harness.model.structs import ROLLOUT_STREAM, generators, row_seeds
from harness.report.learn_summary import pct_ci

PLAIN, DEFAULT = "plain", "default"
"""The reference protocol (one token per step, Fast-dLLM's baseline) and the evaluation protocol as configured."""


@dataclass(frozen=True)
class DecodeBench:
    """The settings of `harness bench decode` besides the sweep settings it shares (model, tasks, eval)."""

    protocols: tuple[str, ...] = ("plain", "default", "threshold=0.9", "threshold=0.7", "threshold=0.5", "factor=1",
                                  "plain+dual", "threshold=0.9+prefix", "threshold=0.9+dual")
    """Protocols of the task table, RULE[+CACHE] (module docstring); the first 'plain' is the paired reference."""
    speed_shape: str = "llada-100m"
    """Random-weight model of the speed table (llada-100m: LLaDA's layout, 12 layers of width 768, about 117M
    parameters); '' skips the table."""
    speed_protocols: tuple[str, ...] = ("plain", "plain+prefix", "plain+dual", "threshold=0.9+prefix",
                                        "threshold=0.9+dual")
    """Protocols of the speed table (threshold alone costs what plain does on random weights: one token per step)."""
    speed_repeats: int = field(default=2, metadata={"min": 1})
    """Rounds of the speed table, each decoding every protocol in turn: the seconds reported are each protocol's
    median, so a busy moment of the machine falls on every protocol alike or on one round only."""
    prompt_length: int = field(default=256, metadata={"min": 1})
    """Prompt tokens of the speed table."""
    gen_length: int = field(default=256, metadata={"min": 1})
    """Completion tokens of the speed table."""
    block_length: int = field(default=32, metadata={"min": 1})
    """Semi-autoregressive block (and cache block) of the speed table."""


def protocol_config(text: str, base: RolloutConfig, where: str = "--protocols") -> RolloutConfig:
    """The rollout config a protocol names, built on ``base``; ValueError naming the text otherwise."""
    rule, _, cache = text.partition("+")
    name, _, value = rule.partition("=")
    try:
        if name == PLAIN and not value:
            config = dataclasses.replace(base, decode=SCHEDULE, steps=base.gen_length)
        elif name == DEFAULT and not value:
            config = base
        elif name == ASS and not value:
            config = dataclasses.replace(base, decode=ASS)
        elif name == THRESHOLD:
            config = dataclasses.replace(base, decode=THRESHOLD, threshold=float(value))
        elif name == FACTOR:
            config = dataclasses.replace(base, decode=FACTOR, factor=float(value))
        else:
            raise ValueError("unknown rule")
        if cache and cache not in (PREFIX, DUAL):
            raise ValueError("unknown cache")
        config = dataclasses.replace(config, cache=cache or config.cache)
        config.validate()
    except ValueError as error:
        raise ValueError(f"{where} {text!r}: {error} (RULE[+CACHE]: RULE plain, default, ass, threshold=TAU "
                         f"or factor=F; CACHE prefix or dual)") from None
    return config


def per_item_forwards(stats: Any, items: int) -> float:
    """Forward passes one item would need decoded alone: its steps that revealed a token (every step reveals one
    at least, and rows never interact)."""
    return stats.row_steps / max(items, 1)


def task_rows(policy: Policy, task: Any, items: Sequence[Any], base: RolloutConfig, protocols: Sequence[str],
              batch_size: int) -> list[dict[str, Any]]:
    """One row per protocol: cost, accuracy and the paired difference against the first protocol."""
    rows, reference = [], None
    for text in protocols:
        config = protocol_config(text, base)
        result = evaluate(policy, task, items, config, batch_size)
        scores = [float(item[task.metric]) for item in result.items]
        reference = reference or scores
        difference, p = paired_bootstrap(scores, reference)
        stats = result.decode
        rows.append({"protocol": text, "forwards_per_item": per_item_forwards(stats, len(items)),
                     "batch_forwards": stats.forwards, "positions_per_item": stats.positions / max(len(items), 1),
                     "tokens_per_step": stats.tokens_per_step, "max_tokens_per_step": stats.max_tokens_per_step,
                     "seconds": stats.seconds, "tokens_per_s": stats.tokens_per_s,
                     "accuracy": dataclasses.asdict(result.metrics[task.metric]),
                     "paired": {**dataclasses.asdict(difference), "p": p}})
    plain = rows[0]["forwards_per_item"]
    for row in rows:
        row["forward_ratio"] = plain / max(row["forwards_per_item"], 1e-12)
    return rows


def speed_rows(shape: str, bench: DecodeBench, protocols: Sequence[str], seed: int = 0) -> list[dict[str, Any]]:
    """One prompt decoded under each protocol by a random model of ``shape`` on the CPU, ``speed_repeats`` rounds:
    median seconds, forwards, positions, tokens/s (every completion token: random weights place EOS anywhere) and the
    ratio to the first protocol's."""
    policy = shaped_policy(MODEL_SHAPES[shape], torch.device("cpu"), torch.float32)
    high = min(len(policy.tokenizer), 256)  # byte tokens: never the mask, EOS or pad id
    prompt = torch.randint(0, high, (1, bench.prompt_length), generator=torch.Generator().manual_seed(seed))
    base = RolloutConfig(gen_length=bench.gen_length, block_length=bench.block_length, steps=bench.gen_length)
    configs = {text: protocol_config(text, base, "--speed-protocols") for text in protocols}
    seconds: dict[str, list[float]] = {text: [] for text in protocols}
    decoded = {}
    for _ in range(bench.speed_repeats):  # rounds of every protocol in turn
        for text, config in configs.items():
            started = time.perf_counter()
            decoded[text] = generate(policy, prompt, torch.ones_like(prompt, dtype=torch.bool), config,
                                     generators(row_seeds(seed, 1), ROLLOUT_STREAM)).decode
            seconds[text].append(time.perf_counter() - started)
    rows = []
    for text in protocols:
        median, stats = float(statistics.median(seconds[text])), decoded[text]
        rows.append({"protocol": text, "forwards": stats.forwards, "positions": stats.positions,
                     "tokens_per_step": stats.tokens_per_step, "seconds": median, "repeats_s": seconds[text],
                     "tokens_per_s": stats.revealed / median})
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / rows[0]["tokens_per_s"]
    params = sum(p.numel() for p in policy.parameters())
    return [{**row, "parameters": params} for row in rows]


def decode_markdown(result: dict[str, Any]) -> str:
    """The two tables and how to read them."""
    lines = [f"# Decoding protocols: {result['task']}, {result['model']} model, {result['items']} test items",
             "", f"Evaluation protocol ('default'): {result['default']}.", "",
             "| protocol | forwards per item | x fewer than plain | batch forwards | positions per item | tokens/step "
             "(max) | seconds | tokens/s | accuracy % [95% CI] | paired vs plain, pts [95% CI] (p) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["task_rows"]:
        lines.append(f"| {r['protocol']} | {r['forwards_per_item']:.2f} | {r['forward_ratio']:.2f} | "
                     f"{r['batch_forwards']} | {r['positions_per_item']:.0f} | {r['tokens_per_step']:.2f} "
                     f"({r['max_tokens_per_step']}) | {r['seconds']:.1f} | {r['tokens_per_s']:.0f} | "
                     f"{pct_ci(r['accuracy'])} | {pct_ci(r['paired'], True)} ({r['paired']['p']:.3f}) |")
    lines += ["", "Forwards per item: the forward passes one item needs decoded alone (Fast-dLLM's batch-1 count); "
              f"batch forwards: what batches of {result['batch_size']} took (a batch waits for its slowest row). "
              "Positions: query positions computed per item (a KV cache saves these, not forwards). Paired: "
              "per-item accuracy minus the plain sampler's on the same items (paired bootstrap)."]
    if result.get("speed_rows"):
        first = result["speed_rows"][0]
        lines += ["", f"## Speed: {result['speed_shape']} ({first['parameters'] / 1e6:.0f}M parameters, random "
                  f"weights), one prompt of {result['prompt_length']} tokens, completion {result['gen_length']}, "
                  f"block {result['block_length']}, CPU, {result['threads']} threads, median of "
                  f"{result['speed_repeats']} rounds", "",
                  "| protocol | forwards | positions | tokens/step | seconds (median) | tokens/s | x plain |",
                  "|---|---|---|---|---|---|---|"]
        for r in result["speed_rows"]:
            lines.append(f"| {r['protocol']} | {r['forwards']} | {r['positions']} | {r['tokens_per_step']:.2f} | "
                         f"{r['seconds']:.1f} | {r['tokens_per_s']:.2f} | {r['speedup']:.2f} |")
        lines += ["", "Random weights are never confident (the top token's probability is near 1/vocabulary), so "
                  "threshold decoding reveals one token per step here: this table prices the cache, the task table "
                  "the threshold's forward passes."]
    return "\n".join(lines) + "\n"


def decode_bench(policy: Policy, task: Any, items: Sequence[Any], base: RolloutConfig, batch_size: int,
                 bench: DecodeBench, threads: int) -> dict[str, Any]:
    """Both tables as one JSON-able dict (the speed table skipped when ``bench.speed_shape`` is '')."""
    check_protocols(bench, base)
    result: dict[str, Any] = {"task": task.name, "items": len(items), "batch_size": batch_size,
                              "default": describe(base), "task_rows": task_rows(policy, task, items, base,
                                                                                bench.protocols, batch_size)}
    if bench.speed_shape:
        result.update(speed_shape=bench.speed_shape, prompt_length=bench.prompt_length, gen_length=bench.gen_length,
                      block_length=bench.block_length, threads=threads, speed_repeats=bench.speed_repeats,
                      speed_rows=speed_rows(bench.speed_shape, bench, bench.speed_protocols))
    return result


def check_protocols(bench: DecodeBench, base: RolloutConfig) -> None:
    """Every protocol and the speed shape checked before anything is loaded or decoded; ValueError naming the flag."""
    for text in bench.protocols:
        protocol_config(text, base)
    speed_base = RolloutConfig(gen_length=bench.gen_length, block_length=bench.block_length, steps=bench.gen_length)
    for text in bench.speed_protocols if bench.speed_shape else ():
        protocol_config(text, speed_base, "--speed-protocols")
    if bench.speed_shape and bench.speed_shape not in MODEL_SHAPES:
        raise ValueError(f"--speed-shape {bench.speed_shape!r}: not one of {', '.join(MODEL_SHAPES)}")


def describe(cfg: RolloutConfig) -> str:
    """A rollout protocol in words: 'gen 24, block 8, 12 steps (2 tokens/step), greedy'."""
    rule = (f"{cfg.steps} steps ({cfg.gen_length / cfg.steps:g} tokens/step)" if cfg.decode == SCHEDULE else
            "ascending steps (1, 2, 4, ... per block)" if cfg.decode == ASS else
            f"{cfg.decode} {cfg.threshold if cfg.decode == THRESHOLD else cfg.factor:g}")
    rule += f", EOSER {cfg.eos_gamma_min:g}" if cfg.eos_gamma_min != 1 else ""
    temperature = "greedy" if cfg.temperature == 0 else f"temperature {cfg.temperature:g}"
    return f"gen {cfg.gen_length}, block {cfg.block_length}, {rule}, {temperature}, cache {cfg.cache}"
