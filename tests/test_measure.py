"""Experimental checks of harness/loop/measure.py: the CPU peak-memory split is exact where it can be, and it shows
the BGPO vs VRPO-OL activation-memory property (n_t graphs alive at once versus one at a time)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest
import torch
import torch.optim.optimizer as optimizer_hooks
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode
from transformers import LlamaConfig, LlamaForCausalLM

import harness.loop.measure as measure
from harness.loop.measure import BYTES_PER_MB, MemorySplit, Meter, MeterReading, tensor_bytes, track_peak_memory

VOCAB = 64
BATCH, LENGTH = 8, 32  # [N, T] of the token batches below
N_DRAWS = 4  # K: Monte Carlo draws per update, as n_t in BGPO / VRPO-OL
ROLLOUT_CALLS = 8  # no-grad forwards standing in for the denoising steps of a rollout
STEP_BYTES = 4  # AdamW keeps `step` as a float32 scalar tensor per parameter on CPU (not capturable, not fused)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        is_causal=False,
    )
    return LlamaForCausalLM(config).double()


def mlp(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 8)).to(dtype)


def token_batch(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (BATCH, LENGTH), generator=generator)  # [N, T]


def llama_loss(model: LlamaForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    return model(ids).logits.pow(2).mean()  # logits: [N, T, V] -> scalar


def param_bytes(model: nn.Module) -> int:
    return tensor_bytes(model.parameters())


def assert_parts_add_up(split: MemorySplit) -> None:
    assert split.params + split.grads + split.optimizer + split.activations == split.total


# ----------------------------------------------------------------------------------------------------------------
# Exact categories
# ----------------------------------------------------------------------------------------------------------------


def test_tensor_bytes_is_elements_times_element_size() -> None:
    # 3 * 4 float64 = 96 bytes, 5 float32 = 20 bytes, 2 int64 = 16 bytes.
    tensors = [torch.zeros(3, 4, dtype=torch.float64), torch.zeros(5), torch.zeros(2, dtype=torch.long)]
    assert tensor_bytes(tensors) == 132


@pytest.mark.parametrize(("dtype", "element_size"), [(torch.float32, 4), (torch.float64, 8)])
def test_params_part_is_exactly_the_parameter_bytes(dtype: torch.dtype, element_size: int) -> None:
    model = mlp(dtype)
    # Linear(16, 32): 16 * 32 + 32 = 544 elements; Linear(32, 8): 32 * 8 + 8 = 264 elements.
    expected = (544 + 264) * element_size
    assert param_bytes(model) == expected
    with track_peak_memory(model, None) as memory, torch.no_grad():
        model(torch.ones(4, 16, dtype=dtype))
    assert memory.split.params == expected
    assert memory.split.grads == memory.split.optimizer == 0
    assert memory.split.activations > 0
    assert_parts_add_up(memory.split)


def test_llama_params_part_counts_parameters_and_rotary_buffers() -> None:
    model = tiny_llama()
    buffers = tensor_bytes(model.buffers())  # rotary inv_freq and original_inv_freq: 2 * 4 float64 = 64 bytes
    assert buffers == 64
    with track_peak_memory(model, None) as memory, torch.no_grad():
        model(token_batch())
    assert memory.split.params == param_bytes(model) + buffers


def test_split_is_not_available_inside_the_context() -> None:
    with track_peak_memory(mlp(torch.float64), None) as memory, pytest.raises(RuntimeError):
        _ = memory.split


def test_grads_after_backward_are_exactly_the_parameter_bytes() -> None:
    model = tiny_llama()
    with track_peak_memory(model, None) as memory:
        llama_loss(model, token_batch()).backward()
    assert all(p.grad is not None for p in model.parameters())  # every parameter gets a grad
    assert memory.end.grads == param_bytes(model)
    assert memory.split.grads <= param_bytes(model)  # at the peak backward may not have produced all of them


def test_adamw_state_is_two_moments_and_a_float32_step_per_parameter() -> None:
    model = tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters())
    with track_peak_memory(model, optimizer) as memory:
        llama_loss(model, token_batch()).backward()
        optimizer.step()
    n_tensors = len(list(model.parameters()))  # 21: embeddings, 2 x 9 per layer, final norm, lm_head
    for state in optimizer.state.values():
        assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
        assert state["step"].dtype == torch.float32 and state["step"].dim() == 0
    expected = 2 * param_bytes(model) + STEP_BYTES * n_tensors
    assert memory.end.optimizer == expected


def test_peak_of_a_warm_step_holds_params_grads_and_state_exactly() -> None:
    # Once grads and AdamW state exist before the step (zero_grad keeps the tensors), every one of them is alive
    # at the peak, so the three owned parts are exact at the peak too.
    model = tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters())
    llama_loss(model, token_batch()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)
    with track_peak_memory(model, optimizer) as memory:
        llama_loss(model, token_batch(1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
    n_tensors = len(list(model.parameters()))
    peak = memory.split
    assert peak.params == param_bytes(model) + tensor_bytes(model.buffers())
    assert peak.grads == param_bytes(model)
    assert peak.optimizer == 2 * param_bytes(model) + STEP_BYTES * n_tensors
    assert peak.activations > peak.params  # the batch's graph dominates this tiny model
    assert_parts_add_up(peak)


# ----------------------------------------------------------------------------------------------------------------
# The Meter in an RL-shaped step
# ----------------------------------------------------------------------------------------------------------------


def rl_shaped_step(
    meter: Meter, model: LlamaForCausalLM, optimizer: torch.optim.Optimizer, *, graphs_alive: int
) -> MeterReading:
    """Rollout (no-grad forwards), then an update over N_DRAWS losses with ``graphs_alive`` graphs kept at once."""
    with meter.phase("rollout"), torch.no_grad():
        for _ in range(ROLLOUT_CALLS):
            model(token_batch())
    with meter.phase("update"):
        for start in range(0, N_DRAWS, graphs_alive):
            losses = [llama_loss(model, token_batch(start + k)) for k in range(graphs_alive)]
            torch.stack(losses).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return meter.read()


def test_keeping_all_draw_graphs_alive_costs_over_three_times_the_activations() -> None:
    # VRPO-OL shape: 4 forward graphs alive, summed, one backward. BGPO shape: forward + backward 4 times.
    model = tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters())
    meter = Meter(model=model, optimizer=optimizer, track_memory=True)
    joint = rl_shaped_step(meter, model, optimizer, graphs_alive=N_DRAWS).peak
    sequential = rl_shaped_step(meter, model, optimizer, graphs_alive=1).peak
    assert joint is not None and sequential is not None
    ratio = joint.activations / sequential.activations
    print(
        f"\nactivation peak: {N_DRAWS} graphs alive {joint.activations} B, one at a time "
        f"{sequential.activations} B, ratio {ratio:.2f}"
    )
    assert ratio > 3.0
    assert joint.params == sequential.params


def test_every_step_reports_its_phase_times_and_only_tracked_steps_a_peak_split() -> None:
    # How much slower a tracked step runs (module docstring, departure 3) is a speed, not a promise: not asserted
    # here. What the trainer relies on is asserted: phase times of both kinds of step, a peak only when tracked.
    model = tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters())

    def timed_steps(track_memory: bool) -> list[tuple[float, MeterReading]]:
        meter = Meter(model=model, optimizer=optimizer, track_memory=track_memory)
        steps = []
        for _ in range(3):
            start = time.perf_counter()
            reading = rl_shaped_step(meter, model, optimizer, graphs_alive=1)
            steps.append((time.perf_counter() - start, reading))
        return steps

    untracked, tracked_steps = timed_steps(False), timed_steps(True)
    for wall, reading in untracked + tracked_steps:
        assert set(reading.times_s) == {"rollout", "update"}
        assert all(math.isfinite(t) and t > 0 for t in reading.times_s.values()), reading.times_s
        assert sum(reading.times_s.values()) <= wall  # the phases ran inside the step timed around them
        memory = reading.peak.to_mb() if reading.peak is not None else {}
        assert reading.to_metrics() == {**{f"time/{name}_s": t for name, t in reading.times_s.items()}, **memory}
    assert all(reading.peak is None for _, reading in untracked)
    peaks = [reading.peak for _, reading in tracked_steps]
    assert all(peak is not None for peak in peaks)
    assert peaks[0] == peaks[1] == peaks[2]  # the same warm step every time: the split is exact, not sampled
    for peak in peaks:
        assert_parts_add_up(peak)
        assert peak.params == param_bytes(model) + tensor_bytes(model.buffers())
        assert peak.grads > 0 and peak.optimizer > 0 and peak.activations > 0
    params_mb = (param_bytes(model) + tensor_bytes(model.buffers())) / BYTES_PER_MB
    assert tracked_steps[0][1].to_metrics()["mem/peak_params_mb"] == params_mb


class TickingClock:
    """A stand-in for ``time`` in harness/loop/measure.py: each ``perf_counter()`` call is ``tick`` seconds after the
    previous one, so a phase entered and left at once lasts exactly one tick."""

    def __init__(self, tick: float) -> None:
        self.tick, self.now = tick, 0.0

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


def test_meter_sums_reentered_phases_and_resets_after_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(measure, "time", TickingClock(0.25))  # a power of two: the sums below are exact
    meter = Meter()
    for _ in range(2):
        with meter.phase("reward"):
            pass
    with meter.phase("update"):
        pass
    reading = meter.read()
    assert reading.times_s == {"reward": 0.5, "update": 0.25}  # entered twice: 2 ticks; once: 1 tick
    assert reading.peak is None
    with meter.phase("rollout"):
        pass
    assert meter.read().times_s == {"rollout": 0.25}  # the read reset the step: "reward" and "update" are gone
    assert meter.read() == MeterReading(times_s={}, peak=None)


def test_meter_works_without_optimizer_and_before_any_grads() -> None:
    model = tiny_llama()
    meter = Meter(model=model, optimizer=None, track_memory=True)
    with meter.phase("forward"), torch.no_grad():
        model(token_batch())
    forward_only = meter.read().peak
    assert forward_only is not None
    assert forward_only.grads == forward_only.optimizer == 0
    assert forward_only.params == param_bytes(model) + tensor_bytes(model.buffers())
    with meter.phase("forward_backward"):
        llama_loss(model, token_batch()).backward()
    bench = meter.read().peak
    # From scratch the peak (end of forward) comes before backward has produced any grads.
    assert bench is not None and bench.optimizer == 0 and bench.grads <= param_bytes(model)
    assert bench.activations > forward_only.activations  # the graph is kept for backward, unlike under no_grad
    assert_parts_add_up(bench)


def test_meter_reports_flat_metric_names_in_mib() -> None:
    split = MemorySplit(
        params=BYTES_PER_MB,
        grads=2 * BYTES_PER_MB,
        optimizer=0,
        activations=BYTES_PER_MB // 2,
        total=3 * BYTES_PER_MB + BYTES_PER_MB // 2,
    )
    assert split.to_mb() == {
        "mem/peak_total_mb": 3.5,
        "mem/peak_params_mb": 1.0,
        "mem/peak_grads_mb": 2.0,
        "mem/peak_optimizer_mb": 0.0,
        "mem/peak_activations_mb": 0.5,
    }
    metrics = MeterReading(times_s={"rollout": 1.5}, peak=split).to_metrics()
    assert metrics["time/rollout_s"] == 1.5 and metrics["mem/peak_total_mb"] == 3.5


def _hook_counts(model: nn.Module) -> tuple[int, ...]:
    module_hooks = torch.nn.modules.module
    param_hooks = sum(
        len(p._backward_hooks or {}) + len(p._post_accumulate_grad_hooks or {}) for p in model.parameters()
    )
    return (
        len(module_hooks._global_forward_pre_hooks),
        len(module_hooks._global_forward_hooks),
        len(optimizer_hooks._global_optimizer_pre_hooks),
        len(optimizer_hooks._global_optimizer_post_hooks),
        param_hooks,
    )


@pytest.mark.parametrize("fail", [False, True], ids=["clean_step", "failing_step"])
def test_tracking_leaves_no_hooks_or_dispatch_mode_behind(fail: bool) -> None:
    model = tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters())
    before = _hook_counts(model)
    meter = Meter(model=model, optimizer=optimizer, track_memory=True)

    def step() -> MeterReading:
        return rl_shaped_step(meter, model, optimizer, graphs_alive=1)

    if fail:
        with pytest.raises(ZeroDivisionError), meter.phase("update"):
            llama_loss(model, token_batch()).backward()
            _ = 1 / 0
    else:
        step()
    assert _get_current_dispatch_mode() is None
    assert _hook_counts(model) == before
    assert step() is not None  # the next tracked step starts cleanly


def test_cuda_split_arithmetic_with_a_faked_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    # No GPU in CI: fake the three allocator calls the CUDA path makes and check its bookkeeping on CPU tensors.
    fake_peak = 8 * BYTES_PER_MB
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("sync"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: fake_peak)
    model = tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters())
    meter = Meter(model=model, optimizer=optimizer, device="cuda", track_memory=True)
    peak = rl_shaped_step(meter, model, optimizer, graphs_alive=1).peak
    assert peak is not None and calls[0] == "reset" and "sync" in calls
    n_tensors = len(list(model.parameters()))
    # Grads were freed by zero_grad(set_to_none=True) before read(); the pre-step sample still saw all of them.
    assert peak.grads == param_bytes(model)
    assert peak.params == param_bytes(model)
    assert peak.optimizer == 2 * param_bytes(model) + STEP_BYTES * n_tensors
    assert peak.total == fake_peak
    assert_parts_add_up(peak)
