"""Memory probes of the current process: resident set (now and peak) and torch's allocator peak.

Why two measures: the peak RSS (``VmHWM``) is what a train step costs the machine, but it can be
reset only as a whole (``/proc/self/clear_refs``), hence a fresh process per point; the allocator
peak from ``torch.profiler(profile_memory=True)`` counts exactly the bytes torch allocates inside
one call, independent of glibc's heap reuse (see bench/README.md, "Forget-loss memory").
"""

from __future__ import annotations

import json
import os
import resource
import tempfile


def proc_status_bytes(key: str) -> int | None:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM) in bytes; None off Linux."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    hwm = proc_status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def current_rss_bytes() -> int:
    rss = proc_status_bytes("VmRSS")
    if rss is not None:
        return rss
    import psutil

    return psutil.Process().memory_info().rss


def allocator_peak_bytes(fn) -> int:
    """Peak of torch's CPU allocator over fn(), net of what existed before (profiler memory events)."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as handle:
            events = json.load(handle)["traceEvents"]
    finally:
        os.unlink(path)
    memory = sorted((e for e in events if e.get("name") == "[memory]" and int(e["args"].get("Device Type", 0)) == 0),
                    key=lambda e: e["ts"])
    if not memory:
        return 0
    base = memory[0]["args"]["Total Allocated"] - memory[0]["args"]["Bytes"]
    return max(0, max(e["args"]["Total Allocated"] for e in memory) - base)
