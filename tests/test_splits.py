"""The core's one split implementation: stratified k-fold, hold-outs, validation, data limits."""

from __future__ import annotations

import numpy as np
import pytest

from capsule_kit.data import limit_indices
from capsule_kit.errors import ConfigError
from capsule_kit.splits import SplitConfig, ValSplit, holdout, split_indices


def test_stratified_folds_partition_and_seed():
    labels = np.array([0] * 30 + [1] * 20)
    tests = [split_indices(labels, folds=5, fold=k, seed=3) for k in range(5)]
    all_test = np.concatenate([t.test for t in tests])
    assert sorted(all_test.tolist()) == list(range(50))  # every example tested exactly once
    for train, val, test in tests:
        assert val is None and not set(train) & set(test) and len(train) + len(test) == 50
        assert np.bincount(labels[test]).tolist() == [6, 4]  # stratified
    assert np.array_equal(split_indices(labels, folds=5, fold=2, seed=3).test, tests[2].test)
    assert not np.array_equal(split_indices(labels, folds=5, fold=2, seed=4).test, tests[2].test)
    with pytest.raises(ConfigError, match=r"split.folds: cannot cut 31 folds with class counts \[30, 20\]"):
        split_indices(labels, folds=31, fold=0)


def test_holdout_and_validation_are_stratified_for_string_labels():
    labels = ["pos"] * 40 + ["neg"] * 10  # text reads labels as strings
    train, val, test = split_indices(labels, folds=1, test_fraction=0.2, val_fraction=0.25, seed=0)
    assert (len(train), len(val), len(test)) == (30, 10, 10)
    arr = np.array(labels)
    assert (arr[test] == "neg").sum() == 2 and (arr[val] == "neg").sum() == 2  # 20 % of each part, as in the data
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))


def test_no_test_split_when_the_data_has_one_and_a_validation_count():
    labels = np.repeat(np.arange(10), 100)
    train, val, test = split_indices(labels, test_fraction=None, val_fraction=ValSplit(val_size=50).val, seed=1)
    assert test is None and len(val) == 50 and len(train) == 950
    assert np.bincount(labels[val]).tolist() == [5] * 10


def test_unstratified_split_for_multi_label_rows():
    labels = ["a,b", "a", "b,c"] + ["a"] * 7  # combinations seen once cannot be stratified
    train, _, test = split_indices(labels, folds=1, test_fraction=0.3, stratify=False)
    assert len(test) == 3 and len(train) == 7
    with pytest.raises(ConfigError, match="split.test_fraction: cannot hold out"):
        split_indices(labels, folds=1, test_fraction=0.3)


def test_holdout_keeps_given_indices():
    labels = np.array([0, 1] * 10)
    keep, held = holdout(np.arange(10, 20), labels, 4, seed=0)
    assert sorted([*keep, *held]) == list(range(10, 20)) and len(held) == 4


def test_limit_is_a_seeded_subset_in_order():
    rows = list(range(100, 200))
    first = limit_indices(rows, 10, seed=0)
    assert len(first) == 10 and first == sorted(first) and set(first) <= set(rows)
    assert first == limit_indices(rows, 10, seed=0) and first != limit_indices(rows, 10, seed=1)
    assert first != rows[:10]  # not "the first N": label-sorted files keep every class
    assert limit_indices(rows, None, 0) == rows and limit_indices(rows, 500, 0) == rows


def test_split_config_defaults():
    s = SplitConfig()
    assert (s.folds, s.test_fraction, s.val, s.seed) == (1, 0.1, 0.0, 0)
