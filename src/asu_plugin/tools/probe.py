"""τ-probe: how attention smoothing hurts factual tokens versus function tokens.

ASU's central observation is that running a model's attention at a temperature tau > 1
damages the prediction of *factual* tokens (names, dates, places: what the model had to
recall) far more than that of *function* tokens (articles, prepositions, punctuation: what
keeps the text fluent). A smoothed model is therefore a teacher that has "forgotten" the
facts but still speaks. This probe measures that, per (tau, layer set), on a QA file, so a
user can pick tau and layers for their own model before training.

What it computes, for every question of the QA file and every (tau, layers) of the grid:

* **teacher-forced NLL** of every answer token (``-log p(answer_t | prompt, answer_<t)``),
  plain and inside :func:`~asu_plugin.smoothing.smoothed_attention`. The prompt is the
  model's chat template applied to ``[system (optional), user question]`` with the assistant
  turn opened, the answer follows it as the assistant message, as OpenUnlearning builds its
  TOFU examples (pass OU's ``system_prompt`` with ``--system-prompt``; SmolLM2's template
  inserts that same prompt when none is given); the answer tokens are the tokens of the
  answer text itself (not the template's end-of-turn tokens);
* the **token class** of each answer token (rule below), and per class the token-weighted
  mean NLL over all questions;
* the **greedy answer** (``--max-new-tokens``, default 32, KV cache) plain and smoothed, and
  whether the plain one *survives* smoothing.

Token rule (:func:`classify_answer_tokens`). Words are maximal runs of letters/digits, with
inner apostrophes kept (``don't``, ``Kuwaiti's``); a hyphen splits (``Al-Kuwaiti`` = ``Al`` +
``Kuwaiti``). A token belongs to every word its character span overlaps.

* ``function``: the token overlaps no word (punctuation, whitespace) or only words in
  :data:`STOP_WORDS` (NLTK's 179-word English stop-word list, embedded; lowercase; ``’`` read
  as ``'``);
* ``factual``: the token overlaps a content word (not a stop word; numbers count as content)
  that does **not** occur in the question (case-insensitive, a trailing ``'s`` ignored);
* ``echo``: every content word the token overlaps also occurs in the question (it can be
  copied from the prompt rather than recalled). With ``--factual content`` there is no echo
  class: every content-word token is ``factual``.

Metrics, per (tau, layers) setting, over all answer tokens of all questions:

* ``mean_nll[c]``: mean NLL (nats/token) of the tokens of class ``c``;
* ``delta_nll[c]`` = ``mean_nll[c]`` (smoothed) - ``mean_nll[c]`` (plain): the mean per-token
  NLL *increase* caused by smoothing (same tokens on both sides);
* ``nll_ratio`` = ``mean_nll[factual] / mean_nll[function]`` (smoothed; the plain value is
  reported under ``plain``);
* ``increase_ratio`` = ``delta_nll[factual] / delta_nll[function]``: the factual/function
  separation, i.e. how selectively smoothing hits factual tokens; null when the function
  increase is <= 0 (then smoothing is perfectly selective);
* ``excess_increase`` = ``delta_nll[factual] - delta_nll[function]`` (nats/token);
* **recommendation**: among the settings that raise the factual NLL by at least
  ``--min-increase`` (default 0.25 nats/token, so that a setting which barely changes anything
  cannot win on a ratio of two tiny numbers), the one with the largest ``increase_ratio``
  (function increase <= 0 ranks first; ties: larger factual increase, smaller tau, fewer
  layers). When no setting reaches the minimum, the one with the largest factual increase,
  flagged as such. Not the largest ``excess_increase``: that favours the strongest smoothing,
  which also wrecks function tokens (measured on SmolLM2: tau=3 on all layers raises the
  function-token NLL by 2.8 nats and the greedy answer degenerates into repetition);
* ``survival_rate``: fraction of questions whose smoothed greedy answer *survives*: after
  lower-casing and collapsing whitespace it equals the plain greedy answer or contains it;
* ``factual_recall``: mean over questions of the fraction of the gold answer's factual words
  that appear (as words) in the smoothed greedy answer (``plain`` holds the plain value).

Outputs (in ``--out``, written atomically): ``probe.json`` (settings, rule, per-question and
aggregate numbers, recommendation, timing) and ``probe.png`` (mean NLL vs tau, one curve per
token class and layer set; tau = 1 is the plain model). A tau of 1 in the grid is the plain
model exactly (``smoothed_attention`` is a no-op there), so its numbers are reused, not
recomputed. The CLI prints one line per setting and the recommendation line.

Read the numbers with the model in mind: "factual" tokens are facts only for a model that
knows them. Probe the model you will unlearn (e.g. OU's TOFU target model, fine-tuned on
TOFU); a model that never saw the data (the embedded SmolLM2 on TOFU's fictitious authors)
already has a high plain factual NLL, and its greedy answers are guesses.

``--generate`` instead prints, for a few prompts, the greedy answer plain and under every
(tau, layers): the smoothed model is the ASU teacher, and it should stay fluent. Generation
uses ``model.generate`` with the KV cache inside the smoothing context, so smoothing applies
to the prefill and to every decoding step (tested against step-by-step full forwards).

CLI::

    asu-probe [--model DIR] [--data FILE] [--taus 1.5,2.3,3.0] [--layers "all;0-9;20-29"]
              [--n 20] [--out DIR] [--generate [--prompts "Q1" "Q2"]]
    python -m asu_plugin.probe ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch

from .atomic import atomic_path, write_json_atomic
from .errors import SmoothingError
from .smoothing import check_smoothing_args, smoothed_attention

logger = logging.getLogger("asu_plugin.probe")  # stable name, also under `python -m`

SCHEMA = "asu-probe/1"
DEFAULT_TAUS = "1.5,2.3,3.0"
DEFAULT_LAYERS = "all;0-9;20-29"
DEFAULT_SPLIT = "forget01"
TOFU_SUBDIR = Path("locuslab") / "TOFU"
JSON_NAME = "probe.json"
PNG_NAME = "probe.png"
GENERATE_JSON_NAME = "generations.json"

#: NLTK's English stop-word list (179 words), embedded so the rule does not depend on a download.
STOP_WORDS = frozenset("""
    i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself
    yourselves he him his himself she she's her hers herself it it's its itself they them
    their theirs themselves what which who whom this that that'll these those am is are was
    were be been being have has had having do does did doing a an the and but if or because
    as until while of at by for with about against between into through during before after
    above below to from up down in out on off over under again further then once here there
    when where why how all any both each few more most other some such no nor not only own
    same so than too very s t can will just don don't should should've now d ll m o re ve y
    ain aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven
    haven't isn isn't ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn
    shouldn't wasn wasn't weren weren't won won't wouldn wouldn't
    """.split())

FACTUAL, FUNCTION, ECHO = "factual", "function", "echo"
CLASSES = (FACTUAL, FUNCTION, ECHO)
FACTUAL_MODES = ("novel", "content")

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")

TOKEN_RULE = (
    "Words: maximal runs of letters/digits with inner apostrophes kept (a hyphen splits); a token "
    "belongs to every word its character span overlaps. function = overlaps no word (punctuation/"
    "whitespace) or only NLTK English stop words (179, lowercase); factual = overlaps a content word "
    "(non-stop word, numbers included) absent from the question (case-insensitive, trailing 's ignored); "
    "echo = all overlapped content words occur in the question. With factual mode 'content' every "
    "content-word token is factual (no echo class)."
)
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


class ProbeError(RuntimeError):
    """The probe cannot run as asked; the message names the problem and the fix."""


# --------------------------------------------------------------------------------------------
# token classes


def _norm_word(word: str) -> str:
    return word.lower().replace("\u2019", "'")


def _question_words(question: str) -> set[str]:
    words = set()
    for match in _WORD.finditer(question.replace("\u2019", "'")):
        word = _norm_word(match.group())
        words.add(word)
        if word.endswith("'s"):
            words.add(word[:-2])
    return words


def classify_answer_tokens(
    answer: str,
    spans: Sequence[tuple[int, int]],
    question: str = "",
    factual: str = "novel",
) -> list[str]:
    """Class (``factual`` / ``function`` / ``echo``) of each answer token, by the module's rule.

    Args:
        answer: the answer text.
        spans: per token, its ``(start, end)`` character span in ``answer`` (a tokenizer's
            offset mapping shifted to the answer); clipped to the answer.
        question: the question; content words occurring in it make ``echo`` tokens.
        factual: ``"novel"`` (default: factual = content words absent from the question) or
            ``"content"`` (every content-word token is factual; no echo class).
    """
    if factual not in FACTUAL_MODES:
        raise ProbeError(f"factual mode must be one of {FACTUAL_MODES}, got {factual!r}")
    text = answer.replace("\u2019", "'")
    words = [(m.start(), m.end(), _norm_word(m.group())) for m in _WORD.finditer(text)]
    asked = _question_words(question) if factual == "novel" else set()
    classes = []
    for start, end in spans:
        start, end = max(0, start), min(len(text), end)
        overlapped = [w for (ws, we, w) in words if ws < end and start < we]
        content = [w for w in overlapped if w not in STOP_WORDS]
        if not content:
            classes.append(FUNCTION)
        elif factual == "novel" and all(
            w in asked or (w.endswith("'s") and w[:-2] in asked) for w in content
        ):
            classes.append(ECHO)
        else:
            classes.append(FACTUAL)
    return classes


def factual_words(answer: str, question: str, factual: str = "novel") -> list[str]:
    """The gold answer's factual words (lowercase, unique, in order) under the same rule."""
    asked = _question_words(question) if factual == "novel" else set()
    seen: list[str] = []
    for match in _WORD.finditer(answer.replace("\u2019", "'")):
        word = _norm_word(match.group())
        if word in STOP_WORDS or word in asked or (word.endswith("'s") and word[:-2] in asked):
            continue
        if word not in seen:
            seen.append(word)
    return seen


