"""Batch columns, BPTT windows and variable BPTT lengths."""

from __future__ import annotations

import pytest
import torch

from awdlm.data import BPTTSampler, batchify, get_batch


def test_batchify_columns_are_contiguous():
    data = torch.arange(26)
    batched = batchify(data, 4)  # 26 // 4 = 6 rows; the last 2 tokens are dropped
    assert batched.shape == (6, 4)
    assert batched[:, 0].tolist() == [0, 1, 2, 3, 4, 5]
    assert batched[:, 3].tolist() == [18, 19, 20, 21, 22, 23]


def test_batchify_too_short_stream():
    with pytest.raises(ValueError, match="too short for batch size 10"):
        batchify(torch.arange(15), 10)


def test_get_batch_targets_shift_by_one():
    source = batchify(torch.arange(24), 4)
    inputs, targets = get_batch(source, 1, 2)
    assert inputs.tolist() == [[1, 7, 13, 19], [2, 8, 14, 20]]
    assert targets.tolist() == [[2, 8, 14, 20], [3, 9, 15, 21]]


def test_get_batch_shortened_at_end():
    source = batchify(torch.arange(24), 4)  # 6 rows
    inputs, targets = get_batch(source, 3, 70)
    assert inputs.shape == (2, 4)
    assert targets[-1].tolist() == [5, 11, 17, 23]


def test_bptt_sampler_distribution():
    sampler = BPTTSampler(70, seed=0)
    lengths = torch.tensor([sampler.sample() for _ in range(4000)], dtype=torch.float)
    assert lengths.min() >= 5
    short = lengths < 52.5  # halfway between 35 and 70
    assert 0.03 < short.float().mean() < 0.07  # 5 % use bptt / 2
    assert abs(lengths[~short].mean() - 69.5) < 0.5  # int() of N(70, 5) truncates
    assert 4 < lengths[~short].std() < 6


def test_bptt_sampler_reproducible():
    first = BPTTSampler(70, seed=3)
    second = BPTTSampler(70, seed=3)
    assert [first.sample() for _ in range(50)] == [second.sample() for _ in range(50)]


def test_bptt_sampler_minimum_length():
    sampler = BPTTSampler(4, seed=0)
    assert min(sampler.sample() for _ in range(200)) == 5
