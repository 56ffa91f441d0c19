"""Clipping and the optimizer step that a non-finite loss or gradient skips on the device."""

from __future__ import annotations

import math

import pytest
import torch
from hydra import compose, initialize_config_module
from torch import nn

from awdlm.config import to_config
from awdlm.training.trainer import build_optimizer, clip_and_step


def make_step(optim: str):
    with initialize_config_module(config_module="awdlm.conf", version_base="1.3"):
        config = to_config(compose(config_name="config", overrides=[f"optim={optim}", "trainer.clip=0.25"]))
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = build_optimizer(config, model)
    return config, model, optimizer


def backward(model: nn.Linear, scale: float = 1.0) -> torch.Tensor:
    loss = model(torch.randn(5, 4)).pow(2).mean() * scale
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach().reshape(1)


@pytest.mark.parametrize("optim", ["ntasgd", "adam"])
def test_finite_step_clips_and_updates(optim):
    config, model, optimizer = make_step(optim)
    before = [p.detach().clone() for p in model.parameters()]
    losses = backward(model)
    grad_norm, skipped = clip_and_step(model, optimizer, losses, config.trainer.bptt, config.trainer)

    assert not skipped.item()
    assert grad_norm.item() > 0
    clipped = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert clipped.item() <= config.trainer.clip + 1e-6
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


@pytest.mark.parametrize("optim", ["ntasgd", "adam"])
def test_nan_loss_skips_step(optim):
    config, model, optimizer = make_step(optim)
    before = [p.detach().clone() for p in model.parameters()]
    losses = backward(model, scale=math.nan)
    _, skipped = clip_and_step(model, optimizer, losses, config.trainer.bptt, config.trainer)

    assert skipped.item()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    if optim == "adam":
        assert all(state["step"].item() == 0 for state in optimizer.state.values())


def test_skip_flag_skips_finite_step():
    config, model, optimizer = make_step("ntasgd")
    before = [p.detach().clone() for p in model.parameters()]
    losses = backward(model)
    _, skipped = clip_and_step(model, optimizer, losses, config.trainer.bptt, config.trainer, skip=torch.tensor(True))

    assert skipped.item()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_learning_rate_restored_after_step():
    config, model, optimizer = make_step("ntasgd")
    losses = backward(model)
    clip_and_step(model, optimizer, losses, config.trainer.bptt // 2, config.trainer)
    assert optimizer.param_groups[0]["lr"] == config.optim.lr
