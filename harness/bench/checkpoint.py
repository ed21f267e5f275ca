"""`harness bench checkpoint`: what a checkpoint (harness/loop/checkpoint.py) costs, in bytes and seconds.

A LLaDA-8B run on preemptible GPUs lives by its checkpoints: a SLURM job gets about two minutes between its
SIGUSR1 / SIGTERM and the kill, and a requeued job starts by validating and loading the newest checkpoint. So the
numbers that decide ``--save-every`` and whether a preempted job makes it out are: how many bytes a checkpoint holds
(LoRA keeps only the adapters and their optimizer state; a full fine-tune keeps every weight and AdamW's two moments
of each), how long writing it takes, how long ``newest`` takes to validate it (size and SHA-256 of every file) and
``load`` to restore it, and how much of a run's wall time saving on the cadence costs.

Measured on CPU for each shape, the training state built as ``trainer.train`` builds it: ``Accelerator(cpu=True)``,
AdamW over the trainable parameters, ``prepare``, the schedule registered for checkpointing, the save hook that keeps
trainable weights only, and one optimizer step (zero gradients) so AdamW's state exists. Each repeat saves into a
fresh folder under ``scratch`` (the disk of ``--out``, where a run writes its checkpoints), measures it, validates
and loads it, and deletes it. The overhead of ``--save-every 10`` is the default comparison's BGPO arm trained twice
with and twice without, in the order A B B A so a linear drift of the machine cancels.

Departures from a real run, each deliberate:
1. The LLaDA shapes have random weights (bytes and times do not depend on the values) and are in bfloat16; a full
   fine-tune of 1.3B in float32 with AdamW (16 bytes per parameter: 21 GB) does not fit a 24 GiB machine beside a
   checkpoint being loaded. The gradients are zeros and the history is made up (``HISTORY_STEPS`` steps).
2. The page cache is not dropped: validation and loading read a checkpoint just written, mostly from memory. A job
   requeued on another node reads it from its file system, at that file system's speed.
3. The seconds per save of the overhead runs are timed by wrapping ``checkpoint.save`` for the run's duration
   (``timed_saves``): the difference of two train times is smaller than their noise on the tiny model, and on a
   shared machine the wall times move with the other processes (the one-minute load average is recorded beside,
   and every median beside the reference computation timed around it: harness/bench/timing.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import random
import statistics
import struct
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from harness.bench.memory import MODEL_SHAPES, shaped_policy
from harness.bench.timing import Timing, around_reference, timed_repeats
from harness.loop import checkpoint, metrics
from harness.loop.checkpoint import CheckpointConfig, RunFolders, TrainingState
from harness.loop.evaluate import EvalConfig
from harness.loop.measure import BYTES_PER_MB
from harness.loop.trainer import TrainConfig, make_optimizer
from harness.model.families import HF, LLAMA_LORA_TARGETS
from harness.model.policy import Policy, PolicyConfig, adapt
from harness.runs.pipeline import RunContext, resolve_model, run
from harness.runs.records import environment
from harness.runs.sweep import RECIPES, SweepSpec, plan_runs
from objectives.base import ELBO_D_ABSMAX, ELBO_D_MEAN

FLOAT32_SHAPES = ("tiny", "llama-tiny")
"""Shapes measured in float32 (the tiny model's own dtype); every other shape in bfloat16 (see the docstring)."""
LORA_ALPHA = 64.0
"""d1's LoRA alpha (with r = 128 on LLaDA)."""
HISTORY_STEPS = 100
"""Steps of made-up metric history in the checkpoint's harness_state.json."""
STEP_METRICS = (metrics.REWARD, metrics.REWARD_STD, metrics.FRAC_REWARD_ZERO_STD, metrics.MEAN_LENGTH, metrics.LR,
                metrics.LOSS, metrics.GRAD_NORM, ELBO_D_MEAN, ELBO_D_ABSMAX, *map(metrics.phase_seconds,
                metrics.PHASES), metrics.STEP_S, *metrics.PEAKS_MB, metrics.MEM_TRACKED)
"""The keys of one step's metrics in the made-up history (what a BGPO step logs)."""
SAVE_EVERY = 10
OVERHEAD_EVAL_LIMIT = 16
"""Test items of the overhead runs' evaluations (not part of the train time; kept short so the bench is)."""
FINGERPRINT = "checkpoint-bench"
TIMES = ("save", "validate", "load")


@dataclass(frozen=True)
class CheckpointBench:
    """The settings of `harness bench checkpoint` that are its own (--steps, --threads are the overhead runs')."""

    shapes: tuple[str, ...] = ("tiny", "llada-1b:lora128", "llada-1b:full")
    """NAME[:full|:loraR]: 'tiny' or a random-weight model shape (llada-1b, ...); :full every weight, :lora128 r=128."""
    repeats: int = field(default=3, metadata={"min": 1})
    """Save / validate / load rounds per shape (medians reported, beside the reference computation)."""


def parse_shapes(text: str | Sequence[str]) -> list[str]:
    """The --shapes list (a comma list or its items), checked: each 'NAME', 'NAME:full' or 'NAME:loraR' with NAME
    'tiny' or a MODEL_SHAPES name; ValueError naming a bad entry."""
    entries = [e.strip() for e in (text.split(",") if isinstance(text, str) else text) if e.strip()]
    if not entries:
        raise ValueError("--shapes is empty")
    for entry in entries:
        shape_parts(entry)
    return entries


def shape_parts(entry: str) -> tuple[str, int]:
    """'llada-1b:lora128' -> ('llada-1b', 128); 'tiny' and 'tiny:full' -> ('tiny', 0)."""
    name, _, mode = entry.partition(":")
    if name != "tiny" and name not in MODEL_SHAPES:
        raise ValueError(f"--shapes {entry!r}: unknown model (known: tiny, {', '.join(MODEL_SHAPES)})")
    if mode in ("", "full"):
        return name, 0
    rank = mode.removeprefix("lora")
    if not mode.startswith("lora") or not rank.isdigit() or int(rank) < 1:
        raise ValueError(f"--shapes {entry!r}: expected NAME, NAME:full or NAME:loraR (R >= 1)")
    return name, int(rank)


def build_policy(entry: str, data_dir: str | None = None) -> Policy:
    """The policy of one shape: the pretrained tiny model, or a random-weight model shape; LoRA as ``adapt`` adds it
    (d1's target modules, alpha ``LORA_ALPHA``)."""
    name, lora_r = shape_parts(entry)
    dtype = torch.float32 if name in FLOAT32_SHAPES else torch.bfloat16
    config = PolicyConfig(dtype=str(dtype).removeprefix("torch."), lora_r=lora_r, lora_alpha=LORA_ALPHA)
    if name == "tiny":
        return Policy.from_pretrained(resolve_model("tiny", data_dir=data_dir), config=config)
    policy = shaped_policy(MODEL_SHAPES[name], torch.device("cpu"), dtype)
    return Policy(adapt(policy.model.lm, HF, config), policy.tokenizer) if lora_r else policy


def prepared_state(policy: Policy) -> Accelerator:
    """The accelerator holding the policy's training state as ``trainer.train`` prepares it, after one optimizer
    step (zero gradients) so that AdamW's moments exist."""
    accelerator = Accelerator(cpu=True)
    optimizer, scheduler = make_optimizer(policy, TrainConfig())
    policy.model, optimizer = accelerator.prepare(policy.model, optimizer)
    checkpoint.register(accelerator, scheduler)
    for p in policy.trainable_parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)  # as after every update: a checkpoint is written without gradients
    return accelerator


