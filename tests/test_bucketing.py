"""Length bucketing in the training sampler: a seeded permutation of similar-length batches that resumes exactly."""

from __future__ import annotations

import random

import pytest
import torch

from capsule_kit.config import TrainerConfig
from capsule_kit.data import Splits, TensorPairs
from capsule_kit.distributed import DistInfo, ResumableSampler
from capsule_kit.loaders import make_loader

N, BATCH = 1030, 10  # 103 batches: two pools of 50 batches and a third of 3


def lengths() -> list[int]:
    rng = random.Random(0)
    return [rng.randint(1, 60) for _ in range(N)]


def dataset():
    return TensorPairs(torch.arange(N), torch.zeros(N))


def batches(order: list[int]) -> list[list[int]]:
    return [order[s : s + BATCH] for s in range(0, len(order), BATCH)]


def test_bucketed_order_is_a_seeded_permutation_of_similar_length_batches():
    sizes = lengths()
    sampler = ResumableSampler(dataset(), DistInfo(), seed=3, lengths=sizes, batch_size=BATCH)
    sampler.start(0)
    order = list(sampler)
    assert sorted(order) == list(range(N)) and len(sampler) == N
    spread = [max(sizes[i] for i in b) - min(sizes[i] for i in b) for b in batches(order)]
    plain = ResumableSampler(dataset(), DistInfo(), seed=3)
    plain.start(0)
    random_spread = [max(sizes[i] for i in b) - min(sizes[i] for i in b) for b in batches(list(plain))]
    assert sum(spread) * 5 < sum(random_spread)  # far less padding than random batches
    first = [min(sizes[i] for i in b) for b in batches(order)]
    assert first != sorted(first)  # the batches themselves are shuffled, not served shortest first
    again = ResumableSampler(dataset(), DistInfo(), seed=3, lengths=sizes, batch_size=BATCH)
    again.start(0)
    assert list(again) == order
    again.start(1)
    assert list(again) != order  # a new order every epoch


def test_bucketed_epoch_resumes_with_the_batches_it_had_left():
    sizes = lengths()[:1005]  # 100 full batches and a short one, which stays last
    data = TensorPairs(torch.arange(1005), torch.zeros(1005))
    sampler = ResumableSampler(data, DistInfo(), seed=0, lengths=sizes, batch_size=BATCH)
    sampler.start(2)
    order = list(sampler)
    assert len(batches(order)[-1]) == 5 and all(len(b) == BATCH for b in batches(order)[:-1])
    sampler.start(2, skip_examples=7 * BATCH)
    assert list(sampler) == order[7 * BATCH :] and len(sampler) == 1005 - 7 * BATCH
    with pytest.raises(ValueError, match="one length per example and the batch size"):
        ResumableSampler(data, DistInfo(), seed=0, lengths=sizes[:-1], batch_size=BATCH)


def test_loader_batches_follow_the_buckets():
    sizes = lengths()
    splits = Splits(train=dataset(), test=dataset(), lengths=sizes)
    loader = make_loader(splits.train, splits, TrainerConfig(batch_size=BATCH), train=True, info=DistInfo())
    loader.sampler.start(0)
    got = [x.tolist() for x, _ in loader]
    assert got == batches(list(loader.sampler))
    spreads = sorted(max(sizes[i] for i in b) - min(sizes[i] for i in b) for b in got)
    assert spreads[len(spreads) // 2] <= 2  # lengths 1-60 drawn at random, about 1 apart within a batch


def test_text_task_gives_token_lengths_when_asked(tmp_path, cache_env):
    pytest.importorskip("tokenizers")
    pytest.importorskip("datasets")
    from tests.test_text import make_task, write_tsv

    write_tsv(tmp_path / "d" / "train.tsv", [(0, "a b c"), (1, "d"), (0, "e f")])
    write_tsv(tmp_path / "d" / "test.tsv", [(1, "x")])
    assert make_task(tmp_path).build_data().lengths is None
    assert make_task(tmp_path, bucket_by_length=True).build_data().lengths == [3, 1, 2]
