#!/usr/bin/env python
"""Mini-TOFU: ASU beside OU's GradDiff, NPO, SimNPO and IDK (DPO) in OU's own TOFU metrics, on
a CPU, with a real pretrained model (issue 7). Resumable: run it again and it goes on.

    python bench/mini_tofu.py                  # everything (make bench-tofu)
    python bench/mini_tofu.py --until build    # only the target / retain models and their evals
    python bench/mini_tofu.py --dry-run        # print every OU command, run nothing
    python bench/mini_tofu.py --report         # rewrite the results from what has finished

Phases (every model and evaluation is one OU command, see asu_plugin.openunlearning.jobs):

1. **build**: SmolLM2-135M-Instruct fine-tuned with OU's finetune path on 440 TOFU QA (the 20
   authors of ``retain_perturbed`` = rows 0-399 of ``full``, and the 2 forget01 authors = rows
   3960-3999) -> *target*; on rows 0-399 only -> *retain*. Both evaluated with OU's TOFU
   evaluator; the retain model's TOFU_EVAL.json is the ``retain_logs_path`` of every other
   evaluation, so ``forget_quality`` is OU's own. The target must memorise (checked).
2. **grid**: every method x 2 learning rates, seed 0, unlearning forget01 with the retain set
   ``full[:400]`` (the target's own retain rows; OU's ``retain_split`` would name retain99).
3. **seeds**: per method the setting chosen by the rule fixed below, seeds 1 and 2.
4. **report**: fluency of the generated forget answers (asu_plugin.tools.fluency, scored by the
   retain model and the base model), then bench/results/mini_tofu.{json,md} and mini_tofu_scatter.png.

Phases 1 and 2 form one dependency graph (asu_plugin.openunlearning.jobs): the grid's unlearning runs need
only the target, so they run beside the retain model's finetune; every evaluation waits for the
retain model's log. A method's seeds join the same queue as soon as its own grid is evaluated
(the rule reads only that method's grid), so no core waits for the slowest method's grid.
``--workers`` OU runs go side by side (default 2 on 2 cores: two single-threaded runs do ~1.3x
the work of one two-threaded run). The memorisation check gates the seeds phase.

Selection rule (fixed before any result): per method, among its grid settings with
model_utility >= 0.9 x the target's, the largest forget_quality (a tie: the smaller lr, the
gentler change); if none qualifies, the largest model_utility. The same rule for every method.
Seeds 0-2 of that setting are reported.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from asu_plugin.core.atomic import atomic_path, write_json_atomic, write_text_atomic  # noqa: E402
from asu_plugin.openunlearning.jobs import OUJob, run_jobs  # noqa: E402

logger = logging.getLogger("mini_tofu")

DEFAULT_WORK = "~/.cache/asu-plugin/mini_tofu"
DEFAULT_OU_DIR = "~/.cache/asu-plugin/open-unlearning"
DEFAULT_BASE = "~/.cache/asu-plugin/models/SmolLM2-135M-Instruct"
ELAPSED = "elapsed_s.json"

SETTINGS = {
    "subset": {
        "target_rows": "train[:400]+train[3960:4000]",  # of TOFU `full`
        "retain_rows": "train[:400]",
        "forget_split": "forget01",
        "holdout_split": "holdout01",
    },
    "finetune": {"epochs": 5, "lr": 2e-4, "batch": 8, "grad_accum": 1, "warmup_epochs": 1, "weight_decay": 0.01},
    "unlearn": {"epochs": 5, "batch": 4, "grad_accum": 2, "warmup_steps": 5, "weight_decay": 0.01,
                "lrs": [2e-5, 1e-4], "grid_seed": 0, "seeds": [0, 1, 2]},
    # OU's TOFU evaluator, every default metric: forget01 / holdout01 in full (40 rows each),
    # the model_utility sets (retain_perturbed, real authors, world facts) on their first 80 rows,
    # generated answers capped at 64 new tokens (OU: 200; TOFU answers are ~30-60 tokens)
    "eval": {"forget": "train", "utility": "train[:80]", "max_new_tokens": 64, "batch": 8},
    "memorisation": {"rouge_gap": 0.2, "forget_quality_max": 0.05},
    "utility_floor": 0.9,
    "samples": 5,
}
# every method with OU's own defaults for its hyperparameters (configs/trainer/<trainer>.yaml);
# the grid runs in this order, ASU first: a study cut short by a session's end still answers
# its question (ASU beside the baselines finished so far)
METHODS = {
    "ASU_GD": {"trainer": "ASU_GD"},
    "ASU_KL": {"trainer": "ASU_KL"},
    "GradDiff": {"trainer": "GradDiff"},
    "NPO": {"trainer": "NPO"},
    "SimNPO": {"trainer": "SimNPO"},
    "IDK": {"trainer": "DPO", "experiment": "unlearn/tofu/idk"},  # OU's IDK: DPO towards idk.jsonl
}
SAMPLE_METHODS = ["target", "retain", "NPO", "IDK", "ASU_GD", "ASU_KL"]
CPU_ARGS = [  # what OU needs off a GPU (see configs/experiment/unlearn/tofu/asu_cpu.yaml)
    "trainer.args.optim=adamw_torch", "trainer.args.bf16=false", "trainer.args.bf16_full_eval=false",
    "trainer.args.do_eval=false", "trainer.args.eval_strategy=no", "trainer.args.eval_on_start=false",
    "trainer.args.save_strategy=no", "trainer.args.report_to=none", "trainer.args.logging_steps=1",
    "trainer.args.warmup_epochs=0", "++trainer.args.use_cpu=true", "++trainer.args.dataloader_num_workers=0",
]


# ---------------------------------------------------------------------------------------------
# the plan: OU commands

class Plan:
    def __init__(self, work: Path, base_model: Path):
        self.work, self.base = work, base_model
        self.target, self.retain = work / "models" / "target", work / "models" / "retain"
        self.retain_log = work / "evals" / "retain" / "TOFU_EVAL.json"

    def _model(self, path: Path) -> list[str]:
        return ["model=SmolLM2-135M-Instruct", f"model.model_args.pretrained_model_name_or_path={path}",
                f"model.tokenizer_args.pretrained_model_name_or_path={path}"]

    def finetune(self, name: str, rows: str, n_rows: int) -> OUJob:
        f = SETTINGS["finetune"]
        warmup = math.ceil(f["warmup_epochs"] * n_rows / (f["batch"] * f["grad_accum"]))
        return OUJob(f"finetune_{name}", "train", [
            "experiment=finetune/tofu/default", *self._model(self.base),
            f"data.train.TOFU_QA_full.args.hf_args.split='{rows}'",
            f"trainer.args.learning_rate={f['lr']}", f"trainer.args.num_train_epochs={f['epochs']}",
            f"trainer.args.per_device_train_batch_size={f['batch']}",
            f"trainer.args.gradient_accumulation_steps={f['grad_accum']}",
            f"trainer.args.weight_decay={f['weight_decay']}", f"++trainer.args.warmup_steps={warmup}",
            *CPU_ARGS, f"task_name=mini_tofu_{name}",
        ], self.work / "models" / name, meta={"kind": "finetune", "model": name, "rows": rows})

    def evaluate(self, name: str, model: Path, with_retain_log: bool = True, after: tuple = (), **meta) -> OUJob:
        e, s = SETTINGS["eval"], SETTINGS["subset"]
        return OUJob(f"eval_{name}", "eval", [
            "experiment=eval/tofu/asu_cpu", *self._model(model),
            f"forget_split={s['forget_split']}", f"holdout_split={s['holdout_split']}",
            f"asu_eval_split='{e['forget']}'", f"asu_eval_utility_split='{e['utility']}'",
            f"asu_eval_max_new_tokens={e['max_new_tokens']}", f"eval.tofu.batch_size={e['batch']}",
            f"retain_logs_path={self.retain_log if with_retain_log else 'null'}", f"task_name=mini_tofu_{name}",
        ], self.work / "evals" / name, meta={"kind": "eval", "model": name, **meta}, after=after)

    def unlearn(self, method: str, lr: float, seed: int) -> OUJob:
        u, s, spec = SETTINGS["unlearn"], SETTINGS["subset"], METHODS[method]
        name = run_name(method, lr, seed)
        return OUJob(f"unlearn_{name}", "train", [
            f"experiment={spec.get('experiment', 'unlearn/tofu/default')}", f"trainer={spec['trainer']}",
            *self._model(self.target), f"forget_split={s['forget_split']}",
            "data.retain.TOFU_QA_retain.args.hf_args.name=full",
            f"data.retain.TOFU_QA_retain.args.hf_args.split='{s['retain_rows']}'",
            f"trainer.args.learning_rate={lr}", f"trainer.args.num_train_epochs={u['epochs']}",
            f"trainer.args.per_device_train_batch_size={u['batch']}",
            f"trainer.args.gradient_accumulation_steps={u['grad_accum']}",
            f"trainer.args.weight_decay={u['weight_decay']}", f"++trainer.args.warmup_steps={u['warmup_steps']}",
            f"trainer.args.seed={seed}", *CPU_ARGS, f"task_name=mini_tofu_{name}",
        ], self.work / "runs" / name, config_name="unlearn.yaml",
            meta={"kind": "unlearn", "method": method, "lr": lr, "seed": seed}, after=(self.build["finetune_target"],))

    @functools.cached_property
    def build(self) -> dict[str, OUJob]:
        """The one-time models and their evaluations (one instance each: later jobs wait on them)."""
        s = SETTINGS["subset"]
        jobs = {"finetune_target": self.finetune("target", s["target_rows"], 440),
                "finetune_retain": self.finetune("retain", s["retain_rows"], 400)}
        jobs["eval_retain"] = self.evaluate("retain", self.retain, with_retain_log=False,
                                            after=(jobs["finetune_retain"],))
        jobs["eval_target"] = self.evaluate("target", self.target, after=(jobs["finetune_target"], jobs["eval_retain"]))
        return jobs

    def build_jobs(self) -> list[OUJob]:
        return list(self.build.values())

    def method_jobs(self, method: str, lr: float, seed: int) -> list[OUJob]:
        name = run_name(method, lr, seed)
        unlearn = self.unlearn(method, lr, seed)
        return [unlearn, self.evaluate(name, self.work / "runs" / name, method=method, lr=lr, seed=seed,
                                       after=(unlearn, self.build["eval_retain"]))]

    def grid_jobs(self) -> list[OUJob]:
        u = SETTINGS["unlearn"]
        return [job for method in METHODS for lr in u["lrs"] for job in self.method_jobs(method, lr, u["grid_seed"])]

    def seed_jobs(self, chosen: dict) -> list[OUJob]:
        u = SETTINGS["unlearn"]
        return [job for method, lr in chosen.items() for seed in u["seeds"] if seed != u["grid_seed"]
                for job in self.method_jobs(method, lr, seed)]


def run_name(method: str, lr: float, seed: int) -> str:
    return f"{method}_lr{lr:g}_s{seed}"


# ---------------------------------------------------------------------------------------------
# reading results

def load_summary(eval_dir: Path) -> dict | None:
    import json

    path = eval_dir / "TOFU_EVAL.json"
    if not (eval_dir / ".asu_job_done.json").is_file() or not path.is_file():
        return None
    data = json.loads(path.read_text())
    rouge = data["forget_Q_A_ROUGE"]
    return {
        "forget_quality": data.get("forget_quality", {}).get("agg_value"),
        "model_utility": data["model_utility"]["agg_value"],
        "forget_truth_ratio": data["forget_truth_ratio"]["agg_value"],
        "forget_Q_A_ROUGE": rouge["agg_value"],
        "forget_Q_A_Prob": data["forget_Q_A_Prob"]["agg_value"],
        "privleak": data.get("privleak", {}).get("agg_value"),
        "generations": {k: {"question": _question(v["input"]), "generation": v["generation"],
                            "ground_truth": v["ground_truth"]} for k, v in rouge["value_by_index"].items()},
    }


def _question(prompt: str) -> str:
    """The user turn of OU's decoded prompt (system / user / assistant blocks)."""
    text = prompt.split("\nuser\n", 1)[-1]
    return text.rsplit("\nassistant\n", 1)[0].strip()


