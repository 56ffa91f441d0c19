"""Use a trained model from Python, without Hydra: score sentences and sample text.

Example::

    from awdlm.api import LanguageModel

    lm = LanguageModel.load("outputs/2026-01-31/12-00-00_defaults")   # or a .pt file; device="cuda"
    result = lm.score("the company said it expects higher sales")
    result.total_log_prob, result.tokens, result.log_probs              # nats; words + <eos>
    print(lm.generate("the company said", words=50, temperature=0.8, seed=1))
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from awdlm.data import EOS, UNK, TokenizerSettings, Vocabulary
from awdlm.data.tokenize import tokenize_line
from awdlm.model.awd_lstm import AWDLSTM, Hidden
from awdlm.runs import checkpoint_config, load_model, open_checkpoint, vocabulary
from awdlm.training.checkpoint import BEST_CHECKPOINT
from awdlm.training.trainer import resolve_device

log = logging.getLogger(__name__)


@dataclass
class SentenceScore:
    """Log-probabilities (natural log) of a sentence's tokens, each given all tokens before it."""

    tokens: list[str]  # the scored tokens, with <unk> for unknown ones, then <eos>
    log_probs: list[float]  # one value per token
    total_log_prob: float  # sum of log_probs

    @property
    def perplexity(self) -> float:
        return float(torch.tensor(-self.total_log_prob / len(self.tokens)).exp())


class LanguageModel:
    """A trained AWD-LSTM, its vocabulary and tokenizer, in eval mode on one device."""

    def __init__(
        self, model: AWDLSTM, vocab: Vocabulary, device: torch.device, tokenizer: str = "whitespace"
    ) -> None:
        self.model = model.eval()
        self.vocab = vocab
        self.device = device
        self.tokenizer = tokenizer  # whitespace (one token a word) or chars (one token a character)

    @classmethod
    def load(cls, run: str | Path, checkpoint: str = BEST_CHECKPOINT, device: str = "auto") -> LanguageModel:
        """Load ``run``: a run directory (its ``checkpoint`` file is read) or a checkpoint file."""
        resolved = resolve_device(device)
        path, state = open_checkpoint(Path(run), checkpoint, resolved)
        config = checkpoint_config(state)
        model = load_model(state, config, resolved)
        tokenizer = TokenizerSettings.for_level(config.dataset.level, config.dataset.tokenizer).tokenizer
        log.info("loaded %s (epoch %d) on %s", path, state["epoch"], resolved)
        return cls(model, vocabulary(state), resolved, tokenizer)

    def encode(self, text: str) -> tuple[list[str], torch.Tensor]:
        """Tokenize ``text`` as the training corpus was and map it to ids; unknown tokens become ``<unk>`` with a warning."""
        words = tokenize_line(text, self.tokenizer)
        unknown = sorted({word for word in words if word not in self.vocab.stoi})
        if unknown:
            if UNK not in self.vocab.stoi:
                raise ValueError(f"words not in the vocabulary, which has no {UNK} to map them to: {unknown}")
            warnings.warn(f"{len(unknown)} word(s) not in the vocabulary, scored as {UNK}: {unknown}", stacklevel=3)
            words = [word if word in self.vocab.stoi else UNK for word in words]
        return words, torch.tensor(self.vocab.encode(words), dtype=torch.long, device=self.device)

    @torch.no_grad()
    def score(self, sentence: str) -> SentenceScore:
        """Score the words of ``sentence`` and the ``<eos>`` that ends it.

        The context starts with ``<eos>``, as after the previous line of the corpus.
        """
        words, ids = self.encode(sentence)
        eos = torch.tensor([self.vocab.stoi[EOS]], device=self.device)
        stream = torch.cat([eos, ids, eos])
        inputs, targets = stream[:-1].unsqueeze(1), stream[1:].unsqueeze(1)  # (T, 1) each
        output = self.model(inputs, self.model.init_hidden(1))
        log_probs = torch.log_softmax(output.logits.float(), dim=-1)  # (T, 1, V)
        values = log_probs.gather(-1, targets.unsqueeze(-1)).flatten().tolist()
        return SentenceScore(words + [EOS], values, sum(values))

    @torch.no_grad()
    def generate(self, prompt: str = "", words: int = 50, temperature: float = 1.0, seed: int | None = None) -> str:
        """Sample ``words`` tokens after ``prompt``; ``<eos>`` becomes a line break.

        Lower ``temperature`` sharpens the distribution; ``seed`` makes the sample repeatable.
        """
        if temperature <= 0:
            raise ValueError(f"invalid temperature={temperature!r}: expected a number > 0")
        if words < 0:
            raise ValueError(f"invalid words={words!r}: expected an integer >= 0")
        generator = torch.Generator(device=self.device)
        if seed is not None:
            generator.manual_seed(seed)
        else:
            generator.seed()
        _, ids = self.encode(prompt)
        eos = self.vocab.stoi[EOS]
        context = torch.cat([torch.tensor([eos], device=self.device), ids]).unsqueeze(1)  # (T, 1)

        hidden: Hidden = self.model.init_hidden(1)
        sampled: list[str] = []
        for _ in range(words):
            output = self.model(context, hidden)
            hidden = output.hidden
            probs = torch.softmax(output.logits[-1, 0].float() / temperature, dim=-1)  # (V,)
            word = torch.multinomial(probs, 1, generator=generator)  # (1,)
            sampled.append(self.vocab.itos[word.item()])
            context = word.view(1, 1)
        if self.tokenizer == "chars":
            # Character tokens include the space token, so they join without a separator.
            return prompt.strip() + "".join("\n" if token == EOS else token for token in sampled)
        text = " ".join([prompt.strip(), *sampled]) if prompt.strip() else " ".join(sampled)
        return text.replace(f" {EOS} ", "\n").replace(f" {EOS}", "\n").replace(EOS, "\n")
