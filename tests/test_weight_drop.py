"""Weight dropping on a stock nn.LSTM through torch.func.functional_call."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.func import functional_call
from torch.optim.swa_utils import AveragedModel

from awdlm.model.awd_lstm import AWDLSTM
from awdlm.model.weight_drop import WeightDropLSTM, pack_like


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
    weight = layer.lstm.weight_hh_l0.detach()
    dropped = torch.where(torch.rand_like(weight) >= 0.5, weight / 0.5, 0.0)
    reference = copy.deepcopy(layer.lstm)
    with torch.no_grad():
        reference.weight_hh_l0.copy_(dropped)
    expected, _ = reference(x, hidden)
    assert torch.equal(output, expected)


def test_dropped_weight_statistics():
    torch.manual_seed(0)
    layer = WeightDropLSTM(200, 400, wdrop=0.3)  # weight_hh_l0 is (1600, 400): 640,000 elements
    weight = layer.lstm.weight_hh_l0.detach()
    dropped = layer.dropped_weight().detach()
    is_kept = dropped != 0
    # The dropped fraction is 0.3 within 5 standard deviations (sqrt(0.3 * 0.7 / 640000) = 0.00057).
    assert abs((~is_kept).float().mean().item() - 0.3) < 0.003
    torch.testing.assert_close(dropped[is_kept], weight[is_kept] / 0.7)


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


def share_one_buffer(lstm: torch.nn.LSTM, gap: int = 3) -> list[int]:
    """Make the LSTM's parameters views of one buffer with ``gap`` elements between them, as cuDNN's layout may have."""
    parameters = [getattr(lstm, name) for name in lstm._flat_weights_names]
    offsets, position = [], 0
    for parameter in parameters:
        offsets.append(position)
        position += parameter.numel() + gap
    buffer = torch.full((position,), 7.0)
    for parameter, offset in zip(parameters, offsets):
        view = buffer[offset : offset + parameter.numel()].view_as(parameter)
        view.copy_(parameter.detach())
        parameter.data = view
    return offsets


def test_packed_weights_keep_layout():
    layer, x, hidden = make_layer()
    offsets = share_one_buffer(layer.lstm)
    names = layer.lstm._flat_weights_names
    dropped = layer.dropped_weight()
    packed = layer.packed_weights(dropped)

    assert list(packed) == names
    storages = {packed[name].untyped_storage().data_ptr() for name in names}
    assert len(storages) == 1
    assert [packed[name].storage_offset() for name in names] == offsets
    assert packed[names[0]].untyped_storage().nbytes() == layer.lstm.weight_ih_l0.untyped_storage().nbytes()
    assert torch.equal(packed["weight_hh_l0"], dropped)
    for name in names:
        if name != "weight_hh_l0":
            assert torch.equal(packed[name], getattr(layer.lstm, name))


def test_packed_weights_same_output_and_gradients():
    layer, x, hidden = make_layer()
    share_one_buffer(layer.lstm)
    dropped = layer.dropped_weight()
    parameters = list(layer.parameters())

    output, _ = functional_call(layer.lstm, layer.packed_weights(dropped), (x, hidden))
    grads = torch.autograd.grad(output.pow(2).sum(), parameters, retain_graph=True)  # dropped is shared
    expected, _ = functional_call(layer.lstm, {"weight_hh_l0": dropped}, (x, hidden))
    expected_grads = torch.autograd.grad(expected.pow(2).sum(), parameters)

    assert torch.equal(output, expected)
    for grad, expected_grad in zip(grads, expected_grads):
        assert torch.equal(grad, expected_grad)


def test_packed_weights_need_one_buffer():
    layer, _, _ = make_layer()
    dropped = layer.dropped_weight()
    assert list(layer.packed_weights(dropped)) == ["weight_hh_l0"]  # separate tensors on CPU


def test_pack_like_fills_gaps_with_zeros():
    a, b = torch.ones(2, 2), torch.full((3,), 2.0)
    first, second = pack_like([a, b], offsets=[5, 1], numel=10)
    buffer = torch.empty(0).set_(first.untyped_storage())
    assert buffer.tolist() == [0, 2, 2, 2, 0, 1, 1, 1, 1, 0]
    assert (first.storage_offset(), second.storage_offset()) == (5, 1)
    with pytest.raises(ValueError, match="overlapping"):
        pack_like([a, b], offsets=[0, 2], numel=10)
