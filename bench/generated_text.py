"""A generated block inside a hand-written document: the figures a README quotes live between two
marker lines and are rewritten from the results file by the benchmark that measured them, so the
prose around them cannot carry a stale or typed-in figure. Shared by bench/perfbench (bench/README.md)
and bench/minitofu (the community kit's README)."""

from __future__ import annotations

import re
from pathlib import Path

from asu_plugin.core.atomic import write_text_atomic


def current_block(text: str, begin: str, end: str, path: Path | str, fix: str) -> str:
    """The block of ``text`` from the ``begin`` line to the ``end`` line; ValueError naming ``path``
    and the fix when the markers are missing."""
    match = re.search(re.escape(begin) + r".*?" + re.escape(end), text, flags=re.S)
    if not match:
        raise ValueError(f"{path} has no generated block: put the two lines\n{begin}\n{end}\nwhere it belongs, "
                         f"then run {fix}")
    return match.group(0)


def replace_block(path: Path, begin: str, end: str, block: str, fix: str) -> bool:
    """Rewrite the marked block of ``path`` with ``block`` (which starts with ``begin`` and ends
    with ``end``); True when the text changed."""
    text = path.read_text()
    new = text.replace(current_block(text, begin, end, path, fix), block)
    if new != text:
        write_text_atomic(path, new)
    return new != text
