"""Run the automatic teacher choice on a model and its forget rows, with a cache.

:func:`choose_teacher` screens every candidate of :mod:`.teacher_choice` teacher-forced, generates
for the finalists, applies the rule and returns a record (the choice, every figure it was made
on, its cost). The record is cached under ``$ASU_CACHE_DIR`` (default ``~/.cache/asu-plugin``)
in ``teacher_choice/<key>.json``, written atomically, where the key hashes the model's weight
fingerprint, the forget rows (token ids and word classes), the candidates and the rule: the same
model on the same forget set never pays twice, and any change of these recomputes. A refusal is
cached too (and raised again).

:func:`health_check` is the cheap check every ASU run makes on its configured teacher: greedy
answers to a few forget questions, and a warning when most are empty, loop or are gibberish.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from .atomic import write_json_atomic
from .teacher_choice import (
    DEFAULT_RULE,
    Candidate,
    Rule,
    Screened,
    TeacherChoiceError,
    candidates,
    decide,
    screen_failures,
    with_class_figures,
)
from .teacher_health import ForgetRow, answer_figures, answer_nll, greedy_answers, teacher_forced_figures
from .words import FACTUAL_MODES, classify_answer_tokens

logger = logging.getLogger(__name__)

SCHEMA = "asu-teacher-choice/1"
CACHE_ENV = "ASU_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$ASU_CACHE_DIR/teacher_choice`` (default ``~/.cache/asu-plugin/teacher_choice``)."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/asu-plugin").expanduser() / "teacher_choice"


def token_classes(tokenizer, row: ForgetRow, question: Optional[str], special_ids: Sequence[int]) -> tuple[str, ...]:
    """Word class of each answer token of ``row`` (:mod:`.words`; ``"special"`` for special
    tokens), with character spans from decoding the tokens one by one. ``question`` None (text
    without a question): every content word is factual."""
    special = set(int(i) for i in special_ids)
    end = next((k for k, t in enumerate(row.answer) if t in special), len(row.answer))
    pieces = [tokenizer.decode([t]) for t in row.answer[:end]]
    spans, at = [], 0
    for piece in pieces:
        spans.append((at, at + len(piece)))
        at += len(piece)
    text = "".join(pieces)
    mode = FACTUAL_MODES[0] if question is not None else FACTUAL_MODES[1]
    classes = classify_answer_tokens(text, spans, question or "", mode)
    tail = tuple("special" if t in special else "template" for t in row.answer[end:])
    return tuple(classes) + tail


def rows_key(rows: Sequence[ForgetRow], special_ids: Sequence[int]) -> str:
    """A hash of the forget rows as the choice sees them: prompt, answer up to its first special
    token (the template tail after it changes no figure, and OU and ``asu-probe --choose`` end it
    differently), word classes, gold text."""
    special = set(int(i) for i in special_ids)
    digest = hashlib.sha256()
    for row in rows:
        end = next((k + 1 for k, t in enumerate(row.answer) if t in special), len(row.answer))
        classes = None if row.classes is None else row.classes[:end]
        digest.update(json.dumps([row.prompt, row.answer[:end], classes, row.gold_text]).encode())
    return digest.hexdigest()


def cache_key(model_fingerprint: str, rows: Sequence[ForgetRow], grid: Sequence[Candidate], rule: Rule,
              special_ids: Sequence[int] = ()) -> str:
    payload = {
        "schema": SCHEMA,
        "model": model_fingerprint,
        "rows": rows_key(rows, special_ids),
        "candidates": [c.key for c in grid],
        "rule": rule.as_dict(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def _texts(decode: Callable[[Sequence[int]], str], answers: Sequence[Sequence[int]]) -> list[str]:
    return [decode(a).strip() for a in answers]


def generation_figures(model, rows: Sequence[ForgetRow], candidate: Optional[Candidate], *, decode,
                       eos_ids: Sequence[int], pad_id: int, max_new_tokens: int,
                       batch_size: int = 8) -> dict:
    """Greedy answers of ``candidate``'s teacher (the plain model for None) to the rows'
    questions, and their health (:func:`.teacher_health.answer_figures`)."""
    prompts = [r.prompt for r in rows]
    teacher = None if candidate is None else (candidate.tau, list(candidate.layers))
    answers = greedy_answers(model, prompts, max_new_tokens, eos_ids, teacher=teacher, pad_id=pad_id,
                             batch_size=batch_size)
    nll = answer_nll(model, prompts, answers, pad_id=pad_id, batch_size=batch_size)
    return answer_figures(_texts(decode, answers), nll, [r.gold_text for r in rows])


def choose_teacher(
    model,
    rows: Sequence[ForgetRow],
    *,
    model_fingerprint: Optional[str],
    special_ids: Sequence[int],
    eos_ids: Sequence[int],
    decode: Callable[[Sequence[int]], str],
    pad_id: int = 0,
    tau=None,
    layers=None,
    rule: Rule = DEFAULT_RULE,
    cache_dir: Optional[Path] = None,
    batch_size: int = 8,
    after_batch: Optional[Callable[[], None]] = None,
) -> dict:
    """The rule of :mod:`.teacher_choice` on ``model`` and ``rows``; returns the record
    (``choice``: tau, layers, key; ``candidates``: every screened figure and failure;
    ``finalists``: their answers and failures; ``cost_s``; ``cache``). ``tau`` / ``layers``
    fixed (not None) narrow the grid. Raises :class:`.teacher_choice.TeacherChoiceError`.

    ``model_fingerprint`` None (e.g. weights partitioned by ZeRO-3) disables the cache.
    """
    from .selection import find_attention_layout

    if not rows:
        raise TeacherChoiceError("the forget set is empty: there is nothing to choose a teacher on")
    rows = list(rows[: rule.screen_rows])
    grid = candidates(find_attention_layout(model).num_layers, tau, layers)
    key = cache_key(model_fingerprint, rows, grid, rule, special_ids) if model_fingerprint else None
    path = (Path(cache_dir) if cache_dir else default_cache_dir()) / f"{key}.json" if key else None
    if path is not None and path.is_file():
        record = json.loads(path.read_text())
        logger.info("teacher choice: cached in %s", path)
        record["cache"] = {"hit": True, "path": str(path)}
        if record.get("refused"):
            raise TeacherChoiceError(record["refused"])
        return record

    start, cpu_start = time.perf_counter(), time.process_time()
    eot = int(eos_ids[0]) if eos_ids else None
    measured = teacher_forced_figures(
        model, rows, [(c.tau, list(c.layers)) for c in grid], special_ids, eot_id=eot, pad_id=pad_id,
        batch_size=batch_size, after_batch=after_batch,
    )
    screened = []
    for candidate, figures in zip(grid, measured):
        figures = with_class_figures(figures)
        screened.append(Screened(candidate, figures, screen_failures(figures, rule)))
    screen_s = time.perf_counter() - start
    questions = [r for r in rows if r.has_question][: rule.prompts]

    def generate(candidate):
        if not questions:
            return None
        return generation_figures(model, questions, candidate, decode=decode, eos_ids=eos_ids, pad_id=pad_id,
                                  max_new_tokens=rule.max_new_tokens, batch_size=batch_size)

    record = {
        "schema": SCHEMA,
        "rule": rule.as_dict(),
        "rows": len(rows),
        "rows_with_question": sum(r.has_question for r in rows),
        "generation": "greedy answers of the finalists" if questions else "none: the forget set has no questions",
        "candidates": [
            {"key": s.candidate.key, "tau": s.candidate.tau, "layers": s.candidate.layers_arg,
             "layer_set": s.candidate.name, "figures": _short(s.figures), "failures": s.failures}
            for s in screened
        ],
        "model_fingerprint": model_fingerprint,
    }
    try:
        choice, finalists = decide(screened, generate, rule)
    except TeacherChoiceError as error:
        record.update(refused=str(error), cost_s=_cost(screen_s, start, cpu_start))
        if path is not None:
            write_json_atomic(path, record)
        raise
    record["finalists"] = finalists
    record["choice"] = {"tau": choice.candidate.tau, "layers": choice.candidate.layers_arg,
                        "layer_set": choice.candidate.name, "key": choice.candidate.key,
                        "figures": _short(choice.figures)}
    record["cost_s"] = _cost(screen_s, start, cpu_start)
    if path is not None:
        write_json_atomic(path, record)
    record["cache"] = {"hit": False, "path": str(path) if path else None}
    return record


def _cost(screen_s: float, start: float, cpu_start: float) -> dict:
    """Wall seconds of the screen and in all, and the process's CPU seconds (all threads)."""
    return {"screen": round(screen_s, 1), "total": round(time.perf_counter() - start, 1),
            "cpu": round(time.process_time() - cpu_start, 1)}


