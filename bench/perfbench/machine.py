"""What the figures were measured on: CPU, memory, versions, threads, load (perf.json ``meta``)."""

from __future__ import annotations

import contextlib
import os
import platform
import time


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(threads) -> dict:
    """Machine and library versions; ``threads`` as the measuring processes reported it."""
    import torch
    import transformers

    from asu_plugin.openunlearning.environment import ou_commit, ou_dir

    try:
        import asu_plugin

        asu_version = getattr(asu_plugin, "__version__", None)
    except ImportError:
        asu_version = None
    mem_total = None
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as handle:
            mem_total = int(handle.readline().split()[1]) * 1024 / 2**30
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": mem_total,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "asu_plugin": asu_version,
        "open_unlearning_commit": ou_commit(ou_dir()),
        "torch_threads": threads,
        "torch_parallel": [line.strip() for line in torch.__config__.parallel_info().splitlines()[:6]],
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")
