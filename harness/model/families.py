"""The model families the policy loads natively, each into a transformers class that ships with the pinned version.

No remote code runs by default (``PolicyConfig.trust_remote_code`` is the fallback for a family not listed here):

``llada``  LLaDA-8B-Instruct / -Base (GSAI-ML). LLaDA is a bidirectional Llama (RMSNorm, RoPE, SwiGLU) under OLMo's
           weight names, so its folder loads into ``LlamaForCausalLM`` with ``is_causal=False`` through one mapping,
           ``LLADA_KEYS`` (checked against LLaDA's own modelling code by tests/test_families.py on a golden file).
           Positions are 0..T-1 whatever the padding (LLaDA's code takes no position ids).
``dream``  Dream-v0-7B (HKU NLP). A bidirectional Qwen2 (its weight names are Qwen2's) whose logits are shifted:
           position i's output predicts token i + 1, so the mask predictor at position i reads the output at i - 1
           (Dream's ``torch.cat([logits[:, :1], logits[:, :-1]], 1)``). Positions skip the left padding, as Dream's
           sampler computes them (``cumsum(attention_mask) - 1``).
``hf``     A stock transformers checkpoint whose config declares its own architecture (the built-in tiny model:
           ``LlamaForCausalLM`` with ``is_causal=False`` in its config.json).

A new family is an entry of ``FAMILIES``: how to detect it from config.json, the transformers config it loads into,
its weight-name mapping, whether its logits are shifted, and its LoRA target modules.

A folder ``export.py`` writes names its family where config.json alone would not (a Dream export is a plain Qwen2
folder plus ``"dllm_family": "dream"``), and an exported LoRA adapter names its base folder in ``base_model.json``
(``AdapterPointer``), which ``Policy.from_pretrained`` follows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LLADA_KEYS = {
    r"^model\.transformer\.wte\.": "model.embed_tokens.",
    r"^model\.transformer\.blocks\.(\d+)\.attn_norm\.": r"model.layers.\1.input_layernorm.",
    r"^model\.transformer\.blocks\.(\d+)\.q_proj\.": r"model.layers.\1.self_attn.q_proj.",
    r"^model\.transformer\.blocks\.(\d+)\.k_proj\.": r"model.layers.\1.self_attn.k_proj.",
    r"^model\.transformer\.blocks\.(\d+)\.v_proj\.": r"model.layers.\1.self_attn.v_proj.",
    r"^model\.transformer\.blocks\.(\d+)\.attn_out\.": r"model.layers.\1.self_attn.o_proj.",
    r"^model\.transformer\.blocks\.(\d+)\.ff_norm\.": r"model.layers.\1.post_attention_layernorm.",
    r"^model\.transformer\.blocks\.(\d+)\.ff_proj\.": r"model.layers.\1.mlp.gate_proj.",
    r"^model\.transformer\.blocks\.(\d+)\.up_proj\.": r"model.layers.\1.mlp.up_proj.",
    r"^model\.transformer\.blocks\.(\d+)\.ff_out\.": r"model.layers.\1.mlp.down_proj.",
    r"^model\.transformer\.ln_f\.": "model.norm.",
    r"^model\.transformer\.ff_out\.": "lm_head.",
}
"""LLaDA's released weight names (regex) -> transformers Llama's. LLaDA's block computes
``ff_out(act(ff_proj(x)) * up_proj(x))``: ``ff_proj`` is the gated branch (Llama's ``gate_proj``)."""

FAMILY_KEY = "dllm_family"
"""config.json key an export writes when the folder's own keys would load it into another family (Dream's export is
a plain Qwen2 folder, which alone would read unshifted)."""

LLAMA_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""d1's LoRA target modules (its diffu_grpo_train.py), under transformers' Llama / Qwen2 names."""


@dataclass(frozen=True)
class Family:
    """How one model family loads and where its mask predictor reads its logits."""

    name: str
    matches: Callable[[dict[str, Any]], bool]
    """Whether a config.json (as a dict) belongs to this family."""
    shift_logits: bool = False
    """Position i's output predicts token i + 1 (Dream): the mask predictor at i reads the output at i - 1."""
    positions_skip_padding: bool = False
    """Position ids count only attended tokens (Dream) instead of 0..T-1 (LLaDA)."""
    native_class: str | None = None
    """The transformers class it loads into (``LlamaForCausalLM``); None: the class its config.json names (``hf``)."""
    native_config: Callable[[dict[str, Any]], Any] | None = None
    """config.json -> the config of ``native_class``."""
    key_mapping: dict[str, str] | None = None
    lora_targets: tuple[str, ...] = LLAMA_LORA_TARGETS


def llada_config(raw: dict[str, Any]):  # noqa: ANN201
    """LLaDA's config.json (OLMo keys) -> a bidirectional ``LlamaConfig`` with its special token ids."""
    from transformers import LlamaConfig

    if raw.get("block_type", "llama") != "llama" or raw.get("alibi") or raw.get("layer_norm_type", "rms") != "rms":
        raise ValueError("only LLaDA's llama blocks (rms norm, RoPE, no alibi) load natively; use --trust-remote-code")
    return LlamaConfig(
        vocab_size=raw.get("embedding_size") or raw["vocab_size"], hidden_size=raw["d_model"],
        intermediate_size=raw["mlp_hidden_size"], num_hidden_layers=raw["n_layers"],
        num_attention_heads=raw["n_heads"], num_key_value_heads=raw.get("n_kv_heads") or raw["n_heads"],
        max_position_embeddings=raw.get("max_sequence_length", 4096), rope_theta=raw.get("rope_theta", 10000.0),
        rms_norm_eps=raw.get("rms_norm_eps", 1e-5), hidden_act="silu", attention_bias=bool(raw.get("include_bias")),
        mlp_bias=bool(raw.get("include_bias")), tie_word_embeddings=bool(raw.get("weight_tying")), is_causal=False,
        mask_token_id=raw.get("mask_token_id"), eos_token_id=raw.get("eos_token_id"),
        pad_token_id=raw.get("pad_token_id"), bos_token_id=raw.get("bos_token_id"))


def dream_config(raw: dict[str, Any]):  # noqa: ANN201
    """Dream's config.json (Qwen2 keys) -> a bidirectional ``Qwen2Config``."""
    from transformers import Qwen2Config

    # Dream's release writes ``rope_theta``; transformers 5 saves it inside ``rope_parameters`` (an export).
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rope_theta", "rope_parameters", "rms_norm_eps",
            "hidden_act", "tie_word_embeddings", "mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id")
    return Qwen2Config(**{k: raw[k] for k in keys if k in raw}, is_causal=False, use_sliding_window=False)