def _recall(words: Sequence[str], text: str) -> Optional[float]:
    if not words:
        return None
    present = {_norm_word(m.group()) for m in _WORD.finditer(text.replace("\u2019", "'"))}
    return sum(w in present for w in words) / len(words)


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def survives(plain: str, smoothed: str) -> bool:
    """The smoothed greedy answer equals or contains the plain one (lowercased, whitespace collapsed)."""
    plain, smoothed = _normalise(plain), _normalise(smoothed)
    return plain == smoothed or (bool(plain) and plain in smoothed)


# --------------------------------------------------------------------------------------------
# data and prompts


@dataclass
class Example:
    """One QA pair, tokenised as the model sees it."""

    question: str
    answer: str
    input_ids: list[int]  # prompt + answer + template tail
    prompt_ids: list[int]  # the prompt alone (ends with the opened assistant turn)
    answer_positions: list[int]  # indices into input_ids of the answer tokens
    tokens: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)


def default_data_file(split: str = DEFAULT_SPLIT) -> Path:
    """TOFU ``split`` in the offline mirror: ``$ASU_DATA_MIRROR`` or ``../shared/data/hf`` beside the repo."""
    from .ou_data import default_mirror

    mirror = default_mirror()
    if mirror is None:
        expected = Path(__file__).resolve().parents[3] / "shared" / "data" / "hf"
        raise ProbeError(
            f"no TOFU mirror: $ASU_DATA_MIRROR is unset and {expected} does not exist. "
            f"Set ASU_DATA_MIRROR to a directory holding {TOFU_SUBDIR / (split + '.jsonl')} "
            "(e.g. the project's ../shared/data/hf) or pass --data FILE (a JSONL with question/answer)."
        )
    path = mirror / TOFU_SUBDIR / f"{split}.jsonl"
    if not path.is_file():
        raise ProbeError(
            f"TOFU file {path} is missing. Point ASU_DATA_MIRROR at a mirror that has "
            f"{TOFU_SUBDIR / (split + '.jsonl')} (e.g. the project's ../shared/data/hf) or pass --data FILE."
        )
    return path


