"""SGA: Smoothed Gradient Ascent (Pang et al., "Label Smoothing Improves Gradient Ascent in LLM
Unlearning", arXiv 2510.22376) as an OpenUnlearning trainer.

Gradient ascent on the forget set alone diverges. SGA smooths its target the way generalized label
smoothing smooths a one-hot label: each forget row x_f is combined with K-1 "normal" rows x_n^j
(retain rows near it, :mod:`..normal_data`) through a smoothing rate r. Our reading of the loss
(the paper's method section was not available to us; every choice is a setting):

    loss = -[ (1 - r + r/K) * l(x_f) + (r/K) * sum_{j=1..K-1} l(x_n^j) ]

l(x_f) is the answer NLL of the forget batch exactly as OU's ``GradAscent`` computes it (the
model's ``outputs.loss``: a token mean over the batch's answer tokens); l(x_n^j) the same over the
batch of every forget row's j-th normal row. Sign convention: r = 0 is OU's GradAscent; r < 0
(negative label smoothing) makes the normal terms gradient *descent* (the stabilising direction);
r > 0 ascends on them too. K = 1 is GradAscent whatever r.

Cost: the batch size counts forget rows; a step runs K forward / backward passes of that size
(the forget batch and K-1 normal batches), so about K times GradAscent's time and activation memory.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
from collections.abc import Mapping

import torch
from trainer.unlearn.grad_ascent import GradAscent  # OpenUnlearning

from .. import lora as lora_student
from ..normal_data import NORMAL_MODES, TABLE_NAME, NormalRowsDataset, check_embedding_dir, neighbour_table
from ..original_model import OriginalModelMixin
from .base import RecordedUnlearnRun, failure_marker

logger = logging.getLogger(__name__)

_MODEL_INPUTS = ("input_ids", "attention_mask", "labels")
IGNORE_INDEX = -100


def check_sga_args(r, K, normal) -> tuple[float, int, str]:
    """(r, K, normal) checked: r a finite number, K an integer >= 1, normal similar | random."""
    if isinstance(K, bool) or not isinstance(K, numbers.Integral) or K < 1:
        raise ValueError(
            f"SGA: K must be an integer >= 1 (the forget row plus K-1 normal rows), got {K!r}; "
            "set e.g. trainer.method_args.K=3 (K=1 is plain gradient ascent)"
        )
    if isinstance(r, bool) or not isinstance(r, numbers.Real) or not math.isfinite(r):
        raise ValueError(
            f"SGA: r must be a finite number (the smoothing rate: < 0 descends on the normal rows, 0 is "
            f"GradAscent), got {r!r}; set e.g. trainer.method_args.r=-0.5"
        )
    if normal not in NORMAL_MODES:
        raise ValueError(f"SGA: normal must be one of {', '.join(NORMAL_MODES)}, got {normal!r}; "
                         "set trainer.method_args.normal=similar (nearest retain rows) or random")
    return float(r), int(K), normal


def sga_loss(forget_nll: torch.Tensor, normal_nlls: list, r: float, K: int) -> torch.Tensor:
    """-[(1 - r + r/K) * forget_nll + (r/K) * sum(normal_nlls)]: our reading of SGA's loss."""
    smoothed = (1 - r + r / K) * forget_nll
    if normal_nlls:
        smoothed = smoothed + (r / K) * torch.stack(list(normal_nlls)).sum()
    return -smoothed


def answer_nll(model, batch):
    """(the model's own token-mean answer NLL of ``batch``, outputs); 0 for a batch without
    answer tokens (where the model's mean is 0/0), so one such batch cannot stop the run."""
    outputs = model(**{key: batch[key] for key in _MODEL_INPUTS})
    if (batch["labels"][:, 1:] != IGNORE_INDEX).any():
        return outputs.loss, outputs
    return outputs.logits.sum() * 0.0, outputs


