"""Shared fixtures: a float64 tiny policy built in-process, fake scored batches, the local data override, the rule
for tests that need what a bare clone cannot have, and what several test modules share (test modules never import
each other): the one loop over an update's loss terms (``loss_and_gradients``, as the trainer runs it), hand-made
batches for the fixed-number mock policy, and the command-line runners.

A bare clone runs every test that needs nothing beyond it (Sudoku and Countdown read the package's own data). Tests
that need the large evaluation sets carry `@pytest.mark.needs_data` and skip, with the remedy as the reason, when no
data folder holds them (`../shared/data` beside the clone, or `DLLM_HARNESS_DATA_DIR`); a test that needs a system
program skips the same way. CI sets `DLLM_HARNESS_NO_SKIP=1`, which turns every skip into a failure, so there all
of them run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from tasks import TASKS
from tasks.data import packaged_root, packaged_tasks

NO_SKIP_ENV = "DLLM_HARNESS_NO_SKIP"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PACKAGED_TASKS = packaged_tasks()
"""Tasks whose test data ships in the package (tasks/packaged/); the others need the large evaluation sets."""
LARGE_SETS = tuple(sorted(set(TASKS) - PACKAGED_TASKS))
"""The tasks whose data `needs_data` tests read from the data folder (`<dir>/<task>/`, the README of ../shared/data
lists the files): every registered task that ships no data, derived so that adding a task never means editing it."""

# Tests never touch the network or the user's caches.
if "DLLM_HARNESS_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["DLLM_HARNESS_DATA_DIR"] = str(SHARED_DATA)
TEST_DATA = Path(os.environ["DLLM_HARNESS_DATA_DIR"]) if os.environ.get("DLLM_HARNESS_DATA_DIR") else None
"""The local data folder the tests read (None on a bare clone with no data variable)."""
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
torch.set_num_threads(1)


PACKAGED_DATA = packaged_root()
"""The package's own Sudoku and Countdown files, laid out like a data folder (usable as `data_dir`)."""


def task_param(task: str) -> pytest.ParameterSet:
    """A task as a test parameter, marked `needs_data` unless its data ships in the package."""
    return pytest.param(task, id=task, marks=[] if task in PACKAGED_TASKS else [pytest.mark.needs_data])


def missing_large_sets() -> list[str]:
    return [task for task in LARGE_SETS if TEST_DATA is None or not (TEST_DATA / task).is_dir()]


def skip_reason() -> str:
    where = TEST_DATA or SHARED_DATA
    return (f"needs the evaluation sets {', '.join(missing_large_sets())} under {where}: put ../shared/data beside "
            f"the clone or set DLLM_HARNESS_DATA_DIR to a folder laid out as <dir>/<task>/<file>")


def large_data_dir() -> Path:
    """The data folder holding every large set (`LARGE_SETS`); skips the calling test when there is none."""
    if missing_large_sets():
        pytest.skip(skip_reason())
    assert TEST_DATA is not None
    return TEST_DATA


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_data: reads the large evaluation sets from the local data folder")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("needs_data") and missing_large_sets():
        pytest.skip(skip_reason())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201
    """Under DLLM_HARNESS_NO_SKIP=1 (CI) a skip is a failure: CI must run every test."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get(NO_SKIP_ENV) == "1" and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome, report.longrepr = "failed", f"skipped under {NO_SKIP_ENV}=1 (CI runs every test): {reason}"


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("DLLM_HARNESS_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(cache / "hf"))


class FixedLogprobPolicy:
    """A stand-in policy: token_logprobs returns the fixed per-position values ``c`` [N, L], whatever the input (or
    ``ref`` under ``reference=True``), so an objective's arithmetic can be worked by hand. Set ``c`` between updates
    to move the "current policy" off the old one."""

    device = torch.device("cpu")
    mask_id = 256
    eos_id = 257
    pad_id = 258

    def __init__(self, c: torch.Tensor, ref: torch.Tensor | None = None) -> None:
        self.c, self.ref = c, ref

    def token_logprobs(self, ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor,
                       start: int, reference: bool = False, exclude_mask: bool = False) -> torch.Tensor:
        assert ids.shape == attention_mask.shape and targets.shape[1] == ids.shape[1] - start
        values = self.ref if reference else self.c
        return values[: ids.shape[0]]


def make_policy(dtype: torch.dtype = torch.float64, seed: int = 0, hidden: int = 32, layers: int = 2):
    """A tiny bidirectional Llama on the built-in tokenizer; large init so outputs depend on the input."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.model.policy import Policy
    from harness.runs.pretrain import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=128, is_causal=False, initializer_range=0.2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(dtype)
    return Policy(model, tokenizer)


