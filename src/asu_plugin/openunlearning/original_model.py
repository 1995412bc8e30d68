"""Where an ASU trainer gets the original model from: a frozen copy, the LoRA student's own base
(:mod:`.lora`), or — for the teacher — the exact teacher cache (:mod:`.teacher_cache`).

A trainer mixin (put it before the Trainer class), so that the trainers module only says *when*
(configure in ``__init__``, prepare before ``train``) and this module says *how*.
"""

from __future__ import annotations

import contextlib
import gc
import logging

import torch

from . import lora as lora_student
from . import run_record
from . import teacher_cache as exact_teacher_cache
from .forget_index import keep_index

logger = logging.getLogger(__name__)


class OriginalModelMixin:
    """The original model's roles without a second copy where possible.

    * ``lora``: the student is a PeftModel; teacher / reference passes run on it with adapters
      off (:meth:`frozen_model`), no copy is made; the final save merges (:meth:`save_model`).
    * ``teacher_cache``: the teacher's forget-answer logits are computed once before training
      (:meth:`prepare_original_model`); with an NLL retain term the frozen copy is then released.
    """

    lora = None
    _cache_plan = None
    _teacher_cache = None

    def configure_original_model(self, lora, teacher_cache, teacher_cache_max_gb, teacher_path, trainer_kwargs):
        """Validate the options (before any copy is made) and return the model to train: the
        one given (``trainer_kwargs["model"]``, as OU passes it), or it with LoRA adapters."""
        model, training_args = trainer_kwargs.get("model"), trainer_kwargs.get("args")
        self.lora = lora_student.lora_options(lora)
        lora_student.check_not_with_teacher_path(self.lora, teacher_path)
        self._cache_plan = exact_teacher_cache.plan(teacher_cache, teacher_cache_max_gb, model,
                                                    trainer_kwargs.get("train_dataset"),
                                                    getattr(training_args, "output_dir", None))
        if self._cache_plan is not None:
            keep_index(trainer_kwargs.get("data_collator"))  # the cache is read by the forget rows' dataset index
        if self.lora is None:
            return model
        gradient_checkpointing = bool(getattr(training_args, "gradient_checkpointing", False))
        return lora_student.wrap(model, self.lora, gradient_checkpointing)

    def frozen_copy_needed(self) -> bool:
        return self.lora is None

    def frozen_model(self):
        """The original model, as a context: the frozen copy, or (LoRA) the student's base with
        its adapters off, in eval mode and under no_grad."""
        if self.lora is not None:
            return lora_student.adapters_off(self.model)
        return contextlib.nullcontext(self.ref_model)

    def frozen_fingerprint(self) -> str | None:
        frozen = lora_student.base_weights(self.model) if self.lora is not None else self.ref_model
        return run_record.weights_fingerprint(frozen)

    def prepare_original_model(self, fingerprint: str | None) -> dict:
        """Before training: build (or reload) the teacher cache, then release the frozen copy when
        nothing else needs it (NLL retain term): training holds one model copy plus the cache.
        Returns what the run record should say about it."""
        if self._cache_plan is None or self._teacher_cache is not None:
            return {}
        settings = {"tau": self.tau, "layers": list(self._selection.layers), "heads": self.heads,
                    "attn_implementation": getattr(self.model.config, "_attn_implementation", None)}
        self._teacher_cache = exact_teacher_cache.build_for(self, self._cache_plan, fingerprint, settings)
        if self.retain_loss_type == "NLL" and self.ref_model is not None:
            self.ref_model = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            logger.info("%s: frozen model released (the teacher cache replaces it)", type(self).__name__)
        held = "LoRA base (adapters off)" if self.lora is not None else "kept" if self.ref_model is not None else "released"
        return {"teacher_cache": self._teacher_cache.summary(), "frozen_model": held}

    def cached_teacher_logits(self, batch):
        """The teacher's logits from the cache, or None when there is no cache (yet)."""
        return None if self._teacher_cache is None else self._teacher_cache.logits_for(batch)

    def save_model(self, output_dir=None, _internal_call: bool = False):
        """With LoRA, the final save (OU's train.py: ``trainer.save_model(output_dir)``) writes the
        merged full model, which OU's eval.py loads unchanged, and the adapter to ``adapter/``;
        checkpoints (``_internal_call``) keep Trainer's adapter-only save, which resume reloads."""
        if self.lora is None or _internal_call:
            return super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            tokenizer = getattr(self, "processing_class", None) or getattr(self, "tokenizer", None)
            lora_student.save_merged_and_adapter(self.accelerator.unwrap_model(self.model),
                                                 output_dir or self.args.output_dir, tokenizer, self.args)
