"""Fixtures for the tests that run the real OpenUnlearning (OU) at ``OU_DIR``.

Everything OU runs in a subprocess, exactly as a user would (``python src/train.py ...`` in
the OU checkout, with this venv's python), offline: the datasets come from the project's
mirror (linked into the checkout by ``asu_plugin.openunlearning.data_links``), the model from the SmolLM2
directory made by ``python -m asu_plugin.tools.models prepare-smollm2``. Outputs go to pytest's
temporary directory (``hydra.run.dir=...``), never into the OU checkout.

One ASU_KL run (``kl_run``) is shared by the tests that inspect a trained model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from asu_plugin.openunlearning.environment import OFFLINE_ENV as OFFLINE  # noqa: F401  (for the tests)
from asu_plugin.openunlearning.environment import ou_dir as configured_ou_dir
from asu_plugin.openunlearning.process import ou_script_args, run_in_ou

from .overrides import CPU_TRAIN, IDK_ON_CPU  # noqa: F401  (re-exported for the tests)

OU_DIR = configured_ou_dir()
PROBE = Path(__file__).with_name("ou_probe.py")
KL_STEPS = 10
# what every OU subprocess of the tests gets on top of the job environment
# (the teacher health check costs ~10 s per SmolLM2 run: only its own tests turn it on)
TEST_ENV = {"HYDRA_FULL_ERROR": "0", "CUDA_VISIBLE_DEVICES": "", "ASU_HEALTH_CHECK": "false"}


@dataclass
class OURun:
    """A finished subprocess run of OU: its output and where it wrote."""

    args: list
    returncode: int
    output: str
    run_dir: Path | None = None
    stdout: str = ""

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-n:])

    def trainer_state(self) -> dict:
        return json.loads((self.run_dir / "trainer_state.json").read_text())

    def record(self) -> dict:
        return json.loads((self.run_dir / "asu_run.json").read_text())


@pytest.fixture(scope="session")
def ou_dir() -> Path:
    if not (OU_DIR / "src" / "train.py").is_file():
        pytest.skip(
            f"OpenUnlearning not found at {OU_DIR} (set OU_DIR to a checkout of "
            "locuslab/open-unlearning at d3d7cf9, or run `make install`)"
        )
    return OU_DIR


@pytest.fixture(scope="session")
def ou_data(ou_dir) -> Path:
    """Link the offline TOFU / MUSE mirror into the OU checkout (idempotent)."""
    from asu_plugin.openunlearning.data_links import default_mirror, link_offline_data

    mirror = default_mirror()
    if mirror is None:
        pytest.skip("no dataset mirror (../shared/data/hf beside the project, or ASU_DATA_MIRROR)")
    link_offline_data(ou_dir, mirror)
    return mirror


@pytest.fixture(scope="session")
def model_dir() -> Path:
    path = Path(os.environ.get("ASU_MODEL_DIR") or "~/.cache/asu-plugin/models/SmolLM2-135M-Instruct").expanduser()
    if not (path / "config.json").is_file():
        pytest.skip(f"SmolLM2 not prepared at {path}: run `python -m asu_plugin.tools.models prepare-smollm2`")
    return path


def env() -> dict:
    """The environment of an OU subprocess started by a test: os.environ + the job environment."""
    from asu_plugin.openunlearning.environment import JOB_ENV

    return {**os.environ, **JOB_ENV, "PYTHONUNBUFFERED": "1", **TEST_ENV}


@pytest.fixture(scope="session")
def run_ou(ou_dir):
    """run_ou("train.py", *overrides, run_dir=..., check=True) -> OURun (cwd = OU_DIR)."""

    def run(script: str, *overrides: str, run_dir: Path | None = None, check: bool = True, timeout: int = 900):
        args = ou_script_args(script, overrides, run_dir=run_dir)
        done = run_in_ou(args, ou_dir, capture=True, env=TEST_ENV, timeout=timeout)
        result = OURun(done.argv, done.returncode, done.output, run_dir, done.stdout)
        if check and done.returncode != 0:
            pytest.fail(f"{' '.join(args)} failed ({done.returncode}):\n{result.tail()}")
        return result

    return run


@pytest.fixture(scope="session")
def probe(ou_dir, ou_data):
    """probe(*args) -> dict: runs tests/ou/ou_probe.py in OU_DIR (OU imported there, not here)."""

    def run(*args: str, timeout: int = 900) -> dict:
        done = run_in_ou([PROBE, *args], ou_dir, capture=True, env=TEST_ENV, timeout=timeout)
        lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE_JSON ")]
        if done.returncode != 0 or not lines:
            pytest.fail(f"ou_probe {' '.join(args)} failed ({done.returncode}):\n{done.output[-6000:]}")
        return json.loads(lines[-1][len("PROBE_JSON "):])

    return run




def model_overrides(path: Path) -> list[str]:
    return [f"model.model_args.pretrained_model_name_or_path={path}",
            f"model.tokenizer_args.pretrained_model_name_or_path={path}"]


@pytest.fixture(scope="session")
def tiny_model_dir(model_dir, tmp_path_factory) -> Path:
    """A 2-layer Llama with SmolLM2's tokenizer and vocabulary, saved like any HF model: OU's
    train.py runs a step in well under a second with it, so multi-run tests stay cheap."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    base = AutoConfig.from_pretrained(model_dir)
    config = LlamaConfig(
        vocab_size=base.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, rope_theta=base.rope_theta,
        tie_word_embeddings=True, bos_token_id=base.bos_token_id, eos_token_id=base.eos_token_id,
        pad_token_id=base.pad_token_id, initializer_range=0.15,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def kl_run(run_ou, ou_data, model_dir, tmp_path_factory) -> OURun:
    """ASU_KL, KL_STEPS optimizer steps on TOFU forget01 through OU's src/train.py, with the teacher
    health check on (the one shared run that pays for it)."""
    run_dir = tmp_path_factory.mktemp("asu_kl") / "run"
    return run_ou(
        "train.py", *CPU_TRAIN, "trainer=ASU_KL", "task_name=test_asu_kl",
        f"trainer.args.max_steps={KL_STEPS}", "trainer.method_args.health_check=true", run_dir=run_dir,
    )
