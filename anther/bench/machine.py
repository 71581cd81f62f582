"""What machine a benchmark ran on, recorded next to its numbers (every report says it)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import torch


def describe(torch_threads: int | None = None) -> dict[str, Any]:
    """CPU model and count, memory, GPU (None without one), torch and Python versions, date."""
    cpuinfo = Path("/proc/cpuinfo")
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if cpuinfo.exists() else platform.processor()
    return {"cpu": cpu, "cpus": os.cpu_count(), "torch_threads": torch_threads or torch.get_num_threads(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def one_line(machine: dict[str, Any]) -> str:
    gpu = machine["cuda"] or "no GPU"
    return (f"{machine['cpus']} x {machine['cpu']}, {machine['memory_gb']} GB, {gpu}, torch {machine['torch']}, "
            f"{machine['date']}")
