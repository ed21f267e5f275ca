"""Export a trained policy as folders other software loads, without this package.

Training keeps the policy as ``Policy`` (a transformers model, maybe under peft, read by ``MaskPredictor``); what
leaves the harness must load elsewhere: in plain transformers and peft, in LLaDA's own modelling code, and back into
``Policy.from_pretrained`` (so ``harness eval --model FOLDER`` evaluates it). Three shapes, each written atomically
(built in a hidden sibling folder and renamed over the target only once complete):

1. ``export_policy``, full fine-tune (or ``merge_lora=True``): the transformers folder (safetensors) plus the
   tokenizer; ``AutoModelForCausalLM.from_pretrained(folder)`` loads it. config.json keeps ``is_causal: false``,
   carries the policy's ``mask_token_id`` and, where its own keys would load it into another family, the family's
   name under ``families.FAMILY_KEY`` (a Dream policy is a plain Qwen2 folder whose logits the harness reads
   shifted). A LLaDA policy is a Llama after native loading, so its export is a Llama folder (the ``hf`` family
   reads it as LLaDA does: positions 0..T-1, no shift).
2. ``export_policy`` with LoRA adapters: peft's adapter folder (``PeftModel.from_pretrained(base, folder)`` loads
   it) plus the tokenizer and ``base_model.json`` naming the base folder the policy was loaded from.
3. ``export_llada_layout``: a Llama-structured policy under LLaDA's released weight names and OLMo-style
   config.json (the inverse of ``families.LLADA_KEYS``), which LLaDA's ``modeling_llada.py`` loads.

Departures and limits:
1. A merge (``merge_lora=True``, or LoRA in ``export_llada_layout``) runs ``merge_and_unload`` on a deep copy of
   the peft model, so the live policy is never touched: it holds one more copy of the model (and of any gradients
   not yet cleared) on the policy's device while it runs (16 GB more for LLaDA-8B in bfloat16).
2. An adapter export of a LLaDA-family policy names a LLaDA-layout base, which plain transformers cannot read and
   whose module names in LLaDA's code (``attn_out``, ``ff_proj``) are not the adapter's: for LLaDA's own code,
   merge and export in LLaDA's layout.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.model.families import (
    ADAPTER_POINTER,
    FAMILY_KEY,
    LLADA_KEYS,
    AdapterPointer,
    Family,
    family_of,
    read_config,
)
from harness.model.policy import Policy

LLADA_CONFIG = {
    "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
    "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
    "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                 "AutoModel": "modeling_llada.LLaDAModelLM"},
    "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": None,
    "embedding_dropout": 0.0, "embedding_size": None, "eos_token_id": None, "flash_attention": False,
    "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
    "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
    "layer_norm_with_affine": True, "mask_token_id": None, "max_sequence_length": None, "mlp_hidden_size": None,
    "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None, "n_heads": None, "n_kv_heads": None,
    "n_layers": None, "pad_token_id": None, "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": None,
    "rope": True, "rope_full_precision": True, "rope_theta": None, "scale_logits": False,
    "transformers_version": "4.46.3", "use_cache": False, "vocab_size": None, "weight_tying": None,
}
"""LLaDA-8B-Instruct's config.json: its keys in its order, with the values every LLaDA shares; None marks a value
read from the model (sizes, token ids, tying). Keys left out would fall back to OLMo's defaults (``rope: false``,
``block_type: sequential``), a different model in LLaDA's code."""


