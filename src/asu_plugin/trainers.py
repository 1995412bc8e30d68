"""ASU_GD and ASU_KL: Attention Smoothing Unlearning as OpenUnlearning trainers.

    loss = gamma * KL(teacher || student) on forget answer tokens + alpha * retain term

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

import inspect
import logging
import os

import torch
from transformers import Trainer
from trainer.unlearn.grad_diff import GradDiff  # OpenUnlearning

from . import run_record
from .loss import token_kl
from .smoothing import check_smoothing_args, smoothed_attention

logger = logging.getLogger(__name__)

UNLEARN_COMMAND = (
    "python src/train.py --config-name=unlearn.yaml experiment=unlearn/tofu/asu "
    "trainer={name} task_name=<name>   (on a CPU: experiment=unlearn/tofu/asu_cpu)"
)
_MODEL_INPUTS = ("input_ids", "attention_mask")
# keyword arguments OU's load_trainer passes besides method_args
_TRAINER_KWARGS = frozenset(inspect.signature(Trainer.__init__).parameters) | {
    "evaluators",
    "template_args",
}


def _plain(value):
    """OmegaConf ListConfig -> list, so settings are JSON-able and hashable downstream."""
    if value is None or isinstance(value, (str, int, float)):
        return value
    return [int(v) if isinstance(v, (int, float)) else v for v in value]


def _ranges(indices) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (the layers string format)."""
    parts, indices = [], sorted(indices)
    for index in indices:
        if parts and index == parts[-1][1] + 1:
            parts[-1][1] = index
        else:
            parts.append([index, index])
    return ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in parts)


