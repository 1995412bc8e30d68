"""What a smoothed teacher does to the forget data, measured on the model alone.

ASU trains the student towards the smoothed teacher's distribution on every answer position
of the forget set. When the teacher is degenerate, the student learns the degeneration: on
SmolLM2-135M at tau 2.3 on every layer, the teacher ends its turn at once or loops, and the
unlearned model answers nothing. These measurements tell such a teacher from a healthy one
without a retain model, an evaluation split or an unlearning run:

* **teacher-forced** (one forward per teacher, on the forget rows as the student sees them,
  :func:`teacher_forced_figures`): the teacher's probability mass on special tokens
  (end-of-turn and friends) at the first answer position and at the *non-final* answer
  positions (those whose gold label is answer text, before the first special token: where a
  fluent teacher must keep talking); the mean KL(teacher || original) there; and how much less likely the teacher finds
  the gold tokens (``gold_nll_increase``, nats/token: how much of the answer it no longer
  predicts). Optional per-token classes (e.g. the τ-probe's factual / function words) split
  the KL and the NLL increase by class.
* **generated** (:func:`greedy_answers`, :func:`answer_figures`): the teacher's greedy answers
  to the forget questions, and per answer whether it is empty, how much it repeats itself
  (:func:`repetition_rate`), a fluency proxy — the *original* model's mean NLL of the answer
  after its question (gibberish costs any language model far more than sentences; no retain
  model needed) — and the ROUGE-L recall of the gold answer (:func:`rouge_l_recall`: how much
  of the fact it still says).

Rows are token ids (:class:`ForgetRow`: the prompt, then the gold labels as OU's collator
builds them, template tail included), so this works for any tokenizer and for forget sets
without questions (MUSE / WMDP text: an empty prompt, teacher-forced figures only).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from .smoothing import smoothed_attention
from .words import words

IGNORE_INDEX = -100


@dataclass(frozen=True)
class ForgetRow:
    """One forget example as token ids: ``prompt`` (empty for plain text) then ``answer`` (the
    gold label tokens, including the chat template's end-of-turn tail); ``classes`` optionally
    names a class per answer token (e.g. ``"factual"`` / ``"function"``)."""

    prompt: tuple[int, ...]
    answer: tuple[int, ...]
    classes: Optional[tuple[str, ...]] = None
    gold_text: Optional[str] = None  # the answer as text, for ROUGE-L recall of generated answers

    @property
    def has_question(self) -> bool:
        return len(self.prompt) > 0


def rows_from_labels(input_ids: Sequence[int], labels: Sequence[int]) -> ForgetRow:
    """A :class:`ForgetRow` from an OU-style item: ``labels`` is ``IGNORE_INDEX`` on the prompt
    and equals ``input_ids`` on the answer. Labels from the first or second token on (OU's
    pretraining items) make a text row without a question."""
    input_ids, labels = list(input_ids), list(labels)
    answer_at = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    if not answer_at:
        raise ValueError("a forget row has no answer tokens (every label is -100): it cannot teach anything")
    start = answer_at[0]
    if start <= 1:  # plain text (MUSE, WMDP): OU labels every token but the first, which nothing predicts
        return ForgetRow(prompt=(), answer=tuple(input_ids[: answer_at[-1] + 1]))
    return ForgetRow(prompt=tuple(input_ids[:start]), answer=tuple(input_ids[start : answer_at[-1] + 1]))


def special_token_ids(tokenizer) -> list[int]:
    """Every id the tokenizer marks special (end-of-turn, BOS, pad, added control tokens)."""
    ids = set(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
    for token_id, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(token, "special", False):
            ids.add(int(token_id))
    if not ids:
        raise ValueError(
            f"{type(tokenizer).__name__} marks no special token: cannot measure end-of-turn mass; "
            "pass special_ids explicitly (e.g. [tokenizer.eos_token_id])"
        )
    return sorted(ids)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


@dataclass
class _Sums:
    """Running sums for one teacher over the rows."""

    first: list = field(default_factory=list)
    first_top: list = field(default_factory=list)
    special: list = field(default_factory=list)
    eot: list = field(default_factory=list)
    kl: list = field(default_factory=list)
    nll_increase: list = field(default_factory=list)
    by_class: dict = field(default_factory=dict)

    def figures(self) -> dict:
        classes = {
            name: {"kl": _mean(kl), "nll_increase": _mean(nll), "tokens": len(kl)}
            for name, (kl, nll) in sorted(self.by_class.items())
        }
        return {
            "special_first": _mean(self.first),
            "special_first_top": _mean(self.first_top),
            "special_nonfinal": _mean(self.special),
            "eot_nonfinal": _mean(self.eot),
            "kl_nonfinal": _mean(self.kl),
            "gold_nll_increase": _mean(self.nll_increase),
            "rows_with_question": len(self.first),
            "nonfinal_tokens": len(self.special),
            "by_class": classes,
        }


def _batch(rows: Sequence[ForgetRow], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r.prompt) + len(r.answer) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        seq = list(r.prompt) + list(r.answer)
        ids[i, : len(seq)] = torch.tensor(seq, device=device)
        mask[i, : len(seq)] = 1
    return ids, mask


def _predicting_positions(row: ForgetRow) -> tuple[list[int], list[int]]:
    """(logit positions, gold labels) of the answer tokens that have a logit predicting them."""
    start = len(row.prompt)
    first = max(start, 1)
    positions = list(range(first - 1, start + len(row.answer) - 1))
    labels = list(row.answer[first - start :])
    return positions, labels


@torch.no_grad()
def teacher_forced_figures(
    model,
    rows: Sequence[ForgetRow],
    teachers: Sequence[tuple[float, object]],
    special_ids: Sequence[int],
    *,
    eot_id: Optional[int] = None,
    pad_id: int = 0,
    batch_size: int = 8,
    after_batch: Optional[Callable[[], None]] = None,
) -> list[dict]:
    """Teacher-forced figures of each ``(tau, layers)`` teacher on ``rows`` (see the module
    docstring); one plain forward per batch, then one smoothed forward per teacher.

    Returns one dict per teacher, in order: ``special_first`` (mean special-token probability
    at the first answer position, rows with a question only; None without), ``special_first_top``
    (the share of those rows where a special token is the teacher's most likely first token: a
    smoothed distribution is flat, so end-of-turn can top it at 0.2), ``special_nonfinal``
    (the same at the answer positions before the first special gold token), ``eot_nonfinal`` (``eot_id``
    alone there), ``kl_nonfinal`` (mean KL(teacher || original) there, nats), ``gold_nll_increase``
    (mean teacher NLL minus original NLL of the gold tokens there) and ``by_class`` (KL and NLL
    increase per class of ``ForgetRow.classes``).
    """
    if not rows:
        raise ValueError("no forget rows to measure the teacher on")
    device = _device(model)
    special = torch.tensor(sorted(set(int(i) for i in special_ids)), device=device)
    special_set = set(special.tolist())
    sums = [_Sums() for _ in teachers]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            ids, mask = _batch(chunk, pad_id, device)
            plain = _answer_log_probs(model(input_ids=ids, attention_mask=mask, use_cache=False).logits, chunk)
            for sum_, (tau, layers) in zip(sums, teachers):
                with smoothed_attention(model, tau, layers):
                    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                _accumulate(sum_, chunk, plain, _answer_log_probs(logits, chunk), special, special_set, eot_id)
            if after_batch is not None:
                after_batch()
    finally:
        model.train(was_training)
    return [s.figures() for s in sums]


def _answer_log_probs(logits: torch.Tensor, rows: Sequence[ForgetRow]) -> list[torch.Tensor]:
    """Per row, the float32 log-probabilities at the positions predicting its answer tokens
    (the softmax over the vocabulary only where it is needed: answers are a fraction of a batch)."""
    out = []
    for i, row in enumerate(rows):
        positions, _ = _predicting_positions(row)
        pos = torch.tensor(positions, dtype=torch.long, device=logits.device)
        out.append(logits[i, pos].float().log_softmax(-1))
    return out


def _accumulate(sums: _Sums, rows, plain, smooth, special, special_set, eot_id) -> None:
    for i, row in enumerate(rows):
        positions, labels = _predicting_positions(row)
        if not positions:
            continue
        log_t, log_o = smooth[i], plain[i]
        p_t = log_t.exp()
        special_mass = p_t[:, special].sum(-1)
        if row.has_question:
            sums.first.append(float(special_mass[0]))
            sums.first_top.append(float(int(p_t[0].argmax()) in special_set))
        gold = torch.tensor(labels, device=log_t.device)
        kl = torch.where(p_t > 0, p_t * (log_t - log_o), torch.zeros_like(p_t)).sum(-1)
        increase = log_o.gather(1, gold[:, None])[:, 0] - log_t.gather(1, gold[:, None])[:, 0]
        offset = len(row.answer) - len(labels)
        for k, label in enumerate(labels):
            if label in special_set:
                break  # the answer text ends here: ending the turn is right, the template tail follows
            sums.special.append(float(special_mass[k]))
            if eot_id is not None:
                sums.eot.append(float(p_t[k, eot_id]))
            sums.kl.append(float(kl[k]))
            sums.nll_increase.append(float(increase[k]))
            if row.classes is not None:
                kls, nlls = sums.by_class.setdefault(row.classes[offset + k], ([], []))
                kls.append(float(kl[k]))
                nlls.append(float(increase[k]))


# ---- generated answers -------------------------------------------------------------------


@torch.no_grad()
def greedy_answers(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_ids: Sequence[int],
    *,
    teacher: Optional[tuple[float, object]] = None,
    pad_id: int = 0,
    batch_size: int = 8,
) -> list[list[int]]:
    """Greedy continuation of each prompt (``model.generate``, KV cache, left padding), plain
    or inside ``smoothed_attention(model, *teacher)`` (prefill and every decoding step smoothed).
    Each answer is cut before its first id of ``eos_ids``."""
    from transformers import GenerationConfig

    device = _device(model)
    stop = [int(i) for i in eos_ids]
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
        eos_token_id=stop or None, pad_token_id=pad_id,
    )
    answers: list[list[int]] = []
    was_training = model.training
    model.eval()
    smoothing = (lambda: smoothed_attention(model, *teacher)) if teacher is not None else contextlib.nullcontext
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = [list(p) for p in prompts[start : start + batch_size]]
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long, device=device)
            mask = torch.zeros_like(ids)
            for row, p in enumerate(chunk):
                ids[row, width - len(p) :] = torch.tensor(p, device=device)
                mask[row, width - len(p) :] = 1
            with smoothing():
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
            for new in out[:, width:].tolist():
                cut = next((k for k, t in enumerate(new) if t in stop), len(new))
                answers.append(new[:cut])
    finally:
        model.train(was_training)
    return answers


def repetition_rate(text: str, n: int = 3) -> float:
    """max(share of word n-grams seen earlier in the text, share of words repeating the word
    before them): the definition of ``asu_plugin.tools.fluency.repetition_rate`` (loops such as
    "the name of the name of ..." score near 1, prose near 0); 0 for texts too short for either."""
    ws = words(text)
    grams = [tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)]
    loops = 1.0 - len(set(grams)) / len(grams) if grams else 0.0
    stutter = sum(a == b for a, b in zip(ws, ws[1:])) / (len(ws) - 1) if len(ws) > 1 else 0.0
    return max(loops, stutter)


def rouge_l_recall(gold: str, answer: str) -> Optional[float]:
    """ROUGE-L recall of ``gold`` in ``answer`` over lower-case words (no stemming): the
    longest common word subsequence over the gold's word count; None for a gold without words."""
    g, a = words(gold), words(answer)
    if not g:
        return None
    previous = [0] * (len(a) + 1)
    for x in g:
        current = [0]
        for j, y in enumerate(a):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1] / len(g)


