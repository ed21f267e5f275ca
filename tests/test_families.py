"""Real model families through the one policy wrapper: LLaDA natively (golden logits from LLaDA's own code), Dream's
shifted logits where the ELBO and the sampler read them, LoRA through peft, bf16 with gradient checkpointing, and
chunked log-probabilities (harness/model/families.py, predictor.py, policy.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import LLADA_TINY, dream_folder, llada_folder, loss_and_gradients, make_batch, run_cli
from safetensors.torch import load_file

from harness.model.elbo import ElboConfig, draw_terms, sample_draws
from harness.model.families import HF
from harness.model.policy import Policy, PolicyConfig, adapt
from harness.model.rollout import RolloutConfig, generate
from harness.model.structs import Rollout
from harness.runs.pretrain import tiny_tokenizer
from objectives import OBJECTIVES


def test_llada_layout_loads_natively_and_matches_the_golden_logits_of_its_own_code(tmp_path: Path) -> None:
    policy = Policy.from_pretrained(llada_folder(tmp_path))
    assert type(policy.model.lm).__name__ == "LlamaForCausalLM"  # no remote code ran (the folder has none)
    assert policy.model.family.name == "llada" and policy.model.lm.config.is_causal is False
    assert (policy.mask_id, policy.eos_id, policy.pad_id) == (256, 257, 258)
    golden = load_file(LLADA_TINY / "golden.safetensors")
    ids = golden["input_ids"]  # [3, 16]
    logits = policy.logits(ids, torch.ones_like(ids, dtype=torch.bool))  # [3, 16, 288]
    assert logits.dtype == torch.float32 and logits.shape == golden["logits"].shape
    # 0.0 on the AMD EPYC that wrote the golden file, 1.2e-5 on an Intel Xeon (other float32 kernels sum in another
    # order); a wrong weight mapping is off by O(1).
    assert (logits - golden["logits"]).abs().max().item() <= 1e-4


def test_llada_mask_id_comes_from_config_json_when_the_tokenizer_declares_none(tmp_path: Path) -> None:
    folder = llada_folder(tmp_path)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("mask_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, "mask_token_id": 263}))
    policy = Policy.from_pretrained(folder)
    assert policy.tokenizer.mask_token_id is None and policy.mask_id == 263


def test_llada_loads_in_bfloat16_and_still_returns_float32_logits(tmp_path: Path) -> None:
    policy = Policy.from_pretrained(llada_folder(tmp_path), config=PolicyConfig(dtype="bfloat16"))
    assert policy.dtype == torch.bfloat16
    golden = load_file(LLADA_TINY / "golden.safetensors")
    ids = golden["input_ids"]
    logits = policy.logits(ids, torch.ones_like(ids, dtype=torch.bool))
    assert logits.dtype == torch.float32
    scale = golden["logits"].abs().max().item()
    assert (logits - golden["logits"]).abs().max().item() < 0.1 * scale  # bf16 rounding, not a different model


@pytest.mark.slow
def test_compare_trains_and_evaluates_the_llada_layout_checkpoint(tmp_path: Path) -> None:
    from harness.runs.records import read_record

    folder = llada_folder(tmp_path)
    out = tmp_path / "res"
    result = run_cli("compare", "--model", str(folder), "--objectives", "bgpo,diffu-grpo", "--nt", "2", "--steps",
                     "2", "--eval-limit", "4", "--lora-r", "4", "--gradient-checkpointing", "true", "--out",
                     str(out), "--threads", "1", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    records = [read_record(path) for path in sorted((out / "runs").glob("*.json"))]
    assert sorted(r.objective for r in records) == ["bgpo", "diffu-grpo"]
    for record in records:  # diffu-GRPO's KL reference is the base model with the adapters disabled
        assert [s.step for s in record.steps] == [0, 1] and [e.step for e in record.evals] == [0, 2]
        assert record.evals[-1].metrics["cell_accuracy"].n == 4
        for step in record.steps:  # a random model earns no reward, so the gradient may be 0: the steps ran
            assert step.metrics["time/update_s"] > 0 and step.metrics["time/rollout_s"] > 0
        assert record.config.model == str(folder) and record.world_size == 1
        assert record.config.policy.lora_r == 4 and record.config.policy.gradient_checkpointing


# ---- Dream: shifted logits -------------------------------------------------------------------------------------------
def raw_outputs(policy: Policy, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """The transformers model's own logits [N, T, V] (Dream's position ids), unshifted."""
    positions = (attention.long().cumsum(-1) - 1).clamp_min(0)
    return policy.model.lm(input_ids=ids, attention_mask=attention.long(), position_ids=positions).logits.float()


def test_dream_reads_position_i_from_output_i_minus_1(tmp_path: Path) -> None:
    policy = Policy.from_pretrained(dream_folder(tmp_path))
    assert policy.model.family.name == "dream" and type(policy.model.lm).__name__ == "Qwen2ForCausalLM"
    ids = torch.randint(0, 200, (2, 10), generator=torch.Generator().manual_seed(0))
    attention = torch.ones_like(ids, dtype=torch.bool)
    raw = raw_outputs(policy, ids, attention)
    torch.testing.assert_close(policy.logits(ids, attention, slice(4, None)), raw[:, 3:-1], rtol=0, atol=1e-6)
    whole = policy.logits(ids, attention)  # position 0 reads output 0 (Dream's cat([logits[:, :1], logits[:, :-1]]))
    torch.testing.assert_close(whole[:, 0], raw[:, 0], rtol=0, atol=1e-6)
    torch.testing.assert_close(whole[:, 1:], raw[:, :-1], rtol=0, atol=1e-6)


def test_dream_positions_skip_left_padding(tmp_path: Path) -> None:
    policy = Policy.from_pretrained(dream_folder(tmp_path))
    ids = torch.randint(0, 200, (1, 8), generator=torch.Generator().manual_seed(1))
    padded = torch.cat([torch.full((1, 3), policy.pad_id), ids], dim=1)
    attention = torch.cat([torch.zeros(1, 3, dtype=torch.bool), torch.ones(1, 8, dtype=torch.bool)], dim=1)
    alone = policy.logits(ids, torch.ones_like(ids, dtype=torch.bool), slice(4, None))
    torch.testing.assert_close(policy.logits(padded, attention, slice(7, None)), alone, rtol=0, atol=1e-5)


def test_dream_elbo_terms_use_the_shifted_logits(tmp_path: Path) -> None:
    policy = Policy.from_pretrained(dream_folder(tmp_path, seed=2))
    g = torch.Generator().manual_seed(3)
    prompt, completion = torch.randint(0, 200, (2, 5), generator=g), torch.randint(0, 200, (2, 6), generator=g)
    rollout = Rollout(prompt_ids=prompt, prompt_mask=torch.ones_like(prompt, dtype=torch.bool),
                      completion_ids=completion, completion_mask=torch.ones_like(completion, dtype=torch.bool),
                      texts=["", ""])
    draws = sample_draws(rollout.completion_mask, 1, ElboConfig(), torch.Generator().manual_seed(4))
    with torch.no_grad():
        terms = draw_terms(policy, rollout, draws, 0, slice(None))  # [2]
    # By hand: the noisy input [prompt ; completion with the draw's mask], then sum over the masked positions of
    # log p(y_j) read from the raw output one position to the left (j - 1 in the full sequence), times the weight.
    mask = draws.masks[0]
    ids = torch.cat([prompt, completion.masked_fill(mask, policy.mask_id)], dim=1)
    raw = raw_outputs(policy, ids, torch.ones_like(ids, dtype=torch.bool)).log_softmax(-1)  # [2, 11, V]

    def by_hand(outputs: torch.Tensor) -> torch.Tensor:
        picked = outputs.gather(-1, completion.unsqueeze(-1)).squeeze(-1)  # [2, 6]
        return (picked * mask).sum(-1) * draws.weights[0].float()

    shifted, unshifted = by_hand(raw[:, 4:-1]), by_hand(raw[:, 5:])
    torch.testing.assert_close(terms, shifted, rtol=1e-5, atol=1e-5)
    assert (terms - unshifted).abs().min() > 0.1  # the unshifted reading is another number


def test_dream_sampler_uses_the_shifted_logits(tmp_path: Path) -> None:
    policy = Policy.from_pretrained(dream_folder(tmp_path, seed=5))
    prompt = torch.randint(0, 200, (4, 6), generator=torch.Generator().manual_seed(6))
    prompt_mask = torch.ones_like(prompt, dtype=torch.bool)
    cfg = RolloutConfig(gen_length=1, block_length=1, steps=1, temperature=0.0)
    rollout = generate(policy, prompt, prompt_mask, cfg, torch.Generator().manual_seed(0))
    # One greedy step on [prompt ; mask]: the token is the argmax (mask id excluded) of the output at the last prompt
    # position (Dream's shift), not of the output at the masked position itself.
    ids = torch.cat([prompt, torch.full((4, 1), policy.mask_id)], dim=1)
    raw = raw_outputs(policy, ids, torch.ones_like(ids, dtype=torch.bool))
    raw[..., policy.mask_id] = float("-inf")
    assert rollout.completion_ids[:, 0].tolist() == raw[:, 5].argmax(-1).tolist()
    assert rollout.completion_ids[:, 0].tolist() != raw[:, 6].argmax(-1).tolist()


# ---- LoRA, bf16, gradient checkpointing, chunked log-probabilities ---------------------------------------------------
def tiny_lm(dtype: torch.dtype = torch.float64, seed: int = 0):  # noqa: ANN201
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tiny_tokenizer()), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128, is_causal=False,
                         initializer_range=0.2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).to(dtype)


def lora_policy(lm, config: PolicyConfig, seed: int = 0) -> Policy:  # noqa: ANN001
    """``lm`` with LoRA adapters whose B matrices are made non-zero (peft starts them at 0: no effect)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        predictor = adapt(lm, HF, config)
        with torch.no_grad():
            for name, p in predictor.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.3 * torch.randn_like(p))
    policy = Policy(predictor, tiny_tokenizer(), logits_chunk=config.logits_chunk)
    policy.model.train(config.gradient_checkpointing)
    return policy