def check_normal_source(dataset, K: int) -> None:
    """The unlearning dataset can give K-1 normal rows per forget row (None: nothing to train)."""
    if dataset is None:
        return
    if getattr(dataset, "retain", None) is None:
        raise ValueError(
            "SGA draws its normal rows from the retain set, but this run has no retain data: set it, e.g. "
            "data/datasets@data.retain=TOFU_QA_retain (experiment=unlearn/tofu/default and unlearn/tofu/sga_cpu do)"
        )
    if getattr(dataset, "anchor", "forget") != "forget":
        raise ValueError(f"SGA pairs every forget row with its own normal rows: set data.anchor=forget "
                         f"(got {dataset.anchor!r})")
    if len(dataset.retain) < K - 1:
        raise ValueError(
            f"SGA: the retain set has {len(dataset.retain)} rows, but K={K} needs K-1={K - 1} normal rows per "
            f"forget row: set trainer.method_args.K to at most {len(dataset.retain) + 1}, or use a larger retain split"
        )
    first = dataset.forget[0] if len(dataset.forget) else None
    if first is not None and not (isinstance(first, Mapping) and "input_ids" in first):
        raise ValueError(
            f"SGA needs plain forget rows (input_ids / labels), but {type(dataset.forget).__name__} gives "
            f"{sorted(first) if isinstance(first, Mapping) else type(first).__name__}: use a QADataset / "
            "PretrainingDataset forget set such as TOFU_QA_forget or MUSE_forget"
        )