@torch.no_grad()
def answer_nll(model, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], *,
               pad_id: int = 0, batch_size: int = 8) -> list[Optional[float]]:
    """Mean NLL (nats/token) of each answer after its prompt under ``model`` as it is (call it
    outside any smoothing for the original model); None for an empty answer."""
    device = _device(model)
    out: list[Optional[float]] = [None] * len(answers)
    order = [i for i, a in enumerate(answers) if len(a) > 0]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            rows = [ForgetRow(tuple(prompts[i]), tuple(answers[i])) for i in chunk]
            ids, mask = _batch(rows, pad_id, device)
            log_p = _answer_log_probs(model(input_ids=ids, attention_mask=mask, use_cache=False).logits, rows)
            for k, (i, row) in enumerate(zip(chunk, rows)):
                gold = torch.tensor(_predicting_positions(row)[1], device=device)
                out[i] = float(-log_p[k].gather(1, gold[:, None]).mean())
    finally:
        model.train(was_training)
    return out


#: an answer is *looping* above this repetition rate (the fluency measure's threshold)
LOOP_REPETITION = 0.25
#: an answer is *not fluent* when the original model's NLL of it exceeds this (nats/token) —
#: the fluency measure's threshold — or when it loops, or has fewer than MIN_WORDS words
FLUENT_NLL_MAX = 5.0
MIN_WORDS = 2


