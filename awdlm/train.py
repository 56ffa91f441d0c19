"""Train an AWD-LSTM language model.

Examples::

    python -m awdlm.train                                  # PTB, paper hyper-parameters
    python -m awdlm.train embed_dropout=gather             # same run, gather-mask embedding dropout
    python -m awdlm.train -m embed_dropout=dense,gather    # both, as a Hydra multirun
    python -m awdlm.train experiment=wt2_paper             # WikiText-2 recipe
    python -m awdlm.train experiment=ptb_cpu data_dir=/path/to/corpora
    python -m awdlm.train dataset=text dataset.path=/path/to/folder   # train.txt, valid.txt, test.txt
    python -m awdlm.train trainer.epochs=1 trainer.limit_train_batches=20 trainer.limit_val_batches=5

Each run writes its log, TensorBoard events, resolved config and best
checkpoint into its Hydra output directory under ``outputs/``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from awdlm.config import Config, to_config
from awdlm.data import TokenizerSettings, load_corpus
from awdlm.data.corpus import check_split_lengths
from awdlm.data.download import ensure_dataset
from awdlm.training.trainer import Trainer

log = logging.getLogger("awdlm.train")

# Names a run's output folder after its overrides; "defaults" when there are none.
OmegaConf.register_new_resolver("run_name", lambda overrides: overrides or "defaults", replace=True)


def dataset_files(config: Config) -> dict[str, Path]:
    """Map each split to its file, downloading a known dataset first when its files are missing."""
    folder = Path(to_absolute_path(config.dataset.path))
    ensure_dataset(config.dataset, folder)
    return {split: folder / getattr(config.dataset, split) for split in ("train", "valid", "test")}


def run(config: Config, run_dir: Path) -> dict[str, float]:
    """Load the corpus, train, test; return the final metrics."""
    cache_dir = None if config.cache_dir is None else Path(config.cache_dir).expanduser()
    dataset = config.dataset
    settings = TokenizerSettings.for_level(
        dataset.level, dataset.tokenizer, min_count=dataset.min_count, max_size=dataset.max_size
    )
    files = dataset_files(config)
    corpus = load_corpus(files, cache_dir, name=dataset.name, settings=settings)
    trainer = config.trainer
    batch_sizes = {
        "train": (trainer.batch_size, "trainer.batch_size"),
        "valid": (trainer.eval_batch_size, "trainer.eval_batch_size"),
        "test": (trainer.test_batch_size, "trainer.test_batch_size"),
    }
    check_split_lengths(corpus, batch_sizes, files)
    return Trainer(config, corpus, run_dir).fit()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    config = to_config(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    log.info("run directory %s", run_dir)
    with logging_redirect_tqdm():
        metrics = run(config, run_dir)
    return metrics["best/val_loss"]


if __name__ == "__main__":
    main()
