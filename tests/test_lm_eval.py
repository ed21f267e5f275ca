"""Any policy on lm-evaluation-harness's tasks (harness/runs/lm_eval_model.py, harness/loop/lm_requests.py,
harness/model/likelihood.py): offline, on lm-eval tasks defined in tests/data/lm_eval (the harness's Sudoku as a
generation task and a last-row multiple-choice task over 16 shipped puzzles).

What is promised: the generation task under `harness lm-eval` gives `harness eval`'s completions and accuracy on the
same puzzles and protocol; loglikelihood's ELBO converges to the exact ELBO (every mask enumerated) within 4
standard errors and ranks the choices as the exact ELBO does; a LLaDA-layout folder runs without remote code; bad
input is one line; two processes answer as one does.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import llada_folder, make_policy, run_cli, run_main

lm_eval = pytest.importorskip("lm_eval", reason="the lm-eval extra (pip install -e '.[lm-eval]')")

from harness.loop.lm_requests import LmEvalModelConfig, pair_likelihood  # noqa: E402
from harness.model.likelihood import continuation_elbo, exact_elbo, greedy_matches  # noqa: E402
from harness.model.policy import Policy  # noqa: E402
from harness.model.rollout import RolloutConfig  # noqa: E402
from harness.model.structs import stream_seed  # noqa: E402
from harness.model.tiny import TinyConfig  # noqa: E402
from harness.runs.lm_eval_model import MODEL_NAME, HarnessLM, parse_model_args  # noqa: E402

TASKS = Path(__file__).parent / "data" / "lm_eval"
GENERATE, LAST_ROW = "harness_sudoku_generate", "harness_sudoku_last_row"
PROTOCOL = {"gen-length": "32", "block-length": "16", "steps": "16"}
"""A decoding protocol other than the default, given to both commands."""
QUICK = TinyConfig(pretrain_steps=200, batch_size=16, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
"""A tiny model pretrained in seconds that writes the answer format (a quarter of the cells right)."""
DRAWS = 128


def lm_eval_args(model: Path, out: Path, *extra: str, tasks: str = f"{GENERATE},{LAST_ROW}") -> list[str]:
    return ["lm-eval", "--model", str(model), "--tasks", tasks, "--include-path", str(TASKS),
            "--builtin-tasks", "false", "--apply-chat-template", "true", "--n-draws", str(DRAWS), "--threads", "1",
            *[arg for key, value in PROTOCOL.items() for arg in (f"--rollout-{key}", value)], "--out", str(out),
            *extra]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from harness.runs.pretrain import pretrain

    folder = tmp_path_factory.mktemp("quick") / "model"
    pretrain(QUICK).save(folder)
    return folder


@pytest.fixture(scope="module")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random model: its choices' ELBOs spread over a nat or two (the quick model's differ by 0.01 nats)."""
    folder = tmp_path_factory.mktemp("random") / "model"
    make_policy(torch.float32, hidden=32, layers=2).save(folder)
    return folder


