"""Word error rate as F5-TTS evaluates it: its text normalisation, then jiwer's WER per utterance, averaged."""

from __future__ import annotations

import string
from collections.abc import Sequence


def f5_normalize(text: str) -> str:
    """F5-TTS (``eval/utils_eval.py``, English): delete every ``zhon.hanzi.punctuation`` and ``string.punctuation``
    character (curly quotes, dashes, ellipses and full-width marks included), replace double spaces by single ones
    (one pass), lowercase. No number or spelling normalisation: "don't" -> "dont"."""
    from zhon.hanzi import punctuation

    for ch in punctuation + string.punctuation:
        text = text.replace(ch, "")
    return text.replace("  ", " ").lower()


def utterance_wers(references: Sequence[str], hypotheses: Sequence[str]) -> list[float]:
    """Per-utterance WER (``jiwer.process_words``) of normalised texts; an empty reference gives NaN."""
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    out = []
    for ref, hyp in zip(references, hypotheses, strict=True):
        ref, hyp = f5_normalize(ref), f5_normalize(hyp)
        out.append(jiwer.process_words(ref, hyp).wer if ref.strip() else float("nan"))
    return out
