"""The recipe after training on real PTB: finetuning, the cache pointer, dynamic evaluation and the API."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from helpers import compose_config, load, run_module, snapshot
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from awdlm.api import LanguageModel
from awdlm.config import CacheConfig, DynamicConfig, EvaluateConfig
from awdlm.data import UNK, batchify
from awdlm.evaluate import evaluate_run
from awdlm.evaluation.cache import score_with_cache
from awdlm.evaluation.dynamic import DynamicEvaluator
from awdlm.evaluation.scoring import score_stream
from awdlm.finetune import finetune
from awdlm.train import load_dataset
from awdlm.training.trainer import Trainer

PRETRAIN_EPOCHS = 3
# A slightly larger model than the resume tests use, trained long enough to beat unigram statistics.
PRETRAIN = [
    "model.emsize=32",
    "model.nhid=64",
    "trainer.bptt=20",
    "trainer.batch_size=20",
    f"trainer.epochs={PRETRAIN_EPOCHS}",
    "trainer.limit_train_batches=100",
    "trainer.limit_val_batches=10",
    "trainer.checkpoint_every=1000",
]
VALID_WINDOWS = 30  # windows of 20 tokens scored in the evaluation tests


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("corpus-cache")


@pytest.fixture(scope="module")
def pretrained(data_dir, cache_dir, tmp_path_factory):
    """A short pretraining run of a small model; returns its run directory."""
    config = compose_config(data_dir, cache_dir, PRETRAIN)
    run_dir = tmp_path_factory.mktemp("pretrain") / "run"
    Trainer(config, load_dataset(config), run_dir).fit()
    return run_dir


@pytest.fixture(scope="module")
def corpus(pretrained, data_dir, cache_dir):
    return load_dataset(compose_config(data_dir, cache_dir, PRETRAIN))


@pytest.fixture()
def model(pretrained):
    return LanguageModel.load(pretrained, device="cpu").model


def valid_loss(pretrained, **changes) -> dict:
    config = EvaluateConfig(run=str(pretrained), split="valid", limit_batches=VALID_WINDOWS, device="cpu")
    return evaluate_run(dataclasses.replace(config, **changes))


def test_finetune_improves_or_holds(pretrained, tmp_path):
    pretrain_best = (pretrained / "best.pt").read_bytes()
    pretrain_val = load(pretrained / "best.pt")["val_loss"]

    metrics = finetune(pretrained, tmp_path / "finetune", {"trainer.epochs": 3})

    assert metrics["best/val_loss"] <= pretrain_val
    assert math.isfinite(metrics["test/ppl"])
    assert (pretrained / "best.pt").read_bytes() == pretrain_best
    if (tmp_path / "finetune" / "best.pt").is_file():
        assert load(tmp_path / "finetune" / "best.pt")["val_loss"] < pretrain_val
    last = load(tmp_path / "finetune" / "last.pt")
    assert last["averaged"] is not None
    assert last["config"]["optim"]["average_after"] == 0

    events = EventAccumulator(str(tmp_path / "finetune"))
    events.Reload()
    steps = [event.step for event in events.Scalars("val/loss")]
    assert steps[0] == PRETRAIN_EPOCHS + 1
    assert steps == list(range(PRETRAIN_EPOCHS + 1, PRETRAIN_EPOCHS + 1 + len(steps)))


def test_finetune_cli_runs(pretrained, tmp_path):
    result = run_module(
        "awdlm.finetune",
        tmp_path / "finetune",
        f"run={pretrained}",
        "trainer.epochs=1",
        "trainer.limit_train_batches=20",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "finetune" / "last.pt").is_file()
    assert (tmp_path / "finetune" / "train.log").is_file()
    assert "test loss" in result.stdout + result.stderr


def test_finetune_cli_rejects_existing_run(pretrained):
    before = snapshot(pretrained)
    before.pop("train.log", None)  # every command appends to the folder's log
    result = run_module("awdlm.finetune", pretrained, f"run={pretrained}", "trainer.epochs=1")
    assert result.returncode == 1
    assert f"python -m awdlm.train resume={pretrained}" in result.stderr
    after = snapshot(pretrained)
    after.pop("train.log", None)
    assert after == before


def test_cache_lambda_zero_equals_plain(pretrained):
    plain = valid_loss(pretrained)
    cached = valid_loss(pretrained, cache=CacheConfig(enabled=True, lambdah=0.0))
    assert cached["tokens"] == plain["tokens"]
    assert cached["loss"] == plain["loss"]


def test_cache_ptb_preset_beats_plain(pretrained):
    plain = valid_loss(pretrained)
    cached = valid_loss(pretrained, cache=CacheConfig(enabled=True, window=500, theta=1.0, lambdah=0.1))
    assert cached["tokens"] == plain["tokens"]
    assert cached["ppl"] < plain["ppl"]


@pytest.mark.parametrize(
    "dynamic",
    [
        DynamicConfig(enabled=True, rule="sgd", lr=1.0, decay=0.0),
        DynamicConfig(enabled=True, rule="rms", lr=2e-3, decay=0.01, stat_batches=20),
    ],
    ids=["sgd", "rms"],
)
def test_dynamic_beats_plain(dynamic, pretrained):
    plain = valid_loss(pretrained)
    # Segments of 5 tokens: 4 times as many windows cover the same 600 tokens.
    adapted = valid_loss(pretrained, dynamic=dynamic, limit_batches=VALID_WINDOWS * 4)
    assert adapted["tokens"] == plain["tokens"]
    assert adapted["ppl"] < plain["ppl"]


def future_changed(stream: torch.Tensor, position: int, vocab_size: int) -> torch.Tensor:
    """Return a copy of ``stream`` with every token from ``position`` on replaced by random ones."""
    changed = stream.clone()
    generator = torch.Generator().manual_seed(0)
    changed[position:] = torch.randint(vocab_size, (stream.numel() - position,), generator=generator)
    return changed


def test_dynamic_scores_before_adapting(model, corpus):
    """A token's score may depend only on the tokens before it, although the model adapts as it reads."""
    stream = corpus.valid[:401]
    position = 203  # inside a 5-token segment
    dynamic = DynamicConfig(enabled=True, rule="sgd", lr=1.0, decay=0.0)
    scores = {}
    for name, tokens in (("original", stream), ("changed", future_changed(stream, position, len(corpus.vocab)))):
        evaluator = DynamicEvaluator(model, dynamic)
        scores[name] = torch.cat(list(evaluator.score(batchify(tokens, 1)))).flatten()  # one per target
        evaluator.reset()
    plain = torch.cat(list(score_stream(model, batchify(stream, 1), bptt=5))).flatten()

    # Target i is token i + 1, so the targets before `position - 1` never see the changed tokens.
    assert torch.equal(scores["original"][: position - 1], scores["changed"][: position - 1])
    assert not torch.equal(scores["original"][position:], scores["changed"][position:])
    # The first segment is scored with the trained weights, the later ones with adapted weights.
    # (Forward passes with and without autograd may round differently in the last bit.)
    assert torch.allclose(scores["original"][:5], plain[:5], rtol=0, atol=1e-5)
    assert not torch.allclose(scores["original"][5:], plain[5:])


