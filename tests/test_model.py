"""The AWD-LSTM model: shapes, tying, dropout placement, AR and TAR."""

from __future__ import annotations

import torch

from awdlm.model.awd_lstm import (
    AWDLSTM,
    activation_regularization,
    detach_hidden,
    temporal_activation_regularization,
)
from awdlm.model.locked_dropout import LockedDropout


def test_forward_shapes_tied():
    model = AWDLSTM(30, emsize=6, nhid=10, nlayers=3, tied=True)
    words = torch.randint(0, 30, (9, 4))
    output = model(words, model.init_hidden(4))
    assert output.logits.shape == (9, 4, 30)
    assert output.last_raw.shape == (9, 4, 6)
    assert [h.shape for h, _ in output.hidden] == [(1, 4, 10), (1, 4, 10), (1, 4, 6)]
    assert model.decoder.weight is model.encoder.weight


def test_forward_shapes_untied():
    model = AWDLSTM(30, emsize=6, nhid=10, nlayers=2, tied=False)
    output = model(torch.randint(0, 30, (3, 2)), model.init_hidden(2))
    assert output.last_dropped.shape == (3, 2, 10)
    assert model.decoder.weight is not model.encoder.weight


def test_eval_is_deterministic():
    model = AWDLSTM(30, emsize=6, nhid=10, nlayers=3).eval()
    words = torch.randint(0, 30, (5, 2))
    first = model(words, model.init_hidden(2)).logits
    second = model(words, model.init_hidden(2)).logits
    assert torch.equal(first, second)


def test_hidden_carries_state():
    model = AWDLSTM(30, emsize=6, nhid=10, nlayers=2).eval()
    words = torch.randint(0, 30, (5, 2))
    hidden = model(words, model.init_hidden(2)).hidden
    fresh = model(words, model.init_hidden(2)).logits
    carried = model(words, detach_hidden(hidden)).logits
    assert not torch.equal(fresh, carried)
    assert all(not h.requires_grad for h, _ in detach_hidden(hidden))


def test_locked_dropout_mask_constant_over_time():
    torch.manual_seed(0)
    dropout = LockedDropout()
    x = torch.ones(20, 3, 16)
    y = dropout(x, 0.5)
    assert torch.equal(y, y[:1].expand_as(y))
    assert set(y.unique().tolist()) == {0.0, 2.0}
    dropout.eval()
    assert torch.equal(dropout(x, 0.5), x)


def test_ar_and_tar_values():
    x = torch.tensor([[[1.0, -1.0]], [[3.0, 1.0]]])  # (T=2, B=1, D=2)
    assert activation_regularization(x, 2.0).item() == 2.0 * (1 + 1 + 9 + 1) / 4
    assert temporal_activation_regularization(x, 0.5).item() == 0.5 * (4 + 4) / 2
