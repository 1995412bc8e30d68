"""The embedded default model for tests: where it is, a skip marker, a loader."""

from __future__ import annotations

import pytest

from asu_plugin.tools.models import default_model_dir, is_complete

MODEL_DIR = default_model_dir()
HAVE_MODEL = is_complete(MODEL_DIR) or (MODEL_DIR / "config.json").is_file()
needs_model = pytest.mark.skipif(
    not HAVE_MODEL, reason=f"SmolLM2 not at {MODEL_DIR} (build it: asu-prepare-model prepare-smollm2)"
)