def load_qa(path: str | os.PathLike, n: Optional[int] = None) -> list[dict]:
    """The first ``n`` rows (all when None) of a JSONL / JSON-list file with question and answer fields."""
    path = Path(path)
    if not path.is_file():
        raise ProbeError(
            f"QA file {path} does not exist; pass --data FILE (JSONL with question/answer fields)"
        )
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        rows = json.loads(text)
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    for i, row in enumerate(rows):
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("question"), str)
            or not isinstance(row.get("answer"), str)
        ):
            raise ProbeError(f"{path} row {i} has no string 'question' and 'answer' fields: {str(row)[:120]}")
    if not rows:
        raise ProbeError(f"{path} holds no rows")
    return rows[:n] if n else rows


def _messages(question: str, answer: Optional[str], system_prompt: Optional[str]) -> list[dict]:
    chat = [{"role": "system", "content": system_prompt}] if system_prompt else []
    chat.append({"role": "user", "content": question})
    if answer is not None:
        chat.append({"role": "assistant", "content": answer})
    return chat


def prompt_text(tokenizer, question: str, system_prompt: Optional[str] = None) -> str:
    """The question wrapped as the model expects: chat template with the assistant turn opened."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            _messages(question, None, system_prompt), tokenize=False, add_generation_prompt=True
        )
    prefix = f"{system_prompt}\n\n" if system_prompt else ""
    return f"{prefix}Question: {question}\nAnswer: "


def build_example(
    tokenizer, question: str, answer: str, system_prompt: Optional[str] = None, factual: str = "novel"
) -> Example:
    """Tokenise prompt + answer and locate/classify the answer tokens (needs a fast tokenizer)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ProbeError("the probe needs a fast tokenizer (character offsets); load one with use_fast=True")
    prompt = prompt_text(tokenizer, question, system_prompt)
    if getattr(tokenizer, "chat_template", None):
        full = tokenizer.apply_chat_template(_messages(question, answer, system_prompt), tokenize=False)
        special = False  # the template writes BOS and friends itself
    else:
        full = prompt + answer + (tokenizer.eos_token or "")
        special = True
    if not full.startswith(prompt):
        raise ProbeError(
            "the chat template renders the prompt differently inside the full chat; cannot locate the answer"
        )
    start = full.find(answer, len(prompt))
    if start < 0:
        raise ProbeError(f"the chat template changed the answer text (e.g. stripped it): {answer[:60]!r}")
    end = start + len(answer)
    enc = tokenizer(full, add_special_tokens=special, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    positions = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
    if not positions or positions[0] == 0:
        raise ProbeError(f"no answer tokens found for {question[:60]!r}")
    prompt_ids = ids[: positions[0]]
    spans = [(offsets[i][0] - start, offsets[i][1] - start) for i in positions]
    return Example(
        question=question,
        answer=answer,
        input_ids=list(ids),
        prompt_ids=list(prompt_ids),
        answer_positions=positions,
        tokens=[full[offsets[i][0] : offsets[i][1]] for i in positions],
        classes=classify_answer_tokens(answer, spans, question, factual),
    )


# --------------------------------------------------------------------------------------------
# model computations


def _pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def answer_nll(model, examples: Sequence[Example], pad_id: int = 0) -> list[list[float]]:
    """Teacher-forced NLL (nats) of each example's answer tokens; one right-padded batch."""
    width = max(len(e.input_ids) for e in examples)
    device = _device(model)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(examples):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids, device=device)
        mask[row, : len(e.input_ids)] = 1
    logits = model(input_ids=ids, attention_mask=mask).logits
    out = []
    for row, e in enumerate(examples):
        pos = torch.tensor(e.answer_positions, device=device)
        rows = logits[row, pos - 1].float()  # logits at t-1 predict token t
        nll = torch.nn.functional.cross_entropy(rows, ids[row, pos], reduction="none")
        out.append([float(v) for v in nll])
    return out


