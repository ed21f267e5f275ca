"""Fast-dLLM's block-wise KV cache (arXiv 2505.22618, §3.2) in the one sampler (issue #23): a prefix and a dual cache
rebuilt before every step decode exactly what the uncached sampler decodes, token for token (the cached attention
path: positions, padding, the order of the cached keys, Dream's shift); the cache refreshed once per block makes as
many forward calls as the uncached sampler over fewer positions; remote code is refused in one line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import dream_folder, make_policy

from harness.model.families import HF
from harness.model.kv_cache import BlockCache, CacheUnsupported
from harness.model.policy import Policy
from harness.model.predictor import MaskPredictor
from harness.model.rollout import RolloutConfig, generate
from harness.model.structs import ROLLOUT_STREAM, generators, row_seeds
from harness.runs.sweep import RECIPES, validate_spec

PROMPTS = ["hi", "a much longer prompt than the others", "seven", "1 2 3 4 5 6 7 8 9"]
"""Prompts of different lengths: the batch is left-padded (up to 33 pad tokens in a row)."""
BASE = RolloutConfig(gen_length=12, block_length=4, steps=12, temperature=0.0)
PROTOCOLS = {
    "greedy, 1 token per step": BASE,
    "sampled, 2 per step, micro-batched": dataclasses.replace(BASE, steps=6, temperature=1.0, micro_batch_size=3),
    "threshold 0.3, sampled": dataclasses.replace(BASE, decode="threshold", threshold=0.3, temperature=0.7),
    "ass with eoser 0.01, sampled": dataclasses.replace(BASE, decode="ass", eos_gamma_min=0.01, temperature=1.0),
}


@pytest.fixture(scope="module")
def policy() -> Policy:
    return make_policy(dtype=torch.float64)


def decode(policy: Policy, cfg: RolloutConfig, prompts: list[str] = PROMPTS, seed: int = 0):  # noqa: ANN201
    ids, mask = policy.encode_prompts([[{"role": "user", "content": p}] for p in prompts])  # [N, P], left-padded
    return generate(policy, ids, mask, cfg, generators(row_seeds(seed, len(prompts)), ROLLOUT_STREAM))


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_a_cache_rebuilt_every_step_decodes_exactly_what_the_uncached_sampler_decodes(
        policy: Policy, cache: str, protocol: str) -> None:
    plain = PROTOCOLS[protocol]
    uncached = decode(policy, plain)
    cached = decode(policy, dataclasses.replace(plain, cache=cache, cache_refresh="step"))
    assert torch.equal(cached.completion_ids, uncached.completion_ids)
    assert cached.decode.forwards == uncached.decode.forwards
    assert len({row.count(policy.mask_id) for row in uncached.completion_ids.tolist()}) == 1  # no mask is left
    assert len(set(uncached.texts)) > 1  # the rows differ: the comparison can fail


def test_dream_shifted_logits_decode_exactly_through_either_cache(tmp_path: Path) -> None:
    policy = Policy.from_pretrained(dream_folder(tmp_path, seed=5), dtype=torch.float64)
    plain = PROTOCOLS["sampled, 2 per step, micro-batched"]
    uncached = decode(policy, plain)
    for cache in ("prefix", "dual"):
        cached = decode(policy, dataclasses.replace(plain, cache=cache, cache_refresh="step"))
        assert torch.equal(cached.completion_ids, uncached.completion_ids), cache


def test_the_refresh_forward_reads_the_blocks_logits_of_the_full_forward(policy: Policy) -> None:
    ids, mask = policy.encode_prompts([[{"role": "user", "content": p}] for p in PROMPTS])  # [4, P]
    x = torch.cat([ids, torch.full((4, 8), policy.mask_id)], dim=1)  # [4, P + 8]
    x[:, -8:-5] = ids[:, -3:]  # some revealed completion tokens
    attention = torch.cat([mask, torch.ones(4, 8, dtype=torch.bool)], dim=1)
    block = slice(ids.shape[1] + 4, ids.shape[1] + 8)
    expected = policy.logits(x, attention, block)  # [4, 4, V]
    for mode in ("prefix", "dual"):
        cache = BlockCache(policy.predictor, mode, attention, refresh="step")
        first = cache.logits(x, block)  # the refresh, then the window against the fresh cache
        assert torch.allclose(first, expected, rtol=0, atol=1e-10), mode
        fresh = BlockCache(policy.predictor, mode, attention).logits(x, block)  # the refresh's own logits
        assert torch.allclose(fresh, expected, rtol=0, atol=1e-10), mode


def test_a_cache_refreshed_per_block_makes_the_same_calls_over_fewer_positions(policy: Policy) -> None:
    cfg = dataclasses.replace(BASE, gen_length=8, steps=8)  # 2 blocks of 4 steps, one token each
    plain = decode(policy, cfg)
    width = plain.prompt_ids.shape[1] + 8  # T
    assert plain.decode.positions == 8 * 4 * width  # forwards x rows x T
    for cache, windows in (("prefix", (8, 4)), ("dual", (4, 4))):  # window of block 1 and block 2 per step
        cached = decode(policy, dataclasses.replace(cfg, cache=cache))
        assert cached.decode.forwards == plain.decode.forwards == 8
        # per block: one refresh over all T positions, then three steps over the window
        assert cached.decode.positions == 4 * sum(width + 3 * w for w in windows), cache
        assert (cached.completion_ids != policy.mask_id).all()


def test_remote_code_is_refused_in_one_line_naming_the_class() -> None:
    class RemoteModel(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, **kwargs) -> None: ...  # noqa: ANN003

    with pytest.raises(CacheUnsupported, match="native family .* RemoteModel is not one") as error:
        BlockCache(MaskPredictor(RemoteModel(), HF), "prefix", torch.ones(1, 4, dtype=torch.bool))
    assert "\n" not in str(error.value)


def test_fsdp_sharded_layers_are_refused_in_one_line() -> None:
    class FullyShardedDataParallel(torch.nn.Module):  # the name accelerate's FSDP wraps each layer in
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

    policy = make_policy(layers=1)
    policy.predictor.lm.model.layers[0] = FullyShardedDataParallel(policy.predictor.lm.model.layers[0])
    with pytest.raises(CacheUnsupported, match="under FSDP"):
        BlockCache(policy.predictor, "dual", torch.ones(1, 4, dtype=torch.bool))


def test_the_cache_is_part_of_the_protocol_and_its_choices_are_checked() -> None:
    with pytest.raises(ValueError, match="cache"):
        dataclasses.replace(BASE, cache="full").validate()
    with pytest.raises(ValueError, match="cache_refresh"):
        dataclasses.replace(BASE, cache="prefix", cache_refresh="never").validate()


def test_a_sweep_asking_for_the_cache_with_remote_code_is_refused_naming_the_flag() -> None:
    spec = RECIPES["compare"]
    remote = dataclasses.replace(spec, policy=dataclasses.replace(spec.policy, trust_remote_code=True))
    validate_spec(remote)  # remote code alone is fine
    cached = dataclasses.replace(remote.eval, rollout=dataclasses.replace(remote.eval.rollout, cache="dual"))
    with pytest.raises(ValueError, match="^--eval-rollout-cache dual: the KV cache needs a native family"):
        validate_spec(dataclasses.replace(remote, eval=cached))
