"""What every trainer this plugin registers shares besides its loss.

* its settings are checked before anything expensive (a copied model, a neighbour table), and a
  bad one leaves ``ASU_FAILED.txt`` in the run directory (:func:`failure_marker`);
* an unknown ``method_args`` option and OU's finetune config (no forget / retain data) are
  refused with the command that works (:meth:`RecordedUnlearnRun.check_options`,
  :meth:`RecordedUnlearnRun.check_unlearn_dataset`);
* a non-finite loss stops the run on every rank at once (:meth:`RecordedUnlearnRun.check_finite`);
* the terms of the loss are logged beside OU's ``loss`` for training batches only
  (:meth:`RecordedUnlearnRun.accumulate`, :meth:`RecordedUnlearnRun.log`);
* ``train()`` is bracketed by ``asu_run.json`` (settings, status, versions) and resumes exactly
  (:class:`~asu_plugin.openunlearning.resume.ExactResumeMixin`).

Why a mixin and not a Trainer subclass: the ASU trainers extend OU's ``GradDiff`` (for its frozen
copy), SGA extends OU's ``GradAscent``; the shared part sits in front of either in the MRO.
"""

from __future__ import annotations

import contextlib
import inspect
import os

import torch
from transformers import Trainer

from .. import resume, run_record

# keyword arguments OU's load_trainer passes besides method_args
TRAINER_KWARGS = frozenset(inspect.signature(Trainer.__init__).parameters) | {
    "evaluators",
    "template_args",
}


@contextlib.contextmanager
def failure_marker(output_dir: str | None, where: str):
    """Write ``ASU_FAILED.txt`` into ``output_dir`` when the block raises (then re-raise)."""
    try:
        yield
    except Exception as error:
        if output_dir:
            run_record.write_failure_marker(output_dir, error, where)
        raise


class RecordedUnlearnRun(resume.ExactResumeMixin):
    """Trainer mixin (before OU's trainer class in the bases). Subclasses set ``OPTIONS`` (their
    ``method_args`` names), ``UNLEARN_COMMAND`` (the command that runs them, ``{name}`` = the class
    name), ``LOGGED`` (the logged terms) and implement :meth:`run_settings`."""

    OPTIONS: tuple[str, ...] = ()
    UNLEARN_COMMAND = "python src/train.py --config-name=unlearn.yaml trainer={name} task_name=<name>"
    LOGGED: tuple[str, ...] = ()

    # ---- validation -------------------------------------------------------------------

    def check_options(self, kwargs) -> None:
        unknown = sorted(set(kwargs) - TRAINER_KWARGS)
        if unknown:
            raise TypeError(
                f"{type(self).__name__}: unknown method_args option(s) {', '.join(unknown)}; "
                f"known: {', '.join(self.OPTIONS)}"
            )

    def unlearn_command(self) -> str:
        return self.UNLEARN_COMMAND.format(name=type(self).__name__)

    def check_unlearn_dataset(self, dataset) -> None:
        if dataset is not None and not (hasattr(dataset, "forget") and hasattr(dataset, "retain")):
            raise ValueError(
                f"{type(self).__name__} unlearns: it needs OU's forget/retain data (an unlearn "
                f"config), but got a {type(dataset).__name__} — was `python src/train.py "
                f"trainer={type(self).__name__}` run with OU's finetune config (train.yaml)? Run: "
                + self.unlearn_command()
            )

    def check_finite(self, loss, parts) -> None:
        """Raise on a non-finite loss — on every rank at once: a rank that raised alone would
        leave the others waiting in the next all-reduce for ever."""
        bad = torch.tensor(0.0 if torch.isfinite(loss.detach()) else 1.0, device=loss.device)
        if self.args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if bad.item():
            detail = ", ".join(f"{key}={float(value)}" for key, value in parts.items())
            where = "" if torch.isfinite(loss.detach()) else f" ({detail})"
            raise FloatingPointError(
                f"{type(self).__name__}: loss is not finite on some rank{where} at step "
                f"{self.state.global_step}; try fp32 / bf16 instead of fp16, or a lower learning rate"
            )

    # ---- logging: the loss terms beside OU's loss ---------------------------------------

    def accumulate(self, **values) -> None:
        sums = getattr(self, "_asu_sums", None)
        if sums is None:
            self._asu_sums, self._asu_count = {}, 0
        for key, value in values.items():
            value = torch.as_tensor(value).detach().float()
            self._asu_sums[key] = self._asu_sums.get(key, 0.0) + value
        self._asu_count += 1

    def log(self, logs, *args, **kwargs):
        """Add the mean of each ``LOGGED`` term since the last log to each training log."""
        if "loss" in logs and getattr(self, "_asu_count", 0):
            for key in self.LOGGED:
                mean = self._asu_sums[key] / self._asu_count
                if hasattr(self, "_nested_gather"):
                    mean = self._nested_gather(mean.reshape(1).to(self.args.device)).mean()
                logs[key] = float(mean)
            self._asu_sums, self._asu_count = {}, 0
        return super().log(logs, *args, **kwargs)

    # ---- run record ---------------------------------------------------------------------

    def run_settings(self) -> dict:
        """The method's settings, as written to ``asu_run.json``."""
        raise NotImplementedError

    def record_extra(self) -> dict:
        """More fields for ``asu_run.json``, computed once when training starts."""
        return {}

    def rng_tracked(self) -> bool:
        """Whether exact resume must save the RNG state before each batch (the retain rows come
        from OU's global-RNG draw); False when the trainer draws them from the batch's indices."""
        return True

    def training_context(self):
        """A context around ``Trainer.train`` (e.g. the indexed retain draw)."""
        return contextlib.nullcontext()

    def _write_record(self, status: str, **extra) -> None:
        if self.is_world_process_zero():
            extra = {**getattr(self, "_record_extra", {}), **extra}
            record = run_record.run_record(type(self).__name__, self.run_settings(), status, **extra)
            run_record.write_run_record(self.args.output_dir, record)

    def train(self, *args, **kwargs):
        """Train, bracketed by asu_run.json; a failure leaves ASU_FAILED.txt (and no model:
        OU saves the model only after train() returns). Resumes when
        ``trainer.args.resume_from_checkpoint`` is set (a checkpoint dir, or true)."""
        output_dir = self.args.output_dir
        kwargs = self.resume_kwargs(args, kwargs)
        if self.is_world_process_zero():
            os.makedirs(output_dir, exist_ok=True)
            run_record.clear_failure_marker(output_dir)
        resuming = kwargs.get("resume_from_checkpoint") or (args and args[0])
        self._record_extra = {**self.record_extra(), "resumed_from": str(resuming) if resuming else None}
        self._write_record("training")
        try:
            with self.exact_resume(resuming, track_rng=self.rng_tracked()), self.training_context():
                result = super().train(*args, **kwargs)
        except BaseException as error:
            if self.is_world_process_zero():
                run_record.write_failure_marker(output_dir, error, f"training {type(self).__name__}")
                self._write_record("failed", error=f"{type(error).__name__}: {error}")
            raise
        self._write_record("trained", global_step=self.state.global_step)
        return result
