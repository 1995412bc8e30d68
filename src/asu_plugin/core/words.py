"""Which answer tokens are facts and which keep the text fluent: the token classes of the τ-probe
(``asu_plugin.tools.probe``) and of the automatic teacher choice (:mod:`.teacher_choice`).

Framework-free (plain Python): it lives in the core so the OpenUnlearning trainers can use it
without importing the research tools.

Rule (:func:`classify_answer_tokens`). Words are maximal runs of letters/digits, with inner
apostrophes kept (``don't``, ``Kuwaiti's``); a hyphen splits (``Al-Kuwaiti`` = ``Al`` +
``Kuwaiti``). A token belongs to every word its character span overlaps.

* ``function``: the token overlaps no word (punctuation, whitespace) or only words in
  :data:`STOP_WORDS` (NLTK's 179-word English stop-word list, embedded; lowercase; ``’`` read
  as ``'``);
* ``factual``: the token overlaps a content word (not a stop word; numbers count as content)
  that does **not** occur in the question (case-insensitive, a trailing ``'s`` ignored);
* ``echo``: every content word the token overlaps also occurs in the question (it can be
  copied from the prompt rather than recalled). With ``factual="content"`` there is no echo
  class: every content-word token is ``factual``.

The same word rule gives the gold answer's factual words (:func:`factual_words`), how many of
them a generated answer recalls (:func:`factual_recall`), and whether a smoothed greedy answer
keeps the plain one (:func:`survives`).
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

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

#: The rule in one paragraph, as ``probe.json`` records it.
TOKEN_RULE = (
    "Words: maximal runs of letters/digits with inner apostrophes kept (a hyphen splits); a token "
    "belongs to every word its character span overlaps. function = overlaps no word (punctuation/"
    "whitespace) or only NLTK English stop words (179, lowercase); factual = overlaps a content word "
    "(non-stop word, numbers included) absent from the question (case-insensitive, trailing 's ignored); "
    "echo = all overlapped content words occur in the question. With factual mode 'content' every "
    "content-word token is factual (no echo class)."
)


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
        raise ValueError(f"factual mode must be one of {FACTUAL_MODES}, got {factual!r}")
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


def factual_recall(words: Sequence[str], text: str) -> Optional[float]:
    """Share of ``words`` (a gold answer's factual words) that occur as words in ``text``; None
    when there are none to recall."""
    if not words:
        return None
    present = {_norm_word(m.group()) for m in _WORD.finditer(text.replace("\u2019", "'"))}
    return sum(w in present for w in words) / len(words)


def words(text: str) -> list[str]:
    """The words of ``text`` under the rule (lowercase, ``’`` read as ``'``), in order."""
    return [_norm_word(m.group()) for m in _WORD.finditer(text.replace("\u2019", "'"))]


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def survives(plain: str, smoothed: str) -> bool:
    """The smoothed greedy answer equals or contains the plain one (lowercased, whitespace collapsed)."""
    plain, smoothed = _normalise(plain), _normalise(smoothed)
    return plain == smoothed or (bool(plain) and plain in smoothed)
