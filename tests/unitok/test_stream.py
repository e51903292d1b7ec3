"""Streaming data in the trainer: batches resume exactly under DataLoader workers; positions are checkpointed."""

import itertools
import pickle

import pytest
import torch
from torch.utils.data import IterableDataset, default_collate

from unitok.engine.stream import StreamBatches


class _Counting(IterableDataset):
    """Consumer ``c`` yields ids ``1000 c + i``, skipping every 7th ``i`` (a stand-in for corrupt samples), each with
    a torch random draw (a stand-in for augmentation); its position is ``i``."""

    def stream(self, consumer, num_consumers, seed, state=None):
        return _CountingStream(consumer, state or 0)

    def __iter__(self):
        return self.stream(0, 1, 0)


class _CountingStream:
    def __init__(self, consumer, position):
        self.consumer, self.i = consumer, position

    def __iter__(self):
        return self

    def __next__(self):
        self.i += 1 + (self.i % 7 == 5)
        return {"id": 1000 * self.consumer + self.i, "noise": torch.rand(())}

    def state_dict(self):
        return self.i


def _take(batches, n):
    return [(b["id"].tolist(), b["noise"].tolist()) for b in itertools.islice(iter(batches), n)]


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize("workers", [0, 2, 3])
def test_batches_resume_exactly_and_leave_the_global_rng_alone(workers):
    make = lambda: StreamBatches(_Counting(), default_collate, batch_size=3, num_workers=workers, seed=4)  # noqa: E731
    ref = _take(make(), 11)
    assert len({i for ids, _ in ref for i in ids}) == 33  # no repeats
    if workers:
        assert [ids[0] // 1000 for ids, _ in ref[:6]] == [w % workers for w in range(6)]  # round-robin
    for cuts in ([4], [1, 5], [2, 3, 7]):
        got, state, done = [], None, 0
        for cut in [*cuts, 11]:
            batches = make()
            batches.load_state_dict(state)
            rng = torch.get_rng_state()
            got += _take(batches, cut - done)
            assert torch.equal(rng, torch.get_rng_state())
            state, done = pickle.loads(pickle.dumps(batches.state_dict())), cut
        assert got == ref, (workers, cuts)


def test_positions_are_per_rank_and_topology_is_checked():
    ranks = [StreamBatches(_Counting(), default_collate, 2, num_workers=2, rank=r, world_size=2) for r in (0, 1)]
    ids = [{i for ids, _ in _take(r, 4) for i in ids} for r in ranks]
    assert {i // 1000 for i in ids[0]} == {0, 1} and {i // 1000 for i in ids[1]} == {2, 3}
    state = ranks[1].state_dict()
    assert state["batches"] == 4 and sorted(state["consumers"]) == [2, 3]
    again = StreamBatches(_Counting(), default_collate, 2, num_workers=2, rank=1, world_size=2)
    again.load_state_dict(state)
    assert _take(again, 2) == _take(ranks[1], 2)
    with pytest.raises(ValueError, match="world_size 2 x 2 workers per rank, this run has 1 x 2"):
        StreamBatches(_Counting(), default_collate, 2, num_workers=2).load_state_dict(state)
    plain = type("Plain", (IterableDataset,), {"__iter__": lambda self: iter(range(3))})()
    with pytest.raises(TypeError, match="stream"):
        StreamBatches(plain, default_collate, 2)


class _Batches(IterableDataset):
    """A batch stream: consumer ``c`` yields lists of a varying number of ids (like duration-bucketed batches)."""

    yields_batches = True

    def stream(self, consumer, num_consumers, seed, state=None):
        return _BatchStream(consumer, state or 0)

    def __iter__(self):
        return self.stream(0, 1, 0)


class _BatchStream(_CountingStream):
    def __next__(self):
        self.i += 1
        return [1000 * self.consumer + 10 * self.i + k for k in range(1 + self.i % 3)]


def _collate_ids(batch):
    return {"id": torch.tensor(batch), "noise": torch.rand(len(batch))}


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize("workers", [0, 2])
def test_batch_streams_resume_exactly_and_batch_size_zero_is_checked(workers):
    make = lambda: StreamBatches(_Batches(), _collate_ids, batch_size=0, num_workers=workers, seed=1)  # noqa: E731
    ref = _take(make(), 9)
    assert sorted({len(ids) for ids, _ in ref}) == [1, 2, 3]  # batch sizes come from the data set
    first = make()
    got = _take(first, 4)
    again = make()
    again.load_state_dict(pickle.loads(pickle.dumps(first.state_dict())))
    assert got + _take(again, 5) == ref
    with pytest.raises(ValueError, match="yields whole batches.*batch_size must be 0"):
        StreamBatches(_Batches(), _collate_ids, batch_size=4)
    with pytest.raises(ValueError, match="set a positive train.batch_size"):
        StreamBatches(_Counting(), default_collate, batch_size=0)
