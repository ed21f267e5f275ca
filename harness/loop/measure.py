"""Phase timers and the peak-memory split of one RL step (params / grads / optimizer state / activations).

The memory claim we test (BGPO keeps one Monte Carlo draw's graph alive, VRPO-OL keeps all n_t) is a claim about
*activation* memory at the peak, so a total is not enough: we split the peak into what the model owns (params),
what backward leaves behind (grads), what the optimizer keeps (state), and everything else (activations).

How the split is obtained:
    CPU   torch's ``MemTracker`` (``torch.distributed._tools.mem_tracker``), a TorchDispatchMode that sees every
          tensor storage created while it is active and labels it. The peak snapshot for the device is mapped as
          Parameter+Buffer -> params, Gradient -> grads, Optstate -> optimizer, Total -> total, and activations =
          total minus those three (Activation + Temp + Other, and any category a later torch adds).
    CUDA  the caching allocator's ``max_memory_allocated`` since the step started; params, grads and optimizer
          state are summed tensor by tensor and activations are the remainder.

Departures and caveats:
    1. ``MemTracker`` is a private API. It is used only by ``track_peak_memory`` below, and
       ``tests/test_measure.py`` pins the properties we rely on, so a torch upgrade that changes it fails there.
    2. ``MemTracker`` refuses a second top-level forward of the same module in one context ("multiple iterative
       calls"); a rollout calls the model once per denoising step. Our subclass drops that module's
       per-module statistics before the call. We never read per-module statistics, only the global peak, so it
       also skips their upkeep on every op.
    3. The tracker runs Python code on every dispatched op, so a tracked step runs several times slower (about
       6x on the tiny test Llama; less on bigger models, where kernels dominate). Times from a tracked step are not
       representative; the caller decides which steps track memory (``TrainConfig.track_memory_steps``) and
       should report times from untracked steps.
    4. On CPU only tensors created while tracking, plus the model and optimizer passed in, are seen. A tensor made
       before the step and not passed in (for instance a reference model's weights) is invisible. On CUDA it is in
       ``max_memory_allocated`` and so lands in "activations".
    5. On CUDA the parts are sampled, not taken at the peak: params and optimizer state at ``read()``, grads as the
       largest amount seen at a phase exit or just before ``optimizer.step()`` (when every gradient is alive). If
       the peak falls before the grads exist, activations are under-counted by at most the gradient bytes.
    6. ``MemTracker`` labels every tensor created inside ``optimizer.step()`` as optimizer state, temporaries
       included. If the peak falls inside the step (a model whose activations are small next to its weights),
       "optimizer" includes those temporaries; otherwise it is exactly the state (AdamW: 2 x params plus a 4-byte
       float32 ``step`` scalar per parameter tensor on CPU).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from harness.loop import metrics

BYTES_PER_MB = 2**20
"""Memory metrics are reported in MiB (written ``_mb`` in metric names, as TRL and accelerate do)."""

# MemTracker's category names (values of its private ``_MemRefType`` enum) and its total key.
_PARAM_CATEGORIES = ("Parameter", "Buffer")
_GRAD_CATEGORY = "Gradient"
_OPTIMIZER_CATEGORY = "Optstate"
_TOTAL_KEY = "Total"
_REQUIRED_KEYS = (*_PARAM_CATEGORIES, _GRAD_CATEGORY, _OPTIMIZER_CATEGORY, _TOTAL_KEY)
# The name ModTracker gives the implicit top of the module hierarchy.
_GLOBAL_PARENT = "Global"


@dataclass(frozen=True)
class MemorySplit:
    """Bytes alive at one moment, by owner. ``activations`` is everything else: autograd-saved tensors,
    temporaries, inputs and outputs, so ``params + grads + optimizer + activations == total``."""

    params: int
    grads: int
    optimizer: int
    activations: int
    total: int

    def to_mb(self) -> dict[str, float]:
        """The peak as flat metrics in MiB (``metrics.PEAKS_MB``)."""
        return {metrics.PEAK_TOTAL_MB: self.total / BYTES_PER_MB, metrics.PEAK_PARAMS_MB: self.params / BYTES_PER_MB,
                metrics.PEAK_GRADS_MB: self.grads / BYTES_PER_MB,
                metrics.PEAK_OPTIMIZER_MB: self.optimizer / BYTES_PER_MB,
                metrics.PEAK_ACTIVATIONS_MB: self.activations / BYTES_PER_MB}


@dataclass(frozen=True)
class MeterReading:
    """What one step measured: wall seconds per phase (summed over re-entries) and the peak memory split."""

    times_s: dict[str, float]
    peak: MemorySplit | None
    """None when the step did not track memory."""

    def to_metrics(self) -> dict[str, float]:
        """Flat metrics for the logger: each phase's seconds and, when tracked, the memory peaks."""
        flat = {metrics.phase_seconds(name): seconds for name, seconds in self.times_s.items()}
        return flat | (self.peak.to_mb() if self.peak is not None else {})


