"""One process of the data-parallel test (tests/test_distributed.py), started by torchrun:

    python -m torch.distributed.run --standalone --nproc_per_node W tests/distributed_worker.py MODEL OUT

Every process runs the same run pipeline (``harness.runs.pipeline.run``) for each objective, two RL steps of a float64
policy, with a trainer that also keeps the trained parameters. Each process writes what it drew and decoded to
OUT/rank{r}.pt; the main process writes the trained parameters (OUT/params.pt) and the run records (OUT/records/).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

import harness.loop.evaluate as evaluate_module
from harness.loop.evaluate import EvalConfig
from harness.loop.trainer import TrainConfig, train
from harness.model.device import process_state
from harness.model.policy import Policy, PolicyConfig
from harness.model.rollout import RolloutConfig
from harness.runs.config import RunConfig
from harness.runs.pipeline import RunContext, eval_items, make_task, run
from harness.runs.records import write_record
from objectives import OBJECTIVES
from objectives.common import one_step_input

OBJECTIVE_NAMES = ("bgpo", "vrpo", "diffu-grpo")
DECODING = RolloutConfig(gen_length=8, block_length=4, steps=4)
EVAL_ITEMS = 5
"""Odd on purpose: with two processes one shard holds 3 items and the other 2 (plus a repeat that is dropped)."""


def flat_parameters(policy: Policy) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in policy.parameters()])


def dense_reward(item, text: str) -> float:  # noqa: ANN001
    """A reward that differs between any two completions of a random model (a hash of the text, in [0, 1])."""
    return sum(map(ord, text)) % 11 / 10


def run_config(model: str, name: str) -> RunConfig:
    objective_config = OBJECTIVES[name]().config
    if any(f.name == "n_t" for f in dataclasses.fields(objective_config)):
        objective_config = dataclasses.replace(objective_config, n_t=2)
    train_cfg = TrainConfig(steps=2, prompts_per_step=2, group_size=4, mu=2, lr=1e-3, track_memory_steps=0,
                            rollout=dataclasses.replace(DECODING, temperature=1.3))
    return RunConfig(objective=name, objective_config=objective_config, model=model, threads=1,
                     policy=PolicyConfig(dtype="float64"), train=train_cfg,
                     eval=EvalConfig(limit=EVAL_ITEMS, rollout=DECODING))


def main(model: str, out: Path) -> None:
    torch.set_num_threads(1)
    state = process_state("cpu")  # gloo: `PartialState()` alone would see one process on CPU
    seen: dict[str, dict[str, list]] = {}
    trained: dict[str, dict[str, torch.Tensor]] = {}
    generate = evaluate_module.generate

    def counting_generate(policy, prompt_ids, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen[current]["eval_rows"].append(prompt_ids.shape[0])
        return generate(policy, prompt_ids, *args, **kwargs)

    evaluate_module.generate = counting_generate

    def trainer(cfg, model_path, context, on_step):  # noqa: ANN001, ANN202 - the pipeline's own, keeping params
        policy = Policy.from_pretrained(model_path, config=cfg.policy)
        initial = flat_parameters(policy)
        objective = OBJECTIVES[cfg.objective](cfg.objective_config)
        prepare = objective.prepare

        def spying_prepare(policy, batch, mu):  # noqa: ANN001, ANN202
            prepared = prepare(policy, batch, mu)
            if hasattr(prepared, "draws"):
                drawn = prepared.draws.masks.clone()
            else:  # diffu-GRPO: its prompt masks
                drawn = one_step_input(policy, batch, 0, objective.config.p_mask_prompt).eq(policy.mask_id)
            seen[current]["draws"].append(drawn)
            seen[current]["row_seeds"].append(list(batch.row_seeds))
            return prepared

        objective.prepare = spying_prepare
        task = make_task(cfg)
        task.reward = dense_reward  # a random model earns no Sudoku reward; the gradient must not be 0
        result = train(policy, objective, task, cfg.train, cfg.seed, cfg.eval, eval_items(task, cfg), on_step)
        trained[cfg.objective] = {"initial": initial, "trained": flat_parameters(policy)}
        return result

    context = RunContext()  # the base policy is evaluated once, for all three
    for current in OBJECTIVE_NAMES:
        seen[current] = {"draws": [], "row_seeds": [], "eval_rows": []}
        cfg = run_config(model, current)
        record = run(cfg, context, trainer=trainer)
        if record.outcome != "ok":
            raise SystemExit(f"{current}: {record.outcome}: {record.error}")
        if state.is_main_process:
            write_record(out / "records" / f"{current}.json", record)
    torch.save(seen, out / f"rank{state.process_index}.pt")
    if state.is_main_process:
        torch.save(trained, out / "params.pt")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
