"""Run records: one JSON file per finished run with everything needed to reproduce and compare it.

A record holds the full config (including the decoding protocol of training and evaluation), the seed, per-step
metrics, the evaluation before and after with intervals, package versions, the device and the git commit. Files are
written atomically (temporary file + rename), so an interrupted write never leaves a truncated record.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import torch

PACKAGES = ("torch", "transformers", "accelerate", "datasets", "tokenizers", "numpy", "rich", "typer")
SCHEMA_VERSION = 1


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def device_info(device: torch.device) -> dict[str, Any]:
    """What ran the run: accelerator name or CPU model, core count and torch threads."""
    info: dict[str, Any] = {"type": device.type, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                            "platform": platform.platform()}
    if device.type == "cuda":
        from harness.model.device import accelerator_name

        info["name"] = accelerator_name(device)
    else:
        info["name"] = _cpu_model() or platform.processor() or "cpu"
    return info


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (see ``write_atomic``)."""
    write_atomic(path, lambda handle: json.dump(payload, handle, indent=1, default=str))


def write_atomic(path: Path, write: Callable[[TextIO], None]) -> None:
    """Let ``write`` fill a temporary file in the same folder, then rename it over ``path``: readers see the old
    file or the whole new one, never a part (a failure half-way leaves the old file and no temporary)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; a record should be as readable as any file we write
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def environment(device: torch.device) -> dict[str, Any]:
    return {"versions": package_versions(), "device": device_info(device), "git_commit": git_commit(),
            "schema_version": SCHEMA_VERSION}