def made_up_state(steps: int = HISTORY_STEPS) -> TrainingState:
    """The loop's state after ``steps`` steps, with a history of made-up metrics."""
    values = random.Random(0)
    history = [{key: values.random() for key in STEP_METRICS} for _ in range(steps)]
    return TrainingState(step=steps, sampler=random.Random(0).getstate(), history=history, evals=[], eval_seconds=0.0)


def file_kind(name: str) -> str:
    """'weights', 'optimizer' or 'other' for a top-level entry of a checkpoint folder (accelerate's names)."""
    if name.startswith(("model", "pytorch_model")):
        return "weights"
    return "optimizer" if name.startswith("optimizer") else "other"


def folder_bytes(path: Path) -> dict[str, int]:
    """Bytes on disk of every file under ``path``, in all and by kind; and the length of the weights file's
    safetensors header (8-byte length + JSON), the only bytes of it that are not parameters."""
    sizes = {"weights_bytes": 0, "optimizer_bytes": 0, "other_bytes": 0}
    for file in path.rglob("*"):
        if file.is_file():
            sizes[f"{file_kind(file.relative_to(path).parts[0])}_bytes"] += file.stat().st_size
    header = 0
    if (weights := path / "model.safetensors").is_file():
        with weights.open("rb") as handle:
            header = 8 + struct.unpack("<Q", handle.read(8))[0]
    return {**sizes, "total_bytes": sum(sizes.values()), "weights_header_bytes": header}


