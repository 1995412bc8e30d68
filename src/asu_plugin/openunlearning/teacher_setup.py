"""The ASU trainers' teacher at start-up: ``tau=auto`` / ``layers=auto``, and the health check.

Called once from ``ASUTrainer.__init__``, after the frozen model exists:

* ``trainer.method_args.tau=auto`` and/or ``layers=auto`` run the automatic choice of
  :mod:`asu_plugin.core.teacher_choice` (the rule is stated there and in the README) on the
  frozen model and the first forget rows, through :func:`asu_plugin.core.teacher_search.choose_teacher`
  (cached per model fingerprint, forget rows, candidates and rule under ``~/.cache/asu-plugin``);
* ``method_args.health_check`` (default true) answers a few forget questions with the teacher
  the run will train with and logs a warning naming the problem, the figures and the fix when
  most answers are empty or loop.

Both go to the log and to ``asu_run.json`` (``teacher_choice``, ``teacher_health``).

Several processes (DDP, DeepSpeed ZeRO-3): every rank runs the same forwards on the same rows
(ZeRO-3 gathers weights inside each forward, so no rank may skip one; the cache is read only
when the weights are whole on every rank, i.e. when the fingerprint exists), then rank 0's
outcome (a choice, a refusal, a health record) is broadcast, so every rank trains with the same
teacher or raises the same error.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Optional

import torch

from ..core.selection import unwrap_model
from ..core.teacher_choice import DEFAULT_RULE, TeacherChoiceError
from ..core.teacher_health import ForgetRow, rows_from_labels, special_token_ids
from ..core.teacher_search import choose_teacher, health_check, token_classes
from . import run_record

logger = logging.getLogger(__name__)

AUTO = "auto"


def is_auto(value) -> bool:
    return isinstance(value, str) and value.strip().lower() == AUTO


def check_switch(value) -> bool:
    """``method_args.health_check``: a bool, or "true" / "false" (as ``${oc.env:...}`` gives it)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise ValueError(f"method_args.health_check must be true or false, got {value!r}")


def validation_values(tau, layers):
    """What to validate the settings with before the choice: a fixed value as given; ``auto``
    as a value every model accepts (2.3, all layers)."""
    return (2.3 if is_auto(tau) else tau), (None if is_auto(layers) else layers)


def forget_rows(dataset, tokenizer, limit: int) -> list[ForgetRow]:
    """The first ``limit`` forget rows as the student sees them (OU's tokenised items), with the
    word classes of their answer tokens and the gold answer text when the dataset has questions."""
    forget = getattr(dataset, "forget", dataset)
    if forget is None or len(forget) == 0:
        raise TeacherChoiceError("the forget set is empty: there is nothing to choose or check a teacher on")
    special = special_token_ids(tokenizer)
    data = getattr(forget, "data", None)
    question_key, answer_key = getattr(forget, "question_key", None), getattr(forget, "answer_key", None)
    rows = []
    for i in range(min(limit, len(forget))):
        item = forget[i]
        item = item.get("original", item) if isinstance(item, dict) else item  # ASU_IDK's forget items
        row = rows_from_labels(item["input_ids"].tolist(), item["labels"].tolist())
        question = gold = None
        if row.has_question:
            if data is not None and question_key and answer_key:
                question, gold = str(data[i][question_key]), str(data[i][answer_key])
            else:
                question = tokenizer.decode(row.prompt, skip_special_tokens=True)
                gold = tokenizer.decode(row.answer, skip_special_tokens=True)
        classes = token_classes(tokenizer, row, question, special)
        rows.append(ForgetRow(row.prompt, row.answer, classes, gold))
    return rows


def _eos_ids(model, tokenizer) -> list[int]:
    ids = []
    for source in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        for value in source if isinstance(source, (list, tuple)) else [source]:
            if value is not None and int(value) not in ids:
                ids.append(int(value))
    return ids


def _pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def _distributed(trainer) -> bool:
    return (trainer.args.world_size > 1 and torch.distributed.is_available()
            and torch.distributed.is_initialized())


def _agree(trainer, outcome):
    """Rank 0's ``outcome`` on every rank."""
    if not _distributed(trainer):
        return outcome
    box = [outcome]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _run(trainer, compute):
    """``compute()`` on every rank, then rank 0's result (or error) everywhere: no rank goes on
    with another teacher, and no rank waits for one that raised."""
    try:
        outcome = ("ok", compute())
    except TeacherChoiceError as error:
        outcome = ("refused", str(error))
    except Exception as error:  # noqa: BLE001 - re-raised below, on every rank
        if not _distributed(trainer):
            raise
        outcome = ("failed", f"{type(error).__name__}: {error}")
    outcome = _agree(trainer, outcome)
    if outcome[0] == "refused":
        raise TeacherChoiceError(outcome[1])
    if outcome[0] == "failed":
        raise RuntimeError(f"the teacher set-up failed on rank 0: {outcome[1]}")
    return outcome[1]