def export_policy(policy: Policy, folder: Path, merge_lora: bool = False) -> Path:
    """Write the policy's current weights and tokenizer as ``folder`` (see the module docstring for the layouts).

    Under LoRA, ``merge_lora`` writes the merged full model instead of the adapter folder. The policy is unchanged
    (weights, adapters, train/eval mode), and ``Policy.from_pretrained(folder)`` loads either layout. Returns
    ``folder``."""
    folder = Path(folder)
    if policy.has_adapters and not merge_lora:
        if policy.source is None:
            raise ValueError("the policy was built in-process, so its base has no folder for base_model.json to name: "
                             "export with merge_lora=True")
        if folder.resolve() == policy.source:
            raise ValueError(f"{folder} is the adapter's base folder: exporting the adapter there would replace it")
    with staged_folder(folder) as staging:
        if policy.has_adapters and not merge_lora:
            save_adapter(policy, staging)
        else:
            save_full(merged_model(policy), policy, staging)
    return folder


def export_llada_layout(policy: Policy, folder: Path) -> Path:
    """Write a Llama-structured policy (the llada family, the tiny model) in LLaDA's released layout as ``folder``:
    ``model.safetensors`` under LLaDA's weight names in the policy's dtype (adapters merged), LLaDA's config.json (the
    source folder's own, keys and order kept, when it is a LLaDA folder; else built from the Llama config) and the
    tokenizer. A Dream / Qwen2 policy, or a Llama LLaDA's code cannot compute, is a one-line ValueError. Returns
    ``folder``."""
    folder = Path(folder)
    config = policy.predictor.base().config
    refusal = llada_refusal(config)
    if refusal:
        raise ValueError(f"export_llada_layout: {refusal}")
    source = read_config(policy.source) if policy.source and (policy.source / "config.json").is_file() else {}
    raw = source if source.get("model_type") == "llada" else llada_config_of(config, policy)
    from safetensors.torch import save_file

    with staged_folder(folder) as staging:
        tensors = llada_tensors(merged_model(policy), bool(raw["weight_tying"]))
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
        policy.tokenizer.save_pretrained(staging)
    return folder


# ---- the three layouts ---------------------------------------------------------------------------------------------
def merged_model(policy: Policy) -> nn.Module:
    """The transformers model with its LoRA adapters merged in: a merged deep copy (the live model stays as it is),
    or, without adapters, the model itself."""
    lm = policy.predictor.lm
    if not policy.has_adapters:
        return lm
    with torch.no_grad():
        return copy.deepcopy(lm).merge_and_unload()


def save_full(lm: nn.Module, policy: Policy, folder: Path) -> None:
    """The transformers folder plus tokenizer, with the mask id (and, where needed, the family) in config.json."""
    # Under transformers' names: by default transformers 5 saves a model loaded with a key mapping (LLaDA's) under
    # the checkpoint's original names, which config.json (a Llama's) would then not load.
    lm.save_pretrained(folder, save_original_format=False)
    policy.tokenizer.save_pretrained(folder)
    raw = {**read_config(folder), "mask_token_id": policy.mask_id}
    family = policy.predictor.family
    if reading(family_of(raw)) != reading(family):  # e.g. Dream: a plain Qwen2 folder would read unshifted
        raw[FAMILY_KEY] = family.name
        if family_of(raw).name != family.name:
            raise ValueError(f"an export of the {family.name} family would reload as {family_of(raw).name}")
    (folder / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")


def reading(family: Family) -> tuple[bool, bool]:
    """How a family's mask predictor reads the model's outputs (what an export must preserve)."""
    return family.shift_logits, family.positions_skip_padding


def save_adapter(policy: Policy, folder: Path) -> None:
    """peft's adapter folder plus tokenizer, and ``base_model.json`` naming the base folder."""
    assert policy.source is not None
    policy.predictor.lm.save_pretrained(folder)
    policy.tokenizer.save_pretrained(folder)
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = str(policy.source)
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    pointer = AdapterPointer(policy.source, policy.predictor.family.name, policy.mask_id)
    (folder / ADAPTER_POINTER).write_text(pointer.to_json())


# ---- LLaDA's layout -----------------------------------------------------------------------------------------------
def inverse_keys(mapping: dict[str, str]) -> dict[str, str]:
    """A ``^prefix`` regex -> replacement table read backwards (``families.LLADA_KEYS``: Llama's names -> LLaDA's)."""
    inverse = {}
    for pattern, replacement in mapping.items():
        back = "^" + re.escape(replacement).replace(re.escape(r"\1"), r"(\d+)")
        inverse[back] = pattern.removeprefix("^").replace(r"\.", ".").replace(r"(\d+)", r"\1")
    return inverse


LLAMA_TO_LLADA = inverse_keys(LLADA_KEYS)
"""transformers Llama's weight names (regex) -> LLaDA's released ones."""


def llada_name(name: str) -> str:
    """LLaDA's name for a Llama weight; a ValueError names a weight LLaDA's layout has no place for."""
    for pattern, replacement in LLAMA_TO_LLADA.items():
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name, count=1)
    raise ValueError(f"export_llada_layout: weight {name!r} has no LLaDA name (families.LLADA_KEYS)")


