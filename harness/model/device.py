"""Device choice: the one module besides measure.py that touches torch.cuda. CPU is the default path."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda', 'cuda:1' or 'auto' (CUDA when available) -> torch.device; ValueError naming a bad value."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"device {name!r} is not a device ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available on this machine")
    return device


def accelerator_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU), so a wall-clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_cached_memory(device: torch.device) -> None:
    """Hand the CUDA caching allocator's free blocks back (after an out-of-memory error); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def process_state(device: torch.device | str = "cpu"):  # noqa: ANN201
    """accelerate's process state (one per process, shared), started for the run's device before anything asks for
    it: under ``torchrun`` / ``accelerate launch`` on CPU it must be told ``cpu=True`` to start gloo, or every process
    believes it is alone. Later ``PartialState()`` calls return this same state."""
    from accelerate import PartialState

    return PartialState(cpu=torch.device(device).type == "cpu")


def process_device(name: str | torch.device) -> torch.device:
    """The device this process runs on: ``cuda`` under several processes means this process's own GPU (accelerate
    sets it from LOCAL_RANK), so each rank loads its model replica onto its own card."""
    device = torch.device(name)
    state = process_state(device)
    if device.type == "cuda" and device.index is None and state.num_processes > 1:
        return state.device
    return device
