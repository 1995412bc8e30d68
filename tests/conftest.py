"""Suite-wide bookkeeping: count the OpenUnlearning tests and make CI insist on them.

Tests under ``tests/ou/`` need OU at ``OU_DIR`` and skip with a reason without it. CI must
not pass quietly on a machine that lacks OU, so with ``CI=true`` a run in which any OU test
was skipped (or none ran) fails, and every run prints one line with the counts.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

OU_TESTS = Path(__file__).parent / "ou"
_outcomes: dict[str, str] = {}


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the embedded SmolLM2, loaded once; tests using it carry needs_model."""
    from asu_plugin.tools.probe import load_model
    from tests.smollm2 import MODEL_DIR

    return load_model(MODEL_DIR)


@pytest.fixture
def reliability(record_property):
    """reliability(row, outcome): this test's row of docs/reliability.md (docs/reliability.py)."""

    def record(row: str, outcome: str) -> None:
        record_property("reliability_row", row)
        record_property("reliability_outcome", outcome)

    return record


def pytest_collection_modifyitems(config, items):
    for item in items:
        if OU_TESTS in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.ou)


def pytest_runtest_logreport(report):
    # runs where the reports arrive: in the one process, or in pytest-xdist's controller (which
    # collects nothing itself), so OU tests are recognised by their marker, not by collection
    if "ou" not in report.keywords:
        return
    if report.when == "call" or report.outcome != "passed":
        # a skip / setup error is reported in "setup"; a pass or failure in "call"
        _outcomes.setdefault(report.nodeid, report.outcome)
        if report.when == "call":
            _outcomes[report.nodeid] = report.outcome


def _counts():
    ran = sum(outcome in ("passed", "failed") for outcome in _outcomes.values())
    skipped = sum(outcome == "skipped" for outcome in _outcomes.values())
    return ran, skipped


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _outcomes or config.getoption("collectonly"):
        return  # e.g. the core-only runs of the transformers matrix
    ran, skipped = _counts()
    terminalreporter.write_line(f"OpenUnlearning tests: {ran} ran, {skipped} skipped (OU_DIR={os.environ.get('OU_DIR', '~/.cache/asu-plugin/open-unlearning')})")


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("CI", "").lower() != "true" or not _outcomes:
        return
    ran, skipped = _counts()
    if skipped:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            f"CI=true: {skipped} OpenUnlearning test(s) skipped; CI needs OU at OU_DIR (run `make install`)."
        )