@torch.no_grad()
def greedy_generate(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_token_id: Optional[int],
    pad_id: int = 0,
) -> list[list[int]]:
    """Greedy continuation of each prompt with ``model.generate`` and its KV cache (left-padded batch).

    Call it inside :func:`smoothed_attention` for the smoothed teacher: the context patches the
    attention modules, so the prefill and every cached decoding step run smoothed. Returns the
    new tokens of each prompt, cut after the first EOS.
    """
    from transformers import GenerationConfig

    width = max(len(p) for p in prompts)
    device = _device(model)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(list(p), device=device)
        mask[row, width - len(p) :] = 1
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        eos_token_id=eos_token_id,
        pad_token_id=pad_id,
    )
    was_training = model.training
    model.eval()
    try:
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    finally:
        model.train(was_training)
    result = []
    for row in out[:, width:].tolist():
        if eos_token_id is not None and eos_token_id in row:
            row = row[: row.index(eos_token_id) + 1]
        result.append(row)
    return result


# --------------------------------------------------------------------------------------------
# grid


def parse_taus(text: str) -> list[float]:
    try:
        taus = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ProbeError(
            f"cannot parse --taus {text!r}: expected comma-separated numbers such as 1.5,2.3,3.0"
        ) from None
    if not taus:
        raise ProbeError("--taus is empty; give e.g. 1.5,2.3,3.0")
    return taus


