"""The study's fixed settings and its method rows: the one place a change of the study is made.

Everything else (the OU commands, the selection rule, the report, the verdict) reads these.
A method row is data: a label, the OU trainer and its extra Hydra overrides; adding a row to
:data:`METHODS` adds it to the grid, the seeds phase, the tables, and (by its role) to the
sample answers and the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_WORK = "~/.cache/asu-plugin/mini_tofu"
DEFAULT_BASE = "~/.cache/asu-plugin/models/SmolLM2-135M-Instruct"
DEFAULT_EXPERIMENT = "unlearn/tofu/default"

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
    # issue 14's goal, reported against (not tested): the best ASU variant forgets at least as well
    # as this rival (forget_quality), says no more of the facts (forget ROUGE-L), keeps the utility
    # floor and answers fluently at least this often
    "goal": {"rival": "NPO", "fluent_rate": 0.95},
    "samples": 5,
}

#: What a row is in the study's question. ``asu``: a variant of the method under test (the
#: verdict takes the best of them); ``rival``: a method the paper's claim is checked against;
#: ``method``: a method studied in its own right beside ASU (SGA), not part of ASU's verdict;
#: ``baseline``: in the tables only. Every role but ``baseline`` shows its sample answers.
ROLES = ("asu", "rival", "method", "baseline")


@dataclass(frozen=True)
class MethodRow:
    """One method of the study: ``label`` names its runs and its table row (``<label>_lr<lr>_s<seed>``
    under the work dir), ``trainer`` is OU's ``trainer=`` config, ``overrides`` are extra Hydra
    overrides of its unlearning runs (after the study's own, e.g. ``trainer.method_args.tau=2.0``)."""

    label: str
    trainer: str
    role: str
    overrides: tuple[str, ...] = ()
    experiment: str = DEFAULT_EXPERIMENT

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"method row {self.label}: role {self.role!r} is not one of {ROLES}")
        if not self.label.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"method row label {self.label!r}: use letters, digits, '_' and '-' only (it names "
                             "the run directories)")
        if isinstance(self.overrides, (str, list)):
            raise ValueError(f"method row {self.label}: overrides must be a tuple of strings, e.g. ('a=1',)")

    def as_json(self) -> dict:
        """The row as the report's JSON has always shown it (trainer, then what differs from OU's defaults)."""
        spec = {"trainer": self.trainer}
        if self.experiment != DEFAULT_EXPERIMENT:
            spec["experiment"] = self.experiment
        if self.overrides:
            spec["overrides"] = list(self.overrides)
        return spec


# every method with OU's own defaults for its hyperparameters (configs/trainer/<trainer>.yaml).
# The grid runs in this order: a study cut short by a session's end still answers its current
# question. This round's question (issues 14 and 15) is the automatic teacher and SGA beside the
# rivals, so those rows come first; the paper-setting ASU rows and the other baselines follow.
# The plugin's rows draw retain rows with OU's global RNG (retain_draw=ou), exactly as OU's own
# trainers (the baselines) draw them and as the ASU rows did before the indexed draw existed.
OU_DRAW = "trainer.method_args.retain_draw=ou"
# the automatic teacher (issue 14): tau and layers chosen from the model and the forget set alone
AUTO_TEACHER = ("trainer.method_args.tau=auto", "trainer.method_args.layers=auto")
METHODS: dict[str, MethodRow] = {row.label: row for row in (
    MethodRow("ASU_GD_auto", "ASU_GD", "asu", overrides=(*AUTO_TEACHER, OU_DRAW)),
    MethodRow("ASU_KL_auto", "ASU_KL", "asu", overrides=(*AUTO_TEACHER, OU_DRAW)),
    MethodRow("SGA", "SGA", "method"),  # configs/trainer/SGA.yaml defaults (our reading of the paper)
    MethodRow("NPO", "NPO", "rival"),
    MethodRow("IDK", "DPO", "rival", experiment="unlearn/tofu/idk"),  # OU's IDK: DPO towards idk.jsonl
    # the paper's setting (tau 2.3 on every layer)
    MethodRow("ASU_GD", "ASU_GD", "asu", overrides=(OU_DRAW,)),
    MethodRow("ASU_KL", "ASU_KL", "asu", overrides=(OU_DRAW,)),
    MethodRow("GradDiff", "GradDiff", "baseline"),
    MethodRow("SimNPO", "SimNPO", "baseline"),
)}


def labels(role: str) -> list[str]:
    """The rows of one role, in METHODS order."""
    return [label for label, row in METHODS.items() if row.role == role]


def sample_labels() -> list[str]:
    """Whose answers the sample table shows: the two models built, the rivals, ASU's rows, then the
    other methods studied (SGA)."""
    return ["target", "retain", *labels("rival"), *labels("asu"), *labels("method")]

CPU_ARGS = [  # what OU needs off a GPU (see configs/experiment/unlearn/tofu/asu_cpu.yaml)
    "trainer.args.optim=adamw_torch", "trainer.args.bf16=false", "trainer.args.bf16_full_eval=false",
    "trainer.args.do_eval=false", "trainer.args.eval_strategy=no", "trainer.args.eval_on_start=false",
    "trainer.args.save_strategy=no", "trainer.args.report_to=none", "trainer.args.logging_steps=1",
    "trainer.args.warmup_epochs=0", "++trainer.args.use_cpu=true", "++trainer.args.dataloader_num_workers=0",
]

#: the teacher whose greedy answers the sample table shows: the study's tau on all layers, and
#: the same tau on the shallow layers only
TEACHER_SETTINGS = {"tau": 2.3, "layers": ["all", "0-9"]}
