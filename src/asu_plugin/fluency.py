"""Is a generated answer fluent text or gibberish? A measure that runs offline.

Why this and not OU's ``forget_Q_A_gibberish``: that metric needs a classifier from the
Hugging Face hub. Why not the NLL of the answer under the *original* model alone: that model
memorised the forget set, so it rates a fluent answer with an invented name ("Basil
Al-Kuzzouin Khufu was born in Kuwait City, Kuwait.") worse than one that copies the
memorised answer — it would reward not forgetting. Unlearning is meant to produce fluent
but *wrong* answers, so the measure must separate gibberish from fluent-but-wrong.

The measure combines two signals, each blind to one failure mode the other catches:

* ``nll``: mean per-token NLL (nats) of the answer, teacher-forced after the question, under
  a *scoring model that never saw the facts* (in the mini-TOFU benchmark: the retain model,
  fine-tuned on the same data minus the forget authors). Invented and true facts about an
  unknown author cost it about the same; word salad and random strings cost far more.
* ``repetition``: the larger of two rates over the answer's words — the share of word 3-grams
  that repeat an earlier one (loops: "the author the author the author ...") and the share
  of words equal to the word before them (stutter: "Al-Al-Al Kuwaiti Kuwaiti 1956 1956").
  Both become cheap for any language model after a few repeats, so NLL alone would call them
  fluent, while fluent prose has almost neither.

An answer is **fluent** when it has at least :data:`MIN_WORDS` words, ``nll <=`` the NLL
threshold and ``repetition <=`` the repetition threshold. The default thresholds are
validated on hand-made fluent, fluent-but-wrong and gibberish answers in
``tests/test_fluency.py`` (SmolLM2-135M-Instruct as the scoring model).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

from .probe import ProbeError, _pad_id, answer_nll, build_example

NLL_MAX = 5.0  # nats per answer token
REPETITION_MAX = 0.25  # see repetition_rate
MIN_WORDS = 2
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


@dataclass(frozen=True)
class Fluency:
    nll: Optional[float]  # None for an empty answer
    repetition: float
    words: int
    fluent: bool


def repetition_rate(text: str, n: int = 3) -> float:
    """max(share of word n-grams seen earlier in the text, share of words repeating the word
    before them); 0 for texts too short to have either."""
    words = [w.lower() for w in _WORD.findall(text)]
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    loops = 1.0 - len(set(grams)) / len(grams) if grams else 0.0
    stutter = sum(a == b for a, b in zip(words, words[1:])) / (len(words) - 1) if len(words) > 1 else 0.0
    return max(loops, stutter)


def score_answers(
    model,
    tokenizer,
    questions: Sequence[str],
    answers: Sequence[str],
    system_prompt: Optional[str] = None,
    batch_size: int = 8,
) -> list[Fluency]:
    """Fluency of each answer to its question, under ``model`` (see the module docstring)."""
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    examples, nll = {}, {}
    for i, (question, answer) in enumerate(zip(questions, answers)):
        if not answer.strip():
            continue
        try:
            examples[i] = build_example(tokenizer, question, answer.strip(), system_prompt)
        except ProbeError:  # the answer has no token of its own (e.g. only whitespace)
            continue
    order = list(examples)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for i, values in zip(chunk, answer_nll(model, [examples[i] for i in chunk], _pad_id(tokenizer))):
            nll[i] = sum(values) / len(values)
    scores = []
    for i, answer in enumerate(answers):
        words = len(_WORD.findall(answer))
        repetition = repetition_rate(answer)
        value = nll.get(i)
        fluent = value is not None and words >= MIN_WORDS and value <= NLL_MAX and repetition <= REPETITION_MAX
        scores.append(Fluency(value, repetition, words, fluent))
    return scores


def summarise(scores: Sequence[Fluency]) -> dict:
    """Aggregate figures: fluent share, median NLL and mean repetition."""
    values = sorted(s.nll for s in scores if s.nll is not None)
    median = values[len(values) // 2] if values else None
    if values and len(values) % 2 == 0:
        median = (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2
    return {
        "n": len(scores),
        "fluent_rate": sum(s.fluent for s in scores) / len(scores) if scores else None,
        "median_nll": median,
        "mean_repetition": sum(s.repetition for s in scores) / len(scores) if scores else None,
        "empty": sum(s.nll is None for s in scores),
        "thresholds": {"nll_max": NLL_MAX, "repetition_max": REPETITION_MAX, "min_words": MIN_WORDS},
        "per_answer": [asdict(s) for s in scores],
    }
