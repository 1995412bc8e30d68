"""The ASU trainers' frozen model (smoothed teacher and unsmoothed reference), whatever the
student's attention backend.

OU's model configs load every model with ``attn_implementation: flash_attention_2``, and OU's
``_prepare_ref_model`` makes the frozen model as a deep copy of the student, so the copy would
run flash-attention too, which smoothing cannot reach. Here the copy is made exactly as OU makes
it (``_prepare_ref_model``: DeepSpeed ZeRO-3 / accelerate handling included, no second load
from disk), then switched in place to SDPA (:func:`~asu_plugin.core.attention_backend.make_reachable`),
and smoothed once on a probe, so a backend nothing can reach stops the trainer before its first
step with the fix. The student keeps its own backend.
"""

from __future__ import annotations

import logging
import os

from ..core.attention_backend import REACHABLE, TARGET, attention_backend, make_reachable, verify_reachable
from ..core.errors import SmoothingError

logger = logging.getLogger(__name__)

SETTING = "model.model_args.attn_implementation"


def _refusal(student_backend: str, detail: str) -> SmoothingError:
    return SmoothingError(
        f"the model being unlearned runs attn_implementation={student_backend!r}, and its frozen copy (ASU's "
        f"teacher) could not be given attention that smoothing can reach: {detail}. Load the model with "
        f"{SETTING}=sdpa (or eager), e.g. `python src/train.py ... {SETTING}=sdpa`"
    )


def build_frozen_model(prepare_ref_model, source, tau, layers=None, heads=None, announce: bool = True):
    """(frozen model, attention record): ``prepare_ref_model(source)`` (OU's copy), frozen,
    switched to attention smoothing can reach, and checked on a probe.

    ``source`` is the student (or the teacher loaded from ``teacher_path``); it is not changed.
    The record (``{"student": ..., "frozen": ..., "switched": ...}``) goes into asu_run.json.
    """
    student_backend = attention_backend(source)
    frozen = prepare_ref_model(source)
    for parameter in frozen.parameters():
        parameter.requires_grad_(False)
    try:
        frozen_backend = make_reachable(frozen)
        verify_reachable(frozen, tau, layers, heads)
    except SmoothingError as error:
        raise _refusal(student_backend, str(error)) from error
    record = {"student": student_backend, "frozen": frozen_backend, "switched": frozen_backend != student_backend}
    if announce:
        logger.info(
            "ASU frozen model (teacher / reference) runs attn_implementation=%r%s",
            frozen_backend,
            f" (switched from the student's {student_backend!r}, same weights)" if record["switched"] else "",
        )
    return frozen, record


def load_teacher(path: str, student):
    """The frozen model from ``path`` (continual unlearning: ``teacher_path``), in the student's
    dtype, with the student's attention backend when smoothing can reach it, else SDPA."""
    from transformers import AutoModelForCausalLM

    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"teacher_path {path!r} is not a directory: point trainer.method_args.teacher_path at a saved "
            "model (save_pretrained output), or leave it null to use the model being unlearned"
        )
    backend = attention_backend(student)
    backend = backend if backend in REACHABLE else TARGET
    return AutoModelForCausalLM.from_pretrained(path, torch_dtype=student.dtype, attn_implementation=backend)
