"""The non-monotone trigger and weight averaging of NT-ASGD."""

from __future__ import annotations

import torch
from torch import nn

from awdlm.training.averaging import NonMonotoneAveraging


def test_trigger_waits_for_nonmono_epochs():
    averaging = NonMonotoneAveraging(nonmono=2)
    # Earlier losses compared: none until more than 2 are recorded.
    assert not averaging.observe(5.0)
    assert not averaging.observe(6.0)
    assert not averaging.observe(7.0)
    # 7.5 > min([5.0]) of the losses before the last two.
    assert averaging.observe(7.5)


def test_trigger_ignores_recent_best():
    averaging = NonMonotoneAveraging(nonmono=2)
    for loss in (5.0, 4.0, 3.0):
        assert not averaging.observe(loss)
    # 4.5 is worse than the last two (4.0, 3.0) but better than 5.0: no trigger.
    assert not averaging.observe(4.5)
    # 4.2 > min(5.0, 4.0) = 4.0: trigger.
    assert averaging.observe(4.2)


def test_no_trigger_after_start():
    averaging = NonMonotoneAveraging(nonmono=0)
    averaging.observe(1.0)
    assert averaging.observe(2.0)
    averaging.start(nn.Linear(2, 2))
    assert not averaging.observe(3.0)
    assert averaging.history == [1.0, 2.0, 3.0]


class PartlyUsed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(3, 3)
        self.unused = nn.Linear(3, 3)  # never receives a gradient

    def forward(self, x):
        return self.used(x)


def test_average_of_steps_and_raw_weights_untouched():
    torch.manual_seed(0)
    model = PartlyUsed()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    averaging = NonMonotoneAveraging(nonmono=0)
    averaging.start(model)

    snapshots = []
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 3)).pow(2).sum().backward()
        optimizer.step()
        averaging.update(model)
        snapshots.append(model.used.weight.detach().clone())

    assert model.unused.weight.grad is None
    averaged = averaging.eval_model(model)
    assert averaged is not model
    torch.testing.assert_close(averaged.used.weight, torch.stack(snapshots).mean(0))
    assert torch.equal(model.used.weight, snapshots[-1])
    assert torch.equal(averaged.unused.weight, model.unused.weight)


def test_eval_model_before_start_is_raw():
    model = nn.Linear(2, 2)
    assert NonMonotoneAveraging(5).eval_model(model) is model
