"""Exported policies load elsewhere and compute what the policy computed (harness/model/export.py): plain transformers
and peft in a process that never imports this package, LLaDA's released layout (the golden file's weights and config
back byte for byte), and ``Policy.from_pretrained`` on every export, Dream's shifted family included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import LLADA_TINY, dream_folder, llada_folder, make_policy, save_model
from safetensors.torch import load_file, save_file

from harness.model.export import export_llada_layout, export_policy, llada_name
from harness.model.policy import Policy, PolicyConfig
from harness.model.tiny import TinyConfig, build_model
from harness.runs.pretrain import tiny_tokenizer

PLAIN_LOGITS = r"""
import sys
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

torch.set_num_threads(1)
inputs, out = load_file(sys.argv[1]), {}
for i, spec in enumerate(sys.argv[3:]):
    folder, _, adapter = spec.partition("+")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert model.config.is_causal is False, "the export reloads as a causal model"
    if adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        out[f"logits{i}"] = model.eval()(input_ids=inputs["ids"], attention_mask=inputs["attention"]).logits
assert not any(m.split(".")[0] in ("harness", "objectives", "tasks") for m in sys.modules), "imported the harness"
save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[2])
"""
"""Loads each folder (``MODEL`` or ``BASE+ADAPTER``) with plain transformers / peft and saves its logits."""


def plain_logits(tmp_path: Path, ids: torch.Tensor, attention: torch.Tensor, *specs: str) -> list[torch.Tensor]:
    """Logits [N, T, V] of each folder spec, computed in a fresh Python that never imports this package."""
    inputs, out = tmp_path / "inputs.safetensors", tmp_path / "logits.safetensors"
    save_file({"ids": ids, "attention": attention.long()}, str(inputs))
    result = subprocess.run([sys.executable, "-c", PLAIN_LOGITS, str(inputs), str(out), *specs], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    logits = load_file(str(out))
    return [logits[f"logits{i}"] for i in range(len(specs))]


def fixed_inputs(pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [2, 10] and attention [2, 10]: row 0 unpadded, row 1 left-padded by 3."""
    ids = torch.randint(0, 250, (2, 10), generator=torch.Generator().manual_seed(11))
    attention = torch.ones_like(ids, dtype=torch.bool)
    attention[1, :3] = False
    return ids.masked_fill(~attention, pad_id), attention


