"""Each forget row's retain row as a function of (seed, epoch, global forget index).

OU's ``ForgetRetainDataset`` draws the retain row of every item with the *global* torch RNG
(``torch.randint`` in ``__getitem__``). On N processes every rank starts from the same RNG state
but fetches other forget rows, so a forget row meets another retain row than on one process, and
results change with the number of GPUs (OU issues #139 / #144). A resumed run needs the RNG state
from before the prefetched batch (:mod:`.resume`).

:class:`IndexedRetainDataset` wraps OU's dataset (anchor ``forget``) during training: the retain
row of forget row ``i`` in epoch ``e`` is ``retain[draw(seed, e, i)]``, and any random choice made
while fetching the forget row itself (``QAwithIdkDataset``'s IDK answer) comes from a generator
seeded with (seed, e, i) too. The global RNG is never touched, so 1 and N processes train on the
same pairs, and a resumed run draws what the uninterrupted one drew with no saved RNG state.
``i`` is the index the sampler gives ``__getitem__``: the row's index in the whole forget set
(the same one OU's collator keeps as ``index``, :mod:`.forget_index`) on every rank.

The epoch comes from the trainer (:class:`EpochCallback`, at each epoch's start, before its first
fetch). Other trainers that need more retain rows per forget row (SGA's normal rows) call
:meth:`IndexedRetainDataset.retain_rows` with the stream of their choice.

``retain_draw: ou`` (method_args) keeps OU's own draw, exactly as OU's GradDiff / NPO draw.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from transformers import TrainerCallback

RETAIN_DRAWS = ("indexed", "ou")
DEFAULT = "indexed"
# independent streams of the same (seed, epoch, index): a new consumer takes a new number
STREAMS = {"retain": 1, "forget": 2, "normal": 3}


def check_retain_draw(value) -> str:
    if value not in RETAIN_DRAWS:
        raise ValueError(
            f"retain_draw must be 'indexed' (each retain row a function of seed, epoch and forget index: the "
            f"same on 1 or N processes) or 'ou' (OU's global-RNG draw, as GradDiff / NPO), got {value!r}; "
            "set trainer.method_args.retain_draw=indexed"
        )
    return value


def draw(seed: int, epoch: int, forget_index: int, pool_size: int, count: int = 1, stream: str = "retain") -> list[int]:
    """``count`` indices into a pool of ``pool_size`` rows for one forget row: a pure function of
    (stream, seed, epoch, forget_index), independent of any RNG state (numpy's SeedSequence)."""
    generator = np.random.default_rng([STREAMS[stream], int(seed), int(epoch), int(forget_index)])
    return generator.integers(pool_size, size=count).tolist()


@contextlib.contextmanager
def seeded_cpu_rng(seed: int, epoch: int, forget_index: int, stream: str = "forget"):
    """Run the body with torch's CPU generator seeded from (stream, seed, epoch, index); the global
    state is restored afterwards (nothing else sees the body's draws)."""
    state = np.random.SeedSequence([STREAMS[stream], int(seed), int(epoch), int(forget_index)])
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(state.generate_state(1, np.uint64)[0] >> np.uint64(1)))
        yield


def check_indexed_dataset(dataset) -> None:
    """The unlearning dataset can be drawn per forget index: OU's ForgetRetainDataset, anchor forget."""
    if dataset is None:
        return
    anchor = getattr(dataset, "anchor", None)
    if anchor != "forget" or not hasattr(dataset, "forget"):
        raise ValueError(
            f"retain_draw=indexed draws a retain row per forget row, but the unlearning data is anchored on "
            f"{anchor!r}; use data.anchor=forget (OU's default), or trainer.method_args.retain_draw=ou"
        )


class IndexedRetainDataset(torch.utils.data.Dataset):
    """OU's ForgetRetainDataset (anchor ``forget``) with each item's random draws made from
    (seed, epoch, forget index) instead of the global RNG."""

    def __init__(self, dataset, seed: int):
        check_indexed_dataset(dataset)
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0

    def __len__(self):
        return len(self.dataset)

    def retain_rows(self, forget_index: int, count: int = 1, stream: str = "retain") -> list:
        """``count`` retain rows for forget row ``forget_index`` in the current epoch."""
        retain = self.dataset.retain
        return [retain[i] for i in draw(self.seed, self.epoch, forget_index, len(retain), count, stream)]

    def __getitem__(self, index):
        with seeded_cpu_rng(self.seed, self.epoch, index):
            item = {"forget": self.dataset.forget[index]}
        if self.dataset.retain:
            item["retain"] = self.retain_rows(index)[0]
        return item

    def __getattr__(self, name):  # forget / retain / anchor: what OU's code reads off the dataset
        if name in ("dataset", "seed", "epoch"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class EpochCallback(TrainerCallback):
    """Tell the dataset the epoch at each epoch's start (before its first fetch; a resumed run
    starts from the checkpoint's ``state.epoch``)."""

    def __init__(self, dataset: IndexedRetainDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.epoch = int(math.floor(state.epoch or 0.0))


@contextlib.contextmanager
def indexed_retain_draw(trainer):
    """Around ``Trainer.train``: the trainer's train dataset drawn per forget index."""
    original = trainer.train_dataset
    if original is None:
        yield None
        return
    view = IndexedRetainDataset(original, trainer.args.seed)
    callback = EpochCallback(view)
    trainer.train_dataset = view
    trainer.add_callback(callback)
    try:
        yield view
    finally:
        trainer.train_dataset = original
        trainer.remove_callback(callback)