def check_memorisation(target: dict, retain: dict) -> dict:
    """Does the target really know the forget authors (issue 7's bar)? ``ok`` and the figures."""
    m = SETTINGS["memorisation"]
    gap = target["forget_Q_A_ROUGE"] - retain["forget_Q_A_ROUGE"]
    fq = target["forget_quality"]
    ok = gap >= m["rouge_gap"] and fq is not None and fq < m["forget_quality_max"]
    return {"rouge_gap": gap, "target_forget_quality": fq, "ok": ok,
            "text": f"forget ROUGE-L recall gap target - retain {gap:.3f} (need >= {m['rouge_gap']}), target "
                    f"forget_quality {fq} (need < {m['forget_quality_max']})"}


def choose(grid: dict[tuple[str, float], dict], target_utility: float) -> dict[str, dict]:
    """The fixed selection rule (module docstring), per method whose every grid lr is evaluated."""
    floor = SETTINGS["utility_floor"] * target_utility
    chosen = {}
    for method in METHODS:
        rows = [(lr, r) for (m, lr), r in grid.items() if m == method and r is not None]
        if len(rows) < len(SETTINGS["unlearn"]["lrs"]):
            continue
        ok = [(lr, r) for lr, r in rows if r["model_utility"] >= floor]
        if ok:
            lr, _ = max(ok, key=lambda item: (item[1]["forget_quality"] or 0.0, -item[0]))
            chosen[method] = {"lr": lr, "why": f"max forget_quality with model_utility >= {floor:.4f}"}
        else:
            lr, _ = max(rows, key=lambda item: item[1]["model_utility"])
            chosen[method] = {"lr": lr, "why": f"no lr kept model_utility >= {floor:.4f}: max model_utility"}
    return chosen


