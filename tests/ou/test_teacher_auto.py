"""``trainer.method_args.tau=auto layers=auto`` through OU's real src/train.py.

On the tiny random Llama no candidate teacher removes any fact (its factual-token NLL barely
moves under smoothing), so the automatic choice must refuse before training: the run fails,
saves no model, and ASU_FAILED.txt names the best candidate's failure and what to try.
"""

from __future__ import annotations

from .conftest import CPU_TRAIN, model_overrides


def test_auto_teacher_refuses_a_model_on_which_no_candidate_passes(run_ou, ou_data, tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    run = run_ou("train.py", *CPU_TRAIN, "trainer=ASU_KL", *model_overrides(tiny_model_dir), "task_name=test_auto",
                 "trainer.method_args.tau=auto", "trainer.method_args.layers=auto", "trainer.args.max_steps=1",
                 f"++hydra.job.env_set.ASU_CACHE_DIR={tmp_path / 'cache'}", run_dir=run_dir, check=False)
    assert run.returncode != 0
    failure = (run_dir / "ASU_FAILED.txt").read_text().splitlines()
    assert failure[0].startswith("ASU run failed choosing the teacher of ASU_KL")
    assert failure[1].startswith("TeacherChoiceError: no candidate teacher passes the automatic choice (12 screened")
    assert "fails: factual-token NLL increase" in failure[1] and "higher tau or more layers" in failure[1]
    assert not (run_dir / "model.safetensors").exists()
    assert len(list((tmp_path / "cache" / "teacher_choice").glob("*.json"))) == 1  # the refusal is cached
