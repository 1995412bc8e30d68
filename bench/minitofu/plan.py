"""The study as OU commands: every model and evaluation is one OUJob (asu_plugin.openunlearning.jobs).

The work dir's layout (the cache every session resumes from) is fixed here:
``models/{target,retain}``, ``runs/<run>``, ``evals/{target,retain,<run>}`` with
``<run> = <method>_lr<lr>_s<seed>`` (:func:`run_name`).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

from asu_plugin.openunlearning.jobs import OUJob

from .settings import CPU_ARGS, METHODS, SETTINGS


def run_name(method: str, lr: float, seed: int) -> str:
    """The directory name of one unlearning run and its evaluation."""
    return f"{method}_lr{lr:g}_s{seed}"


class Plan:
    """Every OU command of the study, for a work dir and a base model. The build jobs exist once
    (:attr:`build`), so later jobs can wait on them."""

    def __init__(self, work: Path, base_model: Path):
        self.work, self.base = work, base_model
        self.target, self.retain = work / "models" / "target", work / "models" / "retain"
        self.retain_log = work / "evals" / "retain" / "TOFU_EVAL.json"

    def eval_dir(self, name: str) -> Path:
        """Where OU's evaluation of model ``name`` (target, retain or a run) lands."""
        return self.work / "evals" / name

    def run_dir(self, name: str) -> Path:
        """Where OU's unlearning run ``name`` writes its model and ``asu_run.json``."""
        return self.work / "runs" / name

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
        ], self.eval_dir(name), meta={"kind": "eval", "model": name, **meta}, after=after)

    def unlearn(self, method: str, lr: float, seed: int) -> OUJob:
        u, s, row = SETTINGS["unlearn"], SETTINGS["subset"], METHODS[method]
        name = run_name(method, lr, seed)
        return OUJob(f"unlearn_{name}", "train", [
            f"experiment={row.experiment}", f"trainer={row.trainer}",
            *self._model(self.target), f"forget_split={s['forget_split']}",
            "data.retain.TOFU_QA_retain.args.hf_args.name=full",
            f"data.retain.TOFU_QA_retain.args.hf_args.split='{s['retain_rows']}'",
            f"trainer.args.learning_rate={lr}", f"trainer.args.num_train_epochs={u['epochs']}",
            f"trainer.args.per_device_train_batch_size={u['batch']}",
            f"trainer.args.gradient_accumulation_steps={u['grad_accum']}",
            f"trainer.args.weight_decay={u['weight_decay']}", f"++trainer.args.warmup_steps={u['warmup_steps']}",
            f"trainer.args.seed={seed}", *CPU_ARGS, *row.overrides, f"task_name=mini_tofu_{name}",
        ], self.run_dir(name), config_name="unlearn.yaml",
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
        return [unlearn, self.evaluate(name, self.run_dir(name), method=method, lr=lr, seed=seed,
                                       after=(unlearn, self.build["eval_retain"]))]

    def grid_jobs(self) -> list[OUJob]:
        u = SETTINGS["unlearn"]
        return [job for method in METHODS for lr in u["lrs"] for job in self.method_jobs(method, lr, u["grid_seed"])]

    def seed_jobs(self, chosen: dict) -> list[OUJob]:
        """The seeds besides the grid's of each method's chosen lr (``chosen``: method -> lr)."""
        u = SETTINGS["unlearn"]
        return [job for method, lr in chosen.items() for seed in u["seeds"] if seed != u["grid_seed"]
                for job in self.method_jobs(method, lr, seed)]
