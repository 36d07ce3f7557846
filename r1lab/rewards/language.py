"""Language consistency (paper section 2.3.2): the proportion of target-language words in the reasoning.

A "word" is a run of Latin letters, or a single CJK character (Chinese is written without spaces),
or a run of letters of any other script. English counts Latin words, Chinese counts CJK characters:
a script-level test, which is what language mixing in R1's chains of thought looks like. Digits,
punctuation and symbols are not words. Reasoning with no words in any language (`5 + 17 = 22`) mixes
no languages and scores 1; no reasoning (none, or blank) scores 0, so skipping the reasoning earns
nothing. The rejection filter (algorithms/rejection.py) uses this same share, so a reasoning the
reward scores at or above the filter's threshold is never dropped for language mixing.
"""
from __future__ import annotations

import re

from r1lab.types import Completion, Problem

_WORD = re.compile(r"[A-Za-z]+|[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W\d_A-Za-z\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_TARGET = {"en": re.compile(r"[A-Za-z]+"), "zh": re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")}


def language_share(text: str | None, language: str) -> float:
    """Share of words in text that belong to the target language ("en" or "zh"); 1 if it has no words, 0 if blank."""
    if not (text or "").strip():
        return 0.0
    words = _WORD.findall(text)
    if not words:
        return 1.0
    return sum(1 for w in words if _TARGET[language].fullmatch(w)) / len(words)


def language_en(completion: Completion, problem: Problem) -> float:
    return language_share(completion.reasoning, "en")


def language_zh(completion: Completion, problem: Problem) -> float:
    return language_share(completion.reasoning, "zh")