def parse_layer_sets(text: str) -> list[str]:
    """``"all;0-9;20-29"`` -> ``["all", "0-9", "20-29"]`` (a set may itself hold commas: ``"0,2,4-6"``)."""
    sets = [part.strip() for part in text.split(";") if part.strip()]
    if not sets:
        raise ProbeError('--layers is empty; give e.g. "all;0-9;20-29"')
    return sets


def _layers_arg(layer_set: str):
    return None if layer_set.lower() == "all" else layer_set


def setting_key(tau: float, layer_set: str) -> str:
    return f"tau={tau:g}|layers={layer_set}"


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


def _layer_count(layer_set: str, num_layers: int) -> int:
    from .selection import _parse_index_string

    return (
        num_layers if _layers_arg(layer_set) is None else len(set(_parse_index_string(layer_set, "layers")))
    )


DEFAULT_MIN_INCREASE = 0.25


def recommend(
    grid: Sequence[dict], num_layers: int, min_increase: float = DEFAULT_MIN_INCREASE
) -> tuple[Optional[dict], bool]:
    """``(setting, qualified)``: the most selective setting with a factual increase >= ``min_increase``.

    Selectivity is ``increase_ratio`` (function increase <= 0 ranks first); ties: larger factual
    increase, smaller tau, fewer layers. ``qualified`` is False when no setting reaches
    ``min_increase`` and the one with the largest factual increase is returned instead.
    """
    scored = [g for g in grid if g["delta_nll"][FACTUAL] is not None and g["delta_nll"][FUNCTION] is not None]
    if not scored:
        return None, False

    def size(g):
        return _layer_count(g["layers"], num_layers)

    eligible = [g for g in scored if g["delta_nll"][FACTUAL] >= min_increase]
    if not eligible:
        return min(scored, key=lambda g: (-g["delta_nll"][FACTUAL], g["tau"], size(g))), False

    def key(g):
        ratio = g["increase_ratio"]
        return (ratio is not None, -(ratio or 0.0), -g["delta_nll"][FACTUAL], g["tau"], size(g))

    return min(eligible, key=key), True


