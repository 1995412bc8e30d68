"""Exact resume of an OU unlearning run: what transformers' own checkpoint resume misses.

OU's ``train.py`` calls ``trainer.train()`` without a checkpoint, so the ASU trainers read
``trainer.args.resume_from_checkpoint`` themselves (:func:`resume_target`). Two more things
stand between a resumed run and the uninterrupted one on OU's pinned transformers (4.45):

* torch >= 2.6 loads with ``weights_only=True`` and refuses the numpy RNG state transformers
  saved (:func:`checkpoint_rng_globals` allows exactly those types while resuming);
* OU's ForgetRetainDataset draws retain rows with the global torch RNG, and accelerate
  fetches one batch ahead, so the RNG state in a checkpoint is already past the next batch
  (:class:`RngTrackedDataset` keeps the state from before it; the trainers save it as
  ``asu_rng_state*.pth`` and restore it right before the first resumed fetch). Needed only
  with ``retain_draw=ou``: the default indexed draw (:mod:`.retain_draw`) uses no global RNG.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os

import torch

logger = logging.getLogger(__name__)


def resume_target(value):
    """trainer.args.resume_from_checkpoint: a checkpoint dir, or true = the newest in output_dir."""
    if isinstance(value, str) and value.strip().lower() in ("true", "last", "latest"):
        return True
    if isinstance(value, str) and not os.path.isdir(value):
        raise FileNotFoundError(
            f"resume_from_checkpoint={value!r} is not a directory: pass a checkpoint-<step> dir "
            "of this run, or true for the newest one in trainer.args.output_dir"
        )
    return value


def checkpoint_rng_globals():
    """Let torch >= 2.6 (``torch.load`` defaults to ``weights_only=True``) read the numpy RNG
    state that transformers < 4.49 saves in ``rng_state.pth`` and reloads without allowlisting
    it: without this, resuming fails with "Weights only load failed" on OU's transformers."""
    import numpy as np

    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # torch < 2.5: nothing to allow
        return contextlib.nullcontext()
    core = getattr(np, "_core", None) or np.core
    return safe_globals([core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))])


RNG_STATE_NAME = "asu_rng_state{rank}.pth"


def rng_state() -> dict:
    import random

    import numpy as np

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


class RngTrackedDataset(torch.utils.data.Dataset):
    """The train dataset, remembering the RNG state before each batch is drawn.

    Why: OU's ForgetRetainDataset draws each retain row with the global torch RNG inside
    ``__getitem__``, and accelerate's dataloader fetches one batch ahead, so the RNG state
    transformers saves in a checkpoint is already past the next batch's draws (and it is
    restored only after the first resumed batch was fetched). A resumed run would train on
    other retain rows than the uninterrupted one. With the state from *before* the next
    batch's draws saved beside transformers' own (``asu_rng_state*.pth``) and restored right
    before the first resumed fetch, the resumed run draws exactly the same rows.
    """

    def __init__(self, dataset):
        self.dataset = dataset
        self.pending: collections.deque = collections.deque()  # RNG states of fetched, untrained batches
        self.restore: dict | None = None  # set when resuming: applied before the first fetch

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]

    def __getitems__(self, indices):  # one call per batch (torch's map-style fetcher)
        if self.restore is not None:
            set_rng_state(self.restore)
            self.restore = None
        self.pending.append(rng_state())
        return [self.dataset[index] for index in indices]

    def __getattr__(self, name):  # forget / retain / anchor: what OU's code reads off the dataset
        if name in ("dataset", "pending", "restore"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ExactResumeMixin:
    """A transformers ``Trainer`` mixin (put it before the Trainer class): honours
    ``trainer.args.resume_from_checkpoint`` (OU's train.py does not pass it) and saves / restores
    the RNG state from before the prefetched batch (:class:`RngTrackedDataset`), so a resumed
    run draws exactly the retain rows the uninterrupted one drew."""

    def resume_kwargs(self, args, kwargs) -> dict:
        """``train()``'s kwargs with ``resume_from_checkpoint`` taken from the training args."""
        kwargs = dict(kwargs)
        if not args and kwargs.get("resume_from_checkpoint") is None and self.args.resume_from_checkpoint:
            kwargs["resume_from_checkpoint"] = resume_target(self.args.resume_from_checkpoint)
            logger.info("%s: resuming from %s", type(self).__name__, kwargs["resume_from_checkpoint"])
        return kwargs

    def mark_batch_trained(self) -> None:
        """Call at the start of each training step: the oldest prefetched batch is being trained on."""
        dataset = self.train_dataset
        if isinstance(dataset, RngTrackedDataset) and dataset.pending:
            dataset.pending.popleft()

    @contextlib.contextmanager
    def exact_resume(self, resuming, track_rng: bool = True):
        """Around ``Trainer.train``: track the RNG per batch; when resuming, allow transformers'
        RNG file and restore our own state right before the first fetch. ``track_rng=False``
        when the data draws no global random numbers (``retain_draw=indexed``): then only
        transformers' own RNG file is allowed."""
        original = self.train_dataset
        if original is None or not track_rng:
            with checkpoint_rng_globals() if resuming else contextlib.nullcontext():
                yield
            return
        self.train_dataset = RngTrackedDataset(original)
        if resuming:
            from transformers.trainer_utils import get_last_checkpoint

            checkpoint = get_last_checkpoint(self.args.output_dir) if resuming is True else str(resuming)
            path = self._rng_file(checkpoint)
            if os.path.isfile(path):  # our own file: numpy / python objects, hence weights_only=False
                self.train_dataset.restore = torch.load(path, weights_only=False)
                self._asu_own_rng = True
            # no file: the checkpoint ends an epoch (nothing prefetched), where transformers'
            # own state, restored before the next epoch's first fetch, is exact
        try:
            with checkpoint_rng_globals() if resuming else contextlib.nullcontext():
                yield
        finally:
            self.train_dataset = original
            self._asu_own_rng = False

    def _rng_file(self, checkpoint_dir: str) -> str:
        rank = f"_{self.args.process_index}" if self.args.world_size > 1 else ""
        return os.path.join(checkpoint_dir, RNG_STATE_NAME.format(rank=rank))

    def _load_rng_state(self, checkpoint):
        if getattr(self, "_asu_own_rng", False):
            return  # ours is (or was) restored right before the first fetch; transformers' is past it
        return super()._load_rng_state(checkpoint)

    def _save_rng_state(self, output_dir):
        super()._save_rng_state(output_dir)
        dataset = self.train_dataset
        if isinstance(dataset, RngTrackedDataset) and dataset.pending:  # a batch was fetched ahead
            torch.save(dataset.pending[0], self._rng_file(output_dir))
