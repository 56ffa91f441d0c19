"""The chunked decoder and cross-entropy against F.linear followed by F.cross_entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from awdlm.model import linear_cross_entropy as lce
from awdlm.model.awd_lstm import AWDLSTM


def make_inputs(rows: int = 50, hidden: int = 8, vocab: int = 37, bias: bool = True):
    torch.manual_seed(0)
    features = torch.randn(rows, hidden, requires_grad=True)
    weight = (0.5 * torch.randn(vocab, hidden)).requires_grad_()
    bias_tensor = torch.randn(vocab, requires_grad=True) if bias else None
    targets = torch.randint(vocab, (rows,))
    return features, weight, bias_tensor, targets


def gradients(loss: torch.Tensor, tensors) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, [t for t in tensors if t is not None]))


@pytest.mark.parametrize("chunk_elements", [37, 37 * 7, 2**22])  # one row, uneven chunks, one chunk
@pytest.mark.parametrize("bias", [True, False])
def test_matches_unfused_loss_and_gradients(monkeypatch, chunk_elements, bias):
    monkeypatch.setattr(lce, "CHUNK_ELEMENTS", chunk_elements)
    features, weight, bias_tensor, targets = make_inputs(bias=bias)
    inputs = (features, weight, bias_tensor)

    expected = F.cross_entropy(F.linear(features, weight, bias_tensor), targets)
    loss = lce.linear_cross_entropy(features, weight, bias_tensor, targets)
    torch.testing.assert_close(loss, expected)
    for grad, expected_grad in zip(gradients(3 * loss, inputs), gradients(3 * expected, inputs)):
        torch.testing.assert_close(grad, expected_grad)


def test_accepts_time_major_batches():
    features, weight, bias, targets = make_inputs(rows=24)
    loss = lce.linear_cross_entropy(features.view(6, 4, 8), weight, bias, targets.view(6, 4))
    torch.testing.assert_close(loss, F.cross_entropy(F.linear(features, weight, bias), targets))


def test_no_grad_computes_loss_only():
    features, weight, bias, targets = make_inputs()
    with torch.no_grad():
        loss = lce.linear_cross_entropy(features, weight, bias, targets)
        expected = F.cross_entropy(F.linear(features, weight, bias), targets)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, expected)


def test_gradient_of_weight_only():
    features, weight, bias, targets = make_inputs()
    features.requires_grad_(False)
    loss = lce.linear_cross_entropy(features, weight, bias, targets)
    (grad,) = torch.autograd.grad(loss, [weight])
    (expected,) = torch.autograd.grad(F.cross_entropy(F.linear(features, weight, bias), targets), [weight])
    torch.testing.assert_close(grad, expected)


def test_bfloat16_autocast_keeps_float32_results():
    features, weight, bias, targets = make_inputs(rows=64, hidden=32, vocab=300)
    expected = F.cross_entropy(F.linear(features, weight, bias), targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = lce.linear_cross_entropy(features, weight, bias, targets)
    grads = gradients(loss, (features, weight, bias))

    assert loss.dtype == torch.float32
    assert [g.dtype for g in grads] == [torch.float32] * 3
    # bfloat16 keeps 8 bits of mantissa: the loss agrees to about 1 %.
    torch.testing.assert_close(loss, expected, rtol=0.02, atol=0.0)
    for grad, expected_grad in zip(grads, gradients(expected, (features, weight, bias))):
        torch.testing.assert_close(grad, expected_grad, rtol=0.05, atol=0.01)


def test_model_loss_matches_logits_path():
    torch.manual_seed(0)
    model = AWDLSTM(50, emsize=12, nhid=16, nlayers=2).eval()
    words = torch.randint(50, (9, 4))
    targets = torch.randint(50, (9, 4))

    with_targets = model(words, model.init_hidden(4), targets)
    without = model(words, model.init_hidden(4))
    assert with_targets.logits is None
    assert without.loss is None
    expected = F.cross_entropy(without.logits.view(-1, 50), targets.view(-1))
    torch.testing.assert_close(with_targets.loss, expected)
    for (h, c), (h_ref, c_ref) in zip(with_targets.hidden, without.hidden):
        assert torch.equal(h, h_ref)
        assert torch.equal(c, c_ref)
