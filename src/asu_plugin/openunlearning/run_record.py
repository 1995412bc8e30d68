"""What an ASU run leaves beside OU's outputs: ``asu_run.json`` and, on failure, ``ASU_FAILED.txt``.

OU's own outputs (the model, ``trainer_state.json``, ``.hydra/config.yaml``) say what was
trained but not which plugin, OU commit and library versions did it — and a run that died
in the middle leaves a directory that looks like an unfinished one. The record answers the
first; the marker the second (OU saves the model only after ``train()`` returns, so a run
that fails in our code has no model, and the marker says why).

Both files are written atomically (temporary file + ``os.replace``), so a reader never sees
half a file, even when the process is killed.
"""

from __future__ import annotations

import datetime as _dt
import os
import traceback
from pathlib import Path
from typing import Any, Mapping

from ..core.atomic import write_json_atomic, write_text_atomic

RECORD_NAME = "asu_run.json"
FAILURE_NAME = "ASU_FAILED.txt"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def environment() -> dict:
    """Versions that decide what a run computes: plugin, OU commit, transformers, torch."""
    import torch
    import transformers

    from .. import __version__
    from .environment import ou_commit

    return {
        "asu_plugin": __version__,
        "open_unlearning_commit": ou_commit(),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }


def run_record(method: str, settings: Mapping[str, Any], status: str, **extra: Any) -> dict:
    """The content of ``asu_run.json``: the ASU settings of the run, its status, the versions."""
    return {
        "method": method,
        "asu": dict(settings),
        "status": status,
        "updated": _now(),
        "versions": environment(),
        **extra,
    }


def write_run_record(output_dir: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    return write_json_atomic(Path(output_dir) / RECORD_NAME, record)


def write_failure_marker(output_dir: str | os.PathLike, error: BaseException, where: str) -> Path:
    """Write ``ASU_FAILED.txt``: what failed, where, and the traceback."""
    lines = [
        f"ASU run failed {where} at {_now()}",
        f"{type(error).__name__}: {error}",
        "",
        "No model was saved by this run.",
        "",
        "".join(traceback.format_exception(type(error), error, error.__traceback__)),
    ]
    return write_text_atomic(Path(output_dir) / FAILURE_NAME, "\n".join(lines))


def clear_failure_marker(output_dir: str | os.PathLike) -> None:
    """Remove a marker left by an earlier failed run in the same directory."""
    try:
        (Path(output_dir) / FAILURE_NAME).unlink()
    except FileNotFoundError:
        pass


def weights_fingerprint(model) -> str | None:
    """A cheap identity of a model's weights: sha256 over the first 4096 values of every
    parameter (in float32). Recorded for the frozen teacher / reference so a resumed run
    can show it was rebuilt from the original model, not from the checkpointed student.
    None when parameters are partitioned away (DeepSpeed ZeRO-3 leaves empty shards)."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        if parameter.numel() == 0:
            return None
        values = parameter.detach().reshape(-1)[:4096].to("cpu", torch.float32)
        digest.update(name.encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()
