"""Trainer variants that exist only to be measured. Importing this module imports OpenUnlearning
(through the ASU trainers): only the measuring processes do, after ``ou_trainers.import_ou``."""

from __future__ import annotations

import torch

from asu_plugin.core.smoothing import smoothed_attention
from asu_plugin.openunlearning.trainers import ASU_KL


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
