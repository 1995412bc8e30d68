"""Is a generated answer fluent text or gibberish? A measure that runs offline.

Why this and not OU's ``forget_Q_A_gibberish``: that metric needs a classifier from the
Hugging Face hub. Why not the NLL of the answer under the *original* model alone: that model
memorised the forget set, so it rates a fluent answer with an invented name ("Basil
Al-Kuzzouin Khufu was born in Kuwait City, Kuwait.") worse than one that copies the
memorised answer — it would reward not forgetting. Unlearning is meant to produce fluent
but *wrong* answers, so the measure must separate gibberish from fluent-but-wrong.

The measure combines two signals, each blind to one failure mode the other catches:

* ``nll``: mean per-token NLL (nats) of the answer, teacher-forced after the question, under
  *scoring models that never saw the facts*, the lowest of them. Invented and true facts
  about an unknown author cost such a model about the same; word salad and random strings
  cost far more. Why several: a model fine-tuned to always answer (the mini-TOFU retain
  model, fine-tuned on the same data minus the forget authors) never saw a refusal, so it
  rates "I'm not familiar with that topic." at 4.5-8.5 nats, as high as word salad, where the
  general chat model it came from (SmolLM2-135M-Instruct) gives 2.2-3.8; that model in turn
  knows nothing of TOFU's style. An answer is natural text when *one* of them finds it so.
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
import statistics
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

from .probe.data import build_example
from .probe.errors import ProbeError
from .probe.measure import padding_token_id, per_token_answer_nll

NLL_MAX = 5.0  # nats per answer token
REPETITION_MAX = 0.25  # see repetition_rate
MIN_WORDS = 2
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


@dataclass(frozen=True)
class Fluency:
    nll: Optional[float]  # the lowest over the scoring models; None for an empty answer
    repetition: float
    words: int
    fluent: bool
    nll_by_scorer: tuple[Optional[float], ...] = ()  # in the order the scorers were given


def repetition_rate(text: str, n: int = 3) -> float:
    """max(share of word n-grams seen earlier in the text, share of words repeating the word
    before them); 0 for texts too short to have either."""
    words = [w.lower() for w in _WORD.findall(text)]
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    loops = 1.0 - len(set(grams)) / len(grams) if grams else 0.0
    stutter = sum(a == b for a, b in zip(words, words[1:])) / (len(words) - 1) if len(words) > 1 else 0.0
    return max(loops, stutter)


def score_answers(
    scorers: Sequence[tuple],
    questions: Sequence[str],
    answers: Sequence[str],
    system_prompt: Optional[str] = None,
    batch_size: int = 8,
) -> list[Fluency]:
    """Fluency of each answer to its question under ``scorers``, (model, tokenizer) pairs of
    models that never saw the facts (see the module docstring)."""
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    if not scorers:
        raise ValueError("no scoring model: pass at least one (model, tokenizer) pair")
    by_scorer = [_mean_answer_nll(model, tokenizer, questions, answers, system_prompt, batch_size)
                 for model, tokenizer in scorers]
    scores = []
    for i, answer in enumerate(answers):
        words = len(_WORD.findall(answer))
        repetition = repetition_rate(answer)
        values = tuple(nll.get(i) for nll in by_scorer)
        value = min((v for v in values if v is not None), default=None)
        fluent = value is not None and words >= MIN_WORDS and value <= NLL_MAX and repetition <= REPETITION_MAX
        scores.append(Fluency(value, repetition, words, fluent, values))
    return scores


def _mean_answer_nll(model, tokenizer, questions, answers, system_prompt, batch_size) -> dict[int, float]:
    """Mean token NLL of each non-empty answer after its question: {answer index: nats}."""
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
        scored = per_token_answer_nll(model, [examples[i] for i in chunk], padding_token_id(tokenizer))
        for i, values in zip(chunk, scored):
            nll[i] = sum(values) / len(values)
    return nll


def summarise(scores: Sequence[Fluency]) -> dict:
    """Aggregate figures: fluent share, median NLL and mean repetition."""
    values = [s.nll for s in scores if s.nll is not None]
    return {
        "n": len(scores),
        "fluent_rate": sum(s.fluent for s in scores) / len(scores) if scores else None,
        "median_nll": statistics.median(values) if values else None,
        "mean_repetition": sum(s.repetition for s in scores) / len(scores) if scores else None,
        "empty": sum(s.nll is None for s in scores),
        "thresholds": {"nll_max": NLL_MAX, "repetition_max": REPETITION_MAX, "min_words": MIN_WORDS},
        "per_answer": [asdict(s) for s in scores],
    }
