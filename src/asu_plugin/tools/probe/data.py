"""The probe's inputs: where the QA data is, how a question becomes the model's prompt, and
where each answer token sits in the tokenised chat.

The prompt is the model's chat template applied to ``[system (optional), user question]``
with the assistant turn opened; the answer follows it as the assistant message, as
OpenUnlearning builds its TOFU examples (pass OU's ``system_prompt``; SmolLM2's template
inserts that same prompt when none is given). The answer tokens are the tokens of the answer
text itself, not the template's end-of-turn tokens. A tokenizer without a chat template gets
``Question: ...\\nAnswer: `` instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import ProbeError
from .words import classify_answer_tokens

DEFAULT_SPLIT = "forget01"
TOFU_SUBDIR = Path("locuslab") / "TOFU"


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
    from ...openunlearning.data_links import CHECKOUT_MIRROR, default_mirror

    mirror = default_mirror()
    if mirror is None:
        raise ProbeError(
            f"no TOFU mirror: $ASU_DATA_MIRROR is unset and {CHECKOUT_MIRROR} does not exist. "
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

