"""GLUE-like augmentation of plain text lines for general ApproxNet distillation (METHODS.md §1.2).

Plain corpus lines do not look like GLUE inputs (no separators, no masked words, no sentence pairs), so
the reference turns each line into one that does. The steps run in this order:

1. word noise on the line and on a second random line: each word is selected with probability 0.15; of
   the selected words 80 % become the mask token and 20 % a random word of the same line;
2. with probability 0.65 truncate the line at a random point keeping at least 10 words (lines of at most
   10 words are left alone);
3. with probability 0.75 insert the separator token at a random position; when that happens, with
   probability 0.5 also overwrite the words after it with the opening words of the second line (the
   length stays the same);
4. with probability 0.75 append a trailing separator; with probability 0.75 prepend a leading CLS token;
5. the tokenizer adds its own special tokens on top when the text is encoded.

The special-token strings are the tokenizer's own (``[MASK]``/``<mask>``, ``[SEP]``/``</s>``, ...), so the
tokenizer maps them back to their ids. Every random choice comes from a generator seeded by
``(seed, epoch, index)``: the same line gets the same augmentation for the same seed and epoch,
whatever the order or the process it is computed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sttabt.errors import SttabtError

#: Minimum characters of a corpus line used for general distillation (the reference's filter).
MIN_LINE_CHARS = 50


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities of each step; the defaults are the reference's."""

    word_prob: float = 0.15
    mask_fraction: float = 0.8
    truncate_prob: float = 0.65
    min_words: int = 10
    sep_prob: float = 0.75
    overwrite_prob: float = 0.5
    trailing_sep_prob: float = 0.75
    leading_cls_prob: float = 0.75


@dataclass(frozen=True)
class SpecialTokens:
    """The special-token strings inserted into the text."""

    mask: str
    sep: str
    cls: str

    @classmethod
    def from_tokenizer(cls, tokenizer) -> SpecialTokens:
        tokens = {}
        for name in ("mask", "sep", "cls"):
            value = getattr(tokenizer, f"{name}_token", None)
            if not value:
                raise SttabtError(
                    f"the tokenizer {type(tokenizer).__name__} has no {name} token, which the GLUE-like "
                    "augmentation needs"
                )
            tokens[name] = str(value)
        return cls(**tokens)


class GlueLikeAugmenter:
    """Augments line ``i`` of a corpus (the second line is drawn from the same corpus)."""

    def __init__(
        self,
        lines: Sequence[str],
        specials: SpecialTokens,
        config: AugmentConfig | None = None,
        seed: int = 0,
    ):
        if not lines:
            raise SttabtError("the augmentation corpus is empty")
        self.lines = list(lines)
        self.specials = specials
        self.config = config or AugmentConfig()
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.lines)

    def rng(self, index: int, epoch: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(epoch), int(index)])

    def __call__(self, index: int, epoch: int = 0) -> str:
        """The augmented text of line ``index`` in ``epoch``."""
        rng = self.rng(index, epoch)
        cfg = self.config
        words = self.lines[index].split()
        other = self.lines[int(rng.integers(len(self.lines)))].split()
        words = self._noise(words, rng)
        other = self._noise(other, rng)
        if rng.random() < cfg.truncate_prob and len(words) > cfg.min_words:
            words = words[: int(rng.integers(cfg.min_words, len(words) + 1))]
        if rng.random() < cfg.sep_prob:
            position = int(rng.integers(0, len(words) + 1))
            words.insert(position, self.specials.sep)
            if rng.random() < cfg.overwrite_prob:
                tail = len(words) - position - 1
                count = min(tail, len(other))
                words[position + 1 : position + 1 + count] = other[:count]
        if rng.random() < cfg.trailing_sep_prob:
            words.append(self.specials.sep)
        if rng.random() < cfg.leading_cls_prob:
            words.insert(0, self.specials.cls)
        return " ".join(words)

    def _noise(self, words: list[str], rng: np.random.Generator) -> list[str]:
        """Select each word with ``word_prob``; a selected word becomes the mask or a word of the line."""
        cfg = self.config
        if not words:
            return []
        selected = rng.random(len(words)) < cfg.word_prob
        masked = rng.random(len(words)) < cfg.mask_fraction
        donors = rng.integers(0, len(words), size=len(words))
        out = list(words)
        for i in np.flatnonzero(selected):
            out[i] = self.specials.mask if masked[i] else words[int(donors[i])]
        return out


def read_corpus(path: str, min_chars: int = MIN_LINE_CHARS, limit: int | None = None) -> list[str]:
    """Lines of a text file with at least ``min_chars`` characters after stripping (WikiText headings
    such as `` = Title = `` are short and drop out). ``limit`` keeps the first N qualifying lines."""
    from pathlib import Path

    source = Path(path)
    if not source.is_file():
        raise SttabtError(f"general corpus file not found: {source}")
    lines: list[str] = []
    try:
        with source.open(encoding="utf-8", errors="replace") as handle:
            for raw in handle:
                line = raw.strip()
                if len(line) >= min_chars:
                    lines.append(line)
                    if limit is not None and len(lines) >= limit:
                        break
    except OSError as exc:
        raise SttabtError(f"cannot read the general corpus {source}: {exc}") from exc
    if not lines:
        raise SttabtError(f"{source} has no line of at least {min_chars} characters")
    return lines
