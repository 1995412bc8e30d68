"""Goal records: one line of perf.md's "Goals" table, with the verdict and, when missed, by how much.

Every record is a dict {section, name, goal, value, met, text} (strict JSON in perf.json); the
section that made it also explains it when missed (its ``why``).
"""

from __future__ import annotations


def goal(section: str, name: str, limit_text: str, value: float, met: bool, text: str, miss: str = "") -> dict:
    """A goal record; ``miss`` (how far off) is appended to ``text`` only when the goal is missed."""
    return {"section": section, "name": name, "goal": limit_text, "value": value, "met": bool(met),
            "text": text + ("" if met or not miss else f", {miss}")}


def over_by(value: float, limit: float, digits: int = 1) -> str:
    """"over by 12.3%" for a value above an upper limit."""
    return f"over by {(value / limit - 1) * 100:.{digits}f}%"


def at_most(section: str, name: str, value: float, limit: float, limit_text: str, text: str,
            digits: int = 1) -> dict:
    """The usual goal: ``value <= limit``, missed by ``over_by``."""
    return goal(section, name, limit_text, value, value <= limit, text, over_by(value, limit, digits))
