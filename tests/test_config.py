"""The Hydra configuration: every group and preset composes and validates."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from omegaconf.errors import ConfigKeyError, ValidationError

from awdlm.config import ConfigError, to_config


def load(overrides: list[str]):
    with initialize_config_module(config_module="awdlm.conf", version_base="1.3"):
        return to_config(compose(config_name="config", overrides=overrides))


def test_defaults_are_ptb_paper():
    config = load([])
    assert config.dataset.name == "ptb"
    assert config.embed_dropout.strategy == "dense"
    assert (config.model.emsize, config.model.nhid, config.model.nlayers) == (400, 1150, 3)
    assert (config.trainer.batch_size, config.trainer.bptt, config.trainer.epochs, config.seed) == (20, 70, 500, 141)


def test_ptb_paper_matches_defaults():
    assert load(["experiment=ptb_paper"]) == load([])


def test_wt2_paper_preset():
    config = load(["experiment=wt2_paper"])
    assert config.dataset.name == "wikitext2"
    assert config.dataset.path == "data/wikitext-2"
    assert (config.trainer.batch_size, config.model.dropouth, config.model.dropouti) == (80, 0.2, 0.65)
    assert (config.seed, config.trainer.epochs) == (1882, 750)


def test_ptb_cpu_preset_is_small():
    config = load(["experiment=ptb_cpu"])
    assert config.dataset.name == "ptb"
    assert config.model.nhid < 1150


@pytest.mark.parametrize("strategy", ["dense", "gather"])
def test_embed_dropout_group(strategy):
    config = load([f"embed_dropout={strategy}", "embed_dropout.p=0.2"])
    assert (config.embed_dropout.strategy, config.embed_dropout.p) == (strategy, 0.2)


def test_data_dir_moves_dataset_path():
    assert load(["data_dir=/corpora"]).dataset.path == "/corpora/ptb"


def test_optim_adam_group():
    config = load(["optim=adam", "optim.when=[2,4]"])
    assert (config.optim.name, config.optim.when) == ("adam", [2, 4])


def test_out_of_range_names_override():
    with pytest.raises(ConfigError, match=r"model\.dropouth=1\.5.*\[0, 1\).*model\.dropouth=\.\.\."):
        load(["model.dropouth=1.5"])


def test_invalid_device_rejected():
    with pytest.raises(ConfigError, match="trainer.device"):
        load(["trainer.device=tpu"])


def test_invalid_precision_rejected():
    with pytest.raises(ConfigError, match=r"trainer\.precision='fp16'.*fp32 or bf16"):
        load(["trainer.precision=fp16"])


def test_wrong_type_rejected():
    with pytest.raises(ValidationError):
        load(["model.nhid=many"])


def test_unknown_key_rejected():
    with pytest.raises((ConfigKeyError, ValidationError)):
        load(["+model.hidden=3"])
