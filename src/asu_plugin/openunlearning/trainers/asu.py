"""ASU_GD, ASU_KL and ASU_IDK: Attention Smoothing Unlearning as OpenUnlearning trainers.

    loss = gamma * KL(teacher || student) on forget answer tokens + alpha * retain term
    (ASU_IDK: gamma * (KL without the first answer token + NLL of an IDK answer) + alpha * retain)

The teacher is the frozen original model with its attention softmax at temperature tau
(``smoothed_attention``): flatter attention blurs the facts the model recalls, so the
student is pulled towards plausible but unspecific answers instead of being pushed away
from the right ones (as gradient ascent does). ASU_GD keeps the retain set by NLL, ASU_KL
by KL to the same frozen model *without* smoothing.

Why subclass OU's ``GradDiff``: it already owns the frozen copy (``self.ref_model``, built
by ``_prepare_ref_model`` with DeepSpeed / accelerate handling) and the ``gamma`` / ``alpha``
/ ``retain_loss_type`` arguments; ASU only changes the loss. That one copy is the teacher
inside the smoothing context and the retain reference outside it — never two copies.

This module imports OU (``trainer.unlearn.grad_diff``): it is importable only when OU's
``src/`` is on ``sys.path``. The rest of ``asu_plugin`` does not need OU.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from trainer.unlearn.grad_diff import GradDiff  # OpenUnlearning

from .. import frozen_model, teacher_setup
from .. import retain_draw as draws
from ..global_mean import global_token_mean
from ...core.loss import answer_nll_sum, drop_first_answer_token, token_kl
from ..original_model import OriginalModelMixin
from ..positions import model_inputs
from ...core.smoothing import check_smoothing_args, smoothed_attention
from .base import RecordedUnlearnRun, failure_marker

logger = logging.getLogger(__name__)

UNLEARN_COMMAND = (
    "python src/train.py --config-name=unlearn.yaml experiment=unlearn/tofu/asu "
    "trainer={name} task_name=<name>   (on a CPU: experiment=unlearn/tofu/asu_cpu)"
)


def _plain(value):
    """OmegaConf ListConfig -> list, so settings are JSON-able and hashable downstream. Values are
    kept as given: ``layers=[1.5]`` must reach the selection's non-integer error, not become 1."""
    if value is None or isinstance(value, (str, int, float)):
        return value
    return list(value)