class ASUTrainer(GradDiff):
    """Shared part of ASU_GD and ASU_KL: settings, teacher pass, logging, run record.

    Subclasses set ``RETAIN_LOSS_TYPE`` and implement ``compute_retain_loss``.
    """

    RETAIN_LOSS_TYPE = "NLL"
    LOGGED = ("forget_kl", "retain_loss")

    def __init__(
        self,
        *args,
        tau: float = 2.3,
        layers=None,
        heads=None,
        gamma: float = 0.1,
        alpha: float = 1.0,
        retain_loss_type: str | None = None,
        **kwargs,
    ):
        training_args = kwargs.get("args")
        output_dir = getattr(training_args, "output_dir", None)
        try:
            # everything here runs before the model is copied, so a bad config fails fast
            self._check_options(kwargs)
            self._check_dataset(kwargs.get("train_dataset"))
            retain_loss_type = self._check_retain_type(retain_loss_type)
            model = kwargs.get("model")  # OU passes everything by keyword
            self.tau, self.layers, self.heads = tau, _plain(layers), _plain(heads)
            selection = check_smoothing_args(model, self.tau, self.layers, self.heads)
        except Exception as error:
            if output_dir:
                run_record.write_failure_marker(output_dir, error, f"configuring {type(self).__name__}")
            raise
        self._selection = selection
        super().__init__(*args, gamma=gamma, alpha=alpha, retain_loss_type=retain_loss_type, **kwargs)
        if self.ref_model is None:  # GradDiff builds it only for retain_loss_type KL
            self.ref_model = self._prepare_ref_model(self.model)
        for parameter in self.ref_model.parameters():
            parameter.requires_grad_(False)
        # our loss is a mean per sample, not a sum over num_items_in_batch: let Trainer
        # (transformers >= 4.46) divide by the accumulation steps as for any other loss
        self.model_accepts_loss_kwargs = False
        self._asu_sums: dict[str, torch.Tensor] = {}
        self._asu_count = 0

    # ---- validation -------------------------------------------------------------------

    def _check_options(self, kwargs) -> None:
        unknown = sorted(set(kwargs) - _TRAINER_KWARGS)
        if unknown:
            raise TypeError(
                f"{type(self).__name__}: unknown method_args option(s) {', '.join(unknown)}; "
                "known: tau, layers, heads, gamma, alpha, retain_loss_type"
            )

    def _check_dataset(self, dataset) -> None:
        if dataset is not None and not (hasattr(dataset, "forget") and hasattr(dataset, "retain")):
            raise ValueError(
                f"{type(self).__name__} unlearns: it needs OU's forget/retain data (an unlearn "
                f"config), but got a {type(dataset).__name__} — was `python src/train.py "
                f"trainer={type(self).__name__}` run with OU's finetune config (train.yaml)? Run: "
                + UNLEARN_COMMAND.format(name=type(self).__name__)
            )

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
                f"{missing} (got keys {sorted(inputs)}). Use an unlearn config: "
                + UNLEARN_COMMAND.format(name=type(self).__name__)
            )
        return inputs["forget"], inputs["retain"]

    @staticmethod
    def _forward_logits(model, batch) -> torch.Tensor:
        return model(**{key: batch[key] for key in _MODEL_INPUTS}, use_cache=False).logits

    def teacher_logits(self, batch) -> torch.Tensor:
        """Logits of the frozen model with smoothed attention (the forget target)."""
        with torch.no_grad(), smoothed_attention(self.ref_model, self.tau, self.layers, self.heads):
            return self._forward_logits(self.ref_model, batch)

    def reference_logits(self, batch) -> torch.Tensor:
        """Logits of the same frozen model, unsmoothed (the retain target of ASU_KL)."""
        with torch.no_grad():
            return self._forward_logits(self.ref_model, batch)

    def compute_forget_loss(self, model, forget):
        outputs = model(**{key: forget[key] for key in _MODEL_INPUTS}, use_cache=False)
        return token_kl(outputs.logits, self.teacher_logits(forget), forget["labels"]), outputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        forget, retain = self._batches(inputs)
        forget_kl, forget_outputs = self.compute_forget_loss(model, forget)
        retain_loss = self.compute_retain_loss(model, retain)
        loss = self.gamma * forget_kl + self.alpha * retain_loss
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(
                f"{type(self).__name__}: loss is {loss.item()} (forget_kl={forget_kl.item()}, "
                f"retain_loss={float(retain_loss)}) at step {self.state.global_step}; "
                "try fp32 / bf16 instead of fp16, or a lower learning rate"
            )
        self._accumulate(forget_kl=forget_kl, retain_loss=retain_loss)
        return (loss, forget_outputs) if return_outputs else loss

    # ---- logging: forget_kl / retain_loss beside OU's loss ------------------------------

    def _accumulate(self, **values) -> None:
        for key, value in values.items():
            value = torch.as_tensor(value).detach().float()
            self._asu_sums[key] = self._asu_sums.get(key, 0.0) + value
        self._asu_count += 1

    def log(self, logs, *args, **kwargs):
        """Add the mean forget_kl / retain_loss since the last log to each training log."""
        if "loss" in logs and self._asu_count:
            for key in self.LOGGED:
                mean = self._asu_sums[key] / self._asu_count
                if hasattr(self, "_nested_gather"):
                    mean = self._nested_gather(mean.reshape(1).to(self.args.device)).mean()
                logs[key] = float(mean)
            self._asu_sums, self._asu_count = {}, 0
        return super().log(logs, *args, **kwargs)

    # ---- run record ---------------------------------------------------------------------

    def asu_settings(self) -> dict:
        return {
            "tau": self.tau,
            "layers": self.layers,
            "heads": self.heads,
            "gamma": self.gamma,
            "alpha": self.alpha,
            "retain_loss_type": self.retain_loss_type,
            "smoothed_layers": _ranges(self._selection.layers),
        }

    def _write_record(self, status: str, **extra) -> None:
        if self.is_world_process_zero():
            record = run_record.run_record(type(self).__name__, self.asu_settings(), status, **extra)
            run_record.write_run_record(self.args.output_dir, record)

    def train(self, *args, **kwargs):
        """Train, bracketed by asu_run.json; a failure leaves ASU_FAILED.txt (and no model:
        OU saves the model only after train() returns)."""
        output_dir = self.args.output_dir
        if self.is_world_process_zero():
            os.makedirs(output_dir, exist_ok=True)
            run_record.clear_failure_marker(output_dir)
        self._write_record("training")
        try:
            result = super().train(*args, **kwargs)
        except BaseException as error:
            if self.is_world_process_zero():
                run_record.write_failure_marker(output_dir, error, f"training {type(self).__name__}")
                self._write_record("failed", error=f"{type(error).__name__}: {error}")
            raise
        self._write_record("trained", global_step=self.state.global_step)
        return result


class ASU_GD(ASUTrainer):
    """ASU with the retain set kept by NLL (as OU's GradDiff)."""

    RETAIN_LOSS_TYPE = "NLL"

    def compute_retain_loss(self, model, retain_inputs):
        keys = (*_MODEL_INPUTS, "labels")
        return model(**{key: retain_inputs[key] for key in keys}, use_cache=False).loss


class ASU_KL(ASUTrainer):
    """ASU with the retain set kept by KL to the unsmoothed frozen model (the teacher's copy)."""

    RETAIN_LOSS_TYPE = "KL"

    def compute_retain_loss(self, model, retain_inputs):
        student = self._forward_logits(model, retain_inputs)
        return token_kl(student, self.reference_logits(retain_inputs), retain_inputs["labels"])


__all__ = ["ASUTrainer", "ASU_GD", "ASU_KL"]
