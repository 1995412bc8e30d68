"""LoRA student and exact teacher cache (issue 17), through OU's real src/train.py / eval.py and
trainers built as train.py builds them (tests/ou/lora_cache_probe.py), on the tiny Llama."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from asu_plugin.openunlearning.process import run_in_ou

from .conftest import CPU_TRAIN, PROBE, TEST_ENV, model_overrides

# one worker builds the module's shared runs once (pytest-xdist --dist loadgroup)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("lora_cache")]

CACHE_PROBE = PROBE.with_name("lora_cache_probe.py")
VOCAB = 49152  # SmolLM2's, the tiny model's too
LORA = "trainer.method_args.lora={r: 4, alpha: 8, dropout: 0.1, target_modules: [q_proj, k_proj, v_proj, o_proj]}"
FORGET_8 = "data.forget.TOFU_QA_forget.args.hf_args.split='train[:8]'"


@pytest.fixture(scope="module")
def probed(ou_dir, ou_data, tiny_model_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("lora_cache_probe")
    done = run_in_ou([CACHE_PROBE, "all", tiny_model_dir, out], ou_dir, capture=True, env=TEST_ENV, timeout=1800)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE_JSON ")]
    if done.returncode != 0 or not lines:
        pytest.fail(f"lora_cache_probe failed ({done.returncode}):\n{done.output[-6000:]}")
    return json.loads(lines[-1][len("PROBE_JSON "):])


# ---- LoRA: teacher and reference are the student's base, adapters off ---------------------


@pytest.mark.parametrize("method, frozen_passes", [("ASU_GD", 1), ("ASU_KL", 2), ("ASU_IDK", 2)])
def test_lora_loss_and_adapters_off_passes(probed, method, frozen_passes):
    result = probed["lora"][method]
    print(json.dumps(result))
    # vs the adapters merged by hand into a fresh original, and a fresh original as teacher / reference
    assert result["loss"] == pytest.approx(result["expected"], abs=1e-5)
    assert result["model_copies"] == 1 and result["ref_model"] is False  # no frozen copy
    assert result["merge_diff"] == 0.0  # what the final save writes == the merge by hand
    off = [p for p in result["passes"] if p["adapters_off"]]
    on = [p for p in result["passes"] if not p["adapters_off"]]
    assert len(off) == frozen_passes and on
    assert all(not p["training"] and not p["grad"] for p in off)  # eval mode (no dropout), no_grad
    assert all(p["training"] and p["grad"] for p in on)  # the student itself trains as before
    assert [p["smoothed"] for p in off] == [True] + [False] * (frozen_passes - 1)  # teacher, then reference
    assert not any(p["smoothed"] for p in on)
    assert result["train_mode_restored"] and result["adapters_on_after"]


def test_sga_with_lora(probed):
    """SGA (no teacher) with LoRA: one step trains the adapters only; its final save is the merged
    model (== the adapters merged by hand) and the adapter; the neighbour table embeds with the base."""
    result = probed["lora"]["SGA"]
    print(json.dumps(result))
    assert result["base_unchanged"] and result["lora_B_all_changed"] and result["neighbour_table"]
    assert result["saved_keys_match"] and result["saved_vs_hand_merge"] <= 1e-6 and result["adapter_saved"]
    assert result["record_lora"] == {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}


@pytest.fixture(scope="module")
def lora_run(run_ou, ou_data, tiny_model_dir, tmp_path_factory):
    """ASU_KL + LoRA with gradient checkpointing, 2 steps through OU's train.py."""
    run_dir = tmp_path_factory.mktemp("lora") / "run"
    return run_ou("train.py", *CPU_TRAIN, "trainer=ASU_KL", *model_overrides(tiny_model_dir), "task_name=lora",
                  "trainer.args.max_steps=2", "trainer.args.learning_rate=1e-3", "trainer.args.report_to=none",
                  "trainer.args.gradient_checkpointing=true", LORA, run_dir=run_dir)


