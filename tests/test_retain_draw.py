"""The indexed retain draw: each forget row's retain row (and any random choice made while fetching
the forget row, as OU's QAwithIdkDataset picks an IDK answer) is a function of (seed, epoch,
forget index) alone — not of the fetch order, the process, or the global RNG, which it leaves
untouched. The end-to-end consequence (1 process == 2 processes through OU's train.py) is
tests/ou/test_reliability.py::test_two_processes_match_one."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerState

from asu_plugin.openunlearning.retain_draw import EpochCallback, IndexedRetainDataset, check_retain_draw


class Rows(torch.utils.data.Dataset):
    """Rows that say who they are; ``random=True`` also draws from the global RNG on every fetch,
    as QAwithIdkDataset does for its IDK answer."""

    def __init__(self, name: str, size: int, random: bool = False):
        self.name, self.size, self.random = name, size, random

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        row = {"name": self.name, "index": index}
        if self.random:
            row["draw"] = torch.randint(0, 10**6, (1,)).item()
        return row


class Unlearn(torch.utils.data.Dataset):
    """The shape of OU's ForgetRetainDataset: forget / retain / anchor, one item per forget row."""

    def __init__(self, anchor: str = "forget"):
        self.forget, self.retain, self.anchor = Rows("forget", 40, random=True), Rows("retain", 10), anchor

    def __len__(self):
        return len(self.forget)


def _fetch(view, order, epoch):
    view.epoch = epoch
    return {index: view[index] for index in order}


def test_each_row_is_a_function_of_seed_epoch_and_index():
    order = list(range(40))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = _fetch(IndexedRetainDataset(Unlearn(), seed=3), order, epoch=0)
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is never used
    torch.manual_seed(12345)  # another global state, another fetch order (another process's share)
    second = _fetch(IndexedRetainDataset(Unlearn(), seed=3), order[::-1][:20], epoch=0)
    assert all(second[i] == first[i] for i in second)
    assert len({first[i]["retain"]["index"] for i in order}) > 5  # rows spread over the pool
    assert len({first[i]["forget"]["draw"] for i in order}) == 40  # the forget rows' own draws too

    other_epoch = _fetch(IndexedRetainDataset(Unlearn(), seed=3), order, epoch=1)
    other_seed = _fetch(IndexedRetainDataset(Unlearn(), seed=4), order, epoch=0)
    for changed in (other_epoch, other_seed):
        moved = sum(changed[i]["retain"] != first[i]["retain"] for i in order)
        assert moved >= 30  # 10-row pool: ~36 of 40 expected to move
        assert sum(changed[i]["forget"]["draw"] != first[i]["forget"]["draw"] for i in order) == 40


def test_draws_cover_the_pool_evenly():
    view = IndexedRetainDataset(Unlearn(), seed=0)
    counts = torch.zeros(10)
    for epoch in range(25):  # 1000 draws over 10 rows
        view.epoch = epoch
        for index in range(40):
            counts[view.retain_rows(index)[0]["index"]] += 1
    assert counts.min() >= 60 and counts.max() <= 140  # binomial(1000, 0.1): sd 9.5


def test_streams_are_independent():
    view = IndexedRetainDataset(Unlearn(), seed=0)
    retain = [view.retain_rows(i, 3, stream="retain") for i in range(40)]
    normal = [view.retain_rows(i, 3, stream="normal") for i in range(40)]
    assert sum(a != b for a, b in zip(retain, normal)) >= 35


def test_epoch_callback_sets_the_epoch_from_the_trainer_state():
    view = IndexedRetainDataset(Unlearn(), seed=0)
    callback = EpochCallback(view)
    for epoch, expected in ((0.0, 0), (1.0, 1), (2.5, 2), (None, 0)):  # 2.5: resumed mid-epoch
        callback.on_epoch_begin(None, TrainerState(epoch=epoch), None)
        assert view.epoch == expected


def test_bad_settings_name_the_fix():
    with pytest.raises(ValueError, match="retain_draw=indexed"):
        check_retain_draw("random")
    with pytest.raises(ValueError, match="anchored on 'retain'.*retain_draw=ou"):
        IndexedRetainDataset(Unlearn(anchor="retain"), seed=0)