def llada_tensors(lm: nn.Module, tied: bool) -> dict[str, torch.Tensor]:
    """The model's weights under LLaDA's names, on the CPU in their own dtype (a tied output head is the embedding
    in LLaDA's code, so it is not written)."""
    state = lm.state_dict()
    if tied:
        state.pop("lm_head.weight", None)
    return {llada_name(name): t.detach().to("cpu").contiguous() for name, t in state.items()}


def llada_refusal(config: Any) -> str | None:
    """Why LLaDA's code could not compute this model (None when it can): a one-line reason."""
    rope = getattr(config, "rope_parameters", None) or {}
    head_dim = getattr(config, "head_dim", None)
    if config.model_type != "llama":
        return f"the policy is a {config.model_type} model; LLaDA's layout holds Llama-structured models only"
    if getattr(config, "is_causal", True) is not False:
        return "the policy is a causal Llama; LLaDA's code attends bidirectionally"
    if config.attention_bias or config.mlp_bias or config.hidden_act != "silu":
        return "LLaDA's llama block has no biases and a SiLU gate"
    if rope.get("rope_type", "default") != "default" or head_dim not in (None, config.hidden_size //
                                                                          config.num_attention_heads):
        return "LLaDA's code knows plain RoPE with head_dim = hidden_size / heads only"
    return None


def llada_config_of(config: Any, policy: Policy) -> dict[str, Any]:
    """LLaDA's config.json for a Llama config (OLMo keys in the release's order), with the policy's token ids."""
    rope = getattr(config, "rope_parameters", None) or {}
    import transformers

    values = {
        "d_model": config.hidden_size, "n_heads": config.num_attention_heads,
        "n_kv_heads": config.num_key_value_heads or config.num_attention_heads,
        "n_layers": config.num_hidden_layers, "mlp_hidden_size": config.intermediate_size,
        "vocab_size": config.vocab_size, "embedding_size": config.vocab_size,
        "max_sequence_length": config.max_position_embeddings, "rope_theta": rope.get("rope_theta", 10000.0),
        "rms_norm_eps": config.rms_norm_eps, "mask_token_id": policy.mask_id, "eos_token_id": policy.eos_id,
        "pad_token_id": policy.pad_id, "weight_tying": bool(config.tie_word_embeddings),
        "transformers_version": transformers.__version__,
    }
    return {key: values.get(key, default) for key, default in LLADA_CONFIG.items()}


# ---- writing a folder atomically -------------------------------------------------------------------------------------
@contextmanager
def staged_folder(folder: Path) -> Iterator[Path]:
    """An empty hidden sibling of ``folder`` to write into; once the block ends it becomes ``folder`` (an existing
    one is moved aside, then deleted, only after the new one is complete). On an error ``folder`` stays as it was."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"export target {folder} is a file, not a folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.export-"))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the export from other users
    try:
        yield staging
        old = staging.with_name(staging.name + "-old")
        if folder.exists():
            folder.rename(old)
        try:
            staging.rename(folder)
        except OSError:
            if old.exists():
                old.rename(folder)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