def answer_figures(texts: Sequence[str], original_nll: Sequence[Optional[float]],
                   gold_texts: Sequence[Optional[str]] = ()) -> dict:
    """Per-answer and aggregate health of generated answers: ``empty_rate`` (no word at all),
    ``loop_rate`` (repetition > :data:`LOOP_REPETITION`), ``not_fluent_rate`` (empty, looping,
    fewer than :data:`MIN_WORDS` words, or original-model NLL > :data:`FLUENT_NLL_MAX`), and
    ``gold_recall`` (mean ROUGE-L recall of the gold answers, where given)."""
    per = []
    golds = list(gold_texts) + [None] * (len(texts) - len(gold_texts))
    for text, nll, gold in zip(texts, original_nll, golds):
        count = len(words(text))
        repetition = repetition_rate(text)
        empty = count == 0
        looping = repetition > LOOP_REPETITION
        fluent = (not empty and not looping and count >= MIN_WORDS and nll is not None
                  and math.isfinite(nll) and nll <= FLUENT_NLL_MAX)
        per.append({
            "text": text, "words": count, "empty": empty, "repetition": repetition, "looping": looping,
            "original_nll": nll, "fluent": fluent,
            "gold_recall": rouge_l_recall(gold, text) if gold else None,
        })
    n = len(per)
    return {
        "n": n,
        "empty_rate": sum(p["empty"] for p in per) / n if n else None,
        "loop_rate": sum(p["looping"] for p in per) / n if n else None,
        "not_fluent_rate": sum(not p["fluent"] for p in per) / n if n else None,
        "gold_recall": _mean(p["gold_recall"] for p in per),
        "answers": per,
    }
