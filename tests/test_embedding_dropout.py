"""Embedding dropout: dense is the reference, gather must match it bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from awdlm.model.embedding_dropout import draw_row_scale, embedding_dropout

V, D = 500, 16


def make_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(V, D, generator=generator)
    # A skewed draw so that many words repeat within the batch, as in real text.
    words = (torch.rand(35, 8, generator=generator) ** 4 * V).long()  # (T, B)
    grad_output = torch.randn(35, 8, D, generator=generator)
    return weight, words, grad_output


def forward_backward(strategy: str, seed: int, p: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    weight, words, grad_output = make_inputs()
    weight.requires_grad_(True)
    torch.manual_seed(seed)
    output = embedding_dropout(words, weight, p, strategy=strategy)
    output.backward(grad_output)
    return output.detach(), weight.grad


@pytest.mark.parametrize("seed", range(5))
def test_gather_bit_identical_to_dense(seed):
    dense_out, dense_grad = forward_backward("dense", seed)
    gather_out, gather_grad = forward_backward("gather", seed)
    assert torch.equal(gather_out, dense_out)
    assert torch.equal(gather_grad, dense_grad)


def test_naive_gradient_differs_from_dense():
    # Scaling each occurrence before summing rounds differently from summing first.
    differs = []
    for seed in range(5):
        dense_out, dense_grad = forward_backward("dense", seed)
        naive_out, naive_grad = forward_backward("naive", seed)
        assert torch.equal(naive_out, dense_out)
        torch.testing.assert_close(naive_grad, dense_grad)
        differs.append(not torch.equal(naive_grad, dense_grad))
    assert any(differs)


@pytest.mark.parametrize("strategy", ["dense", "gather"])
def test_strategies_draw_same_random_numbers(strategy):
    weight, words, _ = make_inputs()
    torch.manual_seed(3)
    embedding_dropout(words, weight, 0.3, strategy=strategy)
    after_call = torch.rand(4)
    torch.manual_seed(3)
    draw_row_scale(weight, 0.3)
    after_draw = torch.rand(4)
    assert torch.equal(after_call, after_draw)


def test_dropped_word_is_zero_everywhere():
    weight, words, _ = make_inputs()
    torch.manual_seed(0)
    output = embedding_dropout(words, weight, 0.5, strategy="gather")
    torch.manual_seed(0)
    scale = draw_row_scale(weight, 0.5).squeeze(1)
    dropped = scale[words] == 0
    assert dropped.any()
    assert torch.equal(output[dropped], torch.zeros_like(output[dropped]))
    kept = ~dropped
    torch.testing.assert_close(output[kept], weight[words][kept] * 2)


@pytest.mark.parametrize("strategy", ["dense", "gather"])
def test_eval_is_plain_lookup(strategy):
    weight, words, _ = make_inputs()
    state = torch.get_rng_state()
    output = embedding_dropout(words, weight, 0.5, strategy=strategy, training=False)
    assert torch.equal(output, F.embedding(words, weight))
    assert torch.equal(torch.get_rng_state(), state)


def test_last_row_receives_gradient():
    # No padding row: the last word's embedding learns like any other.
    weight = torch.randn(V, D, requires_grad=True)
    words = torch.full((3, 2), V - 1)
    embedding_dropout(words, weight, 0.0).sum().backward()
    assert weight.grad[V - 1].abs().sum() > 0


def test_invalid_strategy_names_override():
    weight, words, _ = make_inputs()
    with pytest.raises(ValueError, match="embed_dropout=gather"):
        embedding_dropout(words, weight, 0.1, strategy="sparse")


class AllocationRecorder(TorchDispatchMode):
    """Record the storage address of every (V, D) tensor that an ATen op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.full_size: dict[int, str] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        outputs = result if isinstance(result, (tuple, list)) else (result,)
        for output in outputs:
            if isinstance(output, torch.Tensor) and tuple(output.shape) == (V, D):
                self.full_size.setdefault(output.untyped_storage().data_ptr(), str(func))
        return result


def full_size_storages(strategy: str) -> dict[int, str]:
    """Map each (V, D) storage that forward and backward create to the op that made it."""
    weight, words, grad_output = make_inputs()
    weight.requires_grad_(True)
    with AllocationRecorder() as recorder:
        output = embedding_dropout(words, weight, 0.3, strategy=strategy)
        output.backward(grad_output)
    # Views and in-place ops of the weight itself are not new memory.
    recorder.full_size.pop(weight.untyped_storage().data_ptr(), None)
    return recorder.full_size


def test_gather_builds_only_weight_gradient():
    assert len(full_size_storages("dense")) >= 2  # the masked weight and the gradient at least
    gather = full_size_storages("gather")
    assert list(gather.values()) == ["aten.embedding_dense_backward.default"]