def update_gradients(policy: Policy, name: str = "bgpo") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One update of ``name`` (n_t = 2) on a fixed batch: the summed loss, and the gradients of the parameters that
    got one."""
    import dataclasses

    objective = OBJECTIVES[name]()
    objective = OBJECTIVES[name](dataclasses.replace(objective.config, n_t=2))
    # Advantages of one sign: a group-centred batch gives an on-policy loss of exactly 0, which would compare nothing.
    batch = make_batch(policy, seed=7, advantages=torch.linspace(0.1, 1.0, 12, dtype=torch.float64))
    return loss_and_gradients(objective, policy, objective.prepare(policy, batch, mu=1), 0)


def test_lora_trains_only_the_adapters_and_its_reference_is_the_base_model() -> None:
    base = Policy(tiny_lm(), tiny_tokenizer())
    batch = make_batch(base, seed=1)
    rollout = batch.rollout
    ids, attention = torch.cat([rollout.prompt_ids, rollout.completion_ids], 1), rollout.attention_mask
    start = rollout.prompt_ids.shape[1]
    with torch.no_grad():
        base_logp = base.token_logprobs(ids, attention, rollout.completion_ids, start)

    policy = lora_policy(base.model.lm, PolicyConfig(lora_r=4))
    assert policy.has_adapters
    trainable = {n for n, p in policy.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    reference = policy.token_logprobs(ids, attention, rollout.completion_ids, start, reference=True)
    torch.testing.assert_close(reference, base_logp, rtol=0, atol=1e-12)  # adapters disabled == the base model
    with torch.no_grad():
        adapted = policy.token_logprobs(ids, attention, rollout.completion_ids, start)
    assert (adapted - base_logp).abs().max() > 1e-3  # the adapters do change the policy

    _, grads = update_gradients(policy)
    assert set(grads) == trainable  # every adapter gets a gradient, no base weight does
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_A" in n)
    assert [n for n, p in policy.model.named_parameters() if not p.requires_grad and p.grad is not None] == []


def test_bf16_gradient_checkpointing_gives_the_loss_and_gradients_of_no_checkpointing() -> None:
    plain = lora_policy(tiny_lm(torch.bfloat16), PolicyConfig(dtype="bfloat16", lora_r=4))
    checkpointed = lora_policy(tiny_lm(torch.bfloat16), PolicyConfig(dtype="bfloat16", lora_r=4,
                                                                     gradient_checkpointing=True))
    assert checkpointed.model.base().is_activation_checkpointing and checkpointed.model.training
    assert not plain.model.base().is_activation_checkpointing
    assert checkpointed.dtype == torch.bfloat16
    loss_plain, grads_plain = update_gradients(plain)
    loss_checkpointed, grads_checkpointed = update_gradients(checkpointed)
    assert torch.isfinite(loss_plain) and loss_plain.abs() > 0.1
    torch.testing.assert_close(loss_checkpointed, loss_plain, rtol=1.6e-2, atol=1e-3)  # bf16's eps is 2^-7
    assert set(grads_checkpointed) == set(grads_plain)
    for name, g in grads_plain.items():
        torch.testing.assert_close(grads_checkpointed[name].float(), g.float(), rtol=5e-2, atol=5e-2 * g.abs().max())


def test_chunked_log_probabilities_equal_the_unchunked_ones_with_their_gradients() -> None:
    policy = Policy(tiny_lm(), tiny_tokenizer())
    batch = make_batch(policy, seed=2)
    rollout = batch.rollout
    ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], 1)
    start = rollout.prompt_ids.shape[1]
    results = []
    for chunk in (0, 5):  # 5 does not divide the 12 x 8 completion tokens: a ragged last chunk
        policy.model.logits_chunk = chunk
        policy.model.zero_grad(set_to_none=True)
        logp = policy.token_logprobs(ids, rollout.attention_mask, rollout.completion_ids, start)
        (logp * torch.linspace(-1, 1, logp.numel(), dtype=logp.dtype).view_as(logp)).sum().backward()
        results.append((logp.detach(), [p.grad.clone() for p in policy.parameters()]))
    (whole, whole_grads), (chunked, chunked_grads) = results
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)
    for a, b in zip(chunked_grads, whole_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_the_shipped_accelerate_configs_parse_and_fsdp_finds_each_familys_layer_class(tmp_path: Path) -> None:
    """configs/accelerate/{ddp,fsdp}.yaml read by accelerate's own loader; FSDP's TRANSFORMER_BASED_WRAP reads the
    layer class from the wrapped module's ``_no_split_modules``, which the mask predictor forwards from its model."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils.dataclasses import get_module_class_from_name

    configs = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
    ddp, fsdp = (load_config_from_file(str(configs / f"{name}.yaml")) for name in ("ddp", "fsdp"))
    assert ddp.distributed_type.value == "MULTI_GPU" and ddp.mixed_precision == "no"
    assert fsdp.distributed_type.value == "FSDP" and fsdp.mixed_precision == "bf16"
    assert fsdp.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert fsdp.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp.fsdp_config["fsdp_use_orig_params"] is True
    for folder, layer in ((llada_folder(tmp_path), "LlamaDecoderLayer"), (dream_folder(tmp_path), "Qwen2DecoderLayer")):
        predictor = Policy.from_pretrained(folder, config=PolicyConfig(lora_r=2)).model
        assert predictor._no_split_modules == [layer]
        assert get_module_class_from_name(predictor, layer).__name__ == layer
