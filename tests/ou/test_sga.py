"""SGA (trainer=SGA) through OU's real src/train.py, offline, on a CPU.

The tiny 2-layer model (``tiny_model_dir``) stands in for SmolLM2 throughout: what is checked here
(the loss against an independent recomputation, r = 0 against OU's GradAscent, the neighbours
against a brute-force search, the bad inputs) does not depend on the model's size, and a neighbour
table on SmolLM2 costs minutes on this CPU (bench/results/sga_neighbours.md). The retain set is
TOFU's retain_perturbed (400 rows) for the same reason.

One subprocess (tests/ou/sga_probe.py) pays OU's imports once and runs everything: OU's real
src/train.py on TOFU (``sga_run``: the model, the log, the neighbour table, also into a cache), the
in-process checks (whose trainer reads that cache), and train.py on MUSE.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from asu_plugin.openunlearning.process import run_in_ou

from .conftest import TEST_ENV, OURun, model_overrides

# one worker builds the module's shared runs once (pytest-xdist --dist loadgroup)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("sga")]

SGA_PROBE = Path(__file__).with_name("sga_probe.py")
RUN_SH = Path(__file__).resolve().parents[2] / "community" / "methods" / "SGA" / "run.sh"
STEPS = 2
R, K = -0.5, 3  # trainer/SGA.yaml's defaults
FORGET_SPLIT, RETAIN_SPLIT = "forget01", "retain_perturbed"
SGA_CPU = (
    "--config-name=unlearn.yaml", "experiment=unlearn/tofu/sga_cpu", f"retain_split={RETAIN_SPLIT}",
    "trainer.args.per_device_train_batch_size=4", "trainer.args.logging_steps=1", "task_name=test_sga",
)


@pytest.fixture(scope="module")
def sga_dirs(tmp_path_factory, tiny_model_dir) -> dict:
    """A second local model (another seed, the same tokenizer) for ``embedding``; a directory that is
    not a model; the neighbour cache shared by the run and the probe."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    root = tmp_path_factory.mktemp("sga")
    other = root / "other-embedder"
    config = LlamaForCausalLM.from_pretrained(tiny_model_dir).config
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(other)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(other)
    (root / "not-a-model").mkdir()
    (root / "not-a-model" / "config.json").write_text("{}")
    return {"root": root, "other": other, "not_a_model": root / "not-a-model", "cache": root / "cache"}


@pytest.fixture(scope="module")
def run_sh_commands() -> list[list[str]]:
    done = subprocess.run(["bash", str(RUN_SH)], env={**os.environ, "DRY_RUN": "1"}, capture_output=True,
                          text=True, check=True, timeout=60)
    return [shlex.split(line) for line in done.stdout.splitlines() if line.strip()]


def _compose_request(argv: list[str]):
    config = next((a.split("=", 1)[1] for a in argv if a.startswith("--config-name=")),
                  "train.yaml" if argv[1] == "src/train.py" else "eval.yaml")
    return config, [a for a in argv[2:] if not a.startswith(("--config-name=", "paths.output_dir="))]