def one_round(accelerator: Accelerator, scratch: Path) -> dict[str, float]:
    """Save, measure, validate and load one checkpoint in a fresh folder under ``scratch``, then delete it."""
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".checkpoint-bench-") as tmp:
        folders = RunFolders(Path(tmp) / "checkpoints", Path(tmp) / "policies", FINGERPRINT)
        state = made_up_state()
        started = time.perf_counter()
        path = checkpoint.save(accelerator, folders, state)
        save_s = time.perf_counter() - started
        sizes = folder_bytes(path)
        started = time.perf_counter()
        found = checkpoint.newest(folders, warn=broken)
        validate_s = time.perf_counter() - started
        if found is None or found[0] != path:
            raise RuntimeError(f"the checkpoint just written ({path}) was not found whole: {found}")
        started = time.perf_counter()
        loaded = checkpoint.load(accelerator, path, found[1])
        load_s = time.perf_counter() - started
    if loaded.step != state.step:
        raise RuntimeError(f"the checkpoint just written loaded at step {loaded.step}, not {state.step}")
    return {"save_s": save_s, "validate_s": validate_s, "load_s": load_s, **sizes}


def broken(line: str) -> None:
    raise RuntimeError(f"a checkpoint just written is not whole: {line}")


def measure_shape(entry: str, repeats: int, scratch: Path, data_dir: str | None = None) -> dict[str, Any]:
    """Parameters, bytes per checkpoint, median save / validate / load seconds of one shape beside the reference."""
    policy = build_policy(entry, data_dir)
    accelerator = prepared_state(policy)
    params = list(policy.model.parameters())
    trainable = [p for p in params if p.requires_grad]
    rounds, timing = timed_repeats(lambda: one_round(accelerator, scratch), repeats, torch.device("cpu"))
    times: dict[str, Any] = {}
    for name in TIMES:
        times |= Timing(tuple(r[f"{name}_s"] for r in rounds), timing.references_s).fields(name)
    sizes = {key: statistics.median(r[key] for r in rounds) for key in rounds[0] if key.endswith("_bytes")}
    return {"shape": entry, "parameters": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in trainable),
            "trainable_bytes": sum(p.numel() * p.element_size() for p in trainable),
            "weights_dtype": str(params[0].dtype).removeprefix("torch."),
            "trainable_dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in trainable}),
            **sizes, **times, "rounds": rounds}


def llada_8b_trainable(lora_r: int) -> int:
    """Trainable parameters at LLaDA-8B's shape (MODEL_SHAPES): every weight, or LoRA r on d1's targets (each
    adapter of an in x out projection holds r * (in + out))."""
    s = MODEL_SHAPES["llada-8b"]
    h, i, layers, v = int(s["hidden_size"]), int(s["intermediate_size"]), int(s["num_hidden_layers"]), int(
        s["vocab_size"])
    kv = h * int(s["num_key_value_heads"]) // int(s["num_attention_heads"])
    shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "gate_proj": (h, i),
              "up_proj": (h, i), "down_proj": (i, h)}
    if lora_r:
        return layers * sum(lora_r * (a + b) for name, (a, b) in shapes.items() if name in LLAMA_LORA_TARGETS)
    return 2 * v * h + layers * (sum(a * b for a, b in shapes.values()) + 2 * h) + h  # embeddings, head, norms


