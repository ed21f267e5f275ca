"""`harness bench checkpoint` (harness/bench/checkpoint.py): real checkpoints of a tiny shape, full and LoRA, their
bytes checked against the parameters they hold, and the save overhead of a 2-step run on a 1-layer random model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import save_model

from harness.bench.checkpoint import checkpoint_bench, checkpoint_markdown, overhead_spec, parse_shapes
from harness.loop.trainer import TrainConfig
from harness.model.rollout import RolloutConfig

SHORT = RolloutConfig(gen_length=8, block_length=8, steps=4)


def test_parse_shapes_names_a_bad_entry() -> None:
    assert parse_shapes("tiny, llama-tiny:lora4,llada-1b:full") == ["tiny", "llama-tiny:lora4", "llada-1b:full"]
    for bad in ("llama-small", "tiny:lora", "tiny:lora0", "tiny:half", ""):
        with pytest.raises(ValueError, match="--shapes"):
            parse_shapes(bad)


def test_checkpoints_hold_the_trainable_weights_and_saving_every_step_costs_train_time(tmp_path: Path) -> None:
    spec = overhead_spec(str(save_model(tmp_path / "model")), steps=2, threads=1)
    spec = dataclasses.replace(spec, train=TrainConfig(steps=2, mu=2, prompts_per_step=2, group_size=2,
                                                       rollout=dataclasses.replace(SHORT, temperature=1.3)),
                               eval=dataclasses.replace(spec.eval, limit=2, rollout=SHORT))
    result = checkpoint_bench(["llama-tiny", "llama-tiny:lora4"], 1, spec, 1, tmp_path / "scratch")
    full, lora = result["shapes"]

    for row in (full, lora):
        assert row["total_bytes"] == row["weights_bytes"] + row["optimizer_bytes"] + row["other_bytes"] > 0
        assert row["weights_bytes"] > 0 and row["optimizer_bytes"] > 0 and row["other_bytes"] > 0
        assert row["save_s"] > 0 and row["validate_s"] > 0 and row["load_s"] > 0 and row["reference_s"] > 0
        assert len(row["save_repeats_s"]) == 1 and row["load_ratio"] == row["load_s"] / row["reference_s"]
        # The weights file is its safetensors header plus 4 bytes (float32) per trainable parameter, nothing else.
        assert row["weights_bytes"] - row["weights_header_bytes"] == row["trainable_bytes"] == 4 * row["trainable"]
        # AdamW keeps two moments per trainable parameter (+ step counters and pickling).
        assert row["optimizer_bytes"] > 2 * row["trainable_bytes"]
    assert full["trainable"] == full["parameters"] == lora["parameters"] - lora["trainable"]  # same base model
    # LoRA r = 4 on 2 layers of width 64: per layer 4 * (4 * 128 + 3 * 192) = 4352 adapters, 8704 in all; the full
    # model also trains its two 512 x 64 embedding matrices.
    assert lora["trainable"] == 8704
    assert lora["weights_bytes"] * 5 < full["weights_bytes"]
    assert not list((tmp_path / "scratch").iterdir())  # every round's folder deleted

    overhead = result["overhead"]
    assert overhead["saves_per_run"] == 2 and len(overhead["save_repeats_s"]) == 4  # 2 runs with saving x 2 saves
    assert all(s > 0 for s in overhead["save_repeats_s"]) and overhead["ratio"] > 0
    assert overhead["reference_s"] > 0 and overhead["save_ratio"] == overhead["save_s"] / overhead["reference_s"]
    assert [len(v) for v in overhead["train_s"].values()] == [2, 2]

    text = checkpoint_markdown(result)
    assert "| save s | validate s | load s | reference s |" in text
    for row in (full, lora):
        assert f"| {row['shape']} | {row['parameters']:,} | {row['trainable']:,} |" in text
        assert f"| {row['save_s']:.2f} ({row['save_ratio']:.1f}x) |" in text
    assert f"with --save-every 1 / without = **{overhead['ratio']:.2f}x** (2 steps, 2 saves of" in text
