"""Language consistency (paper section 2.3.2): the proportion of target-language words in the reasoning.

A "word" is a run of Latin letters, or a single CJK character (Chinese is written without spaces),
or a run of letters of any other script. English counts Latin words, Chinese counts CJK characters:
a script-level test, which is what language mixing in R1's chains of thought looks like. Digits,
punctuation and symbols are not words. No reasoning, or no words in it, scores 0.
"""
from __future__ import annotations

import re

from r1lab.types import Completion, Problem

_WORD = re.compile(r"[A-Za-z]+|[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W\d_A-Za-z\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_TARGET = {"en": re.compile(r"[A-Za-z]+"), "zh": re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")}


def language_share(text: str | None, language: str, no_words: float = 0.0) -> float:
    """Share of words in text that belong to the target language ("en" or "zh"); `no_words` if there are none."""
    words = _WORD.findall(text or "")
    if not words:
        return no_words
    return sum(1 for w in words if _TARGET[language].fullmatch(w)) / len(words)


def language_en(completion: Completion, problem: Problem) -> float:
    return language_share(completion.reasoning, "en")


def language_zh(completion: Completion, problem: Problem) -> float:
    return language_share(completion.reasoning, "zh")
