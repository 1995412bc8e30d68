"""The GPU check of issue 16: one command for a session lent a GPU machine (the device tool).

    make gpu-wheels                                  # here, once: .gpu-carry/ (bench/gpu_carry.py)
    .venv/bin/python bench/gpu_check.py --dry-run    # here: the plan, the carried wheels, the OU configs
    # on the machine, through the device tool (carry=[".gpu-carry"], timeout_s=420):
    PYTHONUNBUFFERED=1 python3 bench/gpu_check.py --out $OUT/gpu
    # then copy the returned gpu/gpu_check.{json,md} into bench/results/gpu/

Stages, in order of importance, each in its own process (a failure is recorded and the next runs),
all within a cap of CAP_S seconds of machine time (a stage gets what is left, at most its limit):

    setup             the carried wheels installed into WORK/site (pip, no network)
    core_numerics     smoothing on CUDA, fp32 and bf16, against the query-division reference; token_kl
    non_sdpa_student  a student on an opaque registered kernel beside its SDPA teacher: training steps
    ou_build_model    a ~1B Llama built from a config (no hub), bf16, saved with SmolLM2's tokenizer
    ou_ASU_KL, ou_NPO OU's src/train.py, MUSE-Books chunks of 512 tokens, batch 4: step time, peak memory
    flex_student      the same as non_sdpa_student with transformers' flex_attention

The core and student stages run on the machine's transformers (5.x); the OU stages on the carried
4.45.1 (OU d3d7cf9 does not run on 5.x). ``gpu_check.json`` and ``gpu_check.md`` are rewritten after
every stage.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
import gpu_carry  # noqa: E402  (bench/gpu_carry.py)

CAP_S = 240
OU_STEPS = 10
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


class Stage(NamedTuple):
    name: str
    env: str  # native (the machine's transformers) | ou (the carried wheels first)
    limit_s: int
    argv: tuple
    cwd: str = "repo"  # repo | ou (the carried OU checkout)


def ou_overrides(method: str, work: Path) -> list[str]:
    """OU's train.py overrides of a timing run: OU's MUSE experiment (ours for ASU_KL), the 1B model."""
    model = work / "model1b"
    experiment = (["experiment=unlearn/muse/asu", "trainer=ASU_KL"] if method == "ASU_KL"
                  else ["experiment=unlearn/muse/default", "trainer=NPO"])
    run_dir = work / "runs" / method
    return ["--config-name=unlearn.yaml", *experiment, "data_split=Books", f"task_name=gpu_{method}",
            f"model.model_args.pretrained_model_name_or_path={model}",
            f"model.tokenizer_args.pretrained_model_name_or_path={model}",
            "model.model_args.attn_implementation=sdpa",  # no flash_attn package on the lent machine
            "data.forget.MUSE_forget.args.max_length=512", "data.retain.MUSE_retain.args.max_length=512",
            *(f"++trainer.args.{key}={value}" for key, value in (
                ("per_device_train_batch_size", 4), ("gradient_accumulation_steps", 1), ("max_steps", OU_STEPS),
                ("optim", "adamw_torch"), ("logging_steps", 1), ("report_to", "none"), ("eval_strategy", "no"),
                ("do_eval", "false"), ("eval_on_start", "false"), ("save_strategy", "no"))),
            f"paths.output_dir={run_dir}", f"hydra.run.dir={run_dir}"]


def plan(work: Path, carry: Path) -> list[Stage]:
    py = sys.executable
    run, stages = str(BENCH / "gpu_ou_run.py"), str(BENCH / "gpu_stages.py")
    return [
        Stage("setup", "native", 20, ()),
        Stage("core_numerics", "native", 30, (py, stages, "core_numerics")),
        Stage("non_sdpa_student", "native", 30, (py, stages, "non_sdpa_student", "asu_opaque_kernel")),
        Stage("ou_build_model", "ou", 30, (py, run, "build-model", str(work / "model1b"), str(carry / "tokenizer"))),
        *(Stage(f"ou_{m}", "ou", 50, (py, run, "train", str(work / f"{m}.json"), "--", *ou_overrides(m, work)), "ou")
          for m in ("ASU_KL", "NPO")),
        # last: flex_attention's kernels are compiled on first use (time unknown here)
        Stage("flex_student", "native", 30, (py, stages, "non_sdpa_student", "flex_attention")),
    ]


def stage_env(stage: Stage, work: Path, carry: Path) -> dict:
    paths = [str(work / "site")] if stage.env == "ou" else []
    # the carried OU has no .git: git must not report the enclosing repository's commit as OU's
    return {**os.environ, **OFFLINE, "PYTHONPATH": os.pathsep.join([*paths, str(REPO / "src")]),
            "GIT_CEILING_DIRECTORIES": str(carry.resolve())}


def install_wheels(carry: Path, work: Path) -> dict:
    wheels = sorted(str(w) for w in (carry / "wheels").glob("*.whl"))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                           "--no-cache-dir", "--upgrade", "--target", str(work / "site"), *wheels],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    import torch  # the machine's

    return {"wheels": len(wheels), "python": sys.version.split()[0], "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def run_stage(stage: Stage, work: Path, carry: Path, timeout: float) -> dict:
    if stage.name == "setup":
        return install_wheels(carry, work)
    cwd = carry / "ou" if stage.cwd == "ou" else REPO
    done = subprocess.run(stage.argv, cwd=cwd, env=stage_env(stage, work, carry), capture_output=True, text=True,
                          timeout=timeout, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("GPU_CHECK_JSON ")]
    if done.returncode or not lines:
        raise RuntimeError(f"exit {done.returncode}: {(done.stdout + done.stderr)[-3000:]}")
    result = json.loads(lines[-1][len("GPU_CHECK_JSON "):])
    if stage.name.startswith("ou_") and stage.name != "ou_build_model":
        result = json.loads(Path(stage.argv[3]).read_text())  # the full record, log history included
    return result


def summary(stages: dict) -> dict:
    """The figures the issue asks for: ASU_KL / NPO step time and peak GPU memory at ~1B, sequence 512."""
    kl, npo = (stages.get(f"ou_{m}", {}).get("result") or {} for m in ("ASU_KL", "NPO"))
    out = {name: stages[name]["status"] for name in stages}
    if kl.get("median_step_seconds") and npo.get("median_step_seconds"):
        out["step_time_ratio_ASU_KL_to_NPO"] = kl["median_step_seconds"] / npo["median_step_seconds"]
    if kl.get("peak_gib") and npo.get("peak_gib"):
        out["peak_memory_ratio_ASU_KL_to_NPO"] = kl["peak_gib"] / npo["peak_gib"]
    return out


def write_report(out: Path, document: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("gpu_check.json", json.dumps(document, indent=1, default=str)), ("gpu_check.md", markdown(document))):
        temporary = out / f".{name}.tmp"
        temporary.write_text(text)
        os.replace(temporary, out / name)


def markdown(document: dict) -> str:
    lines = ["# GPU check (bench/gpu_check.py)", "", f"Machine: {document['meta'].get('device')}; "
             f"cap {document['meta']['cap_s']} s; started {document['meta']['started']}.", "",
             "| stage | status | seconds | key figures |", "|---|---|---|---|"]
    for name, stage in document["stages"].items():
        lines.append(f"| {name} | {stage['status']} | {stage.get('seconds', 0):.1f} | {_figures(name, stage)} |")
    lines += ["", "## Summary", ""] + [f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}"
                                       for k, v in document["summary"].items()]
    return "\n".join(lines) + "\n"


def _figures(name: str, stage: dict) -> str:
    result = stage.get("result") or {}
    if stage["status"] != "passed" and stage.get("error"):
        return stage["error"].splitlines()[-1][:160].replace("|", "/")
    if name == "core_numerics":
        worst = max(row["fp32_max_diff"] for row in result["smoothing"])
        return f"{len(result['smoothing'])} cases, fp32 max diff {worst:.1e}; token_kl rel diff " + ", ".join(
            f"{row['relative_diff']:.1e}" for row in result["token_kl"])
    if name in ("non_sdpa_student", "flex_student"):
        return "; ".join(f"{k}: teacher {v.get('teacher_backend')}, losses {['%.3g' % x for x in v.get('losses', [])]}"
                         for k, v in result["students"].items())
    if name.startswith("ou_") and "median_step_seconds" in result:
        return f"median step {result['median_step_seconds']:.3f} s, peak {result.get('peak_gib') or 0:.1f} GiB"
    return ", ".join(f"{k}={v}" for k, v in result.items() if isinstance(v, (int, float, str)))[:160]


def run_all(out: Path, work: Path, carry: Path, stages: list[Stage] | None = None, cap_s: float = CAP_S,
            min_left_s: float = 5) -> dict:
    started = time.monotonic()
    document = {"meta": {"cap_s": cap_s, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "device": None},
                "stages": {}, "summary": {}}
    for stage in plan(work, carry) if stages is None else stages:
        left = cap_s - (time.monotonic() - started)
        if left < min_left_s:  # too little for any stage to do anything
            document["stages"][stage.name] = {"status": "skipped", "error": f"the {cap_s} s cap was spent"}
            continue
        began = time.monotonic()
        try:
            result = run_stage(stage, work, carry, timeout=min(stage.limit_s, left))
            status = "passed" if result.get("passed", True) else "failed"
            document["stages"][stage.name] = {"status": status, "result": result}
        except subprocess.TimeoutExpired:
            document["stages"][stage.name] = {"status": "timeout", "error": f"over {min(stage.limit_s, left):.0f} s"}
        except Exception as error:  # recorded; the next stage runs
            document["stages"][stage.name] = {"status": "error", "error": f"{type(error).__name__}: {error}"}
        document["stages"][stage.name]["seconds"] = time.monotonic() - began
        if stage.name == "setup":
            document["meta"]["device"] = (document["stages"]["setup"].get("result") or {}).get("device")
        document["summary"] = summary(document["stages"])
        write_report(out, document)
        print(f"{stage.name}: {document['stages'][stage.name]['status']} "
              f"({document['stages'][stage.name]['seconds']:.1f} s)", flush=True)
    return document


# ---- the dry run: everything that needs no GPU -----------------------------------------------------


def dry_imports(work: Path) -> dict:
    """In the simulated machine (python -S, only the carried wheels and the machine's packages):
    OU's train chain and our plugin import, and the OU runs of the plan compose."""
    sys.path.insert(0, str(Path.cwd() / "src"))  # the carried OU's src
    import importlib.metadata as metadata

    import data, evals, model, trainer  # noqa: F401,E401  (OU's train.py imports exactly these)
    from hydra import compose, initialize_config_dir

    import asu_plugin.openunlearning.trainers  # noqa: F401

    versions = {name: metadata.version(name) for name in ("transformers", "tokenizers", "huggingface-hub", "datasets",
                                                          "accelerate", "hydra-core", "lm_eval", "deepspeed", "torch")}
    composed, ok = {}, versions["transformers"] == "4.45.1"
    with initialize_config_dir(config_dir=str(Path.cwd() / "configs"), version_base=None):
        for method in ("ASU_KL", "NPO"):
            overrides = [o for o in ou_overrides(method, work) if not o.startswith(("--config-name", "hydra."))]
            cfg = compose(config_name="unlearn.yaml", overrides=overrides)
            row = {"handler": cfg.trainer.handler, "attn_implementation": cfg.model.model_args.attn_implementation,
                   "max_length": [cfg.data.forget.MUSE_forget.args.max_length, cfg.data.retain.MUSE_retain.args.max_length],
                   "batch": cfg.trainer.args.per_device_train_batch_size, "steps": cfg.trainer.args.max_steps,
                   "registered": cfg.trainer.handler in trainer.TRAINER_REGISTRY}
            row["passed"] = (row["handler"] == method and row["attn_implementation"] == "sdpa" and row["registered"]
                             and row["max_length"] == [512, 512] and row["steps"] == OU_STEPS)
            ok &= row["passed"]
            composed[method] = row
    return {"passed": bool(ok), "python": sys.version.split()[0], "versions": versions, "composed": composed}


def dry_run(carry: Path, work: Path) -> dict:
    stages = plan(work, carry)
    scripts = [Path(stage.argv[1]) for stage in stages if stage.argv]
    checks = {"plan": {"stages": [s.name for s in stages], "limits_s": sum(s.limit_s for s in stages), "cap_s": CAP_S,
                       "scripts_exist": all(p.is_file() for p in scripts)}}
    checks["plan"]["passed"] = checks["plan"]["limits_s"] <= CAP_S and checks["plan"]["scripts_exist"]
    if not (carry / "manifest.json").is_file():
        checks["carry"] = {"passed": None, "prepared": False, "fix": "run `make gpu-wheels` to prepare .gpu-carry/"}
        return {"passed": checks["plan"]["passed"], "checks": checks}
    manifest = json.loads((carry / "manifest.json").read_text())
    needed = [carry / "ou" / "src" / "train.py", carry / "ou" / "configs" / "unlearn.yaml",
              carry / "ou" / "muse-bench" / "MUSE-Books" / "raw_forget.jsonl", carry / "tokenizer" / "tokenizer.json"]
    wheels = sorted((carry / "wheels").glob("*.whl"))
    carry_bytes, repo_bytes = gpu_carry.folder_bytes(carry), gpu_carry.repo_bytes()
    checks["carry"] = {
        "prepared": True, "pins_match": manifest["pins"] == list(gpu_carry.PINS),
        "one_wheel_per_pin": sorted(gpu_carry.wheel_name(w)[0] for w in wheels) == sorted(gpu_carry.pinned()),
        "missing": [str(p) for p in needed if not p.is_file()], "carry_mib": carry_bytes / 2**20,
        "repo_mib": repo_bytes / 2**20, "within_64_mib": carry_bytes + repo_bytes <= gpu_carry.CARRY_LIMIT,
    }
    checks["carry"]["passed"] = (checks["carry"]["pins_match"] and checks["carry"]["one_wheel_per_pin"]
                                 and not checks["carry"]["missing"] and checks["carry"]["within_64_mib"])
    site, report = gpu_carry.simulated_site(carry)
    env = {**stage_env(Stage("dry_imports", "ou", 0, ()), work, carry), "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(site), str(REPO / "src")])}
    done = subprocess.run([sys.executable, "-S", str(Path(__file__).resolve()), "--stage", "dry_imports",
                           "--work", str(work)], cwd=carry / "ou", env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("GPU_CHECK_JSON ")]
    imports = json.loads(lines[-1][len("GPU_CHECK_JSON "):]) if lines and not done.returncode else {
        "passed": False, "error": (done.stdout + done.stderr)[-4000:]}
    checks["imports"] = {**imports, "simulated_site": report}
    return {"passed": all(c["passed"] for c in checks.values()), "checks": checks}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="check the plan, the carried wheels and configs here")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu")
    parser.add_argument("--work", type=Path, default=Path("/tmp/asu-gpu-check"))
    parser.add_argument("--carry", type=Path, default=gpu_carry.CARRY)
    parser.add_argument("--stage", choices=["dry_imports"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage == "dry_imports":
        print("GPU_CHECK_JSON " + json.dumps(dry_imports(args.work)))
        return 0
    if args.dry_run:
        result = dry_run(args.carry, args.work)
        print("GPU_CHECK_JSON " + json.dumps(result, default=str))
        return 0 if result["passed"] else 1
    if not (args.carry / "wheels").is_dir():
        raise SystemExit(f"{args.carry}/wheels not found: run `make gpu-wheels` here and carry .gpu-carry")
    args.work.mkdir(parents=True, exist_ok=True)
    document = run_all(args.out, args.work, args.carry)
    return 0 if all(s["status"] == "passed" for s in document["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
