"""The global index of every forget row in a batch: what a per-row retain draw, SGA's normal
rows and the teacher cache key on.

OU's QA / pretraining datasets put each row's dataset ``index`` into its item, and OU's
collator keeps it in the batch when its ``index`` attribute names the key
(``collator=DataCollatorForSupervisedDatasetwithIndex``). :func:`keep_index` turns that on for
the collator a trainer was given, so no experiment config has to change; :func:`forget_indices`
reads it back.
"""

from __future__ import annotations

import torch

INDEX_KEY = "index"


def keep_index(collator) -> None:
    """Make OU's collator keep ``index`` in every batch (a no-op when it already does)."""
    if collator is None or not hasattr(collator, "index"):
        raise TypeError(
            f"the data collator {type(collator).__name__} cannot keep the rows' dataset index; use OU's "
            "DataCollatorForSupervisedDataset (collator=DataCollatorForSupervisedDatasetwithIndex)"
        )
    if collator.index is None:
        collator.index = INDEX_KEY


def forget_indices(batch: dict) -> torch.Tensor:
    """The (B,) global dataset indices of a forget batch's rows."""
    index = batch.get(INDEX_KEY) if isinstance(batch, dict) else None
    if index is None:
        raise KeyError(
            f"the forget batch has no {INDEX_KEY!r} (keys: {sorted(batch) if isinstance(batch, dict) else type(batch).__name__}): "
            "use OU's collator with index (collator=DataCollatorForSupervisedDatasetwithIndex), or "
            "asu_plugin.openunlearning.forget_index.keep_index(trainer.data_collator)"
        )
    return index.long()
