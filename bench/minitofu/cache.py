"""What the report derives with a model and keeps in the work dir, so ``--report`` reruns are cheap:
the fluency of each evaluation's forget answers (``evals/<name>/asu_fluency.json``) and the
teacher's sample answers (``teacher_samples.json``). Each cache names what it was computed
from and is recomputed when that changes."""

from __future__ import annotations

import json
from pathlib import Path

from asu_plugin.core.atomic import write_json_atomic

from .evals import load_summary
from .plan import Plan
from .settings import SETTINGS, TEACHER_SETTINGS

FLUENCY_FILE = "asu_fluency.json"
TEACHER_FILE = "teacher_samples.json"


def fluency_of(eval_dirs: dict[str, Path], scorer_dirs: list[Path]) -> dict[str, dict]:
    """Fluency summary per evaluated model (asu_plugin.tools.fluency, scored by ``scorer_dirs``:
    the retain model and the base model), cached next to its TOFU_EVAL.json (recomputed when
    the scoring models change)."""
    from asu_plugin.tools.fluency import score_answers, summarise
    from asu_plugin.tools.probe import load_model

    names, results, scorers = [str(d) for d in scorer_dirs], {}, None
    for name, eval_dir in eval_dirs.items():
        cache = eval_dir / FLUENCY_FILE
        cached = json.loads(cache.read_text()) if cache.is_file() else {}
        if cached.get("scorers") == names:
            results[name] = cached
            continue
        summary = load_summary(eval_dir)
        if summary is None:
            continue
        scorers = scorers or [load_model(d) for d in scorer_dirs]
        rows = list(summary["generations"].values())
        scores = score_answers(scorers, [r["question"] for r in rows], [r["generation"] for r in rows])
        results[name] = {**summarise(scores), "scorers": names}
        write_json_atomic(cache, results[name])
    return results


def teacher_answers(plan: Plan, questions: list[str], chosen: list[dict] = ()) -> list[dict]:
    """Greedy answers of the target under smoothed attention: what ASU distils towards. The study's
    setting (tau 2.3 on all layers), the same tau on the shallow layers 0-9, and each teacher the
    automatic choice picked (``chosen``: ``{"tau", "layers"}`` from the runs' records), cached in
    the work dir. Shows whether the teacher itself stays fluent on this model."""
    settings = [(TEACHER_SETTINGS["tau"], layers) for layers in TEACHER_SETTINGS["layers"]]
    settings += [(t["tau"], t["layers"]) for t in chosen if (t["tau"], t["layers"]) not in settings]
    cache = plan.work / TEACHER_FILE
    cached = json.loads(cache.read_text()) if cache.is_file() else {}
    if cached.get("questions") == questions and cached.get("settings") == [list(s) for s in settings]:
        return cached["answers"]
    from asu_plugin.tools.probe import load_model, run_generate

    model, tokenizer = load_model(plan.target)
    answers = [{} for _ in questions]
    for tau in dict.fromkeys(t for t, _ in settings):  # one call per tau: its layer sets share the plain answers
        rows = run_generate(model, tokenizer, questions, [tau], [ls for t, ls in settings if t == tau],
                            max_new_tokens=SETTINGS["eval"]["max_new_tokens"])
        for answer, row in zip(answers, rows):
            answer.update({f"teacher ({key.replace('|', ', ')})": text for key, text in row["smoothed"].items()})
    write_json_atomic(cache, {"questions": questions, "settings": [list(s) for s in settings], "answers": answers})
    return answers