def _short(figures: dict) -> dict:
    keep = ("special_first", "special_nonfinal", "eot_nonfinal", "kl_nonfinal", "removal", "function_damage")
    out = {k: (None if figures.get(k) is None else round(float(figures[k]), 4)) for k in keep}
    out["by_class"] = figures.get("by_class")
    return out


HEALTH_PROMPTS = 4
HEALTH_TOKENS = 24


def health_check(model, rows: Sequence[ForgetRow], teacher: tuple, *, decode, eos_ids: Sequence[int],
                 pad_id: int = 0, prompts: int = HEALTH_PROMPTS, max_new_tokens: int = HEALTH_TOKENS) -> dict:
    """Greedy answers of the teacher ``(tau, layers)`` to the first ``prompts`` forget questions;
    ``problem`` is set when more than half are not fluent: empty (no word), looping, shorter than two
    words or gibberish (the original model's NLL above 5 nats/token). Returns the figures (no questions
    in the forget set: ``checked`` False)."""
    questions = [r for r in rows if r.has_question][:prompts]
    if not questions:
        return {"checked": False, "why": "the forget set has no questions to answer"}
    start = time.perf_counter()
    answers = greedy_answers(model, [r.prompt for r in questions], max_new_tokens, eos_ids, teacher=teacher,
                             pad_id=pad_id)
    texts = _texts(decode, answers)
    nll = answer_nll(model, [r.prompt for r in questions], answers, pad_id=pad_id)
    figures = answer_figures(texts, nll)
    n = figures["n"]
    per = figures["answers"]
    empty = sum(a["empty"] for a in per)
    looping = sum(a["looping"] and not a["empty"] for a in per)
    bad = sum(not a["fluent"] for a in per)
    problem = None
    if bad > n / 2:
        what = ("most end their turn at once" if empty > n / 2 else "most loop" if looping > n / 2
                else "empty, looping or gibberish")
        problem = (f"{bad} of {n} greedy answers of the teacher are not fluent: {what} ({empty} empty or "
                   f"without a word, {looping} looping, {bad - empty - looping} too short or gibberish)")
    return {
        "checked": True,
        "teacher": {"tau": teacher[0], "layers": teacher[1]},
        "prompts": n,
        "max_new_tokens": max_new_tokens,
        "empty_rate": figures["empty_rate"],
        "loop_rate": figures["loop_rate"],
        "not_fluent_rate": figures["not_fluent_rate"],
        "answers": [a["text"] for a in figures["answers"]],
        "problem": problem,
        "seconds": round(time.perf_counter() - start, 2),
    }