def overhead_spec(model: str = "tiny", steps: int = 20, threads: int = 2) -> SweepSpec:
    """The default comparison's BGPO arm (n_t = 4, mu = 2) for ``steps`` steps, evaluated on a few items."""
    recipe = RECIPES["compare"]
    return dataclasses.replace(recipe, objectives=("bgpo",), nt=(4,), model=model, threads=threads,
                               train=dataclasses.replace(recipe.train, steps=steps),
                               eval=EvalConfig(limit=OVERHEAD_EVAL_LIMIT))


@contextlib.contextmanager
def timed_saves(seconds: list[float]) -> Iterator[None]:
    """While inside, every ``checkpoint.save`` the loop calls appends its wall seconds to ``seconds``."""
    original = checkpoint.save

    def save(*args: Any, **kwargs: Any) -> Path:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - started)

    checkpoint.save = save
    try:
        yield
    finally:
        checkpoint.save = original


def save_overhead(spec: SweepSpec, save_every: int, scratch: Path) -> dict[str, Any]:
    """Train wall seconds of ``spec``'s one run with and without saving every ``save_every`` steps (A B B A, each
    into a fresh folder so nothing resumes), their ratio, and the seconds of each save (their median beside the
    reference computation timed around the four runs)."""
    [base] = plan_runs(spec)
    arms = {"without": dataclasses.replace(base, checkpoint=CheckpointConfig(save_every=0, export=False)),
            "with": dataclasses.replace(base, checkpoint=CheckpointConfig(save_every=save_every, export=False))}
    context = RunContext(data_dir=spec.data_dir, warn=lambda line: None)
    train_s: dict[str, list[float]] = {"without": [], "with": []}
    saves: list[float] = []
    load = [os.getloadavg()[0]]

    def runs() -> None:
        for arm in ("without", "with", "with", "without"):
            with tempfile.TemporaryDirectory(dir=scratch, prefix=".checkpoint-bench-") as tmp, timed_saves(saves):
                record = run(arms[arm], dataclasses.replace(context, out=Path(tmp)))  # shares the base evaluation
            if not record.ok:
                raise RuntimeError(f"overhead run ({arm} saving) ended {record.outcome}: {record.error}")
            train_s[arm].append(record.train_seconds)
            load.append(os.getloadavg()[0])

    references = around_reference(runs, torch.device("cpu"))[1]
    steps, without = spec.train.steps, statistics.median(train_s["without"])
    save = Timing(tuple(saves) or (0.0,), references).fields("save")
    return {"model": spec.model, "objective": "bgpo", "n_t": 4, "mu": spec.train.mu, "steps": steps,
            "save_every": save_every, "saves_per_run": steps // save_every, "train_s": train_s,
            "ratio": sum(train_s["with"]) / sum(train_s["without"]), **save,
            "ratio_from_saves": (without + steps // save_every * save["save_s"]) / without, "load_average": load}


def checkpoint_bench(shapes: Sequence[str], repeats: int, spec: SweepSpec, save_every: int, scratch: Path,
                     ) -> dict[str, Any]:
    """Every shape's bytes and seconds, then the save overhead of ``spec``'s run; scratch folders are deleted."""
    scratch.mkdir(parents=True, exist_ok=True)
    rows = []
    for entry in shapes:
        rows.append(measure_shape(entry, repeats, scratch, spec.data_dir))
        gc.collect()  # the shape's weights and optimizer state go before the next shape is built
    return {"shapes": rows, "repeats": repeats, "history_steps": HISTORY_STEPS,
            "overhead": save_overhead(spec, save_every, scratch), **environment(torch.device("cpu"))}


def checkpoint_markdown(result: dict[str, Any]) -> str:
    """The table, the overhead line, the device and the dtype notes."""
    device = result["device"]
    lines = [f"# What a checkpoint costs ({device['name']}, {device['torch_threads']} threads)", "",
             f"Medians of {result['repeats']} save / validate / load rounds per shape; every round writes a fresh "
             f"checkpoint (accelerate's state + harness_state.json with {result['history_steps']} steps of history) "
             f"and deletes it. MB = 2^20 bytes. Reference s: the gate's reference computation "
             f"(harness/runs/pipeline.py), the median of its timings before each round and after the last, in the "
             f"same process; in brackets each median / the reference, what compares across machines and loads.", "",
             "| shape | parameters | trainable | MB per checkpoint (weights / optimizer) | save s | validate s | "
             "load s | reference s |", "|---|---|---|---|---|---|---|---|"]
    for r in result["shapes"]:
        mb = f"{r['total_bytes'] / BYTES_PER_MB:.1f} ({r['weights_bytes'] / BYTES_PER_MB:.1f} / " \
             f"{r['optimizer_bytes'] / BYTES_PER_MB:.1f})"
        times = " | ".join(f"{r[f'{name}_s']:.2f} ({r[f'{name}_ratio']:.1f}x)" for name in TIMES)
        lines.append(f"| {r['shape']} | {r['parameters']:,} | {r['trainable']:,} | {mb} | {times} | "
                     f"{r['reference_s']:.3f} |")
    o = result["overhead"]
    lines += ["", f"Train wall time with --save-every {o['save_every']} / without = **{o['ratio']:.2f}x** "
              f"({o['steps']} steps, {o['saves_per_run']} saves of {o['save_s']:.3f} s each, the median of "
              f"{len(o['save_repeats_s'])}: {o['save_ratio']:.2f}x the reference computation's "
              f"{o['reference_s']:.3f} s timed around the runs; {o['model']} "
              f"model, BGPO n_t = {o['n_t']}, mu = {o['mu']}; runs in the order without, with, with, without). "
              f"From the timed saves alone: (train time without + {o['saves_per_run']} saves) / without = "
              f"{o['ratio_from_saves']:.3f}x. One-minute load average before and after each run: "
              f"{', '.join(f'{x:.1f}' for x in o['load_average'])} on {device['cpu_count']} CPUs"
              + (" (other processes shared them: the wall-time ratio measures their noise more than the saves)."
                 if max(o["load_average"]) > device["cpu_count"] else "."), ""]
    lines += [f"- {r['shape']}: weights in {r['weights_dtype']}, trainable parameters in "
              f"{', '.join(r['trainable_dtypes'])}" for r in result["shapes"]]
    lines += ["- The LLaDA shapes have random weights in bfloat16 (bytes and times do not depend on the values). A "
              "full fine-tune of 1.3B parameters in float32 with AdamW (weights, gradients and two moments: 16 bytes "
              "per parameter, 21 GB) does not fit this 24 GiB machine beside a checkpoint being loaded; in float32 "
              "its checkpoint would be twice the bfloat16 one. peft keeps LoRA adapters in float32 over a bfloat16 "
              "base, so a LoRA checkpoint holds 4 bytes per trainable weight and 8 of AdamW's moments.",
              "- Validation reads every file and hashes it (SHA-256); the page cache is not dropped, so validate and "
              "load read a checkpoint just written mostly from memory.", *extrapolation(result["shapes"]),
              "", f"Device: {device['name']}, {device['cpu_count']} CPUs ({device['platform']}); torch "
              f"{result['versions'].get('torch', '?')}, accelerate {result['versions'].get('accelerate', '?')}, "
              f"commit {result.get('git_commit') or '?'}."]
    return "\n".join(lines) + "\n"


def extrapolation(rows: Sequence[dict[str, Any]]) -> list[str]:
    """A line per LLaDA-shaped row: its bytes per trainable parameter times LLaDA-8B's trainable count."""
    lines = []
    for r in rows:
        name, lora_r = shape_parts(r["shape"])
        if name.startswith("llada") and r["trainable"]:
            count = llada_8b_trainable(lora_r)
            size = r["total_bytes"] / r["trainable"] * count / 2**30
            lines.append(f"- At LLaDA-8B's shape, {r['shape']}'s layout ({r['total_bytes'] / r['trainable']:.2f} "
                         f"bytes per trainable parameter) would be about {size:.1f} GiB per checkpoint "
                         f"({count / 1e6:,.0f}M trainable).")
    return lines
