"""Typed configuration: the schema behind ``awdlm/conf`` and its validation.

Hydra composes the YAML files in ``awdlm/conf``; :func:`to_config` merges the
result onto these dataclasses, which rejects unknown keys and wrong types, and
then checks every value's range. Each field documents its meaning and unit
once; the YAML files repeat the defaults of Merity, Keskar and Socher (2018).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf, open_dict


@dataclass
class DatasetConfig:
    """Location, split file names, tokenization and download sources of a corpus."""

    name: str = "ptb"  # a label: names the corpus cache file; ptb, wikitext2 and ptb_char can be downloaded
    path: str = "${data_dir}/ptb"  # folder that contains the three split files
    train: str = "ptb.train.txt"
    valid: str = "ptb.valid.txt"
    test: str = "ptb.test.txt"
    level: str = "word"  # word or char: what one token is; char makes the trainer report bits per character
    tokenizer: Optional[str] = None  # whitespace or chars; null: whitespace at word level, chars at char level
    min_count: int = 1  # training-split occurrences a type needs to enter the vocabulary
    max_size: Optional[int] = None  # most vocabulary entries, <eos> and <unk> included; null: no limit
    download: bool = True  # fetch a known dataset from `sources` when its files are missing
    sources: list[str] = field(default_factory=list)  # archive or folder URLs or local paths, tried in order


@dataclass
class ModelConfig:
    """Sizes and dropout rates of the AWD-LSTM. A dropout rate of 0 disables it."""

    emsize: int = 400  # word embedding size; also the last LSTM layer's size when tied
    nhid: int = 1150  # units in every LSTM layer but the last
    nlayers: int = 3  # number of stacked single-layer LSTMs
    dropout: float = 0.4  # locked dropout on the last LSTM layer's output
    dropouth: float = 0.25  # locked dropout between LSTM layers
    dropouti: float = 0.4  # locked dropout on the embedded input
    wdrop: float = 0.5  # DropConnect on each LSTM's hidden-to-hidden weight
    tied: bool = True  # share the embedding matrix with the decoder


@dataclass
class EmbedDropoutConfig:
    """Embedding dropout (``dropoute`` in Merity, Keskar and Socher, 2018): drops whole word types."""

    strategy: str = "dense"  # dense (reference, builds a V x D mask) or gather (same numbers, less memory)
    p: float = 0.1  # probability of dropping a word type in one forward pass


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule."""

    name: str = "ntasgd"  # ntasgd: SGD that switches to averaging; adam: Adam with step drops
    lr: float = 30.0  # learning rate at a BPTT length of exactly `bptt`
    wdecay: float = 1.2e-6  # L2 weight decay
    nonmono: int = 5  # NT-ASGD: recent validation losses ignored when testing for no improvement
    when: list[int] = field(default_factory=list)  # epochs after which lr is multiplied by lr_drop
    lr_drop: float = 0.1  # factor applied to lr at each epoch in `when`
    # NT-ASGD: start averaging after this many epochs, whatever the validation loss does.
    # 0 averages from the first step (finetuning). null leaves the switch to the criterion.
    average_after: Optional[int] = None


@dataclass
class TrainerConfig:
    """The training loop: batching, BPTT, loss terms, limits and device."""

    epochs: int = 500
    batch_size: int = 20  # training columns
    eval_batch_size: int = 10  # validation columns
    test_batch_size: int = 1  # test columns
    bptt: int = 70  # base BPTT length in tokens
    clip: float = 0.25  # maximum gradient L2 norm; 0 disables clipping
    alpha: float = 2.0  # AR: weight of the squared dropped last-layer activations
    beta: float = 1.0  # TAR: weight of the squared change of raw last-layer activations
    limit_train_batches: Optional[int] = None  # stop each epoch after this many batches
    limit_val_batches: Optional[int] = None  # validate on this many windows only
    limit_test_batches: Optional[int] = None  # test on this many windows only
    log_interval: int = 50  # batches between console updates of the training loss
    checkpoint_every: int = 500  # batches between writes of last.pt; last.pt is also written at every epoch end
    # Stop once averaging is on and the non-monotone criterion fires again on
    # the averaged weights' validation losses (finetuning).
    stop_when_stalled: bool = False
    device: str = "auto"  # auto (CUDA when present), cpu, cuda or cuda:N
    # fp32, or bf16: the training forward pass runs under bfloat16 autocast; evaluation stays float32.
    precision: str = "fp32"


