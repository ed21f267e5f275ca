"""`harness lm-eval`: a policy (the tiny model, a checkpoint folder, an exported policy) on lm-evaluation-harness's
tasks through ``lm_eval_model.HarnessLM``, its results written beside the harness's records.

lm-eval is an optional extra (``pip install -e ".[lm-eval]"``); without it the command says so in one line. Code
tasks (HumanEval, MBPP) are refused: lm-eval runs model-generated code in the evaluating process, and this project
runs it only in its sandbox (`harness eval --tasks humaneval,mbpp`).

Outputs under ``OUT/lm-eval/NAME/``: ``results.json`` (lm-eval's results, configs and versions, plus the harness's
model, model arguments and environment), ``samples/TASK.jsonl`` (lm-eval's per-document records) and
``likelihoods.jsonl`` (every loglikelihood answer's ELBO, standard error, draws and tokens). Under ``accelerate
launch`` every process answers its share; process 0 writes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.loop.lm_requests import LmEvalModelConfig
from harness.runs.registry import lookup
from harness.runs.sweep import SweepSpec

LM_EVAL_EXTRA = 'lm-eval is not installed: pip install -e ".[lm-eval]"'


@dataclass(frozen=True)
class LmEvalRun:
    """Which lm-eval tasks, under which lm-eval options, and how the policy answers them."""

    tasks: tuple[str, ...] = ()
    """lm-eval task or group names (gsm8k, mmlu, mmlu_generative, ... or those of --include-path)."""
    num_fewshot: int | None = None
    """Few-shot examples per prompt (None: each task's own)."""
    limit: int = field(default=0, metadata={"min": 0})
    """Documents per task (0 = all; for quick tries, never for reported numbers)."""
    apply_chat_template: bool = False
    """Wrap each prompt in the tokenizer's chat template (instruct models: LLaDA-8B-Instruct's evaluations do)."""
    include_path: str = ""
    """A folder of task YAML files of your own, indexed beside lm-eval's."""
    builtin_tasks: bool = True
    """Index lm-eval's own task folders too (a few seconds); false when every task is under --include-path."""
    name: str = ""
    """Output folder under OUT/lm-eval ('' = the model's name)."""
    model_args: LmEvalModelConfig = field(default_factory=LmEvalModelConfig)
    """How the policy answers (the same names as lm-eval's --model_args)."""


def model_label(model: str) -> str:
    return "tiny" if model == "tiny" else Path(model).name


def task_manager(run: LmEvalRun) -> Any:
    """lm-eval's task index with every requested task checked (one line with 'did you mean' for an unknown one)."""
    from lm_eval.tasks import TaskManager

    if not run.tasks:
        raise ValueError("--tasks: empty (name lm-eval tasks, e.g. --tasks gsm8k)")
    if run.include_path and not Path(run.include_path).is_dir():
        raise ValueError(f"--include-path {run.include_path!r}: no such folder")
    manager = TaskManager(include_path=run.include_path or None, include_defaults=run.builtin_tasks)
    known = dict.fromkeys(manager.all_tasks)
    for name in run.tasks:
        lookup("lm-eval task", name, known)
    return manager


def run_lm_eval(spec: SweepSpec, run: LmEvalRun, out: Path) -> dict[str, Any] | None:
    """Evaluate ``spec.model`` on ``run.tasks``; returns lm-eval's results on process 0 (None elsewhere)."""
    try:
        import lm_eval
    except ImportError:
        raise ValueError(LM_EVAL_EXTRA) from None
    import torch

    from harness.model.device import process_device, resolve_device
    from harness.model.policy import Policy
    from harness.runs.lm_eval_model import HarnessLM
    from harness.runs.pipeline import resolve_model

    run.model_args.validate()
    spec.policy.validate()
    manager = task_manager(run)
    torch.set_num_threads(spec.threads)
    model_path = resolve_model(spec.model, data_dir=spec.data_dir)
    policy = Policy.from_pretrained(model_path, device=process_device(resolve_device(spec.device)), config=spec.policy)
    model = HarnessLM.from_policy(policy, run.model_args)
    try:
        results = lm_eval.simple_evaluate(
            model=model, tasks=list(run.tasks), num_fewshot=run.num_fewshot, limit=run.limit or None,
            task_manager=manager, apply_chat_template=run.apply_chat_template,
            fewshot_as_multiturn=run.apply_chat_template, log_samples=True, random_seed=run.model_args.seed,
            confirm_run_unsafe_code=False)
    except ValueError as error:
        if "marked as unsafe" not in str(error):
            raise
        raise ValueError(f"--tasks: {str(error).split('task: ')[-1].split(' ')[0]} runs model-written code outside "
                         f"a sandbox, which this project never does: `harness eval --tasks humaneval,mbpp` scores "
                         f"them in the sandbox") from None
    likelihoods = model.gather_object(model.likelihoods)
    if results is None or likelihoods is None:  # not process 0
        return None
    folder = out / "lm-eval" / (run.name or model_label(spec.model))
    write_outputs(folder, results, [row for rows in likelihoods for row in rows], {
        "model": spec.model, "model_path": str(model_path), "policy": dataclasses.asdict(spec.policy),
        "run": dataclasses.asdict(run), "processes": model.world_size}, policy.device)
    return results


def write_outputs(folder: Path, results: dict[str, Any], likelihoods: list[dict[str, Any]],
                  harness: dict[str, Any], device: Any) -> None:
    """results.json, samples/TASK.jsonl and likelihoods.jsonl (module docstring), each written atomically."""
    from lm_eval.utils import handle_non_serializable

    from harness.runs.records import environment, write_atomic

    samples = results.pop("samples", {})
    payload = {**results, "harness": {**harness, **environment(device)}}
    write_atomic(folder / "results.json",
                 lambda f: json.dump(payload, f, indent=2, default=handle_non_serializable, ensure_ascii=False))
    for task, rows in samples.items():
        write_atomic(folder / "samples" / f"{task}.jsonl", lambda f, rows=rows: f.writelines(
            json.dumps(row, default=handle_non_serializable, ensure_ascii=False) + "\n" for row in rows))
    write_atomic(folder / "likelihoods.jsonl",
                 lambda f: f.writelines(json.dumps(row) + "\n" for row in likelihoods))
    results["samples"] = samples
