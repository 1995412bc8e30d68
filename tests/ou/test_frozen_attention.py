"""The frozen model (teacher and reference) runs attention smoothing can reach, whatever the
student's backend, through OU's own code: ``_prepare_ref_model`` on the DeepSpeed path and
``load_trainer``. The run record's backends are checked on the shared run (tests/ou/test_training.py);
the numerics in tests/core/test_attention_backend.py on every transformers version."""

from __future__ import annotations

import pytest

# one worker builds the module's shared runs once (pytest-xdist --dist loadgroup)
pytestmark = pytest.mark.xdist_group("frozen_attention")


@pytest.fixture(scope="module")
def backends(probe, tiny_model_dir) -> dict:
    return probe("backends", str(tiny_model_dir))


def test_flash_student_gets_an_sdpa_copy_through_ous_prepare_ref_model(backends):
    assert backends["prepare_deepspeed_calls"] == 1  # OU's ZeRO-3 path made the copy
    assert backends["frozen_classes"] == ["LlamaSdpaAttention"] and backends["frozen_config"] == "sdpa"
    assert backends["student_classes"] == ["LlamaFlashAttention2"]  # the student keeps its backend
    assert backends["student_config"] == "flash_attention_2"
    assert backends["record"] == {"student": "flash_attention_2", "frozen": "sdpa", "switched": True}
    assert backends["plain_diff_to_sdpa_load"] <= 1e-5  # the same weights as a SDPA load


def test_unreachable_backend_is_refused_at_trainer_start(backends):
    refusal = backends["refusal"]
    assert refusal is not None and refusal.startswith("SmoothingError")
    assert "attn_implementation='custom_kernel'" in refusal  # names the student's backend
    assert "model.model_args.attn_implementation=sdpa" in refusal  # and what to set
