"""Print text sampled from a trained model.

Examples::

    python -m awdlm.generate run=outputs/2026-01-31/12-00-00_defaults
    python -m awdlm.generate run=outputs/... words=200 temperature=0.8 seed=1 prompt="the company said"
    python -m awdlm.generate run=outputs/.../best.pt device=cuda temperature=1.0

The text goes to stdout, one corpus line per output line; warnings (such as
prompt words outside the vocabulary) go to stderr.
"""

from __future__ import annotations

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from awdlm.api import LanguageModel


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    model = LanguageModel.load(to_absolute_path(cfg.run), cfg.checkpoint, cfg.device)
    prompt = "" if cfg.prompt is None else str(cfg.prompt)
    print(model.generate(prompt, words=cfg.words, temperature=cfg.temperature, seed=cfg.seed))


if __name__ == "__main__":
    main()
