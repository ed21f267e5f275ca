#!/usr/bin/env python
"""Check that LLaDA's own modelling code loads a trained policy exported in LLaDA's layout and gives its logits.

LLaDA's code is not part of this repository (see README.md here for where it comes from and the patches); point
``--modeling-dir`` at a folder with the two patched files. For LoRA r in (0, 8): load this folder natively, move the
trainable weights (a stand-in for training), export with ``export_llada_layout``, copy LLaDA's two files into the
export, load it with ``AutoModel.from_pretrained(..., trust_remote_code=True)`` and compare its logits on the golden
input ids with the policy's. Prints one Markdown line per case (committed as results/export/llada-code.md).

    python tests/data/llada-tiny/check_export.py --modeling-dir /tmp/llada-code
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/, for conftest.llada_folder


def main() -> None:
    from conftest import llada_folder
    from transformers import AutoModel

    from harness.model.export import export_llada_layout
    from harness.model.policy import Policy, PolicyConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("--modeling-dir", type=Path, required=True)
    code = parser.parse_args().modeling_dir
    ids = load_file(HERE / "golden.safetensors")["input_ids"]  # [3, 16]
    for lora in (0, 8):
        with tempfile.TemporaryDirectory() as tmp:
            policy = Policy.from_pretrained(llada_folder(Path(tmp)), config=PolicyConfig(lora_r=lora))
            generator = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for p in policy.model.parameters():
                    if p.requires_grad:
                        p.add_(0.05 * torch.randn(p.shape, generator=generator))
            want = policy.logits(ids, torch.ones_like(ids, dtype=torch.bool))  # [3, 16, V]
            out = export_llada_layout(policy, Path(tmp) / "export")
            for name in ("modeling_llada.py", "configuration_llada.py"):
                shutil.copy(code / name, out)
            model = AutoModel.from_pretrained(out, trust_remote_code=True, dtype=torch.float32)
            with torch.no_grad():
                got = model(input_ids=ids).logits
            print(f"| {lora} | {type(model).__name__} | {(got - want).abs().max().item():.3g} | "
                  f"{want.abs().max().item():.1f} |")


if __name__ == "__main__":
    main()