@pytest.fixture(scope="module")
def probe(ou_dir, ou_data, tiny_model_dir, sga_dirs, run_sh_commands) -> dict:
    """Everything, in one subprocess (tests/ou/sga_probe.py): OU's train.py for SGA_STEPS steps on TOFU
    forget01 (r -0.5, K 3, normal similar), the in-process checks, then train.py on MUSE."""
    run_dir = sga_dirs["root"] / "run"
    spec = {
        "tofu_train": [*SGA_CPU, *model_overrides(tiny_model_dir), f"trainer.args.max_steps={STEPS}",
                       f"trainer.method_args.neighbour_cache={sga_dirs['cache']}", f"hydra.run.dir={run_dir}",
                       f"paths.output_dir={run_dir}"],
        "model_dir": str(tiny_model_dir), "other_model_dir": str(sga_dirs["other"]),
        "not_a_model_dir": str(sga_dirs["not_a_model"]), "output_dir": str(sga_dirs["root"] / "probe"),
        "cache_dir": str(sga_dirs["cache"]), "forget_split": FORGET_SPLIT, "retain_split": RETAIN_SPLIT,
        "model_overrides": model_overrides(tiny_model_dir),
        "overrides": [*[o for o in SGA_CPU if not o.startswith("--")], *model_overrides(tiny_model_dir),
                      "trainer.args.report_to=none"],
        "compose": [_compose_request(argv) for argv in run_sh_commands],
        "muse_train": ["--config-name=unlearn.yaml", "experiment=unlearn/muse/sga_cpu", "task_name=test_sga_muse",
                       *model_overrides(tiny_model_dir), "trainer.args.max_steps=2", "trainer.args.report_to=none",
                       f"hydra.run.dir={sga_dirs['root'] / 'muse'}", f"paths.output_dir={sga_dirs['root'] / 'muse'}"],
    }
    done = run_in_ou([SGA_PROBE, json.dumps(spec)], ou_dir, capture=True, env=TEST_ENV, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE_JSON ")]
    if done.returncode != 0 or not lines:
        pytest.fail(f"sga_probe failed ({done.returncode}):\n{done.output[-6000:]}")
    return json.loads(lines[-1][len("PROBE_JSON "):])


@pytest.fixture(scope="module")
def sga_run(probe, sga_dirs) -> OURun:
    return OURun([], 0, "", sga_dirs["root"] / "run")


# ---- the train.py run -------------------------------------------------------------------------


def test_run_writes_model_record_and_table(sga_run):
    run_dir = sga_run.run_dir
    assert (run_dir / "model.safetensors").is_file() and not (run_dir / "ASU_FAILED.txt").exists()
    record = sga_run.record()
    assert record["method"] == "SGA" and record["status"] == "trained" and record["global_step"] == STEPS
    assert {k: record["asu"][k] for k in ("r", "K", "normal", "embedding")} == {
        "r": R, "K": K, "normal": "similar", "embedding": None}
    assert record["neighbour_table"]["source"] == "computed"
    table = json.loads((run_dir / "sga_neighbours.json").read_text())
    assert len(table["neighbours"]) == 40 and {len(row) for row in table["neighbours"]} == {K - 1}
    assert table["settings"]["retain_rows"] == 400
    assert all(0 <= i < 400 for row in table["neighbours"] for i in row)


def test_run_logs_forget_and_normal_nll(sga_run):
    steps = [entry for entry in sga_run.trainer_state()["log_history"] if "loss" in entry]
    assert len(steps) == STEPS
    for entry in steps:
        assert entry["forget_nll"] > 0 and entry["normal_nll"] > 0
        # the logged mean of the K-1 normal NLLs: their sum is (K-1) times it
        expected = -((1 - R + R / K) * entry["forget_nll"] + (R / K) * (K - 1) * entry["normal_nll"])
        assert entry["loss"] == pytest.approx(expected, abs=1e-4)  # OU logs the loss to 4 decimals


# ---- in-process checks (one probe subprocess) ---------------------------------------------------


def test_loss_matches_independent_recomputation(probe):
    loss = probe["loss"]
    print(json.dumps({"loss": loss, "probe_seconds": probe["seconds"]}))
    assert loss["batch_rows"] == 4 and (loss["r"], loss["K"]) == (R, K)
    assert loss["normal_batches_equal"] == [True] * (K - 1)  # the rows the trainer fetched = the table's
    assert loss["loss"] == pytest.approx(loss["expected"], abs=1e-5)
    assert loss["table_source"] == "cache"  # the run's table, reused: same weights, texts, K


def test_r0_is_grad_ascent(probe):
    assert probe["loss"]["loss_r0"] == probe["loss"]["grad_ascent"]
    assert probe["loss"]["loss_r0"] != probe["loss"]["loss"]


@pytest.mark.parametrize("which", ["neighbours", "neighbours_other_model"])
def test_neighbours_equal_brute_force(probe, which, sga_dirs):
    result = probe[which]
    print(json.dumps({k: v for k, v in result.items() if k != "settings"}))
    assert (result["rows"], result["retain_rows"]) == (40, 400)
    assert result["count"] == (K - 1 if which == "neighbours" else 1)
    # the table's rows have the highest similarities (ties may come in any order) and it stores them
    assert result["max_similarity_diff"] <= 1e-5
    assert result["max_stored_similarity_diff"] <= 1e-5
    if result["min_gap_after_last"] > 1e-5:
        assert result["same_indices"] == 1.0
    if which == "neighbours_other_model":
        assert result["settings"]["embedding"] == str(sga_dirs["other"])


BAD_INPUTS = {
    "K_zero": ("ValueError", ["K must be an integer >= 1", "0", "trainer.method_args.K=3"]),
    "K_not_integer": ("ValueError", ["K must be an integer >= 1", "2.5"]),
    "K_text": ("ValueError", ["K must be an integer >= 1", "'three'"]),
    "r_nan": ("ValueError", ["r must be a finite number", "nan", "trainer.method_args.r=-0.5"]),
    "r_inf": ("ValueError", ["r must be a finite number", "-inf"]),
    "r_text": ("ValueError", ["r must be a finite number", "'minus_half'"]),
    "normal_unknown": ("ValueError", ["normal must be one of similar, random", "'nearest'"]),
    "retain_too_small": ("ValueError", ["retain set has 400 rows", "K=402 needs K-1=401", "at most 401"]),
    "embedding_missing": ("FileNotFoundError", ["/nonexistent/embedder", "is not a directory", "null"]),
    "embedding_not_a_model": ("ValueError", ["does not load", "config.json", "embedding=null"]),
    "unknown_option": ("TypeError", ["unknown method_args option(s) smoothing", "known: r, K, normal"]),
    "finetune_config": ("ValueError", ["SGA unlearns: it needs OU's forget/retain data",
                                       "experiment=unlearn/tofu/default trainer=SGA"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_named_with_its_fix(probe, case, reliability):
    kind, fragments = BAD_INPUTS[case]
    result = probe["bad"][case]
    assert result["error"] is not None, f"{case} was accepted"
    assert result["type"] == kind, result
    for fragment in fragments:
        assert fragment in result["error"], (fragment, result["error"])
    assert result["marker"] and result["marker"].startswith(kind)  # ASU_FAILED.txt in the run directory
    reliability(f"SGA: {case.replace('_', ' ')}", f"{kind}: {result['error'][:300]}")


# ---- MUSE and the contribution kit -------------------------------------------------------------


def test_muse_config_trains_two_steps(probe, sga_dirs):
    """experiment=unlearn/muse/sga_cpu through OU's src/train.py (run by the probe, in its process)."""
    run_dir = sga_dirs["root"] / "muse"
    steps = [e for e in json.loads((run_dir / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert len(steps) == 2 and all(math.isfinite(entry["loss"]) and entry["normal_nll"] > 0 for entry in steps)
    record = json.loads((run_dir / "asu_run.json").read_text())
    assert record["method"] == "SGA" and record["asu"]["normal"] == "random" and record["status"] == "trained"
    assert (run_dir / "model.safetensors").is_file()


def test_run_sh_plan(run_sh_commands):
    assert len(run_sh_commands) == 2 * 3 + 2  # (train + eval) x 3 TOFU splits, + MUSE-News
    assert all(argv[0] == "python" and argv[1] in ("src/train.py", "src/eval.py") for argv in run_sh_commands)
    grid = subprocess.run(["bash", str(RUN_SH)], env={**os.environ, "DRY_RUN": "1", "SGA_RATES": "-1.0 -0.5 -0.2"},
                          capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()
    trains = [shlex.split(line) for line in grid if "src/train.py" in line]
    assert len(grid) == 3 * len(run_sh_commands) and len(trains) == 3 * 4
    assert sorted({a for argv in trains for a in argv if a.startswith("trainer.method_args.r=")}) == [
        "trainer.method_args.r=-0.2", "trainer.method_args.r=-0.5", "trainer.method_args.r=-1.0"]


def test_run_sh_commands_compose(probe, run_sh_commands):
    results = probe["compose"]
    errors = [(" ".join(argv), r["error"]) for argv, r in zip(run_sh_commands, results) if "error" in r]
    assert not errors
    trains = [r for argv, r in zip(run_sh_commands, results) if argv[1] == "src/train.py"]
    assert {cfg["trainer"]["method_args"]["r"] for cfg in trains} == {-0.5}
    for cfg in trains:
        assert cfg["trainer"]["handler"] == "SGA"
        assert cfg["trainer"]["method_args"]["K"] == 3 and cfg["trainer"]["method_args"]["normal"] == "similar"
        assert cfg["trainer"]["args"]["learning_rate"] == 1e-5
        assert cfg["data"]["anchor"] == "forget" and cfg["data"]["retain"]
    tofu = [cfg for cfg in trains if cfg["task_name"].startswith("tofu_")]
    assert len(tofu) == 3
    for cfg in tofu:
        split = cfg["forget_split"]
        assert cfg["data"]["forget"]["TOFU_QA_forget"]["args"]["hf_args"]["name"] == split
        retain = f"retain{100 - int(split[-2:])}"
        assert cfg["data"]["retain"]["TOFU_QA_retain"]["args"]["hf_args"]["name"] == retain
        assert cfg["eval"]["tofu"]["retain_logs_path"].endswith(f"_{retain}/TOFU_EVAL.json")
    muse = [cfg for cfg in trains if cfg["task_name"].startswith("muse_")]
    assert len(muse) == 1 and muse[0]["data_split"] == "News"
    assert muse[0]["data"]["retain"]["MUSE_retain"]["args"]["hf_args"]["path"] == "muse-bench/MUSE-News"
    evals = [r for argv, r in zip(run_sh_commands, results) if argv[1] == "src/eval.py"]
    assert evals and all(cfg["model"]["model_args"]["pretrained_model_name_or_path"].startswith("saves/unlearn/")
                         for cfg in evals)