def test_lora_with_gradient_checkpointing_trains_and_saves_merged(lora_run, tiny_model_dir):
    run_dir = lora_run.run_dir
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    b_weights = {k: v for k, v in adapter.items() if "lora_B" in k}
    assert len(b_weights) == 2 * 4  # 2 layers x 4 projections
    # lora_B starts at zero: nonzero everywhere = the steps reached every checkpointed layer (OU #178)
    assert all(v.abs().max() > 0 for v in b_weights.values())

    # the merged model, recomputed here from the saved adapter: W + alpha / r * B @ A
    merged, original = load_file(run_dir / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert sorted(merged) == sorted(original)
    for key, weight in original.items():
        name = key.removesuffix(".weight")
        a = adapter.get(f"base_model.model.{name}.lora_A.weight")
        expected = weight if a is None else weight + 8 / 4 * adapter[f"base_model.model.{name}.lora_B.weight"] @ a
        assert torch.allclose(merged[key], expected, atol=1e-7, rtol=0), key
    assert any(not torch.equal(merged[k], original[k]) for k in original)

    steps = [entry for entry in lora_run.trainer_state()["log_history"] if "loss" in entry]
    assert len(steps) == 2 and steps[0]["forget_kl"] > 0
    assert steps[0]["retain_loss"] == 0.0  # step 1: student (lora_B = 0) == its adapters-off base
    assert lora_run.record()["asu"]["lora"] == {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1,
                                                "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def test_ou_eval_scores_the_merged_lora_model(lora_run, run_ou, tmp_path):
    out = tmp_path / "eval"
    run_ou("eval.py", "experiment=eval/tofu/asu_cpu", "task_name=eval_lora", *model_overrides(lora_run.run_dir),
           "asu_eval_split='train[:2]'", "asu_eval_max_new_tokens=4", run_dir=out)
    logs = json.loads((out / "TOFU_EVAL.json").read_text())
    assert len(logs["forget_Q_A_Prob"]["value_by_index"]) == 2 and logs["forget_Q_A_Prob"]["agg_value"] >= 0


# ---- the teacher cache ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gpt2_dir(model_dir, tmp_path_factory):
    """A 2-layer GPT-2 (SmolLM2's tokenizer and vocabulary, no dropout): *absolute* position
    embeddings, so a sample whose positions shifted with its batch's padding gets other logits
    (Llama's rotary embeddings only see relative positions: a shift changes its logits at float
    noise level only)."""
    from transformers import AutoConfig, AutoTokenizer, GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("tiny") / "tiny-gpt2"
    base = AutoConfig.from_pretrained(model_dir)
    config = GPT2Config(vocab_size=base.vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=1024,
                        bos_token_id=base.bos_token_id, eos_token_id=base.eos_token_id, pad_token_id=base.pad_token_id,
                        initializer_range=0.15, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def cache_sweep(run_ou, ou_data, tiny_gpt2_dir, tmp_path_factory):
    """ASU_GD, 8 forget rows, batch 4, 2 shuffled epochs: cache off / on x right / left padding,
    four jobs of one Hydra multirun of OU's train.py."""
    sweep_dir = tmp_path_factory.mktemp("cache") / "sweep"
    run = run_ou("train.py", "-m", *CPU_TRAIN, "trainer=ASU_GD", *model_overrides(tiny_gpt2_dir), "task_name=cache",
                 FORGET_8, "trainer.args.per_device_train_batch_size=4", "trainer.args.num_train_epochs=2",
                 "trainer.args.learning_rate=1e-3", "trainer.args.report_to=none",
                 "trainer.method_args.teacher_cache=false,true",
                 "collator.DataCollatorForSupervisedDataset.args.padding_side=right,left",
                 f"hydra.sweep.dir={sweep_dir}")
    jobs = {}
    for job in sorted(sweep_dir.glob("*/asu_run.json")):
        overrides = (job.parent / ".hydra" / "overrides.yaml").read_text()
        cached = "teacher_cache=true" in overrides.lower()
        side = re.search(r"padding_side=(\w+)", overrides).group(1)
        jobs[(cached, side)] = job.parent
    return run, jobs


def _steps(run_dir):
    state = json.loads((run_dir / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


def _loss(step) -> float:
    return 0.1 * step["forget_kl"] + step["retain_loss"]  # gamma 0.1, alpha 1


@pytest.mark.parametrize("side", ["right", "left"])
def test_cache_equals_uncached_over_two_epochs(cache_sweep, side):
    """Every step's loss of the cached run == the uncached run's, to 1e-6 (relative for the
    retain NLL of ~11, where one float32 step is 1e-6). Not compared: the weights, which Adam moves
    by ~lr * sign(gradient), so a 1e-9 difference in a near-zero gradient can flip a step."""
    _, jobs = cache_sweep
    plain, cached = _steps(jobs[(False, side)]), _steps(jobs[(True, side)])
    assert len(plain) == len(cached) == 4 and cached[-1]["epoch"] == 2.0
    for a, b in zip(plain, cached):  # Trainer rounds "loss" to 4 digits: compare the terms, full precision
        assert b["forget_kl"] == pytest.approx(a["forget_kl"], abs=1e-6)
        assert b["retain_loss"] == pytest.approx(a["retain_loss"], rel=1e-6)
        assert _loss(b) == pytest.approx(_loss(a), rel=1e-6)


def test_positions_do_not_depend_on_padding_side(cache_sweep):
    """Explicit position ids: left- and right-padded runs see the same logits per sample
    (without them, GPT-2's left-padded samples are shifted: forget_kl differs by ~0.1)."""
    _, jobs = cache_sweep
    for a, b in zip(_steps(jobs[(False, "right")]), _steps(jobs[(False, "left")])):
        assert b["forget_kl"] == pytest.approx(a["forget_kl"], abs=1e-6)
        assert b["retain_loss"] == pytest.approx(a["retain_loss"], rel=1e-6)


def test_cache_size_stated_before_building_and_frozen_model_released(cache_sweep, probed):
    run, jobs = cache_sweep
    for side in ("right", "left"):
        record = json.loads((jobs[(True, side)] / "asu_run.json").read_text())
        cache = record["teacher_cache"]
        assert cache["status"] == "built" and cache["mode"] == "cpu" and cache["samples"] == 8
        assert cache["bytes"] == cache["rows"] * VOCAB * 4 and cache["rows"] > 8
        assert record["frozen_model"] == "released"
    stated = [i for i, line in enumerate(run.output.splitlines()) if "teacher cache (cpu) will hold" in line]
    built = [i for i, line in enumerate(run.output.splitlines()) if "teacher cache built in" in line]
    assert len(stated) == len(built) == 2 and all(s < b for s, b in zip(stated, built))
    gd = probed["cache"]["gd"]
    print(json.dumps(gd))
    assert gd["summary"]["rows"] == gd["independent_rows"]  # answer tokens counted by the probe itself
    assert gd["max_diff"] <= 1e-4  # cached rows == the smoothed original run on each sample alone
    assert gd["copies_before"] == 2 and gd["copies_after"] == 1 and gd["ref_model"] is False


def test_lora_with_cache_needs_no_copy(probed):
    result = probed["cache"]["kl_lora"]
    assert result["copies"] == 1 and result["ref_model"] is False
    assert result["frozen_model"] == "LoRA base (adapters off)"
    assert result["summary"]["rows"] == result["independent_rows"] and result["max_diff"] <= 1e-4


def test_cache_resume_reloads_and_matches_uninterrupted(probed):
    result = probed["cache"]["resume"]
    assert result["status"] == "reloaded" and result["global_step"] == 4
    assert result["max_diff"] <= 1e-6


def test_changed_forget_set_or_model_rebuilds_the_cache(probed):
    # (the resume test shows an unchanged one reloaded)
    assert probed["cache"]["statuses"] == {"forget_changed": "built", "model_changed": "built"}


# ---- bad input ------------------------------------------------------------------------------


def test_lora_target_modules_matching_nothing(probed, reliability):
    result = probed["bad"]["target_modules"]
    assert "['qkv_proj'] match no layer" in result["error"] and "'q_proj'" in result["error"]
    assert result["failure_marker"]
    reliability("LoRA target_modules [q_proj, qkv_proj] (qkv_proj matches no layer)", result["error"][:300])


def test_lora_with_teacher_path_refused(probed, reliability):
    result = probed["bad"]["teacher_path"]
    assert "cannot be combined with teacher_path" in result["error"] and "adapters switched off" in result["error"]
    assert result["failure_marker"]
    reliability("LoRA together with teacher_path", result["error"][:300])


def test_teacher_cache_over_budget(probed, reliability):
    result = probed["bad"]["budget"]
    size = result["answer_tokens"] * VOCAB * 4 / 1e9  # counted by the probe, not by the trainer
    assert (result["error"] or "no error").startswith("TeacherCacheTooLarge")
    assert f"{result['answer_tokens']} answer tokens" in result["error"] and f"{size:.3f} GB" in result["error"]
    assert "teacher_cache=mmap" in result["error"] and "teacher_cache=false" in result["error"]
    assert result["failure_marker"]
    reliability("teacher_cache=true with teacher_cache_max_gb=0.01 (forget01: 0.33 GB)", result["error"][:300])