@dataclass
class Config:
    """The whole run."""

    seed: int = 141  # seeds every random draw: weights, dropout masks, BPTT lengths
    data_dir: str = "data"  # folder with ptb/ and wikitext-2/
    cache_dir: Optional[str] = "~/.cache/awdlm"  # tokenized-corpus cache; null disables it
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    embed_dropout: EmbedDropoutConfig = field(default_factory=EmbedDropoutConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the override to change."""


def _check(condition: bool, key: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ConfigError(f"invalid {key}={value!r}: expected {allowed} (override with {key}=...)")


def validate(config: Config) -> None:
    """Raise ConfigError naming the first out-of-range value and its override."""
    model, trainer, optim = config.model, config.trainer, config.optim
    dataset = config.dataset
    _check(dataset.level in ("word", "char"), "dataset.level", dataset.level, "word or char")
    _check(
        dataset.tokenizer in (None, "whitespace", "chars"),
        "dataset.tokenizer",
        dataset.tokenizer,
        "null, whitespace or chars",
    )
    _check(dataset.min_count >= 1, "dataset.min_count", dataset.min_count, "an integer >= 1")
    _check(
        dataset.max_size is None or dataset.max_size >= 2,
        "dataset.max_size",
        dataset.max_size,
        "null or an integer >= 2 (room for <eos> and <unk>)",
    )
    _check(bool(dataset.path), "dataset.path", dataset.path, "the folder that contains the split files")
    for key in ("train", "valid", "test"):
        _check(bool(getattr(dataset, key)), f"dataset.{key}", getattr(dataset, key), "a file name")
    for key in ("emsize", "nhid", "nlayers"):
        _check(getattr(model, key) >= 1, f"model.{key}", getattr(model, key), "an integer >= 1")
    for key in ("dropout", "dropouth", "dropouti", "wdrop"):
        value = getattr(model, key)
        _check(0 <= value < 1, f"model.{key}", value, "a probability in [0, 1)")
    _check(
        config.embed_dropout.strategy in ("dense", "gather"),
        "embed_dropout",
        config.embed_dropout.strategy,
        "dense or gather",
    )
    _check(0 <= config.embed_dropout.p < 1, "embed_dropout.p", config.embed_dropout.p, "a probability in [0, 1)")

    _check(trainer.precision in ("fp32", "bf16"), "trainer.precision", trainer.precision, "fp32 or bf16")

    _check(optim.name in ("ntasgd", "adam"), "optim", optim.name, "ntasgd or adam")
    _check(optim.lr > 0, "optim.lr", optim.lr, "a number > 0")
    _check(optim.wdecay >= 0, "optim.wdecay", optim.wdecay, "a number >= 0")
    _check(optim.nonmono >= 0, "optim.nonmono", optim.nonmono, "an integer >= 0")
    _check(0 < optim.lr_drop <= 1, "optim.lr_drop", optim.lr_drop, "a factor in (0, 1]")
    _check(
        optim.average_after is None or optim.average_after >= 0,
        "optim.average_after",
        optim.average_after,
        "null or an integer >= 0",
    )
    _check(
        optim.average_after is None or optim.name == "ntasgd",
        "optim.average_after",
        optim.average_after,
        "null unless optim=ntasgd",
    )

    for key in ("epochs", "batch_size", "eval_batch_size", "test_batch_size", "log_interval", "checkpoint_every"):
        _check(getattr(trainer, key) >= 1, f"trainer.{key}", getattr(trainer, key), "an integer >= 1")
    _check(trainer.bptt >= 2, "trainer.bptt", trainer.bptt, "an integer >= 2")
    for key in ("clip", "alpha", "beta"):
        _check(getattr(trainer, key) >= 0, f"trainer.{key}", getattr(trainer, key), "a number >= 0")
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        value = getattr(trainer, key)
        _check(value is None or value >= 1, f"trainer.{key}", value, "null or an integer >= 1")
    device = trainer.device
    _check(
        device in ("auto", "cpu", "cuda") or device.startswith("cuda:"),
        "trainer.device",
        device,
        "auto, cpu, cuda or cuda:N",
    )


# Keys of `python -m awdlm.train` that choose what to do, not how to train: not part of a Config.
COMMAND_KEYS = ("resume",)


def to_config(cfg: DictConfig) -> Config:
    """Merge a composed Hydra config onto the schema, validate it and return dataclasses."""
    cfg = cfg.copy()
    with open_dict(cfg):
        for key in COMMAND_KEYS:
            cfg.pop(key, None)
    merged = OmegaConf.merge(OmegaConf.structured(Config), cfg)
    config = OmegaConf.to_object(merged)
    assert isinstance(config, Config)
    validate(config)
    return config


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dataclasses into ``{"model.emsize": 400, ...}`` for hyper-parameter logs."""
    flat: dict[str, Any] = {}
    for item in fields(config):
        value = getattr(config, item.name)
        key = f"{prefix}{item.name}"
        if is_dataclass(value):
            flat.update(flatten(value, f"{key}."))
        elif isinstance(value, (int, float, str, bool)):
            flat[key] = value
        else:
            flat[key] = str(value)
    return flat


@dataclass
class CacheConfig:
    """Continuous cache pointer (Grave, Joulin and Usunier, 2017) mixed into the model's distribution."""

    enabled: bool = False
    window: int = 500  # past hidden states kept per column; each is paired with the word that followed it
    theta: float = 1.0  # inverse temperature of the attention over the cached hidden states
    lambdah: float = 0.1  # weight of the cache distribution in the mixture; 0 gives the plain model


@dataclass
class DynamicConfig:
    """Dynamic evaluation (Krause, Kahembwe, Murray and Renals, 2018): adapt to each segment after scoring it."""

    enabled: bool = False
    rule: str = "rms"  # sgd: plain gradient step; rms: step divided by the training gradients' RMS
    lr: float = 2e-5  # step size of the adaptation
    decay: float = 0.02  # lambda: pull toward the trained weights at every step; 0 disables it
    epsilon: float = 1e-3  # rms only: added to the gradient RMS before dividing
    bptt: int = 5  # tokens per segment; the weights change after every segment
    stat_batches: int = 100  # rms only: training windows used to measure the gradient RMS


@dataclass
class EvaluateConfig:
    """One evaluation of a trained model (``python -m awdlm.evaluate``)."""

    run: str = "???"  # run directory, or the path of a checkpoint file
    checkpoint: str = "best.pt"  # file inside the run directory
    split: str = "test"  # valid or test
    batch_size: int = 1  # evaluation columns
    bptt: Optional[int] = None  # window length of plain and cache scoring; null: the run's trainer.bptt
    limit_batches: Optional[int] = None  # score this many windows only (segments with dynamic evaluation)
    device: str = "auto"  # auto (CUDA when present), cpu, cuda or cuda:N
    data_dir: Optional[str] = None  # folder with the corpora; null: the run's data_dir
    cache_dir: Optional[str] = None  # tokenized-corpus cache; null: the run's cache_dir
    cache: CacheConfig = field(default_factory=CacheConfig)
    dynamic: DynamicConfig = field(default_factory=DynamicConfig)


def validate_evaluate(config: EvaluateConfig) -> None:
    """Raise ConfigError naming the first out-of-range evaluation value and its override."""
    _check(config.split in ("valid", "test"), "split", config.split, "valid or test")
    _check(config.batch_size >= 1, "batch_size", config.batch_size, "an integer >= 1")
    _check(config.bptt is None or config.bptt >= 1, "bptt", config.bptt, "null or an integer >= 1")
    _check(
        config.limit_batches is None or config.limit_batches >= 1,
        "limit_batches",
        config.limit_batches,
        "null or an integer >= 1",
    )
    cache, dynamic = config.cache, config.dynamic
    _check(cache.window >= 1, "cache.window", cache.window, "an integer >= 1")
    _check(cache.theta >= 0, "cache.theta", cache.theta, "a number >= 0")
    _check(0 <= cache.lambdah < 1, "cache.lambdah", cache.lambdah, "a weight in [0, 1)")
    _check(dynamic.rule in ("sgd", "rms"), "dynamic.rule", dynamic.rule, "sgd or rms")
    _check(dynamic.lr > 0, "dynamic.lr", dynamic.lr, "a number > 0")
    _check(0 <= dynamic.decay < 1, "dynamic.decay", dynamic.decay, "a rate in [0, 1)")
    _check(dynamic.epsilon > 0, "dynamic.epsilon", dynamic.epsilon, "a number > 0")
    _check(dynamic.bptt >= 1, "dynamic.bptt", dynamic.bptt, "an integer >= 1")
    _check(dynamic.stat_batches >= 1, "dynamic.stat_batches", dynamic.stat_batches, "an integer >= 1")
    _check(
        not (cache.enabled and dynamic.enabled),
        "dynamic.enabled",
        dynamic.enabled,
        "false while cache.enabled=true, because the two are not combined",
    )


def to_evaluate_config(cfg: DictConfig) -> EvaluateConfig:
    """Merge a composed ``evaluate`` config onto the schema, validate it and return dataclasses."""
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EvaluateConfig), cfg))
    assert isinstance(config, EvaluateConfig)
    validate_evaluate(config)
    return config
