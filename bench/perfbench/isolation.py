"""One fresh process per measurement point, so no point inherits another's tensors, allocator
caches or peak RSS.

``fork`` (default): the parent has imported torch, transformers and OpenUnlearning but never run
a torch op (no OpenMP pool exists yet); each child forked from it resets the kernel's peak-RSS
mark first, so its ``VmHWM`` is its own peak from a baseline of just the imports. Why fork: OU's
import (deepspeed, bitsandbytes, ...) takes seconds per process (``meta.ou_import_s`` in
perf.json), which exec would pay per point. ``exec`` runs ``python bench/perf.py --point NAME``
per point instead: the same figures, slower.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from asu_plugin.openunlearning.environment import OFFLINE_ENV

from .memory import reset_peak_rss
from .ou_trainers import import_ou, quiet_libraries

PERF_SCRIPT = Path(__file__).resolve().parents[1] / "perf.py"


class PointFailed(RuntimeError):
    """A point's process exited with an error; the message holds its log's tail."""


def run_point(cfg: dict, spec: dict) -> dict:
    """Body of a measuring process: reset the peak-RSS mark, run the point, return its result."""
    from .sections import POINT_KINDS

    os.environ.update(OFFLINE_ENV)  # nothing is downloaded while measuring
    quiet_libraries()
    reset = reset_peak_rss()
    if spec.get("needs_ou"):
        ok, reason = import_ou()
        if not ok:
            raise RuntimeError(reason)
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(cfg["threads"])
    start = time.perf_counter()
    result = POINT_KINDS[spec["kind"]](cfg, spec)
    result["point_wall_s"] = time.perf_counter() - start
    result["peak_rss_reset"] = reset
    return result


def _paths(spec: dict, logdir: Path) -> tuple[Path, str]:
    fd, out = tempfile.mkstemp(prefix="point-", suffix=".json", dir=logdir)
    os.close(fd)
    return logdir / (spec["name"].replace(":", "_") + ".log"), out


def run_forked(cfg: dict, spec: dict, logdir: Path) -> dict:
    """The point in a child forked from this (import-only) process."""
    log, out = _paths(spec, logdir)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 1
        try:
            handle = open(log, "w")
            os.dup2(handle.fileno(), 1)
            os.dup2(handle.fileno(), 2)
            result = run_point(cfg, spec)
            with open(out, "w") as result_file:
                json.dump(result, result_file)
            code = 0
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return _collect(spec, os.waitstatus_to_exitcode(status), log, out)


def run_exec(spec: dict, logdir: Path, argv_cfg: list[str]) -> dict:
    """The point in a new interpreter: ``python bench/perf.py --point NAME <argv_cfg>``."""
    log, out = _paths(spec, logdir)
    command = [sys.executable, str(PERF_SCRIPT), "--point", spec["name"], "--point-out", out, *argv_cfg]
    with open(log, "w") as handle:
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False).returncode
    return _collect(spec, code, log, out)


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _collect(spec: dict, code: int, log: Path, out: str) -> dict:
    """The JSON result a point's process left in ``out``, or PointFailed with its log."""
    if code != 0:
        raise PointFailed(f"point {spec['name']} failed (exit {code}); log {log}:\n{_log_tail(log)}")
    with open(out) as handle:
        result = json.load(handle)
    os.unlink(out)
    return result
