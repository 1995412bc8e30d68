"""Which teacher each ASU row was trained towards, and what that teacher is measured to do.

The teacher of a row is read from its seed-0 run's ``asu_run.json`` (for ``tau=auto`` /
``layers=auto`` rows: the automatic choice recorded there), never from the row's overrides, so
the report says what ran. Its figures come from ``bench/teacher.py``'s results
(``bench/results/teacher.json``, the mini-TOFU target's section): the greedy answers of that
teacher to the forget questions (fluent / empty / looping) and how much of the gold answer they
still say. A teacher outside that grid, or a target not yet measured, has no figures: the report
says so rather than guess.
"""

from __future__ import annotations

import json
from pathlib import Path

from asu_plugin.core.selection import _parse_index_string
from asu_plugin.core.teacher_choice import LAYER_SETS, layer_set
from asu_plugin.openunlearning.run_record import RECORD_NAME

#: bench/teacher.py's published results, next to this study's
TEACHER_RESULTS = Path(__file__).resolve().parents[1] / "results" / "teacher.json"
#: the model of that file the study's teachers are measured on
TEACHER_MODEL = "target"


def row_teacher(run_dir: Path) -> dict | None:
    """The teacher a run was trained towards: ``{"tau", "layers", "chosen"}`` (``layers`` as index
    ranges, ``chosen``: picked by ``tau=auto`` / ``layers=auto``); None without a run record."""
    path = run_dir / RECORD_NAME
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    choice = (record.get("teacher_choice") or {}).get("choice")
    if choice:
        return {"tau": float(choice["tau"]), "layers": str(choice["layers"]), "chosen": True}
    asu = record["asu"]
    return {"tau": float(asu["tau"]), "layers": str(asu["smoothed_layers"]), "chosen": False}


def measured(teacher: dict, results: Path | None = None) -> dict | None:
    """The teacher's greedy-answer figures in ``results`` (default :data:`TEACHER_RESULTS`; its cell
    ``tau=<tau>|<layer set>`` on the target), or None when the target or that cell was not measured."""
    results = results or TEACHER_RESULTS
    if not results.is_file():
        return None
    model = json.loads(results.read_text()).get("models", {}).get(TEACHER_MODEL)
    if not model:
        return None
    wanted = tuple(_parse_index_string(teacher["layers"], "layers"))
    names = [name for name in LAYER_SETS if layer_set(name, model["num_layers"]) == wanted]
    cell = model["generated"].get(f"tau={teacher['tau']:g}|{names[0]}") if names else None
    if cell is None:
        return None
    return {key: cell[key] for key in ("fluent_rate", "empty_rate", "loop_rate", "rouge_l_recall")}


def describe(teacher: dict) -> str:
    """``tau 2.3, layers 0-29`` (+ ``, chosen automatically``)."""
    return f"tau {teacher['tau']:g}, layers {teacher['layers']}" + (", chosen automatically" if teacher["chosen"] else "")
