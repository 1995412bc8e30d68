"""Import a script or package of bench/ (they are run as files, not installed) for the tests of its logic."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
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


def load_bench_package(name: str) -> ModuleType:
    """The package bench/<name>/ under its own name, as its CLI imports it (bench/ goes on sys.path,
    as it is when ``python bench/<script>.py`` runs); its modules then import as ``<name>.<module>``."""
    if not (BENCH_DIR / name / "__init__.py").is_file():
        raise ModuleNotFoundError(f"no package bench/{name}/ (looked for {BENCH_DIR / name / '__init__.py'})")
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    return importlib.import_module(name)
