"""Reading split files and cutting their lines into tokens.

Every line becomes its tokens followed by ``<eos>``, empty lines included, so
the line structure of the text survives as a token the model predicts.

Two tokenizers exist:

- ``whitespace``: a token is a maximal run of non-whitespace characters, as
  ``str.split()`` defines whitespace. Tabs, repeated spaces, a trailing
  ``\\r`` from CRLF line ends and leading or trailing blanks separate tokens
  the same way a single space does.
- ``chars``: a token is one character. Leading and trailing whitespace is
  dropped and every run of whitespace inside the line becomes one
  :data:`SPACE` token, so CRLF files and stray blanks give the same tokens as
  clean LF files.

A literal ``<eos>`` token in a whitespace-tokenized file is rejected, because
it would be indistinguishable from the line marker. The ``chars`` tokenizer
reads ``<eos>`` as five ordinary characters, so it needs no such check.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EOS = "<eos>"
UNK = "<unk>"
SPACE = " "  # the token for a run of whitespace inside a line at character level

LEVELS = ("word", "char")
TOKENIZERS = ("whitespace", "chars")


@dataclass(frozen=True)
class TokenizerSettings:
    """Tokenization and vocabulary settings of a corpus.

    ``level`` is the unit of one token (word or char). At char level the
    trainer reports bits per character. ``tokenizer`` selects how lines are cut. Character
    corpora that ship with one character per whitespace-separated token, such
    as Mikolov's ``ptb.char.*.txt``, use level ``char`` with the
    ``whitespace`` tokenizer.
    """

    level: str = "word"
    tokenizer: str = "whitespace"
    min_count: int = 1  # training-split occurrences a type needs to enter the vocabulary
    max_size: int | None = None  # vocabulary size limit, <eos> and <unk> included

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"invalid level {self.level!r}: expected word or char (set dataset.level)")
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(
                f"invalid tokenizer {self.tokenizer!r}: expected whitespace or chars (set dataset.tokenizer)"
            )
        if self.min_count < 1:
            raise ValueError(f"invalid min_count {self.min_count}: expected an integer >= 1 (set dataset.min_count)")
        if self.max_size is not None and self.max_size < 2:
            raise ValueError(
                f"invalid max_size {self.max_size}: expected null or an integer >= 2, "
                f"room for {EOS} and {UNK} (set dataset.max_size)"
            )

    @classmethod
    def for_level(cls, level: str, tokenizer: str | None = None, **kwargs: object) -> TokenizerSettings:
        """Build settings whose tokenizer defaults to the level's: whitespace for word, chars for char."""
        if tokenizer is None:
            tokenizer = "chars" if level == "char" else "whitespace"
        return cls(level=level, tokenizer=tokenizer, **kwargs)  # type: ignore[arg-type]


class CorpusFormatError(ValueError):
    """A split file cannot be tokenized; the message names the file and the line."""


def read_text(path: Path) -> str:
    """Decode ``path`` as strict UTF-8; a leading byte-order mark is dropped.

    Raises CorpusFormatError naming the line and byte offset of the first
    invalid byte sequence.
    """
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        offset = error.start
        line = data.count(b"\n", 0, offset) + 1
        column = offset - (data.rfind(b"\n", 0, offset) + 1)
        bad = data[error.start : error.end]
        raise CorpusFormatError(
            f"{path}: invalid UTF-8 at line {line}, byte {column} of the line "
            f"(byte offset {offset} in the file): {bad!r} ({error.reason}); "
            f"re-encode the file as UTF-8, for example with iconv -f LATIN1 -t UTF-8"
        ) from None


def split_lines(text: str) -> list[str]:
    """Split on ``\\n`` only; a final newline does not start another line.

    ``str.splitlines`` would also split on form feeds, ``\\x1c`` to ``\\x1e``
    and Unicode line separators, which changes the line count of corpora that
    contain them.
    """
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def tokenize_line(line: str, tokenizer: str) -> list[str]:
    """Cut one line (without its line end) into tokens, not counting ``<eos>``."""
    if tokenizer == "whitespace":
        return line.split()
    return list(SPACE.join(line.split()))


def tokenize_lines(lines: list[str] | tuple[str, ...], tokenizer: str = "whitespace", source: str = "<text>") -> list[str]:
    """Tokenize each line and end it with ``<eos>`` (empty lines too).

    Raises CorpusFormatError when a whitespace-tokenized line contains the
    token ``<eos>``; ``source`` names the file in that message.
    """
    words: list[str] = []
    for number, line in enumerate(lines, start=1):
        tokens = tokenize_line(line, tokenizer)
        if tokenizer == "whitespace" and EOS in tokens:
            raise CorpusFormatError(
                f"{source}: line {number} contains the token {EOS}, which is reserved for the end of a line; "
                f"remove it or rename it, for example to <eos_literal>"
            )
        words.extend(tokens)
        words.append(EOS)
    return words


def read_tokens(path: Path, tokenizer: str = "whitespace") -> list[str]:
    """Read one split file and return its tokens, each line ended by ``<eos>``."""
    return tokenize_lines(split_lines(read_text(path)), tokenizer, source=str(path))
