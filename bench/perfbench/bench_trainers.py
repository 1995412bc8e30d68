"""Trainer variants that exist only to be measured. Importing this module imports OpenUnlearning
(through the ASU trainers): only the measuring processes do, after ``ou_trainers.import_ou``."""

from __future__ import annotations

import torch

from trainer.unlearn.npo import NPO  # OpenUnlearning's

from asu_plugin.core.smoothing import smoothed_attention
from asu_plugin.openunlearning import lora as lora_student
from asu_plugin.openunlearning.trainers import ASU_GD, ASU_KL

from .config import MB
from .memory import peak_rss_bytes, reset_peak_rss


class ASU_KL_TwoCopies(ASU_KL):
    """ASU_KL in the authors' layout: a second frozen copy, made by the same
    ``_prepare_ref_model``, serves as the smoothed teacher besides the reference."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher_model = self._prepare_ref_model(self.model)
        for parameter in self.teacher_model.parameters():
            parameter.requires_grad_(False)

    def teacher_logits(self, batch):
        with torch.no_grad(), smoothed_attention(self.teacher_model, self.tau, self.layers, self.heads):
            return self._forward_logits(self.teacher_model, batch)


class ASU_GD_CachedTeacher(ASU_GD):
    """ASU_GD with ``teacher_cache``, its cache built at construction: the bench times
    ``training_step`` without ``Trainer.train``, which builds it in a real run. The build needs
    the frozen copy (two models + the cache + a batch of teacher logits); the copy is released
    after it, and the peak-RSS mark is reset, so the measured peak is the training steps' (one
    model + the cache). ``bench_extra`` keeps the cache's size and the build's own peak."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        record = self.prepare_original_model(self.frozen_fingerprint())
        self.bench_extra = {"teacher_cache_mb": record["teacher_cache"]["bytes"] / MB,
                            "cache_build_peak_rss_mb": peak_rss_bytes() / MB,
                            "frozen_model": record["frozen_model"]}
        reset_peak_rss()


class NPO_LoRA(NPO):
    """OU's NPO given a LoRA student, applied as ASU's ``lora`` option applies it (our
    ``lora.wrap`` before the trainer's ``__init__``). OU has no adapters-off path, so NPO's
    reference is its usual deep copy, here of the PeftModel: full weights plus adapters."""

    def __init__(self, *args, lora, **kwargs):
        kwargs["model"] = lora_student.wrap(kwargs["model"], lora_student.lora_options(lora))
        super().__init__(*args, **kwargs)