def make_batch(policy, n_prompts: int = 3, group: int = 4, prompt_len: int = 6, gen: int = 8, seed: int = 0,
               advantages: torch.Tensor | None = None):
    """A scored batch of random sequences: left padding, an EOS inside some completions, mixed-sign advantages, and
    a trajectory (each row reveals its completion two tokens per step in a random order)."""
    from harness.model.rollout import first_eos_mask
    from harness.model.structs import Batch, Rollout, Trajectory, row_seeds
    from objectives.advantages import group_advantages

    g = torch.Generator().manual_seed(seed)
    n = n_prompts * group
    prompt = torch.randint(0, 200, (n, prompt_len), generator=g)  # [N, P] byte tokens
    pad = torch.randint(0, prompt_len // 2, (n,), generator=g)  # left padding per row
    prompt_mask = torch.arange(prompt_len).unsqueeze(0) >= pad.unsqueeze(1)  # [N, P]
    prompt = prompt.masked_fill(~prompt_mask, policy.pad_id)
    completion = torch.randint(0, 200, (n, gen), generator=g)  # [N, L]
    eos_at = torch.randint(gen // 2, gen + 2, (n,), generator=g)  # >= gen means no EOS
    for row, at in enumerate(eos_at.tolist()):
        if at < gen:
            completion[row, at:] = policy.eos_id
    order = torch.stack([torch.randperm(gen, generator=g) for _ in range(n)])  # [N, L] reveal order per row
    trajectory = Trajectory(reveal_step=order // 2, temperature=1.0,  # two tokens per step, gen / 2 steps
                            behaviour_logp=-0.5 - 2.5 * torch.rand((n, gen), generator=g, dtype=torch.float64))
    rollout = Rollout(prompt_ids=prompt, prompt_mask=prompt_mask, completion_ids=completion,
                      completion_mask=first_eos_mask(completion, policy.eos_id), texts=[""] * n,
                      trajectory=trajectory)
    rewards = torch.rand(n, generator=g, dtype=torch.float64)
    adv = group_advantages(rewards, group, scale_by_std=True) if advantages is None else advantages
    return Batch(rollout=rollout, rewards=rewards, advantages=adv, group_size=group,
                 row_seeds=row_seeds(seed, adv.numel()))


@pytest.fixture
def policy64():
    return make_policy()


# ---- one update's loss terms, as the trainer takes them --------------------------------------------------------------
def loss_and_gradients(objective, policy, prepared,  # noqa: ANN001
                       inner: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Update ``inner`` of a prepared batch as harness/loop/trainer.py::update takes it: backward on each loss term as
    it comes (one term's graph alive at a time), the loss the sum of the terms' values. Gradients start from none.

    Returns (the summed loss, a float64 scalar; {parameter name: its gradient} for each parameter of
    ``policy.model`` the terms gave one, as the optimizer sees them). ``flat_gradient`` lines them up as one vector.
    """
    policy.model.zero_grad(set_to_none=True)
    total = torch.zeros((), dtype=torch.float64)
    for term in objective.loss_terms(policy, prepared, inner):
        assert term.loss.dim() == 0, f"{objective.name}: a loss term is a scalar, got shape {tuple(term.loss.shape)}"
        term.loss.backward()
        total = total + term.loss.detach()
    grads = {name: p.grad.detach().clone() for name, p in policy.model.named_parameters() if p.grad is not None}
    return total, grads


def flat_gradient(policy, grads: dict[str, torch.Tensor]) -> torch.Tensor:  # noqa: ANN001
    """``grads`` as one vector in the order of ``policy.model``'s parameters, zeros where a parameter got none, so two
    updates' vectors line up element for element even when one leaves a parameter without a gradient."""
    return torch.cat([grads.get(name, torch.zeros_like(p)).flatten() for name, p in policy.model.named_parameters()])


def loss_value(objective, policy, prepared, inner: int) -> float:  # noqa: ANN001
    """The summed value of update ``inner``'s loss terms, without backward (for the fixed-number mock policies, which
    have no parameters, and for values read between updates)."""
    return sum(float(term.loss.detach()) for term in objective.loss_terms(policy, prepared, inner))


def perturb(policy, scale: float = 0.05, seed: int = 0) -> None:  # noqa: ANN001
    """Move every parameter by ``scale`` times seeded Gaussian noise: the "current policy" leaves the old one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def assert_flat_equals_all_graphs(build, seed: int, scale: float) -> None:  # noqa: ANN001
    """Update 1 of a mu = 2 batch after a perturbation of ``scale``: the objective ``build(flat)`` with flat=True (one
    draw's graph at a time) and flat=False (all graphs in one term) give the same value and gradient in float64."""
    results = []
    for flat in (True, False):
        policy = make_policy(hidden=16, layers=2, seed=seed)
        objective = build(flat)
        if objective.needs_reference:
            policy.snapshot_reference()
        prepared = objective.prepare(policy, make_batch(policy, seed=seed), mu=2)
        loss_and_gradients(objective, policy, prepared, inner=0)
        perturb(policy, scale, seed=seed)
        loss, grads = loss_and_gradients(objective, policy, prepared, inner=1)
        results.append((loss, flat_gradient(policy, grads)))
    (v_flat, g_flat), (v_all, g_all) = results
    assert float(v_flat) == pytest.approx(float(v_all), rel=1e-12)
    assert g_all.norm() > 1e-6
    assert float((g_flat - g_all).norm() / g_all.norm()) < 1e-10


def hand_batch(advantages: list[float], lengths: list[int], width: int = 8):  # noqa: ANN201
    """Four sequences with the given answer lengths (completion_mask) and advantages, for ``FixedLogprobPolicy``."""
    batch = make_batch(FixedLogprobPolicy(torch.zeros(1)), n_prompts=1, group=4, gen=width, seed=0)
    mask = torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)  # [4, L]
    rollout = dataclasses.replace(batch.rollout, completion_mask=mask)
    return dataclasses.replace(batch, rollout=rollout, advantages=torch.tensor(advantages, dtype=torch.float64))


def per_row(values: list[float], width: int = 8) -> torch.Tensor:
    """One fixed log-probability per sequence, repeated over its ``width`` positions: [4, L]."""
    return torch.tensor(values, dtype=torch.float64).unsqueeze(1).expand(4, width).clone()


# ---- the command line ------------------------------------------------------------------------------------------------
CLI_TIMEOUT_S = 300
"""A `python -m harness.cli` subprocess still running after this is hung: the test fails saying so."""


def run_cli(*args: str, cwd: Path, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
    """``python -m harness.cli ARGS`` as a real subprocess (the environment conftest set up is inherited)."""
    try:
        return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                              env=dict(os.environ), cwd=cwd, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`harness {' '.join(args)}` did not finish within {timeout:.0f} s (hung)")


def run_main(*args: str, cwd: Path, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> subprocess.CompletedProcess:
    """The console script's entry point (``main``: the same parser and error handling), run in-process: a new
    interpreter per case would spend 2-3 s importing torch for each of them."""
    from harness.cli.main import main

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["harness", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, exited.value.code, captured.out, captured.err)


def save_model(folder: Path) -> Path:
    """A 1-layer float32 random policy saved as a Hugging Face folder, for end-to-end CLI tests (`--model`)."""
    policy = make_policy(dtype=torch.float32, hidden=32, layers=1)
    policy.model.lm.save_pretrained(folder)
    policy.tokenizer.save_pretrained(folder)
    return folder


class SevensTask:
    """Toy task a random model learns in a few steps: any prompt; reward = share of the completion's characters that
    are '7' (a random model writes one about 1/268 of the time, so the reward starts near 0 and moves at once)."""

    name: ClassVar[str] = "sevens"
    version: ClassVar[str] = "1"
    metric: ClassVar[str] = "reward"
    target: ClassVar[str] = "7"

    def __init__(self, data_dir: str | None = None) -> None:
        self.data_dir = data_dir

    def load(self, split: str):  # noqa: ANN201
        from tasks.base import Item

        return [Item(id=str(i), prompt_text=f"write {i}", answer=self.target) for i in range(16)]

    def prompt(self, item) -> list[dict[str, str]]:  # noqa: ANN001
        return [{"role": "user", "content": item.prompt_text}]

    def reward(self, item, completion: str) -> float:  # noqa: ANN001
        return completion.count(self.target) / max(len(completion), 1)

    def score(self, item, completion: str) -> dict[str, float]:  # noqa: ANN001
        return {"reward": self.reward(item, completion)}

    def gold(self, item) -> str:  # noqa: ANN001
        return self.target * 8


# ---- model folders of the real families ------------------------------------------------------------------------------
LLADA_TINY = Path(__file__).parent / "data" / "llada-tiny"


def llada_folder(tmp_path: Path) -> Path:
    """tests/data/llada-tiny (LLaDA's released layout and config keys, no modelling code) plus a tokenizer."""
    folder = tmp_path / "llada-tiny"
    shutil.copytree(LLADA_TINY, folder, ignore=shutil.ignore_patterns("golden.safetensors", "*.py", "*.diff"))
    from harness.runs.pretrain import tiny_tokenizer

    tiny_tokenizer().save_pretrained(folder)
    return folder


def dream_folder(tmp_path: Path, seed: int = 0) -> Path:
    """A tiny random checkpoint in Dream-v0-Instruct-7B's layout: Qwen2 weight names, config model_type "Dream"."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from harness.runs.pretrain import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=False, initializer_range=0.3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    folder = tmp_path / "dream-tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    raw = json.loads((folder / "config.json").read_text())
    raw.update(model_type="Dream", architectures=["DreamModel"], mask_token_id=tokenizer.mask_token_id,
               auto_map={"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"})
    (folder / "config.json").write_text(json.dumps(raw))
    return folder


def run_config(objective: str, n_t: int | None = None, seed: int = 0, mu: int = 2, steps: int = 2,
               task: str = "sudoku"):  # noqa: ANN201
    """The typed config of a hand-made run record: the objective's defaults with ``n_t``, and the given loop."""
    from harness.loop.trainer import TrainConfig
    from harness.runs.config import RunConfig
    from harness.runs.sweep import objective_config

    return RunConfig(objective=objective, objective_config=objective_config(objective, n_t), task=task, seed=seed,
                     train=TrainConfig(mu=mu, steps=steps))