def tensor_bytes(tensors: Iterable[Tensor]) -> int:
    """Bytes held by the elements of ``tensors`` (numel * element size; shared storages are not deduplicated)."""
    return sum(t.numel() * t.element_size() for t in tensors)


def _optimizer_tensors(optimizer: Optimizer | None) -> Iterator[Tensor]:
    """Every tensor in the optimizer state (AdamW: exp_avg, exp_avg_sq and a scalar ``step`` per parameter)."""
    if optimizer is None:
        return
    for state in optimizer.state.values():
        yield from (value for value in state.values() if isinstance(value, Tensor))


# ---------------------------------------------------------------------------------------------------------------
# CPU: the one wrapper around torch's private MemTracker
# ---------------------------------------------------------------------------------------------------------------


@functools.cache
def _step_mem_tracker_class() -> type[Any]:
    """MemTracker for one step: repeated top-level calls allowed, global peak only (departures 2 and 3).

    Built on first use: importing torch's mem_tracker takes about a second (it pulls in torch.distributed), which
    every CLI command would otherwise pay.
    """
    from torch.distributed._tools.mem_tracker import MemTracker  # private API: this function is its only user

    class _StepMemTracker(MemTracker):
        def _pre_fw_hook(self, module: nn.Module, inputs: Any) -> None:
            mod_tracker = self._mod_tracker
            name = mod_tracker.get_known_fqn(module)
            is_top_level = mod_tracker.parents - {name} == {_GLOBAL_PARENT}
            if module in self.memory_tracking and is_top_level and not mod_tracker.is_bw:
                # Forget only this module's per-module stats, so graphs of earlier calls still find their
                # submodules' entries during backward. The global peak (all we read) is untouched.
                del self.memory_tracking[module]
            super()._pre_fw_hook(module, inputs)

        def _track_module_params_and_buffers(self, module: nn.Module, install_grad_hooks: bool = True,
                                             ) -> tuple[int, int]:
            # A frozen module (the KL reference model) cannot take grad hooks; its weights still count as params.
            trainable = all(p.requires_grad for p in module.parameters())
            return super()._track_module_params_and_buffers(module, install_grad_hooks and trainable)

        def _update_peak_stats(self, peak_state: Any) -> None:
            # Upstream also walks every tracked module on every op to keep per-module peaks, which we never read;
            # that walk was over half of the tracker's overhead on the tiny Llama. Keep only the per-device peak.
            for device, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(device, 0) < snap[_TOTAL_KEY]:
                    self._peak_mem[device] = snap[_TOTAL_KEY]
                    self._peak_mem_snap[device] = dict(snap)  # values are ints: a shallow copy is a full copy

    return _StepMemTracker


class PeakMemory:
    """Handle yielded by ``track_peak_memory``: ``split`` (at the peak) and ``end`` (at exit) are set on exit."""

    def __init__(self) -> None:
        self._split: MemorySplit | None = None
        self._end: MemorySplit | None = None

    @property
    def split(self) -> MemorySplit:
        """The split of the snapshot with the largest total seen while tracking."""
        if self._split is None:
            raise RuntimeError("the peak memory split is available only after the tracking context exits")
        return self._split

    @property
    def end(self) -> MemorySplit:
        """The split of what was still alive when tracking stopped (e.g. grads and optimizer state)."""
        if self._end is None:
            raise RuntimeError("the memory split is available only after the tracking context exits")
        return self._end


def _split_snapshot(snapshot: dict[Any, dict[Any, int]], device: torch.device) -> MemorySplit:
    """Map a MemTracker snapshot ``{device: {category: bytes}}`` onto our four owners for one device."""
    for snap_device, by_category in snapshot.items():
        if snap_device.type == device.type and device.index in (None, snap_device.index):
            # Keys are str-valued enum members plus the plain string "Total"; normalise to strings.
            bytes_by_name = {getattr(key, "value", key): int(value) for key, value in by_category.items()}
            break
    else:
        return MemorySplit(params=0, grads=0, optimizer=0, activations=0, total=0)  # nothing alive on device
    missing = [key for key in _REQUIRED_KEYS if key not in bytes_by_name]
    if missing:
        raise RuntimeError(f"torch's MemTracker no longer reports {missing}; update harness/loop/measure.py")
    params = sum(bytes_by_name[key] for key in _PARAM_CATEGORIES)
    grads, optimizer = bytes_by_name[_GRAD_CATEGORY], bytes_by_name[_OPTIMIZER_CATEGORY]
    total = bytes_by_name[_TOTAL_KEY]
    return MemorySplit(params, grads, optimizer, activations=total - params - grads - optimizer, total=total)


@contextmanager
def track_peak_memory(
    model: nn.Module | None, optimizer: Optimizer | None, device: torch.device | str = "cpu"
) -> Iterator[PeakMemory]:
    """Track tensor memory on ``device`` while the block runs; ``.split`` holds the peak split afterwards.

    The model's parameters, buffers and existing grads and the optimizer's existing state are registered before
    entry, so they count from the first op. Everything created inside the block is seen. Expect the block to run
    several times slower (see the module docstring).
    """
    tracker = _step_mem_tracker_class()()
    tracker.track_external(*(obj for obj in (model, optimizer) if obj is not None))
    handle = PeakMemory()
    with tracker:
        yield handle
        # Read before exit so a tensor freed by the exit itself cannot change "end".
        handle._end = _split_snapshot(tracker.get_tracker_snapshot("current"), torch.device(device))
    handle._split = _split_snapshot(tracker.get_tracker_snapshot("peak"), torch.device(device))


