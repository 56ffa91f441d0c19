"""Dense and gather embedding dropout train identically on real Penn Treebank."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from awdlm.data import BPTTSampler, batchify, get_batch, load_corpus
from awdlm.model.awd_lstm import (
    AWDLSTM,
    activation_regularization,
    detach_hidden,
    temporal_activation_regularization,
)

STEPS = 200


class Run:
    """One model, optimizer and random-number stream, stepped on demand."""

    def __init__(self, strategy: str, tied: bool, ntoken: int) -> None:
        torch.manual_seed(0)
        self.model = AWDLSTM(
            ntoken, emsize=24, nhid=48, nlayers=3, dropoute=0.1, tied=tied, embed_dropout=strategy
        )
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=30, weight_decay=1.2e-6)
        self.hidden = self.model.init_hidden(10)
        self.rng_state = torch.get_rng_state()

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        torch.set_rng_state(self.rng_state)
        output = self.model(inputs, detach_hidden(self.hidden))
        self.hidden = output.hidden
        loss = F.cross_entropy(output.logits.view(-1, self.model.ntoken), targets.reshape(-1))
        loss = loss + activation_regularization(output.last_dropped, 2.0)
        loss = loss + temporal_activation_regularization(output.last_raw, 1.0)
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.25)
        self.optimizer.step()
        self.rng_state = torch.get_rng_state()
        return output.logits.detach()


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_dense_gather_identical_200_steps(tied, data_dir, tmp_path):
    corpus = load_corpus(
        {split: data_dir / "ptb" / f"ptb.{split}.txt" for split in ("train", "valid", "test")},
        tmp_path,
        name="ptb",
    )
    train = batchify(corpus.train, 10)
    dense = Run("dense", tied, len(corpus.vocab))
    gather = Run("gather", tied, len(corpus.vocab))
    sampler = BPTTSampler(20, seed=0)

    position = 0
    for step in range(STEPS):
        inputs, targets = get_batch(train, position, sampler.sample())
        position += inputs.size(0)
        dense_logits = dense.step(inputs, targets)
        gather_logits = gather.step(inputs, targets)
        assert torch.equal(dense_logits, gather_logits), f"logits differ at step {step}"
        for (name, p_dense), p_gather in zip(dense.model.named_parameters(), gather.model.parameters()):
            assert torch.equal(p_dense, p_gather), f"{name} differs at step {step}"
    # The encoder must have trained, or the comparison proves nothing.
    assert not torch.equal(dense.model.encoder.weight, Run("dense", tied, len(corpus.vocab)).model.encoder.weight)
