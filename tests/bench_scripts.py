"""Import a script of bench/ (they are run as files, not installed) for the tests of its logic."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


@functools.cache
def load_bench(name: str) -> ModuleType:
    """bench/<name>.py as a module (once per test session)."""
    spec = importlib.util.spec_from_file_location(f"asu_bench_{name}", BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