def _ranges(indices) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (the layers string format)."""
    parts, indices = [], sorted(indices)
    for index in indices:
        if parts and index == parts[-1][1] + 1:
            parts[-1][1] = index
        else:
            parts.append([index, index])
    return ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in parts)


def _load_teacher(path: str, student):
    """The frozen model from ``path``, loaded like the student (dtype; attention smoothing can reach)."""
    return frozen_model.load_teacher(path, student)


class ASUTrainer(RecordedUnlearnRun, OriginalModelMixin, GradDiff):
    """Shared part of the ASU trainers: settings, frozen model, teacher pass, losses. Subclasses
    choose the retain term (``RETAIN_LOSS_TYPE``: NLL or KL) and may extend the forget term
    (``compute_forget_loss``, as ASU_IDK does). Logging, run record and resume: :mod:`.base`.
    """

    RETAIN_LOSS_TYPE = "NLL"
    LOGGED = ("forget_kl", "retain_loss")
    OPTIONS = ("tau", "layers", "heads", "gamma", "alpha", "retain_loss_type", "teacher_path", "health_check",
               "retain_draw", "lora", "teacher_cache", "teacher_cache_max_gb")
    UNLEARN_COMMAND = UNLEARN_COMMAND

    def __init__(
        self,
        *args,
        tau: float = 2.3,
        layers=None,
        heads=None,
        gamma: float = 0.1,
        alpha: float = 1.0,
        retain_loss_type: str | None = None,
        teacher_path: str | None = None,
        health_check: bool = True,
        retain_draw: str = draws.DEFAULT,
        lora=None,
        teacher_cache=False,
        teacher_cache_max_gb: float = 4.0,
        **kwargs,
    ):
        training_args = kwargs.get("args")
        output_dir = getattr(training_args, "output_dir", None)
        with failure_marker(output_dir, f"configuring {type(self).__name__}"):
            # everything here runs before the model is copied, so a bad config fails fast
            self.check_options(kwargs)
            self.check_unlearn_dataset(kwargs.get("train_dataset"))
            retain_loss_type = self._check_retain_type(retain_loss_type)
            model = kwargs.get("model")  # OU passes everything by keyword
            self.tau, self.layers, self.heads = tau, _plain(layers), _plain(heads)
            self.health_check = teacher_setup.check_switch(health_check)
            # tau / layers "auto" are chosen once the frozen model exists (teacher_setup)
            selection = check_smoothing_args(model, *teacher_setup.validation_values(tau, self.layers), self.heads)
            self.teacher_path = teacher_path
            self.retain_draw = draws.check_retain_draw(retain_draw)
            if self.retain_draw == "indexed":
                draws.check_indexed_dataset(kwargs.get("train_dataset"))
            # LoRA (the student's base with adapters off is the original) and the teacher cache
            model = kwargs["model"] = self.configure_original_model(
                lora, teacher_cache, teacher_cache_max_gb, teacher_path, kwargs)
            frozen_source = _load_teacher(teacher_path, model) if teacher_path else model
        self._selection = selection
        # "NLL" here only stops GradDiff from copying the student: the frozen copy is ours
        super().__init__(*args, gamma=gamma, alpha=alpha, retain_loss_type="NLL", **kwargs)
        self.retain_loss_type = retain_loss_type
        # the frozen model (teacher inside smoothed_attention, reference outside) is a copy of
        # the model as loaded — the original, also when Trainer later resumes the student from
        # a checkpoint — or of teacher_path's model (continual unlearning, teacher=original)
        self.ref_model = self._build_frozen_model(frozen_source) if self.frozen_copy_needed() else None
        del frozen_source
        # tau/layers=auto and the teacher health check (asu_run.json: teacher_choice, teacher_health)
        with failure_marker(output_dir, f"choosing the teacher of {type(self).__name__}"):
            self._teacher_record = teacher_setup.resolve(self, tau, self.layers, self.health_check)
            self._selection = check_smoothing_args(model, self.tau, self.layers, self.heads)
        # our loss is a mean per sample, not a sum over num_items_in_batch: let Trainer
        # (transformers >= 4.46) divide by the accumulation steps as for any other loss
        self.model_accepts_loss_kwargs = False

    def _build_frozen_model(self, source):
        """A frozen copy of ``source`` through OU's ``_prepare_ref_model`` (DeepSpeed ZeRO-3 /
        accelerate handling included), running attention smoothing can reach: ASU's teacher
        and reference (:mod:`..frozen_model`)."""
        frozen, self._attention = frozen_model.build_frozen_model(
            self._prepare_ref_model, source, *teacher_setup.validation_values(self.tau, self.layers), self.heads,
            announce=self.args.process_index == 0,
        )
        return frozen

    # ---- validation -------------------------------------------------------------------

    def _check_retain_type(self, retain_loss_type):
        expected = self.RETAIN_LOSS_TYPE
        if retain_loss_type not in (None, expected):
            raise ValueError(
                f"{type(self).__name__} uses retain_loss_type={expected}, got {retain_loss_type!r}: "
                "ASU's retain term is NLL (trainer=ASU_GD) or KL to the unsmoothed model (trainer=ASU_KL)"
            )
        return expected

    # ---- loss ---------------------------------------------------------------------------

    def _batches(self, inputs):
        missing = [key for key in ("forget", "retain") if key not in inputs]
        if missing:
            raise KeyError(
                f"{type(self).__name__} needs batches with 'forget' and 'retain' entries; missing "
                f"{missing} (got keys {sorted(inputs)}). Use an unlearn config: " + self.unlearn_command()
            )
        return inputs["forget"], inputs["retain"]

    @staticmethod
    def _forward_logits(model, batch) -> torch.Tensor:
        return model(**model_inputs(batch), use_cache=False).logits

    def teacher_logits(self, batch) -> torch.Tensor:
        """Logits of the original model with smoothed attention (the forget target), from the
        teacher cache when there is one."""
        cached = self.cached_teacher_logits(batch)
        return cached if cached is not None else self.teacher_pass(batch)

    def teacher_pass(self, batch) -> torch.Tensor:
        with self.frozen_model() as frozen, torch.no_grad(), smoothed_attention(frozen, self.tau, self.layers, self.heads):
            return self._forward_logits(frozen, batch)

    def reference_logits(self, batch) -> torch.Tensor:
        """Logits of the same original model, unsmoothed (the retain target of ASU_KL)."""
        with self.frozen_model() as frozen, torch.no_grad():
            return self._forward_logits(frozen, batch)

    def forget_kl(self, model, forget, labels=None):
        """ASU's forget term: KL(smoothed teacher || student) on the answer tokens of ``labels``."""
        outputs = model(**model_inputs(forget), use_cache=False)
        labels = forget["labels"] if labels is None else labels
        return token_kl(outputs.logits, self.teacher_logits(forget), labels), outputs

    def compute_forget_loss(self, model, forget):
        """(forget term, student outputs, its logged parts)."""
        kl, outputs = self.forget_kl(model, forget)
        return kl, outputs, {"forget_kl": kl}

    def retain_nll(self, model, retain):
        """Token-mean NLL over the retain answers of the global batch (all processes)."""
        return global_token_mean(*answer_nll_sum(self._forward_logits(model, retain), retain["labels"]))

    def retain_kl(self, model, retain):
        student = self._forward_logits(model, retain)
        return token_kl(student, self.reference_logits(retain), retain["labels"])

    def compute_retain_loss(self, model, retain_inputs):
        if self.retain_loss_type == "KL":
            return self.retain_kl(model, retain_inputs)
        return self.retain_nll(model, retain_inputs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.mark_batch_trained()
        forget, retain = self._batches(inputs)
        forget_loss, forget_outputs, parts = self.compute_forget_loss(model, forget)
        retain_loss = self.compute_retain_loss(model, retain)
        loss = self.gamma * forget_loss + self.alpha * retain_loss
        parts = {**parts, "retain_loss": retain_loss}
        self.check_finite(loss, parts)
        if model.training:  # evaluation batches must not leak into the logged training terms
            self.accumulate(**parts)
        return (loss, forget_outputs) if return_outputs else loss

    # ---- run record ---------------------------------------------------------------------

    def asu_settings(self) -> dict:
        return {
            "tau": self.tau,
            "layers": self.layers,
            "heads": self.heads,
            "gamma": self.gamma,
            "alpha": self.alpha,
            "retain_loss_type": self.retain_loss_type,
            "teacher_path": self.teacher_path,
            "health_check": self.health_check,
            "retain_draw": self.retain_draw,
            "smoothed_layers": _ranges(self._selection.layers),
            "lora": self.lora,
            "teacher_cache": self._cache_plan.mode if self._cache_plan is not None else None,
        }

    def run_settings(self) -> dict:
        return self.asu_settings()

    def record_extra(self) -> dict:
        fingerprint = self.frozen_fingerprint()
        return {
            "frozen_fingerprint": fingerprint,
            "attention": getattr(self, "_attention", None),
            **self._teacher_record,
            **self.prepare_original_model(fingerprint),  # the teacher cache, built (or reloaded) here
        }

    def rng_tracked(self) -> bool:
        return self.retain_draw != "indexed"  # indexed draws need no saved RNG state; OU's draw does

    def training_context(self):
        return draws.indexed_retain_draw(self) if self.retain_draw == "indexed" else contextlib.nullcontext()


class ASU_GD(ASUTrainer):
    """ASU with the retain set kept by NLL (as OU's GradDiff)."""

    RETAIN_LOSS_TYPE = "NLL"


class ASU_KL(ASUTrainer):
    """ASU with the retain set kept by KL to the unsmoothed frozen model (the teacher's copy)."""

    RETAIN_LOSS_TYPE = "KL"


class ASU_IDK(ASUTrainer):
    """ASU + IDK (the paper's ablation): forget term = ASU's KL on the original answer without
    its first token + NLL of an "I don't know" answer to the same question.

    Data: OU's ``QAwithIdkDataset`` (config ``TOFU_QA_forget_idk``, answers from
    ``./data/idk.jsonl``), whose forget items hold ``original`` and ``alternate`` (the IDK
    answer). Retain term: KL to the unsmoothed model (default) or NLL (``retain_loss_type``).
    """

    RETAIN_LOSS_TYPE = "KL"
    RETAIN_LOSS_TYPES = ("KL", "NLL")
    LOGGED = ("forget_kl", "idk_nll", "retain_loss")

    def _check_retain_type(self, retain_loss_type):
        if retain_loss_type is None:
            return self.RETAIN_LOSS_TYPE
        if retain_loss_type not in self.RETAIN_LOSS_TYPES:
            raise ValueError(f"ASU_IDK: retain_loss_type must be KL or NLL, got {retain_loss_type!r}")
        return retain_loss_type

    def check_unlearn_dataset(self, dataset) -> None:
        super().check_unlearn_dataset(dataset)
        if dataset is not None and not hasattr(dataset.forget, "idk_responses"):
            raise ValueError(
                f"ASU_IDK needs IDK answers: its forget set must be OU's QAwithIdkDataset, got "
                f"{type(dataset.forget).__name__}. Use experiment=unlearn/tofu/asu_idk (or "
                "data/datasets@data.forget=TOFU_QA_forget_idk, which reads ./data/idk.jsonl)."
            )

    def _batches(self, inputs):
        forget, retain = super()._batches(inputs)
        if not (isinstance(forget, dict) and "original" in forget and "alternate" in forget):
            raise KeyError(
                "ASU_IDK: forget batches must hold 'original' and 'alternate' (OU's QAwithIdkDataset); "
                f"got {sorted(forget) if isinstance(forget, dict) else type(forget).__name__}"
            )
        return forget, retain

    def compute_forget_loss(self, model, forget):
        original, idk = forget["original"], forget["alternate"]
        kl, outputs = self.forget_kl(model, original, drop_first_answer_token(original["labels"]))
        idk_nll = global_token_mean(*answer_nll_sum(self._forward_logits(model, idk), idk["labels"]))
        return kl + idk_nll, outputs, {"forget_kl": kl, "idk_nll": idk_nll}


__all__ = ["ASUTrainer", "ASU_GD", "ASU_IDK", "ASU_KL"]
