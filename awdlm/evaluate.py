"""Score a trained model on the validation or test split.

Examples::

    python -m awdlm.evaluate run=outputs/2026-01-31/12-00-00_defaults              # test ppl, batch size 1
    python -m awdlm.evaluate run=outputs/.../finetune split=valid
    python -m awdlm.evaluate run=outputs/.../best.pt cache=ptb                      # cache pointer, PTB values
    python -m awdlm.evaluate run=outputs/... cache=wikitext2                        # cache pointer, WikiText-2 values
    python -m awdlm.evaluate run=outputs/... cache.enabled=true cache.lambdah=0.2
    python -m awdlm.evaluate run=outputs/... dynamic=rms dynamic.lr=5e-5            # dynamic evaluation
    python -m awdlm.evaluate run=outputs/... dynamic=sgd split=valid
    python -m awdlm.evaluate -m run=outputs/... split=valid cache=ptb cache.theta=0.5,1.0 cache.lambdah=0.05,0.1

It logs the loss, perplexity, bits per character for character-level corpora
and the number of tokens scored. The corpus is the one the run was trained
on; ``data_dir=...`` points at another copy of it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig
from torch import Tensor

from awdlm.config import EvaluateConfig, to_evaluate_config
from awdlm.data import batchify
from awdlm.evaluation.cache import score_with_cache
from awdlm.evaluation.dynamic import DynamicEvaluator
from awdlm.evaluation.scoring import bits_per_character, mean_loss, perplexity, score_stream
from awdlm.runs import check_vocabulary, checkpoint_config, load_model, open_checkpoint, with_overrides
from awdlm.train import load_dataset
from awdlm.training.trainer import resolve_device

log = logging.getLogger("awdlm.evaluate")


def evaluate_run(config: EvaluateConfig) -> dict[str, Any]:
    """Score ``config.split`` of the run's corpus and return loss, ppl, tokens and, for characters, bpc."""
    device = resolve_device(config.device)
    path, state = open_checkpoint(Path(config.run), config.checkpoint, device)
    overrides = {key: getattr(config, key) for key in ("data_dir", "cache_dir") if getattr(config, key) is not None}
    train_config = with_overrides(checkpoint_config(state), overrides)
    corpus = load_dataset(train_config)
    check_vocabulary(corpus, state, path)
    model = load_model(state, train_config, device)
    source = batchify(corpus.split(config.split), config.batch_size).to(device)  # (N, B)
    bptt = config.bptt or train_config.trainer.bptt

    if config.dynamic.enabled:
        train_data = None
        if config.dynamic.rule == "rms":
            train_data = batchify(corpus.train, train_config.trainer.batch_size).to(device)
        log_probs: Iterator[Tensor] = DynamicEvaluator(model, config.dynamic, train_data).score(
            source, config.limit_batches
        )
        method = f"dynamic evaluation ({config.dynamic.rule}, lr {config.dynamic.lr}, decay {config.dynamic.decay})"
    elif config.cache.enabled:
        log_probs = score_with_cache(model, source, bptt, config.cache, config.limit_batches)
        cache = config.cache
        method = f"cache pointer (window {cache.window}, theta {cache.theta}, lambdah {cache.lambdah})"
    else:
        log_probs = score_stream(model, source, bptt, config.limit_batches)
        method = "plain"

    loss, tokens = mean_loss(log_probs)
    result: dict[str, Any] = {"loss": loss, "ppl": perplexity(loss), "tokens": tokens, "method": method}
    bpc = ""
    if train_config.dataset.level == "char":
        result["bpc"] = bits_per_character(loss)
        bpc = f" bpc {result['bpc']:.4f}"
    log.info(
        "%s %s: loss %.4f ppl %.2f%s on %d tokens (%s, batch size %d)",
        path,
        config.split,
        loss,
        result["ppl"],
        bpc,
        tokens,
        method,
        config.batch_size,
    )
    return result


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    config = to_evaluate_config(cfg)
    config.run = to_absolute_path(config.run)
    if config.data_dir is not None:
        config.data_dir = to_absolute_path(config.data_dir)
    return evaluate_run(config)["loss"]


if __name__ == "__main__":
    main()
