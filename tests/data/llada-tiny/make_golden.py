#!/usr/bin/env python
"""Regenerate the tiny LLaDA golden fixture in this folder.

Builds a tiny, randomly initialised model with LLaDA's *own* released modelling code
(``configuration_llada.py`` + ``modeling_llada.py`` from the Hugging Face repo
GSAI-ML/LLaDA-8B-Instruct, patched only as far as transformers 5.x requires, see
``patches.diff``), saves it in the released checkpoint layout (``config.json`` +
``model.safetensors`` with ``model.transformer.*`` names) and records the float32
logits of LLaDA's plain forward (``attention_mask=None``) in ``golden.safetensors``.

LLaDA's code is not part of this repository; point ``--modeling-dir`` at a folder
that holds the two (patched) files. See README.md for provenance.

    python tests/data/llada-tiny/make_golden.py --modeling-dir /tmp/llada-code
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent

# Tiny sizes; every other value follows the released LLaDA-8B-Instruct config.json.
TINY = dict(
    d_model=32,
    n_heads=4,
    n_kv_heads=4,
    n_layers=2,
    mlp_hidden_size=64,
    vocab_size=288,
    embedding_size=288,
    max_sequence_length=128,
    mask_token_id=256,
    eos_token_id=257,
    pad_token_id=258,
)
BATCH, SEQ_LEN = 3, 16
SEED = 0


def released_config(tiny: dict) -> dict:
    """The key set (and key order) of GSAI-ML/LLaDA-8B-Instruct's config.json, tiny sizes."""
    cfg = {
        "activation_type": "silu",
        "alibi": False,
        "alibi_bias_max": 8.0,
        "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0,
        "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True,
        "auto_map": {
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
            "AutoModel": "modeling_llada.LLaDAModelLM",
        },
        "bias_for_layer_norm": False,
        "block_group_size": 1,
        "block_type": "llama",
        "d_model": None,
        "embedding_dropout": 0.0,
        "embedding_size": None,
        "eos_token_id": None,
        "flash_attention": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "init_cutoff_factor": None,
        "init_device": "meta",
        "init_fn": "mitchell",
        "init_std": 0.02,
        "input_emb_norm": False,
        "layer_norm_type": "rms",
        "layer_norm_with_affine": True,
        "mask_token_id": None,
        "max_sequence_length": None,
        "mlp_hidden_size": None,
        "mlp_ratio": 4,
        "model_type": "llada",
        "multi_query_attention": None,
        "n_heads": None,
        "n_kv_heads": None,
        "n_layers": None,
        "pad_token_id": None,
        "precision": "amp_bf16",
        "residual_dropout": 0.0,
        "rms_norm_eps": 1e-05,
        "rope": True,
        "rope_full_precision": True,
        "rope_theta": 500000.0,
        "scale_logits": False,
        "transformers_version": "4.46.3",
        "use_cache": False,
        "vocab_size": None,
        "weight_tying": False,
    }
    for k, v in tiny.items():
        assert k in cfg, k
        cfg[k] = v
    assert all(v is not None for k, v in cfg.items() if k not in ("init_cutoff_factor", "multi_query_attention"))
    return cfg


def import_llada(modeling_dir: Path):
    """Import the folder as a package so that modeling_llada's `from .configuration_llada import` works."""
    name = "llada_release"
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(modeling_dir)]
    sys.modules[name] = importlib.util.module_from_spec(spec)
    conf = importlib.import_module(f"{name}.configuration_llada")
    mod = importlib.import_module(f"{name}.modeling_llada")
    return conf, mod


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def randomise_(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Non-trivial random weights: N(0, 0.5) matrices, RMSNorm weights 1 + 0.1 * N(0, 1)."""
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.ndim == 1:  # attn_norm / ff_norm / ln_f (no biases in this config)
                assert name.endswith("norm.weight") or name.endswith("ln_f.weight"), name
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.5 * noise)


def logits_of(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=None)
    return out.logits.to(torch.float32).contiguous()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modeling-dir", type=Path, required=True,
                    help="folder with LLaDA's (patched) configuration_llada.py and modeling_llada.py")
    ap.add_argument("--out", type=Path, default=HERE, help="output folder (default: this script's folder)")
    args = ap.parse_args()

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(1)

    conf_mod, model_mod = import_llada(args.modeling_dir)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    # config.json in the released layout, then read back through LLaDA's own config class.
    cfg_dict = released_config(TINY)
    (out / "config.json").write_text(json.dumps(cfg_dict, indent=2) + "\n")
    config = conf_mod.LLaDAConfig.from_pretrained(str(out))
    for k, v in TINY.items():
        assert getattr(config, k) == v, (k, getattr(config, k), v)

    model = model_mod.LLaDAModelLM(config).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(SEED)
    randomise_(model, gen)

    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    assert all(k.startswith("model.transformer.") for k in state), sorted(state)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})

    input_ids = torch.randint(0, TINY["vocab_size"], (BATCH, SEQ_LEN), generator=gen, dtype=torch.long)
    mask_pos = torch.rand((BATCH, SEQ_LEN), generator=gen) < 0.3
    mask_pos[:, 0] = False
    mask_pos[0, 1] = mask_pos[1, -1] = mask_pos[2, SEQ_LEN // 2] = True
    input_ids[mask_pos] = TINY["mask_token_id"]
    logits = logits_of(model, input_ids)

    # Self-check: a fresh LLaDA model loading the saved file (strict) reproduces the logits exactly.
    fresh = model_mod.LLaDAModelLM(config).to(torch.float32).eval()
    fresh.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    assert torch.equal(logits_of(fresh, input_ids), logits)
    assert torch.isfinite(logits).all()

    meta = {
        "source": "GSAI-ML/LLaDA-8B-Instruct modelling code, patched for transformers 5 (see README.md)",
        "configuration_llada.py.sha256": sha256(args.modeling_dir / "configuration_llada.py"),
        "modeling_llada.py.sha256": sha256(args.modeling_dir / "modeling_llada.py"),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "forward": "LLaDAModelLM(input_ids=input_ids, attention_mask=None).logits, float32, eval",
    }
    save_file({"input_ids": input_ids.contiguous(), "logits": logits}, str(out / "golden.safetensors"),
              metadata={"provenance": json.dumps(meta, sort_keys=True)})  # one key: byte-stable header

    print(f"wrote {out}: logits {tuple(logits.shape)} std={logits.std():.3f} "
          f"absmax={logits.abs().max():.3f}, masks={int(mask_pos.sum())}")
    for f in ("config.json", "model.safetensors", "golden.safetensors"):
        print(f"  {f}  {sha256(out / f)}")


if __name__ == "__main__":
    main()
