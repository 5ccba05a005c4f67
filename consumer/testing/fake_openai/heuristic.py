"""Keyword heuristic that gives moderation-flavoured scores. It is NOT a model.

Each category of the OpenAI moderation taxonomy has a short keyword list. A keyword hit scores
0.90-0.99; a subcategory whose own keywords miss but whose parent hits scores 0.10-0.15 (related,
under the default policy's lowest threshold, 0.2); anything else 0.01-0.05. The jitter comes
from a hash of the content, so the same text always gets the same scores and replays through
the fake are comparable.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: The OpenAI moderation taxonomy, with its real (slash) names.
CATEGORIES: tuple[str, ...] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)

FLAG_THRESHOLD = 0.5


def category_key(name: str) -> str:
    """A category or property name with non-alphanumerics turned into ``_`` (lower case)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


#: Underscore key -> slash name, in taxonomy order.
KEYS: dict[str, str] = {category_key(name): name for name in CATEGORIES}

#: Subcategory key -> parent key.
PARENTS: dict[str, str] = {
    key: category_key(name.split("/")[0]) for key, name in KEYS.items() if "/" in name
}

_KEYWORDS: dict[str, tuple[str, ...]] = {
    "harassment": ("idiot", "stupid", "loser", "hate you", "moron", "shut up", "pathetic"),
    "harassment_threatening": ("i will kill you", "i'll kill you", "watch your back", "hurt you"),
    "hate": ("subhuman", "vermin", "inferior race", "go back to your country"),
    "hate_threatening": ("exterminate", "wipe them out", "should all be killed"),
    "illicit": (
        "cocaine",
        "meth",
        "heroin",
        "counterfeit",
        "hack into",
        "launder",
        "fake passport",
    ),
    "illicit_violent": ("build a bomb", "make a bomb", "pipe bomb", "untraceable gun"),
    "self_harm": ("suicide", "suicidal", "kill myself", "cut myself", "hurt myself", "self-harm"),
    "self_harm_intent": ("kill myself", "want to die", "end my life", "going to end it"),
    "self_harm_instructions": ("how to cut", "how to overdose", "painless way to die"),
    "sexual": ("explicit", "nsfw", "porn", "nude", "xxx"),
    "sexual_minors": (),  # deliberately no list: only the parent's keywords score it (lower)
    "violence": ("kill", "murder", "shoot", "stab", "stabbed", "stabbing", "attack", "shot"),
    "violence_graphic": ("gore", "dismember", "mutilate", "mutilated", "blood everywhere"),
}

_SUFFIX = r"(?:s|es|ed|ing|er|ers)?"


def _alternation(words: Iterable[str]) -> str:
    # Longest first so "kill myself" wins over "kill"; whole words only ("skill" is not "kill").
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