def recommendation_line(
    best: Optional[dict], n_questions: int, qualified: bool = True, min_increase: float = DEFAULT_MIN_INCREASE
) -> str:
    if best is None:
        return "recommendation: none (no setting has both factual and function tokens to compare)"
    ratio = (
        "inf (function NLL did not rise)"
        if best["increase_ratio"] is None
        else f"{best['increase_ratio']:.2f}"
    )
    survival = (
        "" if best.get("survival_rate") is None else f", greedy answer survives {best['survival_rate']:.0%}"
    )
    why = (
        f"largest factual/function separation with factual NLL increase >= {min_increase:g}"
        if qualified
        else f"no setting raises factual NLL by {min_increase:g} nats; largest factual increase"
    )
    return (
        f"recommendation: tau={best['tau']:g} layers={best['layers']} - {why}: NLL increase factual "
        f"{best['delta_nll'][FACTUAL]:+.3f} vs function {best['delta_nll'][FUNCTION]:+.3f} nats/token "
        f"(ratio {ratio}{survival}; {n_questions} questions)"
    )


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
    from tqdm.auto import tqdm

    from .selection import find_attention_layout

    num_layers = find_attention_layout(model).num_layers
    settings = [(float(t), ls) for t in taus for ls in layer_sets]
    for tau, ls in settings:  # fail before any compute
        check_smoothing_args(model, tau, _layers_arg(ls))
    examples = [build_example(tokenizer, r["question"], r["answer"], system_prompt, factual) for r in rows]
    pad_id, eos_id = _pad_id(tokenizer), tokenizer.eos_token_id
    batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]

    nll: dict[Optional[tuple], list] = {}
    greedy: dict[Optional[tuple], list] = {}
    # tau = 1 is exactly the plain model (smoothed_attention is a no-op there): reuse its numbers
    computed = [None, *(s for s in settings if s[0] != 1.0)]
    steps = len(computed) * len(batches) * (2 if max_new_tokens > 0 else 1)
    start = time.monotonic()
    with tqdm(total=steps, desc="asu-probe", unit="step", disable=not progress) as bar:
        for setting in computed:
            nll[setting], greedy[setting] = [], []
            label = "plain" if setting is None else setting_key(*setting)
            for batch in batches:
                bar.set_postfix_str(label)
                ctx = (
                    smoothed_attention(model, setting[0], _layers_arg(setting[1]))
                    if setting is not None
                    else contextlib.nullcontext()
                )
                with ctx:
                    nll[setting].extend(answer_nll(model, batch, pad_id))
                    bar.update()
                    if max_new_tokens > 0:
                        new = greedy_generate(
                            model, [e.prompt_ids for e in batch], max_new_tokens, eos_id, pad_id
                        )
                        greedy[setting].extend(
                            tokenizer.decode(t, skip_special_tokens=True).strip() for t in new
                        )
                        bar.update()
    seconds = time.monotonic() - start
    for setting in settings:
        if setting[0] == 1.0:
            nll[setting], greedy[setting] = nll[None], greedy[None]

    gold_words = [factual_words(e.answer, e.question, factual) for e in examples]
    plain_means, counts = _class_means(examples, nll[None])
    plain = {
        "mean_nll": plain_means,
        "n_tokens": counts,
        "nll_ratio": _ratio(plain_means[FACTUAL], plain_means[FUNCTION]),
        "factual_recall": (
            _mean(r for r in (_recall(w, g) for w, g in zip(gold_words, greedy[None])) if r is not None)
            if max_new_tokens > 0
            else None
        ),
    }
    grid = []
    for setting in settings:
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
            entry["survival_rate"] = _mean(
                float(survives(p, s)) for p, s in zip(greedy[None], greedy[setting])
            )
            entry["factual_recall"] = _mean(
                r for r in (_recall(w, g) for w, g in zip(gold_words, greedy[setting])) if r is not None
            )
        grid.append(entry)

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

    best, qualified = recommend(grid, num_layers, min_increase)
    import transformers

    from . import __version__

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
        "questions": questions,
        "timing": {
            "seconds": round(seconds, 2),
            "settings_computed": len(computed),
            "batch_size": batch_size,
        },
        "versions": {
            "asu_plugin": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }


# --------------------------------------------------------------------------------------------
# outputs