def test_cache_scores_only_past_words(model, corpus):
    stream = corpus.valid[:401]
    position = 203
    cache = CacheConfig(enabled=True, window=100, theta=1.0, lambdah=0.1)
    original = torch.cat(list(score_with_cache(model, batchify(stream, 1), 20, cache))).flatten()
    changed_stream = future_changed(stream, position, len(corpus.vocab))
    changed = torch.cat(list(score_with_cache(model, batchify(changed_stream, 1), 20, cache))).flatten()
    assert torch.equal(original[: position - 1], changed[: position - 1])
    assert not torch.equal(original[position:], changed[position:])


def test_evaluate_cli_reports_perplexity(pretrained, tmp_path):
    result = run_module(
        "awdlm.evaluate", tmp_path / "evaluate", f"run={pretrained}", "split=valid", "limit_batches=5", "cache=ptb"
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "valid: loss" in output
    assert "ppl" in output
    assert "on 100 tokens (cache pointer (window 500, theta 1.0, lambdah 0.1)" in output


def test_api_score_sentence(pretrained):
    lm = LanguageModel.load(pretrained, device="cpu")
    result = lm.score("the company said it expects higher sales")
    assert result.tokens == ["the", "company", "said", "it", "expects", "higher", "sales", "<eos>"]
    assert len(result.log_probs) == len(result.tokens)
    assert all(value < 0 for value in result.log_probs)
    assert result.total_log_prob == pytest.approx(sum(result.log_probs))
    assert math.isfinite(result.perplexity)


def test_api_unknown_word_warns(pretrained):
    lm = LanguageModel.load(pretrained, device="cpu")
    with pytest.warns(UserWarning, match=r"scored as <unk>: \['flibbertigibbet'\]"):
        result = lm.score("the flibbertigibbet said")
    assert result.tokens == ["the", UNK, "said", "<eos>"]
    assert result.log_probs[1] == pytest.approx(lm.score(f"the {UNK} said").log_probs[1])


def test_api_generate_seeded(pretrained):
    lm = LanguageModel.load(pretrained, device="cpu")
    text = lm.generate("the company said", words=40, temperature=0.8, seed=1)
    assert text.startswith("the company said ")
    assert len(text.split()) <= 3 + 40
    assert text == lm.generate("the company said", words=40, temperature=0.8, seed=1)
    assert text != lm.generate("the company said", words=40, temperature=0.8, seed=2)


def test_generate_cli_prints_sample(pretrained, tmp_path):
    result = run_module(
        "awdlm.generate",
        tmp_path,
        f"run={pretrained}",
        "words=30",
        "temperature=0.8",
        "seed=1",
        "prompt=the company said",
        "device=cpu",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = LanguageModel.load(pretrained, device="cpu").generate("the company said", 30, 0.8, seed=1)
    assert result.stdout == expected + "\n"


def test_trainer_logs_bpc_for_chars(data_dir, cache_dir, tmp_path):
    config = compose_config(data_dir, cache_dir, ["trainer.epochs=1", "trainer.limit_train_batches=5"])
    corpus = load_dataset(config)
    # The trainer reads the level only to report bpc, so the word corpus can stand in for characters.
    config.dataset.level = "char"
    metrics = Trainer(config, corpus, tmp_path / "run").fit()
    assert metrics["test/bpc"] == pytest.approx(metrics["test/loss"] / math.log(2))

    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    (val_bpc,) = events.Scalars("val/bpc")
    (val_loss,) = events.Scalars("val/loss")
    assert val_bpc.value == pytest.approx(val_loss.value / math.log(2))