class SGA(RecordedUnlearnRun, OriginalModelMixin, GradAscent):
    """Smoothed Gradient Ascent: OU's GradAscent on the forget rows, smoothed with K-1 normal rows
    per forget row at rate r (loss in the module docstring). Logs ``forget_nll`` and
    ``normal_nll`` (the mean of the K-1 normal NLLs) beside OU's ``loss``."""

    OPTIONS = ("r", "K", "normal", "embedding", "embedding_batch_size", "neighbour_cache", "lora")
    UNLEARN_COMMAND = (
        "python src/train.py --config-name=unlearn.yaml experiment=unlearn/tofu/default trainer={name} "
        "task_name=<name>   (on a CPU: experiment=unlearn/tofu/sga_cpu)"
    )

    def __init__(
        self,
        *args,
        r: float = -0.5,
        K: int = 3,
        normal: str = "similar",
        embedding: str | None = None,
        embedding_batch_size: int = 16,
        neighbour_cache: str | None = None,
        lora=None,
        **kwargs,
    ):
        output_dir = getattr(kwargs.get("args"), "output_dir", None)
        with failure_marker(output_dir, "configuring SGA"):
            # everything here runs before any model pass, so a bad config fails fast
            self.check_options(kwargs)
            dataset = kwargs.get("train_dataset")
            self.check_unlearn_dataset(dataset)
            self.r, self.K, self.normal = check_sga_args(r, K, normal)
            check_embedding_dir(embedding)
            if isinstance(embedding_batch_size, bool) or not isinstance(embedding_batch_size, int) \
                    or embedding_batch_size < 1:
                raise ValueError(f"SGA: embedding_batch_size must be an integer >= 1, got {embedding_batch_size!r}; "
                                 "set e.g. trainer.method_args.embedding_batch_size=16")
            check_normal_source(dataset, self.K)
            # a LoRA student (no teacher here: only the adapters train; the final save merges them)
            kwargs["model"] = self.configure_original_model(lora, False, 0.0, None, kwargs)
        if embedding is not None and self.normal == "random":
            logger.warning("SGA: trainer.method_args.embedding is ignored with normal=random")
        self.embedding, self.embedding_batch_size = embedding, embedding_batch_size
        self.neighbour_cache = neighbour_cache
        super().__init__(*args, **kwargs)
        # our loss is a token mean, not a sum over num_items_in_batch: let Trainer (transformers
        # >= 4.46) divide by the accumulation steps as for any other loss
        self.model_accepts_loss_kwargs = False
        self.LOGGED = ("forget_nll", "normal_nll") if self.K > 1 else ("forget_nll",)
        self.table = None
        if self.train_dataset is not None:
            with failure_marker(output_dir, "building SGA's normal data"):
                if self.normal == "similar" and self.K > 1:
                    self.table = self._neighbour_table()
                self.train_dataset = NormalRowsDataset(self.train_dataset, self.K - 1, self.normal, self.table)

    def _neighbour_table(self):
        tokenizer = getattr(self, "processing_class", None) or self.tokenizer
        # a LoRA student embeds as the model it was loaded as: its base with the adapters off
        original = lora_student.adapters_off(self.model) if self.lora is not None else contextlib.nullcontext(self.model)
        with original as model, self.args.main_process_first(desc="SGA neighbour table"):  # rank 0 fills the cache first
            return neighbour_table(
                self.train_dataset.forget, self.train_dataset.retain, self.K - 1, model, tokenizer,
                embedding=self.embedding, batch_size=self.embedding_batch_size, run_dir=self.args.output_dir,
                cache_dir=self.neighbour_cache, write=self.is_world_process_zero(),
            )

    # ---- loss ---------------------------------------------------------------------------

    def _batches(self, inputs):
        forget = inputs.get("forget") if isinstance(inputs, Mapping) else None
        if not isinstance(forget, Mapping) or "input_ids" not in forget:
            raise KeyError(
                f"SGA needs batches with a plain 'forget' entry (input_ids / labels); got "
                f"{sorted(inputs) if isinstance(inputs, Mapping) else type(inputs).__name__}. Use an unlearn "
                "config: " + self.unlearn_command()
            )
        normal = inputs.get("normal", {})
        missing = [j for j in range(self.K - 1) if j not in normal]
        if missing:
            raise KeyError(
                f"SGA: the batch lacks normal rows {missing} (K={self.K}); its train dataset must be the one "
                "the trainer wraps (NormalRowsDataset), not replaced after the trainer was built, and "
                "trainer.args.remove_unused_columns must be false (as OU's unlearn.yaml sets it)"
            )
        return forget, [normal[j] for j in range(self.K - 1)]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.mark_batch_trained()
        forget, normals = self._batches(inputs)
        forget_nll, forget_outputs = answer_nll(model, forget)
        # at r = 0 the normal terms have weight 0: measured for the log, not differentiated
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.r != 0):
            normal_nlls = [answer_nll(model, batch)[0] for batch in normals]
        loss = sga_loss(forget_nll, normal_nlls, self.r, self.K)
        parts = {"forget_nll": forget_nll}
        if normal_nlls:
            parts["normal_nll"] = torch.stack([value.detach() for value in normal_nlls]).mean()
        self.check_finite(loss, parts)
        if model.training:  # evaluation batches must not leak into the logged training terms
            self.accumulate(**parts)
        return (loss, forget_outputs) if return_outputs else loss

    # ---- run record ---------------------------------------------------------------------

    def run_settings(self) -> dict:
        return {
            "r": self.r,
            "K": self.K,
            "normal": self.normal,
            "embedding": self.embedding,
            "embedding_batch_size": self.embedding_batch_size,
            "neighbour_cache": self.neighbour_cache,
            "lora": self.lora,
            "forget_weight": 1 - self.r + self.r / self.K,
            "normal_weight": self.r / self.K,
            "loss": "-[(1 - r + r/K) * nll(forget) + (r/K) * sum_j nll(normal_j)]",
        }

    def record_extra(self) -> dict:
        if self.table is None:
            return {}
        return {"neighbour_table": {"path": os.path.join(self.args.output_dir, TABLE_NAME),
                                    "source": self.table.source, "key": self.table.key,
                                    "seconds": self.table.seconds}}


__all__ = ["SGA", "check_sga_args", "sga_loss"]