def plot_report(report: dict, path: Path) -> Path:
    """Mean NLL vs tau, one curve per token class (line style) and layer set (colour)."""
    try:
        from matplotlib.figure import Figure  # no pyplot: the user's backend is left alone
    except ImportError:
        raise ProbeError(
            f"matplotlib is not installed, so {path} cannot be drawn: pip install matplotlib"
        ) from None

    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot(1, 1, 1)
    styles = {FACTUAL: "-", FUNCTION: "--", ECHO: ":"}
    markers = {FACTUAL: "o", FUNCTION: "s", ECHO: "^"}
    colours = [f"C{i}" for i in range(10)]
    taus = sorted(set(report["taus"]))
    for i, ls in enumerate(report["layer_sets"]):
        for c in CLASSES:
            if not report["plain"]["n_tokens"].get(c):
                continue
            xs, ys = [1.0], [report["plain"]["mean_nll"][c]]
            for tau in taus:
                entry = next(g for g in report["grid"] if g["tau"] == tau and g["layers"] == ls)
                if tau != 1.0:
                    xs.append(tau)
                    ys.append(entry["mean_nll"][c])
            ax.plot(xs, ys, styles[c], marker=markers[c], color=colours[i % 10], label=f"{c}, layers {ls}")
    ax.set_xlabel("tau (1 = plain model)")
    ax.set_ylabel("mean NLL per answer token (nats)")
    ax.set_title(f"ASU tau-probe: {report['model_class']}, {report['n_questions']} questions", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    import textwrap

    fig.text(0.01, -0.01, textwrap.fill(report["recommendation_line"], 130), fontsize=6.5, va="top")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def write_outputs(report: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:

    out_dir = Path(out_dir)
    json_path = write_json_atomic(out_dir / JSON_NAME, report)
    png_path = plot_report(report, out_dir / PNG_NAME)
    return json_path, png_path


# --------------------------------------------------------------------------------------------
# teacher generation


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
    """Greedy answers plain and under every (tau, layers), for each prompt (one batch per setting)."""
    settings = [(float(t), ls) for t in taus for ls in layer_sets]
    for tau, ls in settings:
        check_smoothing_args(model, tau, _layers_arg(ls))
    ids = [
        tokenizer(prompt_text(tokenizer, p, system_prompt), add_special_tokens=not tokenizer.chat_template)[
            "input_ids"
        ]
        for p in prompts
    ]
    pad_id, eos_id = _pad_id(tokenizer), tokenizer.eos_token_id
    answers: dict = {}
    for setting in [None, *settings]:
        ctx = (
            contextlib.nullcontext()
            if setting is None
            else smoothed_attention(model, setting[0], _layers_arg(setting[1]))
        )
        with ctx:
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


# --------------------------------------------------------------------------------------------
# CLI


def load_model(model_dir: str | os.PathLike):
    """Tokenizer and fp32 SDPA model from a transformers directory (eval mode)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model_dir).expanduser()
    if not (path / "config.json").is_file():
        from .models import default_model_dir

        hint = (
            " Build the default model with `asu-prepare-model prepare-smollm2`."
            if path == default_model_dir()
            else " Pass --model DIR (a transformers model directory)."
        )
        raise ProbeError(f"model directory {path} has no config.json.{hint}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", torch_dtype=torch.float32)
    model.eval()
    return model, tokenizer


def _parser() -> argparse.ArgumentParser:
    from .models import default_model_dir

    p = argparse.ArgumentParser(
        prog="asu-probe",
        description="ASU tau-probe: per-token NLL of factual vs function answer tokens under attention "
        "smoothing, per (tau, layers); or, with --generate, greedy answers of the smoothed teacher.",
    )
    p.add_argument(
        "--model",
        default=str(default_model_dir()),
        help="transformers model directory (default: %(default)s)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="QA JSONL with question/answer fields (default: TOFU forget01 from $ASU_DATA_MIRROR or ../shared/data/hf)",
    )
    p.add_argument("--taus", default=DEFAULT_TAUS, help="comma-separated temperatures (default: %(default)s)")
    p.add_argument(
        "--layers",
        default=DEFAULT_LAYERS,
        help='semicolon-separated layer sets, "all" or index lists like "0-9" / "0,2,4-6" (default: "%(default)s")',
    )
    p.add_argument(
        "--n", type=int, default=20, help="number of questions (first N of the file; default: %(default)s)"
    )
    p.add_argument("--out", default="outputs/asu-probe", help="output directory (default: %(default)s)")
    p.add_argument(
        "--factual",
        choices=FACTUAL_MODES,
        default="novel",
        help="factual tokens: content words absent from the question (novel, default) or all content words",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=32,
        help="greedy answer length; 0 skips generation (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="questions per forward / generate call (default: %(default)s)",
    )
    p.add_argument(
        "--min-increase",
        type=float,
        default=DEFAULT_MIN_INCREASE,
        help="smallest factual NLL increase (nats/token) a recommended setting must cause (default: %(default)s)",
    )
    p.add_argument(
        "--system-prompt",
        default=None,
        help="system message (default: none; the chat template's own default applies)",
    )
    p.add_argument(
        "--generate", action="store_true", help="print greedy answers plain and smoothed instead of the probe"
    )
    p.add_argument(
        "--prompts",
        nargs="+",
        default=None,
        help="with --generate: the prompts (default: 3 questions of --data)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice). On a CPU shared with other jobs use 1 (or set "
        "OMP_WAIT_POLICY=PASSIVE): spinning OpenMP threads made generation >10x slower on a busy 2-core box",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``asu-probe`` and ``python -m asu_plugin.probe``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import transformers

    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        taus, layer_sets = parse_taus(args.taus), parse_layer_sets(args.layers)
        if args.n < 1:
            raise ProbeError(f"--n must be >= 1, got {args.n}")
        if args.generate and args.prompts:
            rows = [{"question": q, "answer": ""} for q in args.prompts]
        else:
            data = Path(args.data) if args.data else default_data_file()
            rows = load_qa(data, 3 if args.generate else args.n)
        model, tokenizer = load_model(args.model)
        if args.generate:
            results = run_generate(
                model,
                tokenizer,
                [r["question"] for r in rows],
                taus,
                layer_sets,
                system_prompt=args.system_prompt,
                max_new_tokens=args.max_new_tokens if args.max_new_tokens > 0 else 32,
            )

            path = write_json_atomic(
                Path(args.out) / GENERATE_JSON_NAME, {"schema": SCHEMA, "generations": results}
            )
            lines = []
            for item in results:
                lines.append(f"Q: {_one_line(item['prompt'])}")
                lines.append(f"  {'plain':<24}: {_one_line(item['plain'])}")
                lines += [f"  {key:<24}: {_one_line(text)}" for key, text in item["smoothed"].items()]
            sys.stdout.write("\n".join([*lines, f"wrote {path}"]) + "\n")
            return 0
        logger.info(
            "probing %s on %d questions of %s: taus %s, layer sets %s",
            args.model,
            len(rows),
            data,
            taus,
            layer_sets,
        )
        report = run_probe(
            model,
            tokenizer,
            rows,
            taus,
            layer_sets,
            factual=args.factual,
            system_prompt=args.system_prompt,
            max_new_tokens=args.max_new_tokens,
            batch_size=max(1, args.batch_size),
            min_increase=args.min_increase,
            progress=not args.no_progress,
        )
        report["model"], report["data"] = str(args.model), str(data)
        json_path, png_path = write_outputs(report, args.out)
    except (ProbeError, SmoothingError) as exc:
        sys.stderr.write(f"error: {exc}\n")  # the CLI's answer, whatever logging is configured
        return 2
    _print_report(report)
    sys.stdout.write(f"wrote {json_path} and {png_path} ({report['timing']['seconds']:.1f} s)\n")
    return 0


def _one_line(text: str) -> str:
    if not text.strip():
        return "(no text: ended its turn at once)"
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _fmt(value: Optional[float], spec: str = "+.3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _print_report(report: dict) -> None:
    p = report["plain"]
    lines = [
        f"plain: NLL factual {_fmt(p['mean_nll'][FACTUAL], '.3f')} ({p['n_tokens'][FACTUAL]} tok), "
        f"function {_fmt(p['mean_nll'][FUNCTION], '.3f')} ({p['n_tokens'][FUNCTION]} tok), "
        f"echo {_fmt(p['mean_nll'][ECHO], '.3f')} ({p['n_tokens'][ECHO]} tok)"
    ]
    for g in report["grid"]:
        survival = "" if g["survival_rate"] is None else f" survives {g['survival_rate']:.0%}"
        lines.append(
            f"{setting_key(g['tau'], g['layers']):<24} NLL factual {_fmt(g['mean_nll'][FACTUAL], '.3f')} "
            f"({_fmt(g['delta_nll'][FACTUAL])}) function {_fmt(g['mean_nll'][FUNCTION], '.3f')} "
            f"({_fmt(g['delta_nll'][FUNCTION])}) increase ratio {_fmt(g['increase_ratio'], '.2f')}{survival}"
        )
    lines.append(report["recommendation_line"])
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
