"""The probe itself: measure every (tau, layers) setting on a QA set and put the numbers together.

For every question and every setting: the teacher-forced NLL of each answer token, plain and
smoothed (:mod:`.measure`), the token's class (:mod:`.words`) and, unless ``max_new_tokens``
is 0, the greedy answer plain and smoothed. Metrics per setting, over all answer tokens of all
questions:

* ``mean_nll[c]``: mean NLL (nats/token) of the tokens of class ``c``;
* ``delta_nll[c]`` = ``mean_nll[c]`` (smoothed) - ``mean_nll[c]`` (plain): the mean per-token
  NLL *increase* caused by smoothing (same tokens on both sides);
* ``nll_ratio`` = ``mean_nll[factual] / mean_nll[function]`` (smoothed; the plain value is
  reported under ``plain``);
* ``increase_ratio`` = ``delta_nll[factual] / delta_nll[function]``: the factual/function
  separation, i.e. how selectively smoothing hits factual tokens; null when the function
  increase is <= 0 (then smoothing is perfectly selective);
* ``excess_increase`` = ``delta_nll[factual] - delta_nll[function]`` (nats/token);
* ``survival_rate``: fraction of questions whose smoothed greedy answer *survives*
  (:func:`~.words.survives`);
* ``factual_recall``: mean over questions of the fraction of the gold answer's factual words
  that appear (as words) in the smoothed greedy answer (``plain`` holds the plain value);
* the recommended setting (:mod:`.recommend`).

A tau of 1 in the grid is the plain model exactly (``smoothed_attention`` is a no-op there), so
its numbers are reused, not recomputed.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterable, Optional, Sequence

import torch

from ...core.smoothing import check_smoothing_args, smoothed_attention
from .data import Example, build_example, prompt_text
from .measure import greedy_generate, padding_token_id, per_token_answer_nll
from .recommend import DEFAULT_MIN_INCREASE, recommend, recommendation_line
from .report import SCHEMA
from .settings import layers_arg, setting_key
from .words import CLASSES, FACTUAL, FUNCTION, TOKEN_RULE, factual_recall, factual_words, survives

METRICS_DOC = {
    "nll": "teacher-forced -log p(token | prompt, previous answer tokens), nats; answer text tokens only",
    "mean_nll": "token-weighted mean NLL per class over all questions",
    "delta_nll": "mean_nll (smoothed) - mean_nll (plain), per class (same tokens)",
    "nll_ratio": "mean_nll[factual] / mean_nll[function]",
    "increase_ratio": "delta_nll[factual] / delta_nll[function] (the factual/function separation); "
    "null if delta_nll[function] <= 0",
    "excess_increase": "delta_nll[factual] - delta_nll[function] (nats/token)",
    "recommendation": "largest increase_ratio among settings with delta_nll[factual] >= min_increase "
    "(delta_nll[function] <= 0 ranks first; ties: larger delta_nll[factual], smaller tau, fewer layers); "
    "if none qualifies, the largest delta_nll[factual]",
    "survival_rate": "fraction of questions whose smoothed greedy answer (lowercased, whitespace "
    "collapsed) equals or contains the plain greedy answer",
    "factual_recall": "mean fraction of the gold answer's factual words present in the greedy answer",
}


def _mean(values: Iterable[float]) -> Optional[float]:
    values = list(values)
    return sum(values) / len(values) if values else None


def _class_means(examples: Sequence[Example], nll: Sequence[Sequence[float]]) -> tuple[dict, dict]:
    means, counts = {}, {}
    for c in CLASSES:
        vals = [v for e, row in zip(examples, nll) for v, k in zip(row, e.classes) if k == c]
        means[c], counts[c] = _mean(vals), len(vals)
    return means, counts


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b is not None and b > 0 else None


def _diff(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a - b if a is not None and b is not None else None


def _smoothing(setting: Optional[tuple], model):
    """The context a setting runs in: plain (None) or smoothed."""
    if setting is None:
        return contextlib.nullcontext()
    return smoothed_attention(model, setting[0], layers_arg(setting[1]))


def _mean_recall(gold_words: Sequence[Sequence[str]], answers: Sequence[str]) -> Optional[float]:
    return _mean(r for r in (factual_recall(w, a) for w, a in zip(gold_words, answers)) if r is not None)


def _measure(model, tokenizer, examples, settings, max_new_tokens, batch_size, progress):
    """Per-token NLL and greedy answers of every example, plain (key None) and per setting."""
    from tqdm.auto import tqdm

    pad_id, eos_id = padding_token_id(tokenizer), tokenizer.eos_token_id
    batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    nll: dict[Optional[tuple], list] = {}
    greedy: dict[Optional[tuple], list] = {}
    # tau = 1 is exactly the plain model (smoothed_attention is a no-op there): reuse its numbers
    computed = [None, *(s for s in settings if s[0] != 1.0)]
    steps = len(computed) * len(batches) * (2 if max_new_tokens > 0 else 1)
    with tqdm(total=steps, desc="asu-probe", unit="step", disable=not progress) as bar:
        for setting in computed:
            nll[setting], greedy[setting] = [], []
            label = "plain" if setting is None else setting_key(*setting)
            for batch in batches:
                bar.set_postfix_str(label)
                with _smoothing(setting, model):
                    nll[setting].extend(per_token_answer_nll(model, batch, pad_id))
                    bar.update()
                    if max_new_tokens > 0:
                        new = greedy_generate(
                            model, [e.prompt_ids for e in batch], max_new_tokens, eos_id, pad_id
                        )
                        greedy[setting].extend(
                            tokenizer.decode(t, skip_special_tokens=True).strip() for t in new
                        )
                        bar.update()
    for setting in settings:
        if setting[0] == 1.0:
            nll[setting], greedy[setting] = nll[None], greedy[None]
    return nll, greedy, len(computed)


def _grid_entry(setting, examples, nll, greedy, plain_means, gold_words, max_new_tokens) -> dict:
    means, _ = _class_means(examples, nll[setting])
    delta = {c: _diff(means[c], plain_means[c]) for c in CLASSES}
    entry = {
        "tau": setting[0],
        "layers": setting[1],
        "mean_nll": means,
        "delta_nll": delta,
        "nll_ratio": _ratio(means[FACTUAL], means[FUNCTION]),
        "increase_ratio": _ratio(delta[FACTUAL], delta[FUNCTION]),
        "excess_increase": _diff(delta[FACTUAL], delta[FUNCTION]),
        "survival_rate": None,
        "factual_recall": None,
    }
    if max_new_tokens > 0:
        entry["survival_rate"] = _mean(float(survives(p, s)) for p, s in zip(greedy[None], greedy[setting]))
        entry["factual_recall"] = _mean_recall(gold_words, greedy[setting])
    return entry


def _question_items(examples, settings, nll, greedy, gold_words, max_new_tokens) -> list[dict]:
    questions = []
    for i, e in enumerate(examples):
        item = {
            "index": i,
            "question": e.question,
            "answer": e.answer,
            "tokens": e.tokens,
            "classes": e.classes,
            "factual_words": gold_words[i],
            "plain_nll": nll[None][i],
            "smoothed_nll": {setting_key(*s): nll[s][i] for s in settings},
        }
        if max_new_tokens > 0:
            item["plain_greedy"] = greedy[None][i]
            item["smoothed_greedy"] = {setting_key(*s): greedy[s][i] for s in settings}
            item["survives"] = {setting_key(*s): survives(greedy[None][i], greedy[s][i]) for s in settings}
        questions.append(item)
    return questions


def run_probe(
    model,
    tokenizer,
    rows: Sequence[dict],
    taus: Sequence[float],
    layer_sets: Sequence[str],
    *,
    factual: str = "novel",
    system_prompt: Optional[str] = None,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    min_increase: float = DEFAULT_MIN_INCREASE,
    progress: bool = True,
) -> dict:
    """Compute the probe's report (the content of ``probe.json``) for a loaded model."""
    import transformers

    from ... import __version__
    from ...core.selection import find_attention_layout

    num_layers = find_attention_layout(model).num_layers
    settings = [(float(t), ls) for t in taus for ls in layer_sets]
    for tau, ls in settings:  # fail before any compute
        check_smoothing_args(model, tau, layers_arg(ls))
    examples = [build_example(tokenizer, r["question"], r["answer"], system_prompt, factual) for r in rows]

    start = time.monotonic()
    nll, greedy, settings_computed = _measure(
        model, tokenizer, examples, settings, max_new_tokens, batch_size, progress
    )
    seconds = time.monotonic() - start

    gold_words = [factual_words(e.answer, e.question, factual) for e in examples]
    plain_means, counts = _class_means(examples, nll[None])
    plain = {
        "mean_nll": plain_means,
        "n_tokens": counts,
        "nll_ratio": _ratio(plain_means[FACTUAL], plain_means[FUNCTION]),
        "factual_recall": _mean_recall(gold_words, greedy[None]) if max_new_tokens > 0 else None,
    }
    grid = [_grid_entry(s, examples, nll, greedy, plain_means, gold_words, max_new_tokens) for s in settings]
    best, qualified = recommend(grid, num_layers, min_increase)
    return {
        "schema": SCHEMA,
        "model_class": type(model).__name__,
        "num_layers": num_layers,
        "n_questions": len(examples),
        "taus": [float(t) for t in taus],
        "layer_sets": list(layer_sets),
        "factual_mode": factual,
        "system_prompt": system_prompt,
        "max_new_tokens": max_new_tokens,
        "token_rule": TOKEN_RULE,
        "metrics": METRICS_DOC,
        "plain": plain,
        "grid": grid,
        "min_increase": min_increase,
        "recommendation": (
            None
            if best is None
            else {
                "tau": best["tau"],
                "layers": best["layers"],
                "increase_ratio": best["increase_ratio"],
                "delta_nll": best["delta_nll"],
                "qualified": qualified,
            }
        ),
        "recommendation_line": recommendation_line(best, len(examples), qualified, min_increase),
        "questions": _question_items(examples, settings, nll, greedy, gold_words, max_new_tokens),
        "timing": {
            "seconds": round(seconds, 2),
            "settings_computed": settings_computed,
            "batch_size": batch_size,
        },
        "versions": {
            "asu_plugin": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }


def run_generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    taus: Sequence[float],
    layer_sets: Sequence[str],
    *,
    system_prompt: Optional[str] = None,
    max_new_tokens: int = 32,
) -> list[dict]:
    """Greedy answers plain and under every (tau, layers), for each prompt (one batch per setting).

    The smoothed model is the ASU teacher: this shows whether it still speaks fluently."""
    settings = [(float(t), ls) for t in taus for ls in layer_sets]
    for tau, ls in settings:
        check_smoothing_args(model, tau, layers_arg(ls))
    ids = [
        tokenizer(prompt_text(tokenizer, p, system_prompt), add_special_tokens=not tokenizer.chat_template)[
            "input_ids"
        ]
        for p in prompts
    ]
    pad_id, eos_id = padding_token_id(tokenizer), tokenizer.eos_token_id
    answers: dict = {}
    for setting in [None, *settings]:
        with _smoothing(setting, model):
            new = greedy_generate(model, ids, max_new_tokens, eos_id, pad_id)
        answers[setting] = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in new]
    return [
        {
            "prompt": p,
            "plain": answers[None][i],
            "smoothed": {setting_key(*s): answers[s][i] for s in settings},
        }
        for i, p in enumerate(prompts)
    ]
