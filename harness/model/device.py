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