def perturb(policy: Policy, scale: float = 0.05, seed: int = 0, only: str = "") -> None:
    """Move the parameters whose name contains ``only`` by seeded noise (a stand-in for training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if only in name:
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def logits(policy: Policy, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return policy.logits(ids, attention)  # [N, T, V]


def snapshot(policy: Policy) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in policy.model.named_parameters()}


# ---- full fine-tune and LoRA: plain transformers and peft ------------------------------------------------------------
@pytest.mark.slow  # a fresh Python importing transformers (and peft) alone takes about 4 s
def test_a_full_export_loads_in_plain_transformers_with_the_policys_logits(tmp_path: Path) -> None:
    policy = make_policy(dtype=torch.float32)
    perturb(policy)
    ids, attention = fixed_inputs(policy.pad_id)
    expected = logits(policy, ids, attention)  # [2, 10, V]
    folder = export_policy(policy, tmp_path / "full")
    raw = json.loads((folder / "config.json").read_text())
    assert raw["is_causal"] is False and raw["mask_token_id"] == policy.mask_id == 256
    (plain,) = plain_logits(tmp_path, ids, attention, str(folder))
    torch.testing.assert_close(plain, expected, rtol=0, atol=1e-6)
    assert (expected - logits(make_policy(dtype=torch.float32), ids, attention)).abs().max() > 1e-2  # it moved
    reloaded = Policy.from_pretrained(folder)
    assert reloaded.mask_id == policy.mask_id and reloaded.model.family.name == "hf"
    torch.testing.assert_close(logits(reloaded, ids, attention), expected, rtol=0, atol=1e-6)


def lora_policy(tmp_path: Path) -> Policy:
    """A saved random Llama loaded with r = 4 adapters moved off peft's start (B = 0: no effect); alpha / r = 16 makes
    a 0.02 move change the logits by about 4."""
    base = save_model(tmp_path / "base")
    policy = Policy.from_pretrained(base, config=PolicyConfig(lora_r=4))
    perturb(policy, scale=0.02, seed=1, only="lora_")
    return policy


@pytest.mark.slow  # a fresh Python importing transformers (and peft) alone takes about 4 s
def test_a_lora_export_loads_with_plain_peft_and_merged_with_plain_transformers(tmp_path: Path) -> None:
    policy = lora_policy(tmp_path)
    ids, attention = fixed_inputs(policy.pad_id)
    expected = logits(policy, ids, attention)
    with torch.no_grad():
        base_logits = policy.model(ids, attention, slice(None), adapters_off=True)
    assert (expected - base_logits).abs().max() > 1e-2  # the adapters change the policy
    before, training = snapshot(policy), policy.model.training
    adapter = export_policy(policy, tmp_path / "adapter")
    merged = export_policy(policy, tmp_path / "merged", merge_lora=True)
    # The live policy is as it was: same parameters (adapters included), still adapted, same mode.
    after = snapshot(policy)
    assert policy.has_adapters and policy.model.training == training and after.keys() == before.keys()
    assert all(torch.equal(after[n], before[n]) for n in before)
    assert {p.name for p in adapter.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors",
                                                   "base_model.json", "tokenizer.json"}
    assert not (adapter / "config.json").exists() and not any("lora" in k for k in load_file(merged /
                                                                                              "model.safetensors"))
    base = (tmp_path / "base").resolve()
    pointer = json.loads((adapter / "base_model.json").read_text())
    assert pointer == {"base": str(base), "family": "hf", "mask_token_id": 256}
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    with_peft, plain_merged = plain_logits(tmp_path, ids, attention, f"{base}+{adapter}", str(merged))
    torch.testing.assert_close(with_peft, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(plain_merged, expected, rtol=0, atol=1e-5)


def test_an_exported_adapter_folder_loads_as_a_policy_whose_adapters_train(tmp_path: Path) -> None:
    policy = lora_policy(tmp_path)
    ids, attention = fixed_inputs(policy.pad_id)
    adapter = export_policy(policy, tmp_path / "adapter")
    reloaded = Policy.from_pretrained(adapter)
    assert reloaded.has_adapters and reloaded.source == (tmp_path / "base").resolve()
    assert reloaded.mask_id == 256 and reloaded.model.family.name == "hf"
    torch.testing.assert_close(logits(reloaded, ids, attention), logits(policy, ids, attention), rtol=0, atol=1e-6)
    trainable = {n for n, p in reloaded.model.named_parameters() if p.requires_grad}
    assert len(trainable) == 2 * 7 and all("lora_" in n for n in trainable)  # A and B of 7 projections, 1 layer
    again = export_policy(reloaded, tmp_path / "again")  # re-exported, it still names the original base
    assert json.loads((again / "base_model.json").read_text())["base"] == str((tmp_path / "base").resolve())
    with pytest.raises(ValueError, match="lora_r=4 would add a second set"):
        Policy.from_pretrained(adapter, config=PolicyConfig(lora_r=4))


def test_an_in_process_lora_policy_has_no_base_folder_to_name_so_only_a_merged_export_works(tmp_path: Path) -> None:
    from harness.model.families import HF
    from harness.model.policy import adapt

    base = make_policy(dtype=torch.float32)
    policy = Policy(adapt(base.model.lm, HF, PolicyConfig(lora_r=2)), base.tokenizer)
    with pytest.raises(ValueError, match="merge_lora=True"):
        export_policy(policy, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists() and list(tmp_path.iterdir()) == []  # no staging folder left
    assert (export_policy(policy, tmp_path / "merged", merge_lora=True) / "model.safetensors").is_file()


def test_an_export_replaces_an_existing_folder_only_once_the_new_one_is_complete(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = make_policy(dtype=torch.float32)
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "stale.txt").write_text("old export")

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(type(policy.tokenizer), "save_pretrained", broken)
        with pytest.raises(OSError, match="disk full"):
            export_policy(policy, folder)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (folder / "stale.txt").read_text() == "old export"
    export_policy(policy, folder)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and not (folder / "stale.txt").exists()
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()


# ---- Dream: the family survives the export --------------------------------------------------------------------------
def dream_with_release_rope(tmp_path: Path) -> Path:
    """The tiny Dream folder with Dream's released ``rope_theta`` key (1e6, not transformers' default)."""
    folder = dream_folder(tmp_path, seed=3)
    raw = json.loads((folder / "config.json").read_text())
    raw.pop("rope_parameters", None)
    (folder / "config.json").write_text(json.dumps({**raw, "rope_theta": 1e6}))
    return folder


def test_a_dream_export_reloads_into_the_dream_family_with_the_same_logits(tmp_path: Path) -> None:
    policy = Policy.from_pretrained(dream_with_release_rope(tmp_path))
    assert policy.model.lm.config.rope_parameters["rope_theta"] == 1e6
    perturb(policy, seed=4)
    ids, attention = fixed_inputs(policy.pad_id)
    expected = logits(policy, ids, attention)
    folder = export_policy(policy, tmp_path / "dream-export")
    raw = json.loads((folder / "config.json").read_text())
    assert raw["dllm_family"] == "dream" and raw["model_type"] == "qwen2" and raw["is_causal"] is False
    reloaded = Policy.from_pretrained(folder)
    assert reloaded.model.family.name == "dream" and reloaded.model.lm.config.rope_parameters["rope_theta"] == 1e6
    torch.testing.assert_close(logits(reloaded, ids, attention), expected, rtol=0, atol=1e-6)
    unshifted = reloaded.model.lm(input_ids=ids, attention_mask=attention.long()).logits
    assert (unshifted - expected).abs().max() > 0.1  # read as a plain Qwen2, the numbers would differ


def test_a_dream_adapter_export_reloads_into_the_dream_family(tmp_path: Path) -> None:
    policy = Policy.from_pretrained(dream_folder(tmp_path, seed=5), config=PolicyConfig(lora_r=4))
    perturb(policy, scale=0.02, seed=6, only="lora_")
    ids, attention = fixed_inputs(policy.pad_id)
    reloaded = Policy.from_pretrained(export_policy(policy, tmp_path / "dream-adapter"))
    assert reloaded.model.family.name == "dream" and reloaded.has_adapters
    torch.testing.assert_close(logits(reloaded, ids, attention), logits(policy, ids, attention), rtol=0, atol=1e-6)


# ---- LLaDA: its released layout --------------------------------------------------------------------------------------
def test_llada_layout_export_gives_back_the_golden_folders_weights_and_config_exactly(tmp_path: Path) -> None:
    policy = Policy.from_pretrained(llada_folder(tmp_path))
    folder = export_llada_layout(policy, tmp_path / "llada-export")
    original, exported = load_file(LLADA_TINY / "model.safetensors"), load_file(folder / "model.safetensors")
    assert sorted(exported) == sorted(original) and len(exported) == 2 * 9 + 3
    for name, tensor in original.items():  # golden.safetensors is LLaDA's code on exactly these tensors
        assert exported[name].dtype == tensor.dtype and torch.equal(exported[name], tensor), name
    assert json.loads((folder / "config.json").read_text()) == json.loads((LLADA_TINY / "config.json").read_text())
    assert list(json.loads((folder / "config.json").read_text())) == list(json.loads(
        (LLADA_TINY / "config.json").read_text()))  # the release's key order too
    golden = load_file(LLADA_TINY / "golden.safetensors")
    reloaded = Policy.from_pretrained(folder)
    assert reloaded.model.family.name == "llada"
    ones = torch.ones_like(golden["input_ids"], dtype=torch.bool)
    assert (logits(reloaded, golden["input_ids"], ones) - golden["logits"]).abs().max().item() <= 1e-4


def test_a_trained_llada_policy_round_trips_through_llada_layout_and_as_a_llama_folder(tmp_path: Path) -> None:
    policy = Policy.from_pretrained(llada_folder(tmp_path))
    perturb(policy, seed=7)
    ids, attention = fixed_inputs(policy.pad_id)
    expected = logits(policy, ids, attention)
    moved = export_llada_layout(policy, tmp_path / "llada-trained")
    assert not torch.equal(load_file(moved / "model.safetensors")["model.transformer.wte.weight"],
                           load_file(LLADA_TINY / "model.safetensors")["model.transformer.wte.weight"])
    reloaded = Policy.from_pretrained(moved)
    assert reloaded.model.family.name == "llada"
    torch.testing.assert_close(logits(reloaded, ids, attention), expected, rtol=0, atol=1e-6)
    # The plain export is a Llama folder, which the hf family reads as LLaDA is read: positions 0..T-1, no shift.
    llama = Policy.from_pretrained(export_policy(policy, tmp_path / "llama"))
    assert llama.model.family.name == "hf" and type(llama.model.lm).__name__ == "LlamaForCausalLM"
    assert (llama.mask_id, llama.eos_id, llama.pad_id) == (256, 257, 258)
    torch.testing.assert_close(logits(llama, ids, attention), expected, rtol=0, atol=1e-6)


def test_a_lora_llada_policy_exports_merged_in_llada_layout(tmp_path: Path) -> None:
    policy = Policy.from_pretrained(llada_folder(tmp_path), config=PolicyConfig(lora_r=4))
    perturb(policy, scale=0.02, seed=8, only="lora_")
    ids, attention = fixed_inputs(policy.pad_id)
    before = snapshot(policy)
    reloaded = Policy.from_pretrained(export_llada_layout(policy, tmp_path / "merged"))
    assert not reloaded.has_adapters and policy.has_adapters
    assert all(torch.equal(p, before[n]) for n, p in snapshot(policy).items())
    expected = logits(policy, ids, attention)
    with torch.no_grad():
        assert (policy.model(ids, attention, slice(None), adapters_off=True) - expected).abs().max() > 1.0
    # Merging rounds W + (alpha / r) B A once in float32; llada-tiny's N(0, 0.5) weights give logits up to |11|, so
    # the rounding shows at 3e-5 (1e-5 on the small Llama above): within 1e-5 of the logits' scale.
    scale = expected.abs().max().item()
    assert (logits(reloaded, ids, attention) - expected).abs().max().item() <= 1e-5 * scale


def test_a_tied_tiny_llama_exports_with_a_llada_config_built_from_its_llama_config(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer()
    lm = build_model(TinyConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64), len(tokenizer))
    policy = Policy(lm, tokenizer)
    perturb(policy, scale=0.5, seed=9)  # tiny's init is small: make the outputs depend on the input
    ids, attention = fixed_inputs(policy.pad_id)
    folder = export_llada_layout(policy, tmp_path / "tiny-llada")
    raw = json.loads((folder / "config.json").read_text())
    assert list(raw) == list(json.loads((LLADA_TINY / "config.json").read_text()))  # the release's keys, in order
    assert raw["model_type"] == "llada" and raw["weight_tying"] is True and raw["block_type"] == "llama"
    assert (raw["d_model"], raw["n_layers"], raw["mlp_hidden_size"], raw["vocab_size"]) == (32, 2, 64, len(tokenizer))
    assert (raw["mask_token_id"], raw["eos_token_id"], raw["pad_token_id"]) == (256, 257, 258)
    assert "model.transformer.ff_out.weight" not in load_file(folder / "model.safetensors")  # tied: LLaDA reads wte
    reloaded = Policy.from_pretrained(folder)
    assert reloaded.model.family.name == "llada"
    torch.testing.assert_close(logits(reloaded, ids, attention), logits(policy, ids, attention), rtol=0, atol=1e-6)


def test_llada_layout_refuses_a_dream_policy_and_names_a_weight_it_has_no_place_for(tmp_path: Path) -> None:
    dream = Policy.from_pretrained(dream_folder(tmp_path))
    with pytest.raises(ValueError) as refused:
        export_llada_layout(dream, tmp_path / "no")
    assert "\n" not in str(refused.value) and "qwen2" in str(refused.value)
    assert not (tmp_path / "no").exists()
    assert llada_name("model.layers.3.mlp.gate_proj.weight") == "model.transformer.blocks.3.ff_proj.weight"
    with pytest.raises(ValueError, match=r"'model\.layers\.0\.self_attn\.q_norm\.weight' has no LLaDA name"):
        llada_name("model.layers.0.self_attn.q_norm.weight")