@pytest.fixture(scope="module")
def evaluated(random_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`harness lm-eval` on both tasks with the random model: its output folder."""
    out = tmp_path_factory.mktemp("lm-eval")
    result = run_cli(*lm_eval_args(random_model, out), cwd=out)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return out / "lm-eval" / "model"


def samples(folder: Path, task: str) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "samples" / f"{task}.jsonl").read_text().splitlines()]
    return sorted(rows, key=lambda row: row["doc_id"])


# ---- generation: the harness's protocol through lm-eval --------------------------------------------------------------
def test_the_generation_task_gives_harness_evals_completions_and_accuracy(model: Path, tmp_path: Path, monkeypatch,
                                                                          capsys) -> None:
    args = ["eval", "--model", str(model), "--tasks", "sudoku", "--eval-limit", "16", "--threads", "1",
            *[arg for key, value in PROTOCOL.items() for arg in (f"--eval-rollout-{key}", value)], "--out",
            str(tmp_path)]
    assert run_main(*args, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys).returncode == 0
    result = run_main(*lm_eval_args(model, tmp_path, tasks=GENERATE), cwd=tmp_path, monkeypatch=monkeypatch,
                      capsys=capsys)
    assert result.returncode == 0, result.stderr[-2000:]
    evaluated = tmp_path / "lm-eval" / "model"
    harness = json.loads((tmp_path / "eval" / "sudoku-test-model.json").read_text())
    lm = json.loads((evaluated / "results.json").read_text())
    rows = samples(evaluated, GENERATE)
    assert [row["doc"]["id"] for row in rows] == [item["id"] for item in harness["items"]]
    assert [row["resps"][0][0] for row in rows] == [item["completion"] for item in harness["items"]]
    for metric in ("cell_accuracy", "solved", "valid"):
        assert lm["results"][GENERATE][f"{metric},none"] == pytest.approx(harness["metrics"][metric]["mean"],
                                                                          abs=1e-12)
    assert 0.1 < harness["metrics"]["cell_accuracy"]["mean"] < 0.9  # a real score, not an empty one
    assert lm["harness"]["run"]["model_args"]["rollout"]["gen_length"] == 32
    assert lm["configs"][GENERATE]["output_type"] == "generate_until"


# ---- log-likelihood: the ELBO and its standard error -----------------------------------------------------------------
def sudoku_pair(policy: Policy, continuation: str, item: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    from tasks.sudoku import Sudoku

    task = Sudoku()
    context, _ = policy.encode_prompts([task.prompt(task.load("test")[item])])
    ids = policy.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    return context[0].cpu(), torch.tensor(ids)


@pytest.fixture(scope="module")
def policy64(model: Path) -> Policy:
    return Policy.from_pretrained(model, dtype=torch.float64)


def test_the_exact_elbo_of_two_tokens_is_the_hand_sum_of_its_three_masks(policy64: Policy) -> None:
    context, pair = sudoku_pair(policy64, "31")
    m = policy64.mask_id

    @torch.no_grad()
    def logp(ids: list[int], at: list[int]) -> float:
        full = torch.cat([context, torch.tensor(ids)]).unsqueeze(0)
        out = policy64.token_logprobs(full, torch.ones_like(full, dtype=torch.bool), pair.unsqueeze(0),
                                      context.shape[0])
        return float(out[0, at].sum())

    y1, y2 = pair.tolist()
    # c(1) = 0! 1! / 2! = 1/2 per one-token mask, c(2) = 1! 0! / 2! = 1/2 for the full mask.
    hand = 0.5 * logp([m, y2], [0]) + 0.5 * logp([y1, m], [1]) + 0.5 * logp([m, m], [0, 1])
    assert exact_elbo(policy64, context, pair) == pytest.approx(hand, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("estimator", ["t-iid", "l-stratified", "complementary"])
def test_the_elbo_converges_to_the_exact_elbo_within_four_standard_errors(policy64: Policy, estimator: str) -> None:
    context, continuation = sudoku_pair(policy64, "<answer>\n3142")  # 6 tokens: 63 masks
    exact = exact_elbo(policy64, context, continuation)
    errors = []
    for draws in (16, 64, 256):
        estimate = continuation_elbo(policy64, context, continuation, draws, estimator,
                                     torch.Generator().manual_seed(draws))
        assert estimate.draws == draws and estimate.tokens == 6
        assert abs(estimate.elbo - exact) <= 4 * estimate.stderr, (draws, estimate, exact)
        errors.append(estimate.stderr)
    assert errors[2] < errors[0] / 2.5  # 1/sqrt(K): a quarter at 16 times the draws, up to the noise of the spread


def test_a_one_token_continuation_is_exact_under_the_l_form_and_greedy_is_the_argmax(policy64: Policy) -> None:
    context, token = sudoku_pair(policy64, "<answer>")
    exact = exact_elbo(policy64, context, token)
    for estimator in ("l-stratified", "complementary"):
        one = continuation_elbo(policy64, context, token, 2, estimator)
        assert one.elbo == pytest.approx(exact, abs=1e-12) and one.stderr == 0.0
    full = torch.cat([context, torch.full((3,), policy64.mask_id)]).unsqueeze(0)
    logits = policy64.logits(full, torch.ones_like(full, dtype=torch.bool), slice(context.shape[0], None))[0]
    logits[:, policy64.mask_id] = float("-inf")
    best = logits.argmax(-1)
    assert greedy_matches(policy64, context, best)
    assert not greedy_matches(policy64, context, torch.cat([best[:2], (best[2:] + 1) % policy64.mask_id]))


def test_the_multiple_choice_ranking_is_the_exact_ranking(random_model: Path, evaluated: Path) -> None:
    """Every estimate within 4 standard errors of its exact ELBO, and every pair of choices that the estimates
    resolve (apart by more than 4 standard errors of the difference) in the exact order; most pairs are resolved."""
    policy = Policy.from_pretrained(random_model, dtype=torch.float64)
    rows = [json.loads(line) for line in (evaluated / "likelihoods.jsonl").read_text().splitlines()]
    by_doc: dict[int, dict[int, dict]] = {}
    for row in rows:
        by_doc.setdefault(row["doc_id"], {})[row["idx"]] = row
    resolved = 0
    correct = 0
    for sample in samples(evaluated, LAST_ROW):
        context = torch.tensor(policy.tokenizer(sample["arguments"][0][0], add_special_tokens=False)["input_ids"])
        exact = [exact_elbo(policy, context, torch.tensor(policy.tokenizer(choice, add_special_tokens=False)
                                                          ["input_ids"]))
                 for choice in sample["doc"]["choices"]]
        estimates = [by_doc[sample["doc_id"]][idx] for idx in range(4)]
        assert all(e["draws"] == DRAWS and e["tokens"] == 4 for e in estimates)
        for e, x in zip(estimates, exact, strict=True):
            assert abs(e["elbo"] - x) <= 4 * e["stderr"]
        for i in range(4):
            for j in range(i + 1, 4):
                a, b = estimates[i], estimates[j]
                if abs(a["elbo"] - b["elbo"]) > 4 * math.hypot(a["stderr"], b["stderr"]):
                    resolved += 1
                    assert (a["elbo"] > b["elbo"]) == (exact[i] > exact[j]), (sample["doc_id"], i, j)
        correct += max(range(4), key=lambda i: estimates[i]["elbo"]) == sample["doc"]["gold"]
    assert resolved >= 16 * 6 // 3
    results = json.loads((evaluated / "results.json").read_text())["results"][LAST_ROW]
    assert results["acc,none"] == pytest.approx(correct / 16, abs=1e-12)  # lm-eval scored our ELBOs


def test_rolling_loglikelihood_sums_the_elbos_of_disjoint_windows(policy64: Policy) -> None:
    from lm_eval.api.instance import Instance

    text = "<answer>\n3142243142131324\n</answer>"
    tokens = policy64.tokenizer(text, add_special_tokens=False)["input_ids"]
    config = LmEvalModelConfig(n_draws=8)
    lm = HarnessLM.from_policy(policy64, config)
    request = Instance("loglikelihood_rolling", {}, (text,), 0, ("wiki", 3, 1))
    whole = lm.loglikelihood_rolling([request])
    seed = lm._seeds([request])[0]
    single = pair_likelihood(policy64, [policy64.eos_id], tokens, stream_seed(seed, 0), config)
    assert whole == [pytest.approx(single.elbo, abs=1e-9)]  # one window: the text given the prefix token
    windowed = HarnessLM.from_policy(policy64, LmEvalModelConfig(n_draws=8, max_length=8))
    windowed.loglikelihood_rolling([request])
    assert [row["tokens"] for row in windowed.likelihoods] == [8, 8, 4] and len(tokens) == 20


def test_pairs_split_as_lm_eval_splits_them_and_completions_are_cut_at_the_first_until(policy64: Policy) -> None:
    from harness.loop.lm_requests import cut_at, split_pair

    tokenizer = policy64.tokenizer
    context, continuation = split_pair(tokenizer, "ab ", "cd", special=False)
    assert context == tokenizer("ab", add_special_tokens=False)["input_ids"]
    assert continuation == tokenizer(" cd", add_special_tokens=False)["input_ids"]  # the space moved over
    assert cut_at("x = 1\n\nQuestion: next", ["Question:", "\n\n"]) == "x = 1"
    assert cut_at("no stop here", ["Question:", ""]) == "no stop here"
    assert cut_at("a</s>b", "</s>") == "a"  # one string, not its characters


# ---- model arguments and the registry --------------------------------------------------------------------------------
def test_model_arguments_are_the_config_fields_and_a_bad_one_is_named() -> None:
    args = parse_model_args({"rollout_gen_length": 256, "rollout_block_length": "32", "rollout_steps": 256,
                             "n_draws": 128, "estimator": "t-iid", "dtype": "bfloat16"})
    assert args.model_args.rollout == RolloutConfig(gen_length=256, block_length=32, steps=256)
    assert (args.model_args.n_draws, args.model_args.estimator, args.policy.dtype) == (128, "t-iid", "bfloat16")
    for bad, culprit in (({"mc_num": 8}, "mc_num"), ({"lora_r": 8}, "lora_r"), ({"estimator": "block"}, "block"),
                         ({"estimator": "complementary", "n_draws": 3}, "n_t=3"),
                         ({"rollout_block_length": 5}, "block_length")):
        with pytest.raises(ValueError, match=culprit):
            parse_model_args(bad)


def test_lm_eval_finds_the_model_by_its_registered_name(model: Path) -> None:
    from lm_eval.api.registry import get_model

    cls = get_model(MODEL_NAME)
    assert cls is HarnessLM
    lm = cls.create_from_arg_string(f"pretrained={model},n_draws=4,rollout_gen_length=16,rollout_block_length=8,"
                                    "rollout_steps=8", {"batch_size": 4, "device": "cpu"})
    assert (lm.config.n_draws, lm.config.batch_size, lm.config.rollout.gen_length) == (4, 4, 16)
    assert (lm.rank, lm.world_size) == (0, 1) and lm.policy.source == model.resolve()


@pytest.mark.slow
def test_lm_evals_own_command_line_runs_the_registered_model(random_model: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "harness.runs.lm_eval_model", "run", "--model", MODEL_NAME, "--model_args",
               f"pretrained={random_model},n_draws=4,rollout_gen_length=16,rollout_block_length=8,rollout_steps=8",
               "--tasks", LAST_ROW, "--include_path", str(TASKS), "--limit", "2", "--device", "cpu",
               "--output_path", str(tmp_path / "out")]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    written = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    assert written["results"][LAST_ROW]["acc,none"] in (0.0, 0.5, 1.0) and written["config"]["model"] == MODEL_NAME


# ---- real layouts, bad input, processes ------------------------------------------------------------------------------
def test_a_llada_layout_checkpoint_runs_without_remote_code(tmp_path: Path, monkeypatch, capsys) -> None:
    folder = llada_folder(tmp_path)
    assert not list(folder.glob("*.py"))  # no modelling code to run: the native loader reads LLaDA's layout
    out = tmp_path / "out"
    result = run_main(*lm_eval_args(folder, out, "--limit", "2", "--n-draws", "4"), cwd=tmp_path,
                      monkeypatch=monkeypatch, capsys=capsys)
    assert result.returncode == 0, result.stderr[-2000:]
    written = json.loads((out / "lm-eval" / "llada-tiny" / "results.json").read_text())
    assert written["harness"]["policy"]["trust_remote_code"] is False
    assert set(written["results"]) == {GENERATE, LAST_ROW}
    assert written["results"][LAST_ROW]["acc,none"] in (0.0, 0.5, 1.0)
    assert len((out / "lm-eval" / "llada-tiny" / "likelihoods.jsonl").read_text().splitlines()) == 2 * 4


@pytest.mark.parametrize(("flags", "culprit"), [
    (["--tasks", "harness_sudoku_generat"], "did you mean 'harness_sudoku_generate'"),
    (["--tasks", ""], "--tasks: empty"),
    (["--estimator", "complementary", "--n-draws", "3"], "n_t=3"),
    (["--include-path", "/no/such/folder"], "--include-path"),
    (["--tasks", "harness_sudoku_unsafe"], "harness_sudoku_unsafe runs model-written code outside a sandbox"),
])
def test_bad_input_is_one_line_and_writes_nothing(model: Path, tmp_path: Path, flags: list[str], culprit: str,
                                                   monkeypatch, capsys) -> None:
    result = run_main(*lm_eval_args(model, tmp_path / "out"), *flags, cwd=tmp_path, monkeypatch=monkeypatch,
                      capsys=capsys)  # the later flag wins
    assert result.returncode == 2 and culprit in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_without_the_extra_the_command_says_how_to_install_it(model: Path, tmp_path: Path, monkeypatch,
                                                              capsys) -> None:
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    result = run_main(*lm_eval_args(model, tmp_path / "out"), cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert result.returncode == 2 and 'pip install -e ".[lm-eval]"' in result.stderr


@pytest.mark.slow
def test_two_processes_answer_as_one_and_one_writes(random_model: Path, evaluated: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "harness.cli", *lm_eval_args(random_model, tmp_path / "out")]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    two = tmp_path / "out" / "lm-eval" / "model"
    one_results, two_results = (json.loads((f / "results.json").read_text())["results"] for f in (evaluated, two))
    assert two_results == one_results
    for task in (GENERATE, LAST_ROW):
        assert [row["resps"] for row in samples(two, task)] == [row["resps"] for row in samples(evaluated, task)]
    key = lambda row: (row["doc_id"], row["idx"])  # noqa: E731
    lines = [sorted((json.loads(line) for line in (f / "likelihoods.jsonl").read_text().splitlines()), key=key)
             for f in (evaluated, two)]
    assert len(lines[1]) == 16 * 4 and all(math.isclose(a["elbo"], b["elbo"], abs_tol=1e-9)
                                            for a, b in zip(*lines, strict=True))
    assert json.loads((two / "results.json").read_text())["harness"]["processes"] == 2