def _trie(words: Iterable[str]) -> str:
    """The alternation of ``words`` as a prefix tree ("kill(?:\\ myself)?"): the same matches as
    :func:`_alternation` (at one position the candidates are prefixes of one another, and the
    greedy ``?`` tries the longer first), but the engine follows one branch per character
    instead of trying every word at every position."""
    tree: dict[str, Any] = {}
    for word in words:
        node = tree
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> str:
        branches = [re.escape(char) + emit(inner) for char, inner in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return emit(tree)


_SELF_HARM_WORDS = {w for k, ws in _KEYWORDS.items() if k.startswith("self_harm") for w in ws}
_ALL_WORDS = {word for words in _KEYWORDS.values() for word in words}
# Compiled once at import. One scan of the text finds every keyword; each keyword then implies
# the categories whose own lists match inside it ("i will kill you" is harassment_threatening
# and, through "kill", violence too), which is what one scan per category would find.
# The lookahead on the first letters lets the engine skip most positions with one class test.
_FIRST = re.escape("".join(sorted({word[0] for word in _ALL_WORDS})))
_ANY = re.compile(rf"\b(?=[{_FIRST}])({_trie(_ALL_WORDS)}){_SUFFIX}\b", re.IGNORECASE)
_IMPLIES: dict[str, frozenset[str]] = {
    word: frozenset(
        key
        for key, words in _KEYWORDS.items()
        if words
        and re.search(rf"\b(?:{_alternation(words)}){_SUFFIX}\b", word)
        # "kill myself" is about self-harm, not violence against others.
        and (key.startswith("self_harm") or word not in _SELF_HARM_WORDS)
    )
    for word in _ALL_WORDS
}

_SUFFIXES = (
    "_scores",
    "_score",
    "_probability",
    "_prob",
    "_confidence",
    "_likelihood",
    "_level",
    "_severity",
    "_flagged",
    "_flag",
)
_ALIASES = {"selfharm": "self_harm", "violent": "violence", "harass": "harassment"}


@functools.lru_cache(maxsize=1024)
def resolve_category(name: str) -> str | None:
    """The category key a property name refers to ("violence_score" -> "violence"), if any."""
    key = category_key(name)
    if key in KEYS:
        return key
    for suffix in _SUFFIXES:
        if key.endswith(suffix) and key[: -len(suffix)] in KEYS:
            return key[: -len(suffix)]
    return _ALIASES.get(key)


@dataclass(frozen=True, slots=True)
class Judgement:
    """Scores for one piece of content, keyed by underscore category key."""

    scores: dict[str, float]
    matched: tuple[str, ...]
    """Distinct matched keywords in order of appearance."""

    @property
    def flagged(self) -> bool:
        """Whether any category reaches the flag threshold."""
        return any(score >= FLAG_THRESHOLD for score in self.scores.values())

    @property
    def rationale(self) -> str:
        """A short explanation naming what matched."""
        if not self.matched:
            return "no policy keywords found"
        return "matched keywords: " + ", ".join(self.matched[:6])

    def flags(self) -> dict[str, bool]:
        """Category key -> flagged."""
        return {key: score >= FLAG_THRESHOLD for key, score in self.scores.items()}

    def top_category(self) -> str:
        """The highest-scoring category key."""
        return max(self.scores, key=self.scores.__getitem__)


def _table(base: float, span: float) -> tuple[float, ...]:
    # The score for each digest byte, computed as judge() always did: round(base + span * j, 3).
    return tuple(round(base + span * (byte / 255.0), 3) for byte in range(256))


#: A keyword hit, a subcategory whose parent hit, anything else: score per digest byte.
_HIGH, _MID, _LOW = _table(0.90, 0.09), _table(0.10, 0.05), _table(0.01, 0.04)


@functools.lru_cache(maxsize=8192)
def judge(text: str) -> Judgement:
    """Score ``text`` against every category; deterministic for a given text."""
    digest = hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=16).digest()
    hits: set[str] = set()
    words: list[str] = []
    for match in _ANY.finditer(text):
        found = match.group(1)
        implied = _IMPLIES.get(found.lower())
        hits |= implied if implied is not None else _implied_by(found)
        words.append(match.group(0).lower())
    if not hits:  # most content: every score from the low table
        scores = {key: _LOW[digest[i]] for i, key in enumerate(KEYS)}
        return Judgement(scores=scores, matched=tuple(dict.fromkeys(words)))
    scores = {}
    for i, key in enumerate(KEYS):
        if key in hits:
            scores[key] = _HIGH[digest[i]]
        elif key in PARENTS and PARENTS[key] in hits:
            scores[key] = _MID[digest[i]]
        else:
            scores[key] = _LOW[digest[i]]
    return Judgement(scores=scores, matched=tuple(dict.fromkeys(words)))


@functools.lru_cache(maxsize=256)
def _implied_by(found: str) -> frozenset[str]:
    """The categories of a keyword matched in an odd case fold, whose ``lower()`` is not the
    keyword: IGNORECASE matches "\u017ftupid" (long s) and "\u0130diot" (dotted capital I), but
    their ``lower()`` is not "stupid" nor "idiot". Rare, so a scan of the keywords."""
    for word in _ALL_WORDS:
        if re.fullmatch(re.escape(word), found, re.IGNORECASE):
            return _IMPLIES[word]
    return frozenset()  # cannot happen: _ANY only matches keywords


_BLOCK = re.compile(r"<content\b([^>]*)>(.*?)</content\s*>", re.IGNORECASE | re.DOTALL)
_INDEX = re.compile(r"""\bindex\s*=\s*["']?(\d+)""", re.IGNORECASE)


def find_blocks(text: str) -> list[tuple[int, str]]:
    """``(index, text)`` for each ``<content index="N">...</content>`` block, in order.

    Blocks without an index attribute are numbered by position.
    """
    blocks = []
    for position, match in enumerate(_BLOCK.finditer(text)):
        number = _INDEX.search(match.group(1))
        blocks.append((int(number.group(1)) if number else position, match.group(2)))
    return blocks
