"""`harness bench decode` (issue #23): protocols parse to the sampler's settings, bad ones name themselves, and the
tables count what the sampler did on the same items (the paired reference against itself is exactly zero)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from conftest import SevensTask, make_policy, run_main

from harness.bench.decode import DecodeBench, decode_bench, decode_markdown, protocol_config
from harness.model.rollout import RolloutConfig

BASE = RolloutConfig(gen_length=8, block_length=4, steps=4)


def test_protocols_name_the_samplers_settings() -> None:
    assert protocol_config("plain", BASE) == dataclasses.replace(BASE, steps=8)
    assert protocol_config("default", BASE) == BASE
    assert protocol_config("threshold=0.7", BASE) == dataclasses.replace(BASE, decode="threshold", threshold=0.7)
    assert protocol_config("factor=2+dual", BASE) == dataclasses.replace(BASE, decode="factor", factor=2.0,
                                                                         cache="dual")
    assert protocol_config("plain+prefix", BASE).cache == "prefix"


@pytest.mark.parametrize("text", ["fast", "threshold", "threshold=x", "plain+full", "default=3", "factor=-1"])
def test_a_bad_protocol_is_one_line_naming_it(text: str) -> None:
    with pytest.raises(ValueError, match=rf"^--protocols '{re.escape(text)}': .*RULE\[\+CACHE\]") as error:
        protocol_config(text, BASE)
    assert "\n" not in str(error.value)


def test_the_task_table_counts_forwards_and_pairs_every_protocol_with_plain() -> None:
    policy, task = make_policy(dtype=torch.float32), SevensTask()
    items = task.load("test")[:6]
    bench = DecodeBench(protocols=("plain", "default", "threshold=0.0", "plain+dual"), speed_shape="llama-tiny",
                        speed_protocols=("plain", "plain+dual"), speed_repeats=1, prompt_length=8, gen_length=8,
                        block_length=4)
    result = decode_bench(policy, task, items, BASE, 4, bench, threads=1)
    rows = {row["protocol"]: row for row in result["task_rows"]}
    assert rows["plain"]["forwards_per_item"] == 8 and rows["default"]["forwards_per_item"] == 4
    assert rows["threshold=0.0"]["forwards_per_item"] == 2  # every masked token clears 0: one step per block
    assert rows["threshold=0.0"]["forward_ratio"] == 4.0
    assert rows["plain"]["paired"]["mean"] == 0.0 and rows["plain"]["paired"]["p"] == 1.0
    assert rows["plain+dual"]["batch_forwards"] == 2 * 8  # two batches (4 + 2 items) of 8 steps: the same calls
    width = rows["plain"]["positions_per_item"] / 8  # T: the uncached sampler computes every position per forward
    # dual: per block one refresh over T, then three steps over the 4 block positions
    assert rows["plain+dual"]["positions_per_item"] == 2 * (width + 3 * 4)
    speed = {row["protocol"]: row for row in result["speed_rows"]}
    assert speed["plain"]["forwards"] == speed["plain+dual"]["forwards"] == 8
    assert speed["plain"]["positions"] == 8 * 16 and speed["plain+dual"]["positions"] == 2 * (16 + 3 * 4)
    assert speed["plain"]["speedup"] == 1.0
    text = decode_markdown({"model": "test", **result})
    assert "| threshold=0.0 | 2.00 | 4.00 |" in text and "## Speed: llama-tiny" in text


@pytest.mark.parametrize(("flags", "message"), [
    (("--protocols", "plain,turbo"), "--protocols 'turbo'"),
    (("--speed-shape", "llada-9b"), "--speed-shape 'llada-9b': not one of"),
    (("--speed-protocols", "plain+full"), "--speed-protocols 'plain+full'"),
    (("--tasks", "sudoku,countdown"), "--tasks sudoku,countdown: one task")])
def test_the_command_refuses_bad_settings_in_one_line_before_loading_anything(
        flags: tuple[str, ...], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    result = run_main("bench", "decode", *flags, "--out", str(tmp_path), cwd=tmp_path, monkeypatch=monkeypatch,
                      capsys=capsys)
    assert result.returncode != 0 and message in result.stdout + result.stderr
    assert not (tmp_path / "bench").exists()