# ---------------------------------------------------------------------------------------------------------------
# The meter used by the RL step
# ---------------------------------------------------------------------------------------------------------------


class Meter:
    """Phase timers and, optionally, the peak memory split of one step.

    A step starts at the first ``phase`` entered after construction or ``read()``/``reset()`` and ends at
    ``read()``, which returns the reading and resets the meter. With ``track_memory`` set, memory is tracked from
    the start of the step to ``read()`` (the code between phases included). ``track_memory`` may be changed
    between steps; the caller picks the tracked steps because tracking slows a CPU step down several times.

    On CPU the tracker stays active between phases. A phase that raises stops it; if code between phases can
    raise, call ``reset()`` in the caller's error path so the tracker does not outlive the step.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        optimizer: Optimizer | None = None,
        device: torch.device | str = "cpu",
        track_memory: bool = False,
    ) -> None:
        self.model = model
        self.optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper lacks the hook registry
        self.device = torch.device(device)
        self.track_memory = track_memory
        self._times: dict[str, float] = {}
        self._in_step = False
        self._tracking = ExitStack()  # CPU: holds the open track_peak_memory context of the current step
        self._peak: PeakMemory | None = None
        self._cuda_grad_bytes = 0  # CUDA: largest gradient bytes sampled in the current step
        if self.optimizer is not None:  # on every device, so CPU runs exercise it too; a no-op off CUDA
            self.optimizer.register_step_pre_hook(lambda *_: self._sample_cuda_grads())

    @property
    def _on_cuda(self) -> bool:
        return self.device.type == "cuda"

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block under ``name`` (seconds add up if the phase is entered again in the same step)."""
        if not self._in_step:
            self._start_step()
        self._synchronize()
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self.reset()  # never leave the dispatch mode pushed behind a failing step
            raise
        self._synchronize()
        self._times[name] = self._times.get(name, 0.0) + time.perf_counter() - start
        self._sample_cuda_grads()

    def read(self) -> MeterReading:
        """End the step: return its phase times and peak split, and reset for the next step."""
        peak: MemorySplit | None = None
        if self._in_step and self.track_memory:
            peak = self._cuda_split() if self._on_cuda else self._cpu_split()
        reading = MeterReading(times_s=dict(self._times), peak=peak)
        self.reset()
        return reading

    def reset(self) -> None:
        """Discard the current step's times and stop any memory tracking."""
        self._tracking.close()
        self._times, self._in_step, self._peak, self._cuda_grad_bytes = {}, False, None, 0

    def _start_step(self) -> None:
        self._in_step = True
        if not self.track_memory:
            return
        if self._on_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._peak = self._tracking.enter_context(track_peak_memory(self.model, self.optimizer, self.device))

    def _cpu_split(self) -> MemorySplit:
        self._tracking.close()  # leaving the tracker fills in the split
        if self._peak is None:
            raise RuntimeError("memory tracking was not started for this step")
        return self._peak.split

    def _cuda_split(self) -> MemorySplit:
        self._synchronize()
        self._sample_cuda_grads()
        total = torch.cuda.max_memory_allocated(self.device)
        params = tensor_bytes(self.model.parameters()) if self.model is not None else 0
        optimizer = tensor_bytes(_optimizer_tensors(self.optimizer))
        grads = self._cuda_grad_bytes
        activations = max(total - params - grads - optimizer, 0)
        return MemorySplit(params, grads, optimizer, activations, total)

    def _sample_cuda_grads(self) -> None:
        if not (self._on_cuda and self._in_step and self.track_memory and self.model is not None):
            return
        grads = tensor_bytes(p.grad for p in self.model.parameters() if p.grad is not None)
        self._cuda_grad_bytes = max(self._cuda_grad_bytes, grads)

    def _synchronize(self) -> None:
        # Kernels run asynchronously on CUDA; without a sync the clock measures launch time, not work.
        if self._on_cuda:
            torch.cuda.synchronize(self.device)


def reset_peak(device: torch.device) -> None:
    """Start a fresh peak on CUDA (free cached blocks, reset the allocator's peak); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def device_peak_mb(device: torch.device) -> dict[str, float]:
    """The CUDA caching allocator's peaks since ``reset_peak`` (fragmentation included), in MB; {} on CPU."""
    if device.type != "cuda":
        return {}
    return {metrics.CUDA_MAX_ALLOCATED_MB: torch.cuda.max_memory_allocated(device) / BYTES_PER_MB,
            metrics.CUDA_MAX_RESERVED_MB: torch.cuda.max_memory_reserved(device) / BYTES_PER_MB}