def seed_jobs_ready(plan: Plan, chosen: set[str]) -> list[OUJob]:
    """The seeds phase of every method whose whole grid is evaluated, once the target is shown to
    memorise; each method once (``chosen`` keeps the methods already given). The rule looks at a
    method's own grid only, so choosing early picks what choosing at the end would."""
    evals, u = plan.work / "evals", SETTINGS["unlearn"]
    target, retain = load_summary(evals / "target"), load_summary(evals / "retain")
    if target is None or retain is None or not check_memorisation(target, retain)["ok"]:
        return []
    grid = {(m, lr): load_summary(evals / run_name(m, lr, u["grid_seed"]))
            for m in METHODS if m not in chosen for lr in u["lrs"]}
    picks = {m: c["lr"] for m, c in choose(grid, target["model_utility"]).items()}
    for method, lr in picks.items():
        logger.info("%s: lr %g chosen by the rule; seeds %s join the queue", method, lr,
                    [s for s in u["seeds"] if s != u["grid_seed"]])
    chosen.update(picks)
    return plan.seed_jobs(picks)


def mean_std(values: list[float | None]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


# ---------------------------------------------------------------------------------------------
# fluency (asu_plugin.tools.fluency, scored by the retain model and the base model)

def fluency_of(eval_dirs: dict[str, Path], scorer_dirs: list[Path]) -> dict[str, dict]:
    """Fluency summary per evaluated model, cached next to its TOFU_EVAL.json (recomputed when
    the scoring models change)."""
    import json

    from asu_plugin.tools.fluency import score_answers, summarise
    from asu_plugin.tools.probe import load_model

    names, results, scorers = [str(d) for d in scorer_dirs], {}, None
    for name, eval_dir in eval_dirs.items():
        cache = eval_dir / "asu_fluency.json"
        cached = json.loads(cache.read_text()) if cache.is_file() else {}
        if cached.get("scorers") == names:
            results[name] = cached
            continue
        summary = load_summary(eval_dir)
        if summary is None:
            continue
        scorers = scorers or [load_model(d) for d in scorer_dirs]
        rows = list(summary["generations"].values())
        scores = score_answers(scorers, [r["question"] for r in rows], [r["generation"] for r in rows])
        results[name] = {**summarise(scores), "scorers": names}
        write_json_atomic(cache, results[name])
    return results


# ---------------------------------------------------------------------------------------------
# report

def build_report(plan: Plan) -> dict:
    u = SETTINGS["unlearn"]
    evals = {"target": plan.work / "evals" / "target", "retain": plan.work / "evals" / "retain"}
    runs = {}
    for method in METHODS:
        for lr in u["lrs"]:
            for seed in u["seeds"]:
                name = run_name(method, lr, seed)
                if (plan.work / "evals" / name / ".asu_job_done.json").is_file():
                    evals[name] = plan.work / "evals" / name
                    runs[name] = {"method": method, "lr": lr, "seed": seed}
    summaries = {name: load_summary(path) for name, path in evals.items()}
    fluency = fluency_of(evals, [plan.retain, plan.base]) if plan.retain.is_dir() else {}
    report = {"settings": SETTINGS, "methods": METHODS, "models": {}, "grid": [], "chosen": {}, "table": [],
              "samples": [], "costs": phase_costs(plan.work)}
    for name in ("target", "retain"):
        if summaries.get(name):
            report["models"][name] = {**_metrics(summaries[name]), "fluency": _fluency_brief(fluency.get(name))}
    if "target" in report["models"] and "retain" in report["models"]:
        report["memorisation"] = check_memorisation(summaries["target"], summaries["retain"])
    grid = {(r["method"], r["lr"]): summaries[n] for n, r in runs.items() if r["seed"] == u["grid_seed"]}
    report["grid"] = [{"method": m, "lr": lr, **_metrics(s),
                       "fluency": _fluency_brief(fluency.get(run_name(m, lr, u["grid_seed"])))}
                      for (m, lr), s in grid.items()]
    if "target" in report["models"]:
        report["chosen"] = choose(grid, report["models"]["target"]["model_utility"])
    for method, pick in report["chosen"].items():
        names = [n for n in (run_name(method, pick["lr"], seed) for seed in u["seeds"]) if n in runs]
        row = {"method": method, "lr": pick["lr"], "seeds": [runs[n]["seed"] for n in names]}
        for key in ("forget_quality", "model_utility", "forget_truth_ratio", "forget_Q_A_ROUGE", "privleak"):
            row[key] = mean_std([summaries[n][key] for n in names])
        row["fluent_rate"] = mean_std([fluency[n]["fluent_rate"] for n in names if n in fluency])
        row["median_nll"] = mean_std([fluency[n]["median_nll"] for n in names if n in fluency])
        report["table"].append(row)
    report["samples"] = _samples(summaries, report["chosen"])
    if report["samples"] and plan.target.is_dir():
        teacher = teacher_answers(plan, [sample["question"] for sample in report["samples"]])
        for sample, answers in zip(report["samples"], teacher):
            sample["answers"].update(answers)
    return report


TEACHER_SETTINGS = {"tau": 2.3, "layers": ["all", "0-9"]}  # the study's teacher, and shallow layers only


def teacher_answers(plan: Plan, questions: list[str]) -> list[dict]:
    """Greedy answers of the target under smoothed attention: what ASU distils towards (the
    study's setting, tau 2.3 on all layers, and the same tau on the shallow layers 0-9), cached
    in the work dir. Shows whether the teacher itself stays fluent on this model."""
    import json

    cache = plan.work / "teacher_samples.json"
    cached = json.loads(cache.read_text()) if cache.is_file() else {}
    if cached.get("questions") == questions:
        return cached["answers"]
    from asu_plugin.tools.probe import load_model, run_generate

    model, tokenizer = load_model(plan.target)
    rows = run_generate(model, tokenizer, questions, [TEACHER_SETTINGS["tau"]], TEACHER_SETTINGS["layers"],
                        max_new_tokens=SETTINGS["eval"]["max_new_tokens"])
    answers = [{f"teacher ({key.replace('|', ', ')})": text for key, text in row["smoothed"].items()} for row in rows]
    write_json_atomic(cache, {"questions": questions, "answers": answers})
    return answers


def _metrics(summary: dict) -> dict:
    return {k: summary[k] for k in ("forget_quality", "model_utility", "forget_truth_ratio", "forget_Q_A_ROUGE",
                                    "forget_Q_A_Prob", "privleak")}


def _fluency_brief(f: dict | None) -> dict | None:
    return None if f is None else {k: f[k] for k in ("fluent_rate", "median_nll", "mean_repetition", "empty", "n")}


def _samples(summaries: dict, chosen: dict) -> list[dict]:
    sources = {"target": "target", "retain": "retain"}
    for method in SAMPLE_METHODS:
        if method in chosen:
            sources[method] = run_name(method, chosen[method]["lr"], SETTINGS["unlearn"]["grid_seed"])
    available = {label: summaries.get(name) for label, name in sources.items() if summaries.get(name)}
    if "target" not in available:
        return []
    keys = sorted(available["target"]["generations"], key=int)[: SETTINGS["samples"]]
    rows = []
    for key in keys:
        first = available["target"]["generations"][key]
        answers = {label: s["generations"].get(key, {}).get("generation") for label, s in available.items()}
        rows.append({"question": first["question"], "ground_truth": first["ground_truth"], "answers": answers})
    return rows


def phase_of(meta: dict) -> str:
    if "seed" not in meta:
        return "build"
    return "grid" if meta["seed"] == SETTINGS["unlearn"]["grid_seed"] else "seeds"


def phase_costs(work: Path) -> dict:
    """What each phase cost, over every session: CPU seconds and job wall seconds summed over
    its finished jobs (jobs of one phase may have run side by side), and the elapsed seconds of
    each runner invocation (ELAPSED, counted up to its last finished job)."""
    import json

    costs: dict[str, dict] = {"cpu_s": {}, "job_wall_s": {}}
    for marker in work.glob("*/*/.asu_job_done.json"):
        record = json.loads(marker.read_text())
        phase = phase_of(record.get("meta", {}))
        for key, value in (("cpu_s", record.get("cpu_s", 0.0)), ("job_wall_s", record["wall_s"])):
            costs[key][phase] = costs[key].get(phase, 0.0) + value
    for key in ("cpu_s", "job_wall_s"):  # in the order the phases run
        costs[key] = {p: costs[key][p] for p in ("build", "grid", "seeds") if p in costs[key]}
    elapsed = work / ELAPSED
    costs["elapsed_s"] = json.loads(elapsed.read_text()) if elapsed.is_file() else {}
    return costs


def elapsed_recorder(work: Path, run: str):
    """An ``on_done`` hook for run_jobs that adds the time since the previous finished job (or
    the start) to ``run``'s entry in work/ELAPSED, so a session ending half-way loses little."""
    import json

    last = [time.time()]

    def record(_done: dict) -> None:
        path = work / ELAPSED
        totals = json.loads(path.read_text()) if path.is_file() else {}
        now = time.time()
        totals[run] = totals.get(run, 0.0) + now - last[0]
        last[0] = now
        write_json_atomic(path, totals)

    return record


def _costs(costs: dict) -> str:
    total = sum(costs.values())
    return ", ".join(f"{k} {v:.0f}" for k, v in costs.items()) + f" (total {total:.0f} = {total / 3600:.1f} h)" \
        if costs else "none yet"


def _f(stat: dict | float | None, digits: int = 3) -> str:
    if isinstance(stat, dict):
        if stat.get("mean") is None:
            return "n/a"
        mean = f"{stat['mean']:.{digits}g}"
        return f"{mean} ± {stat['std']:.{digits - 1}g}" if stat["n"] > 1 else mean
    return "n/a" if stat is None else f"{stat:.{digits}g}"


def render_markdown(report: dict, meta: dict) -> str:
    s = SETTINGS
    lines = [
        "# Mini-TOFU: ASU beside OU's unlearning methods (SmolLM2-135M-Instruct, CPU)", "",
        f"- {meta['versions']}; machine: {meta['machine']}",
        f"- target: SmolLM2-135M-Instruct fine-tuned with OU's finetune path on TOFU `full` "
        f"{s['subset']['target_rows']} (20 retain authors + the 2 forget01 authors); retain model: "
        f"{s['subset']['retain_rows']}; {s['finetune']['epochs']} epochs, lr {s['finetune']['lr']:g}, batch "
        f"{s['finetune']['batch'] * s['finetune']['grad_accum']}",
        f"- unlearning: forget01 (40 QA), retain set `full` {s['subset']['retain_rows']}; every method "
        f"{s['unlearn']['epochs']} epochs, effective batch {s['unlearn']['batch'] * s['unlearn']['grad_accum']}, "
        f"AdamW, weight decay {s['unlearn']['weight_decay']}, {s['unlearn']['warmup_steps']} warm-up steps, "
        f"OU's default hyperparameters per method (ASU: tau 2.3, gamma 0.1, alpha 1, all layers); lr grid "
        f"{s['unlearn']['lrs']} on seed 0",
        f"- selection rule (fixed in advance, every method): among its lrs with model_utility >= "
        f"{s['utility_floor']} x the target's, the largest forget_quality (a tie: the smaller lr; none "
        f"qualifies: the largest model_utility); then seeds {s['unlearn']['seeds']} of that lr, mean ± std",
        f"- evaluation: OU's TOFU evaluator (all default metrics), forget01/holdout01 in full, model_utility "
        f"sets on `{s['eval']['utility']}`, generations capped at {s['eval']['max_new_tokens']} new tokens; "
        "forget_quality against the retain model's own TOFU_EVAL.json",
        "- fluency (OU's gibberish metric needs a hub classifier): an answer is fluent when it has >= 2 words, "
        "<= 25% of its word 3-grams repeat and its mean token NLL is <= 5 nats under the *retain* model or the "
        "*base* SmolLM2-Instruct, whichever is lower (neither saw the forget authors, so invented and true facts "
        "cost them alike; the retain model, fine-tuned to always answer, rates refusals like IDK's as high as word "
        "salad, the base chat model does not; asu_plugin.tools.fluency, validated in tests/test_fluency.py); the retain "
        "row scores the retain model's own answers, so its NLL is low by construction. Its known blind spot: "
        "degenerate answers made of real word pieces with little exact repetition (\"Al Al AlKuatra is a Al Al "
        "Althouse recipient\", GradDiff at lr 1e-4) pass as fluent, so read the sample answers beside the rate",
        f"- cost per phase: CPU seconds {_costs(report['costs']['cpu_s'])}; elapsed seconds per runner invocation "
        f"({meta['workers']} OU runs side by side) {_costs(report['costs']['elapsed_s'])}",
        "",
    ]
    mem = report.get("memorisation")
    if mem:
        lines += [f"Memorisation check: {mem['text']}: {'ok' if mem['ok'] else 'FAILED'}", ""]
    lines += ["## Results (chosen setting per method, mean ± std over seeds)", "",
              "| method | lr | seeds | forget_quality | model_utility | forget_truth_ratio | forget ROUGE-L | "
              "privleak | fluent answers | median NLL |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in report["models"].items():
        fl = m.get("fluency") or {}
        lines.append(f"| {name} | - | - | {_f(m['forget_quality'])} | {_f(m['model_utility'])} | "
                     f"{_f(m['forget_truth_ratio'])} | {_f(m['forget_Q_A_ROUGE'])} | {_f(m['privleak'])} | "
                     f"{_f(fl.get('fluent_rate'))} | {_f(fl.get('median_nll'))} |")
    for row in report["table"]:
        lines.append(f"| {row['method']} | {row['lr']:g} | {len(row['seeds'])} | {_f(row['forget_quality'])} | "
                     f"{_f(row['model_utility'])} | {_f(row['forget_truth_ratio'])} | {_f(row['forget_Q_A_ROUGE'])} | "
                     f"{_f(row['privleak'])} | {_f(row['fluent_rate'])} | {_f(row['median_nll'])} |")
    lines += ["", "![model_utility vs forget_quality](mini_tofu_scatter.png)", "",
              "## Grid (seed 0)", "", "| method | lr | forget_quality | model_utility | forget ROUGE-L | fluent |",
              "|---|---|---|---|---|---|"]
    for g in report["grid"]:
        lines.append(f"| {g['method']} | {g['lr']:g} | {_f(g['forget_quality'])} | {_f(g['model_utility'])} | "
                     f"{_f(g['forget_Q_A_ROUGE'])} | {_f((g.get('fluency') or {}).get('fluent_rate'))} |")
    lines += ["", "Chosen: " + "; ".join(f"{m} lr {c['lr']:g} ({c['why']})" for m, c in report["chosen"].items()), ""]
    if report["samples"]:
        labels = list(report["samples"][0]["answers"])
        lines += ["## Sample forget answers (seed 0 of the chosen setting)", ""]
        for i, sample in enumerate(report["samples"], 1):
            lines += [f"**Q{i}. {sample['question']}**", "", f"- *ground truth*: {sample['ground_truth']}"]
            lines += [f"- *{label}*: {_one_line(sample['answers'][label])}" for label in labels]
            lines.append("")
    lines += ["## Verdict", "", report.get("verdict") or "(the comparison has not finished: see the tables above)", ""]
    return "\n".join(lines)


def _one_line(text: str | None) -> str:
    return "(none)" if text is None else " ".join(text.split()) or "(empty)"


def verdict(report: dict) -> str | None:
    """The paper's claim checked in its three parts, each with its figures: the best ASU variant
    (by mean forget_quality) forgets more than NPO and IDK, keeps model_utility at the rule's
    floor, and answers at least as fluently as NPO and IDK. None until every row has all seeds."""
    rows = {r["method"]: r for r in report["table"]}
    if not rows or any(len(r["seeds"]) < len(SETTINGS["unlearn"]["seeds"]) for r in rows.values()):
        return None

    def mean(method, key):
        return rows[method][key]["mean"] or 0.0

    def fq(method):
        return mean(method, "forget_quality")

    best = max(rows, key=fq)
    asu = max((m for m in rows if m.startswith("ASU")), key=fq)
    rivals = [m for m in ("NPO", "IDK") if m in rows]
    floor = SETTINGS["utility_floor"] * report["models"]["target"]["model_utility"]
    parts = {
        "forgets more than " + " and ".join(rivals): all(fq(asu) > fq(m) for m in rivals),
        f"keeps model_utility >= {floor:.3g}": mean(asu, "model_utility") >= floor,
        "answers at least as fluently": all(mean(asu, "fluent_rate") >= mean(m, "fluent_rate") for m in rivals),
    }
    text = (f"Highest mean forget_quality: {best} ({fq(best):.3g}); "
            + ", ".join(f"{m} {fq(m):.3g}" for m in rows if m != best) + ". "
            f"Best ASU variant {asu}: model_utility {mean(asu, 'model_utility'):.3g}, fluent answers "
            f"{mean(asu, 'fluent_rate'):.0%} (" + ", ".join(f"{m} {mean(m, 'fluent_rate'):.0%}" for m in rivals)
            + "). " + "; ".join(f"{claim}: {'yes' if ok else 'no'}" for claim, ok in parts.items()) + ". ")
    if all(parts.values()):
        return text + "The paper's claim holds on this mini-TOFU."
    text += "The paper's claim does not hold here as a whole. Next to try: "
    if not parts["answers at least as fluently"]:
        text += ("smooth only the shallow layers (at tau 2.3 on all layers this model's teacher ends its turn at "
                 "once, so ASU learns empty answers; on layers 0-9 it answers fluently with wrong facts: see the "
                 "teacher's sample answers) or a lower tau; ")
    return text + ("a tau in the paper's stable range 2.0-2.8 chosen per layer set with the tau-probe "
                   "(`asu-probe`, which ranks (tau, layers) by factual/function separation on this model), and more "
                   "epochs for its gamma=0.1 forget term.")


def plot_scatter(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, m in report["models"].items():
        if m["forget_quality"]:
            ax.scatter(m["forget_quality"], m["model_utility"], marker="s", color="black")
            ax.annotate(name, (m["forget_quality"], m["model_utility"]), textcoords="offset points", xytext=(5, 5))
    for row in report["table"]:
        fq, mu = row["forget_quality"], row["model_utility"]
        if fq["mean"] is None:
            continue
        ax.errorbar(fq["mean"], mu["mean"], xerr=fq["std"], yerr=mu["std"], marker="o", capsize=3)
        ax.annotate(f"{row['method']} (lr {row['lr']:g})", (fq["mean"], mu["mean"]), textcoords="offset points",
                    xytext=(5, -12))
    target = report["models"].get("target")
    if target:
        floor = SETTINGS["utility_floor"] * target["model_utility"]
        ax.axhline(floor, color="grey", linestyle="--", linewidth=1)
        ax.annotate(f"selection floor: {SETTINGS['utility_floor']} x target utility", (0.01, floor),
                    xycoords=("axes fraction", "data"), textcoords="offset points", xytext=(0, 4), color="grey")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on a short log range
    ax.margins(x=0.25, y=0.15)
    ax.set_xlabel("forget_quality (log; higher = closer to the retain model)")
    ax.set_ylabel("model_utility")
    ax.set_title("Mini-TOFU forget01, SmolLM2-135M-Instruct (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_outputs(report: dict, out: Path, meta: dict) -> None:
    report["verdict"] = verdict(report)
    write_json_atomic(out / "mini_tofu.json", {"meta": meta, **report})
    write_text_atomic(out / "mini_tofu.md", render_markdown(report, meta))
    if report["table"] or report["models"]:
        plot_scatter(report, out / "mini_tofu_scatter.png")


def meta_info(ou_dir: Path) -> dict:
    import platform

    import torch
    import transformers

    from asu_plugin import __version__
    from asu_plugin.openunlearning.registration import ou_commit

    return {"versions": f"torch {torch.__version__}, transformers {transformers.__version__}, asu_plugin "
                        f"{__version__}, OpenUnlearning {ou_commit(ou_dir)}",
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


# ---------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=os.environ.get("ASU_MINI_TOFU_DIR", DEFAULT_WORK),
                        help="models, runs and evaluations (outside the repo; default %(default)s)")
    parser.add_argument("--ou-dir", default=os.environ.get("OU_DIR", DEFAULT_OU_DIR))
    parser.add_argument("--base-model", default=os.environ.get("ASU_MODEL_DIR", DEFAULT_BASE))
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--until", choices=["build", "grid", "seeds", "report"], default="report")
    parser.add_argument("--report", action="store_true", help="only rewrite the results from finished jobs")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="OU runs side by side, sharing the cores (default %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="print the OU commands of every phase and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work, ou_dir = Path(args.work).expanduser(), Path(args.ou_dir).expanduser()
    plan = Plan(work, Path(args.base_model).expanduser())
    if args.dry_run:
        for job in plan.build_jobs() + plan.grid_jobs():
            sys.stdout.write(f"{job.name}: {job.command()}\n")
        return 0
    if not (ou_dir / "src" / "train.py").is_file():
        raise SystemExit(f"OpenUnlearning not found at {ou_dir}: run `make ou` or pass --ou-dir / set OU_DIR")
    if not plan.base.is_dir():
        raise SystemExit(f"base model not found at {plan.base}: run `make model` (asu-prepare-model prepare-smollm2)")

    if not args.report:
        # one dependency graph: the grid's unlearning runs need only the target, so they run beside
        # the retain model's build; a method's seeds join as soon as its grid is evaluated
        name = {"build": "build", "grid": "build+grid"}.get(args.until, "build+grid+seeds")
        with_seeds, chosen = name.endswith("seeds"), set()
        record_elapsed = elapsed_recorder(work, name)

        def on_done(record: dict) -> list[OUJob]:
            record_elapsed(record)
            return seed_jobs_ready(plan, chosen) if with_seeds else []

        jobs = plan.build_jobs() + ([] if args.until == "build" else plan.grid_jobs())
        jobs += seed_jobs_ready(plan, chosen) if with_seeds else []
        logger.info("phase %s: %d jobs (%d finished before), %d side by side", name, len(jobs),
                    sum(j.done for j in jobs), args.workers)
        run_jobs(jobs, ou_dir, work / "logs", desc=name, workers=args.workers, on_done=on_done)
        memorised = check_memorisation(load_summary(work / "evals" / "target"), load_summary(work / "evals" / "retain"))
        logger.info("memorisation: %s", memorised["text"])
        if not memorised["ok"]:
            raise SystemExit(
                f"the target does not memorise the forget authors enough: {memorised['text']}. Raise "
                "SETTINGS['finetune'] epochs or lr in bench/mini_tofu.py, delete the work dir's models/, runs/ "
                "and evals/, and run again.")
    report = build_report(plan)
    out = Path(args.out)
    write_outputs(report, out, {**meta_info(ou_dir), "workers": args.workers})
    logger.info("wrote %s", out / "mini_tofu.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
