"""Weight dropping on a stock nn.LSTM through torch.func.functional_call."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from awdlm.model.awd_lstm import AWDLSTM
from awdlm.model.weight_drop import WeightDropLSTM


def make_layer(wdrop: float = 0.5) -> tuple[WeightDropLSTM, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    layer = WeightDropLSTM(6, 8, wdrop)
    x = torch.randn(5, 3, 6)  # (T, B, input_size)
    hidden = (torch.zeros(1, 3, 8), torch.zeros(1, 3, 8))
    return layer, x, hidden


def test_training_forward_uses_one_dropped_weight():
    layer, x, hidden = make_layer()
    torch.manual_seed(1)
    output, _ = layer(x, hidden)

    # The same mask drawn by hand, applied to a plain copy of the LSTM.
    torch.manual_seed(1)
    dropped = F.dropout(layer.lstm.weight_hh_l0.detach(), p=0.5, training=True)
    reference = copy.deepcopy(layer.lstm)
    with torch.no_grad():
        reference.weight_hh_l0.copy_(dropped)
    expected, _ = reference(x, hidden)
    assert torch.equal(output, expected)


def test_mask_redrawn_each_forward():
    layer, x, hidden = make_layer()
    first, _ = layer(x, hidden)
    second, _ = layer(x, hidden)
    assert not torch.equal(first, second)


def test_eval_uses_full_weight():
    layer, x, hidden = make_layer()
    layer.eval()
    output, _ = layer(x, hidden)
    expected, _ = layer.lstm(x, hidden)
    assert torch.equal(output, expected)
    state = torch.get_rng_state()
    layer(x, hidden)
    assert torch.equal(torch.get_rng_state(), state)


def test_gradient_reaches_raw_weight():
    layer, x, hidden = make_layer()
    output, _ = layer(x, hidden)
    output.sum().backward()
    grad = layer.lstm.weight_hh_l0.grad
    assert grad is not None
    assert grad.abs().sum() > 0
    # Dropped entries get no gradient: about half of them are exactly zero.
    zero_fraction = (grad == 0).float().mean().item()
    assert 0.3 < zero_fraction < 0.7


def test_state_dict_keys_are_standard():
    layer, _, _ = make_layer()
    assert set(layer.state_dict()) == {"lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0", "lstm.bias_hh_l0"}
    assert all(isinstance(p, torch.nn.Parameter) for p in layer.parameters())


def test_train_eval_train_cycles():
    layer, x, hidden = make_layer()
    for _ in range(3):
        layer.train()
        layer(x, hidden)[0].sum().backward()
        layer.eval()
        with torch.no_grad():
            output, _ = layer(x, hidden)
        expected, _ = layer.lstm(x, hidden)
        assert torch.equal(output, expected)


def small_model() -> AWDLSTM:
    torch.manual_seed(0)
    return AWDLSTM(50, emsize=8, nhid=12, nlayers=3)


def run_model(model: AWDLSTM, seed: int = 5) -> torch.Tensor:
    torch.manual_seed(seed)
    words = torch.randint(0, 50, (7, 2))
    return model(words, model.init_hidden(2)).logits


def test_model_survives_deepcopy():
    model = small_model()
    clone = copy.deepcopy(model)
    assert torch.equal(run_model(model), run_model(clone))
    assert clone.decoder.weight is clone.encoder.weight
    run_model(clone).sum().backward()
    assert clone.rnns[0].lstm.weight_hh_l0.grad is not None
    assert model.rnns[0].lstm.weight_hh_l0.grad is None


def test_model_survives_averaged_model():
    model = small_model()
    averaged = AveragedModel(model)
    averaged.update_parameters(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    run_model(model).sum().backward()
    optimizer.step()
    averaged.update_parameters(model)
    for p_avg, p_model in zip(averaged.module.parameters(), model.parameters()):
        assert not torch.equal(p_avg, p_model)
    averaged.eval()
    run_model(averaged.module)  # still runs


def test_model_state_dict_round_trip():
    model = small_model()
    model.eval()
    other = AWDLSTM(50, emsize=8, nhid=12, nlayers=3)
    other.load_state_dict(model.state_dict())
    other.eval()
    assert torch.equal(run_model(model), run_model(other))
    assert "rnns.0.lstm.weight_hh_l0" in model.state_dict()


def test_model_to_dtype():
    model = small_model().to(torch.float64)
    logits = run_model(model)
    assert logits.dtype == torch.float64
    logits.sum().backward()
    assert model.rnns[2].lstm.weight_hh_l0.grad.dtype == torch.float64
