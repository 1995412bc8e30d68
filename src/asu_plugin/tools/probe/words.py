"""The probe's token classes: the word rule lives in :mod:`asu_plugin.core.words` (the trainers'
automatic teacher choice uses it too, and they must not import the tools); re-exported here."""

from ...core.words import (  # noqa: F401
    CLASSES,
    ECHO,
    FACTUAL,
    FACTUAL_MODES,
    FUNCTION,
    STOP_WORDS,
    TOKEN_RULE,
    classify_answer_tokens,
    factual_recall,
    factual_words,
    survives,
)
