"""``asu-probe --choose``: the automatic teacher choice (the rule of
:mod:`asu_plugin.core.teacher_choice`, as ``trainer.method_args.tau=auto layers=auto`` applies it at
trainer start) on a model and a QA file, before any training.

The forget rows are built as OU's collator builds TOFU examples (the chat template's prompt, the
answer, the template's end-of-turn tail) with the probe's token classes; the choice is cached
under ``~/.cache/asu-plugin/teacher_choice`` like the trainer's, so choosing here first makes the
trainer's start free on the same model and data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ...core.teacher_health import ForgetRow, special_token_ids
from ...core.teacher_search import choose_teacher
from .data import build_example
from .measure import padding_token_id

CHOICE_JSON = "choice.json"


def forget_rows(tokenizer, qa_rows: Sequence[dict], system_prompt: Optional[str] = None) -> list[ForgetRow]:
    """QA pairs as the student is trained on them: prompt ids, answer ids with the template tail,
    the probe's token classes (``special`` / ``template`` on the tail) and the gold answer text."""
    special = set(special_token_ids(tokenizer))
    rows = []
    for qa in qa_rows:
        example = build_example(tokenizer, qa["question"], qa["answer"], system_prompt)
        answer = example.input_ids[len(example.prompt_ids):]
        tail = answer[len(example.classes):]
        classes = tuple(example.classes) + tuple("special" if t in special else "template" for t in tail)
        rows.append(ForgetRow(tuple(example.prompt_ids), tuple(answer), classes, qa["answer"]))
    return rows


def run_choose(model, tokenizer, rows: Sequence[ForgetRow], cache_dir: Optional[Path] = None) -> dict:
    """The choice record (raises :class:`asu_plugin.core.teacher_choice.TeacherChoiceError` on a refusal)."""
    from ...openunlearning.run_record import weights_fingerprint

    return choose_teacher(
        model, rows, model_fingerprint=weights_fingerprint(model), special_ids=special_token_ids(tokenizer),
        eos_ids=[tokenizer.eos_token_id], pad_id=padding_token_id(tokenizer), cache_dir=cache_dir,
        decode=lambda ids: tokenizer.decode(list(ids), skip_special_tokens=True),
    )


def format_choice(record: dict) -> list[str]:
    """One line per screened candidate, the finalists, and the choice with the overrides to use."""
    lines = []
    for c in record["candidates"]:
        f = c["figures"]
        verdict = "ok" if not c["failures"] else "out: " + "; ".join(c["failures"])
        lines.append(
            f"{c['key']:<34} removal {f['removal']:+.2f} function {f['function_damage']:+.2f} "
            f"special@1st {f['special_first'] if f['special_first'] is None else round(f['special_first'], 3)} "
            f"inside {f['special_nonfinal']:.4f}  {verdict}"
        )
    for finalist in record.get("finalists", []):
        gen = finalist["generation"] or {}
        lines.append(f"finalist {finalist['candidate']}: "
                     + (f"empty {gen.get('empty_rate', 0):.0%}, looping {gen.get('loop_rate', 0):.0%}, "
                        f"not fluent {gen.get('not_fluent_rate', 0):.0%}" if gen else "no questions: not generated")
                     + (" -> out: " + "; ".join(finalist["failures"]) if finalist["failures"] else " -> chosen"))
    choice = record["choice"]
    cached = " (cached)" if record.get("cache", {}).get("hit") else f" ({record['cost_s']['total']:.0f} s)"
    lines.append(f"choice: {choice['key']}{cached} -> trainer.method_args.tau={choice['tau']:g} "
                 f"'trainer.method_args.layers=\"{choice['layers']}\"'")
    return lines
