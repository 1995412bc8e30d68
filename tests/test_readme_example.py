"""The README's smoothing example (Python API section): its shown output and the prose about it
are what the code prints.

The example is taken from README.md as written, run in a fresh interpreter, and its printed
per-token NLLs are compared with the ```text block below it (to the printed precision). The
claims of the paragraph after the block are checked on the fresh output, not on the README.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.smollm2 import needs_model

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "A 10-line example — how smoothing changes each token's NLL:"
LINE = re.compile(r"^\s*'(?P<token>.+)' plain\s+(?P<plain>-?\d+\.\d+)\s+smoothed\s+(?P<smoothed>-?\d+\.\d+)"
                  r"\s+change\s+(?P<change>[+-]\d+\.\d+)\s*$")


def _blocks() -> tuple[str, str]:
    """The ```python block after MARKER and the ```text block after it."""
    text = README.read_text(encoding="utf-8")
    assert text.count(MARKER) == 1, f"README.md lost the example's heading line {MARKER!r}"
    after = text.split(MARKER, 1)[1]
    code = re.search(r"```python\n(.*?)```", after, re.S)
    shown = re.search(r"```text\n(.*?)```", after, re.S)
    assert code and shown and code.end() < shown.start()
    return code.group(1), shown.group(1)


def _rows(output: str) -> dict[str, dict[str, float]]:
    rows = {}
    for line in output.splitlines():
        match = LINE.match(line)
        if match:
            rows[match["token"]] = {k: float(match[k]) for k in ("plain", "smoothed", "change")}
    return rows


@needs_model
def test_readme_example_prints_what_the_readme_shows():
    code, shown = _blocks()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ran, expected = _rows(done.stdout), _rows(shown)
    assert len(expected) == 13 and list(ran) == list(expected)
    for token, row in expected.items():
        for key, value in row.items():
            assert ran[token][key] == pytest.approx(value, abs=0.015), (token, key)

    # the paragraph under the output
    change = {token: row["change"] for token, row in ran.items()}
    assert sorted(change, key=change.get, reverse=True)[:3] == ["Ġcapital", "iffel", "ĠFrance"]
    assert change["Ġthe"] < -1.0 and change[","] > 0 and change["ĠParis"] <= 0