def resolve(trainer, tau, layers, health: bool) -> dict:
    """Resolve ``auto`` settings and run the health check; returns the run-record entries.
    Sets ``trainer.tau`` / ``trainer.layers`` to the chosen teacher."""
    extra: dict = {}
    auto_tau, auto_layers = is_auto(tau), is_auto(layers)
    if not (auto_tau or auto_layers or health):
        return extra
    tokenizer = getattr(trainer, "processing_class", None) or getattr(trainer, "tokenizer", None)
    if tokenizer is None:
        if auto_tau or auto_layers:
            raise TeacherChoiceError(
                f"{type(trainer).__name__}: tau/layers=auto needs the tokenizer, which OU passes to the trainer "
                "(load_trainer(..., tokenizer=...)); constructing the trainer yourself, pass tokenizer=..., "
                "or set tau and layers explicitly"
            )
        return {"teacher_health": _skipped("the trainer has no tokenizer")}
    # the original model: the frozen copy, or a LoRA student's own base with its adapters off
    frozen_model = getattr(trainer, "frozen_model", None)
    with (frozen_model() if callable(frozen_model) else contextlib.nullcontext(trainer.ref_model)) as frozen:
        model = unwrap_model(frozen)
        try:
            rows = forget_rows(trainer.train_dataset, tokenizer, DEFAULT_RULE.screen_rows)
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            if auto_tau or auto_layers:
                raise TeacherChoiceError(f"cannot read the forget rows for the automatic teacher choice: {error}") from error
            return {"teacher_health": _skipped(f"cannot read the forget rows ({type(error).__name__}: {error})")}

        def decode(ids):
            return tokenizer.decode(list(ids), skip_special_tokens=True)

        common = {"decode": decode, "eos_ids": _eos_ids(model, tokenizer), "pad_id": _pad_id(tokenizer)}
        if auto_tau or auto_layers:
            fingerprint = run_record.weights_fingerprint(model)
            record = _run(trainer, lambda: choose_teacher(
                model, rows, model_fingerprint=fingerprint, special_ids=special_token_ids(tokenizer),
                tau=None if auto_tau else float(tau),
                layers=None if auto_layers else trainer._selection.layers, **common,
            ))
            trainer.tau = record["choice"]["tau"]
            trainer.layers = record["choice"]["layers"]
            cost = record.get("cost_s", {})
            logger.info(
                "ASU teacher chosen automatically: %s (%s; removal %.2f nats/token, function damage %.2f; "
                "%d candidates screened; %s)", record["choice"]["key"], record["choice"]["layer_set"],
                record["choice"]["figures"]["removal"], record["choice"]["figures"]["function_damage"],
                len(record["candidates"]),
                "from the cache" if record["cache"]["hit"]
                else f"{cost.get('total', 0):.0f} s, {cost.get('cpu', 0):.0f} CPU-s",
            )
            extra["teacher_choice"] = record
        if health:
            report = _run(trainer, lambda: health_check(model, rows, (trainer.tau, trainer.layers), **common))
            extra["teacher_health"] = report
            warn_if_unhealthy(report, trainer.tau, trainer.layers)
        return extra


def _skipped(why: str) -> dict:
    logger.info("ASU teacher health check skipped: %s", why)
    return {"checked": False, "why": why}


def warn_if_unhealthy(report: dict, tau, layers) -> Optional[str]:
    """Log (and return) the warning for a health report that found a problem."""
    if not report.get("checked") or not report.get("problem"):
        return None
    shown = "; ".join(repr(a[:60]) for a in report["answers"][:3])
    message = (
        f"ASU teacher health: {report['problem']} at tau={tau} layers={'all' if layers is None else layers} "
        f"(empty {report['empty_rate']:.0%}, looping {report['loop_rate']:.0%} of {report['prompts']} forget "
        f"questions; e.g. {shown}). The student would learn these answers. Fix: "
        "trainer.method_args.tau=auto trainer.method_args.layers=auto (or the setting `asu-probe --choose` "
        "recommends), or a lower tau / fewer layers; method_args.health_check=false silences this check."
    )
    logger.warning(message)
    report["warning"] = message
    return message