FAMILIES = (
    Family("llada", lambda raw: raw.get("model_type") == "llada", native_class="LlamaForCausalLM",
           native_config=llada_config, key_mapping=LLADA_KEYS),
    Family("dream", lambda raw: str(raw.get("model_type", "")).lower() == "dream" or raw.get(FAMILY_KEY) == "dream",
           shift_logits=True, positions_skip_padding=True, native_class="Qwen2ForCausalLM",
           native_config=dream_config),
)
HF = Family("hf", lambda raw: True)


def read_config(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / "config.json").read_text())


ADAPTER_POINTER = "base_model.json"
"""The file beside an exported LoRA adapter (peft's adapter_config.json + adapter_model.safetensors) naming its base."""


@dataclass(frozen=True)
class AdapterPointer:
    """What ``base_model.json`` holds: the base checkpoint folder the adapter was trained on, and how it was read."""

    base: Path
    """Absolute path of the base checkpoint folder (loaded with its own family loader)."""
    family: str
    mask_token_id: int

    def to_json(self) -> str:
        return json.dumps({"base": str(self.base), "family": self.family, "mask_token_id": self.mask_token_id},
                          indent=2) + "\n"


def read_adapter_pointer(path: Path) -> AdapterPointer | None:
    """The base an exported adapter folder points at; None for a folder that is not one."""
    pointer = Path(path) / ADAPTER_POINTER
    if not pointer.is_file() or not (Path(path) / "adapter_config.json").is_file():
        return None
    raw = json.loads(pointer.read_text())
    return AdapterPointer(Path(raw["base"]), str(raw["family"]), int(raw["mask_token_id"]))


def family_of(raw: dict[str, Any]) -> Family:
    """The family a config.json belongs to (``hf`` when no listed family claims it)."""
    return next((f for f in FAMILIES if f.matches(raw)), HF)


def load_model(path: Path, family: Family, dtype, trust_remote_code: bool = False):  # noqa: ANN001, ANN201
    """The folder's weights in the family's transformers class (remote code only when asked for)."""
    import transformers
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    if trust_remote_code:
        config = AutoConfig.from_pretrained(path, trust_remote_code=True)
        loader = AutoModelForCausalLM if "AutoModelForCausalLM" in getattr(config, "auto_map", {}) else AutoModel
        return loader.from_pretrained(path, trust_remote_code=True, dtype=dtype)
    if family.native_class is None:
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, output_loading_info=True)
    else:
        cls = getattr(transformers, family.native_class)
        model, info = cls.from_pretrained(path, config=family.native_config(read_config(path)), dtype=dtype,
                                          key_mapping=family.key_mapping, output_loading_info=True)
    missing, unexpected = sorted(info.get("missing_keys", ())), sorted(info.get("unexpected_keys", ()))
    if missing or unexpected:  # a silently re-initialised weight would train a different model
        raise ValueError(f"{path}: the {family.name} weights do not fit {type(model).__name__} (missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}); is it a {family.name} checkpoint?")
    return model
