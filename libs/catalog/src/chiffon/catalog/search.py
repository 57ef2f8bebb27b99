"""Catalog search: exact names and tags first, then meaning (all-MiniLM-L6-v2 embeddings).

1. **name**: the query is a playbook's name (`deploy-uptime-kuma`, `deploy uptime_kuma`,
   `deploy-uptime-kuma.yml`), or has a compound name as one of its words (`run harden-ssh
   now`; a playbook named `update` does not own every request with "update" in it).
   Confidence 1; when a name (or a tag only one playbook has) answers the query, the other
   playbooks still follow, by meaning, as related ones: confidence 0, uncertain.
2. **tag**: the query is one of a playbook's tags (`monitoring`). Confidence 1 when only
   that playbook has the tag; a tag k playbooks share names a group, not one of them: each
   has confidence 1/k (uncertain), and they come in the order of their meaning.
3. **meaning**: every other playbook, by the cosine between the query's embedding and the
   playbook's (its name in words, description and tags, embedded once per catalog).

Confidence of a match by meaning. Raw MiniLM cosines are low even for a right answer: over
the 14 paraphrased requests tried on tests/fixtures/homelab_catalog (16 playbooks) the right
playbook's cosine was 0.30 to 0.76, requests unrelated to a homelab ("bake a chocolate
cake") scored at most 0.13, and requests near the domain that no playbook serves ("deploy a
minecraft server", "install a mail server") 0.22 to 0.42, mostly with a runner-up close by.
So the confidence uses both the cosine and the margin over the best other playbook,
`evidence = cosine + (cosine - best_other_cosine)`, through a logistic
`confidence = 1 / (1 + exp(-STEEPNESS * (evidence - MIDPOINT)))` set so that evidence 0.5
maps to 0.85, the default threshold. Measured there: 12 of the 14 paraphrases have evidence
0.53 to 1.12 (confidence 0.89 to 1.00); the other two are uncertain ("turn the lights on
automatically at sunset": the right playbook at 0.53; "keep copies of my files in the cloud":
a wrong one at 0.82); unrelated requests have evidence at most 0.15 (confidence under 0.09),
near-domain ones 0.27 to 0.46 (0.29 to 0.79).
A match under the threshold is marked `uncertain`: shown, but not to be run unasked.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from chiffon.catalog.catalog import PLAYBOOK_SUFFIXES, PLAYBOOKS_DIR, Playbook, load_catalog
from chiffon.catalog.embedding import DIMENSION, Embedder, shared_embedder
from chiffon.catalog.embedding_cache import load_vectors, save_vectors

if TYPE_CHECKING:
    from chiffon.catalog.embedding import Vectors

MatchedBy = Literal["name", "tag", "meaning"]

DEFAULT_THRESHOLD = 0.85
DEFAULT_LIMIT = 5
MAX_LIMIT = 100
# A request is a sentence; the model reads at most 256 tokens of it anyway.
MAX_QUERY_CHARS = 1000
MIDPOINT = 0.35
# ln(0.85 / 0.15) / (0.5 - MIDPOINT): evidence 0.5 -> confidence 0.85.
STEEPNESS = math.log(0.85 / 0.15) / (0.5 - MIDPOINT)

_SEPARATORS = re.compile(r"[\s_-]+")


class InvalidQuery(ValueError):
    """The query, limit or threshold is not one this search can answer."""


@dataclass(frozen=True)
class Match:
    playbook: Playbook
    confidence: float
    matched_by: MatchedBy
    uncertain: bool
    #: The cosine between the query and the playbook (0 when the model was not needed).
    similarity: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.playbook.name,
            "description": self.playbook.description,
            "tags": list(self.playbook.tags),
            "confidence": round(self.confidence, 3),
            "uncertain": self.uncertain,
            "matched_by": self.matched_by,
        }


@dataclass(frozen=True)
class SearchResult:
    query: str
    threshold: float
    matches: tuple[Match, ...]

    @property
    def best(self) -> Match | None:
        return self.matches[0] if self.matches else None

    @property
    def uncertain(self) -> bool:
        """No match, or the best one is under the threshold: ask before running it."""
        best = self.best
        return best is None or best.uncertain

    def as_dict(self) -> dict[str, Any]:
        """`{best, uncertain, matches}`: the catalog tool's output and `--json`."""
        best = self.best
        return {
            "best": best.playbook.name if best else None,
            "uncertain": self.uncertain,
            "matches": [match.as_dict() for match in self.matches],
        }


def confidence(similarity: float, best_other: float) -> float:
    """The confidence that a playbook is the one asked for, from its cosine and the margin
    over the best other playbook (see the module's docstring for the calibration)."""
    evidence = similarity + (similarity - best_other)
    return 1.0 / (1.0 + math.exp(-STEEPNESS * (evidence - MIDPOINT)))


def normalise(text: str) -> str:
    """Lowercase, with runs of spaces, `_` and `-` as one `-`: `Deploy uptime_kuma` ->
    `deploy-uptime-kuma`."""
    return _SEPARATORS.sub("-", text.strip().lower()).strip("-")


def _name_key(text: str) -> str:
    """A request (or a word of it) as a name: `Deploy-Uptime_Kuma.yml,` -> `deploy-uptime-kuma`."""
    key = normalise(text.strip(",;:!?\"'`()[]{}<>"))
    for suffix in PLAYBOOK_SUFFIXES:
        key = key.removesuffix(suffix)
    return key


def _is_compound(word: str) -> bool:
    return any(separator in word.strip("-_.") for separator in "-_.")


def document_text(playbook: Playbook) -> str:
    """What is embedded for a playbook: its name in words, description and tags."""
    words = normalise(playbook.name).replace("-", " ")
    text = f"{words}: {playbook.description}" if playbook.description else words
    return f"{text}. Tags: {', '.join(playbook.tags)}" if playbook.tags else text


def check_request(query: str, limit: int, threshold: float) -> str:
    if not isinstance(query, str) or not query.strip():
        raise InvalidQuery("the query is empty: say what the playbook should do")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidQuery(f"the query is longer than {MAX_QUERY_CHARS} characters")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidQuery(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not 0.0 <= threshold <= 1.0
    ):
        raise InvalidQuery("threshold must be a number from 0 to 1")
    return query.strip()


class CatalogIndex:
    """A list of playbooks with their embeddings, searched in memory."""

    def __init__(
        self, playbooks: Sequence[Playbook], embedder: Embedder, vectors: Vectors | None = None
    ) -> None:
        self.playbooks = tuple(playbooks)
        self._embedder = embedder
        if vectors is None:
            vectors = embedder.embed([document_text(p) for p in self.playbooks])
        self._vectors = vectors
        self._by_name: dict[str, int] = {}
        self._by_tag: dict[str, list[int]] = {}
        for i, playbook in enumerate(self.playbooks):
            self._by_name.setdefault(normalise(playbook.name), i)
            for tag in dict.fromkeys(normalise(t) for t in playbook.tags):
                self._by_tag.setdefault(tag, []).append(i)

    @property
    def vectors(self) -> Vectors:
        return self._vectors

    def exact(self, query: str) -> tuple[list[int], list[int]]:
        """The playbooks the query names, and those whose tag it is (name/tag lookup only)."""
        key = _name_key(query)
        named = [self._by_name[key]] if key in self._by_name else []
        for word in query.split():
            index = self._by_name.get(_name_key(word))
            # Only a compound name counts as a word of a longer request: a playbook named
            # `update` must not answer "update grafana" for sure.
            if index is not None and index not in named and _is_compound(word):
                named.append(index)
        tagged = [i for i in self._by_tag.get(key, []) if i not in named]
        return named, tagged

    def search(
        self, query: str, *, limit: int = DEFAULT_LIMIT, threshold: float = DEFAULT_THRESHOLD
    ) -> SearchResult:
        query = check_request(query, limit, threshold)
        if not self.playbooks:
            return SearchResult(query, threshold, ())
        named, tagged = self.exact(query)
        # A tag only one playbook has picks it as surely as its name does.
        certain: list[tuple[int, MatchedBy]] = [(i, "name") for i in named]
        if len(tagged) == 1:
            certain.append((tagged[0], "tag"))
        matches = [self._certain(i, matched_by) for i, matched_by in certain]
        if len(matches) >= limit:
            return SearchResult(query, threshold, tuple(matches[:limit]))
        similarities = self._vectors @ self._embedder.embed([query])[0]
        ranked = [int(i) for i in similarities.argsort()[::-1]]
        top, runner_up = ranked[0], ranked[1] if len(ranked) > 1 else None

        def by_meaning(i: int, matched_by: MatchedBy) -> Match:
            similarity = float(similarities[i])
            if certain:
                # The query named another playbook: this one is related, not the answer.
                return Match(self.playbooks[i], 0.0, matched_by, True, similarity)
            # The margin is over the best other playbook: the runner-up for the top one.
            other = top if i != top else runner_up
            best_other = float(similarities[other]) if other is not None else 0.0
            sure = confidence(similarity, best_other)
            return Match(self.playbooks[i], sure, matched_by, sure < threshold, similarity)

        taken = {i for i, _ in certain}
        # A tag k playbooks share names a group, not one of them: 1/k each, by meaning.
        group = set(tagged) - taken
        shared_tag = [i for i in ranked if i in group][: limit - len(matches)]
        share = 1.0 / len(group) if group and not certain else 0.0
        matches += [
            Match(self.playbooks[i], share, "tag", share < threshold, float(similarities[i]))
            for i in shared_tag
        ]
        taken |= group
        # Only the matches shown are built. Confidence falls with the cosine (the margin of
        # every playbook but the top one is over the top one), so the order is the cosine's.
        for i in ranked:
            if len(matches) >= limit:
                break
            if i not in taken:
                matches.append(by_meaning(i, "meaning"))
        return SearchResult(query, threshold, tuple(matches))

    def _certain(self, index: int, matched_by: MatchedBy) -> Match:
        return Match(self.playbooks[index], 1.0, matched_by, False, 0.0)


Fingerprint = frozenset[tuple[str, int, int]]


def _fingerprint(root: Path) -> Fingerprint:
    """The playbook files' names, sizes and modification times: a change to any of them
    (an edit, a new file, a removal) is a new fingerprint. 500 files: 2.5 to 3.6 ms of CPU on
    the 2-core machine, most of it the 500 stat calls (a set, not a sorted tuple, which cost
    0.7 ms more)."""
    entries: set[tuple[str, int, int]] = set()
    try:
        with os.scandir(root / PLAYBOOKS_DIR) as scan:
            for entry in scan:
                if not entry.name.endswith(PLAYBOOK_SUFFIXES):
                    continue
                try:
                    stat = entry.stat()  # a symlink's target: editing the target counts
                except OSError:
                    continue
                entries.add((entry.name, stat.st_size, stat.st_mtime_ns))
    except OSError:
        return frozenset()
    return frozenset(entries)


class CatalogSearch:
    """A catalog folder kept searchable: its playbooks are read and embedded once, and again
    only when its files change (checked on every search: 500 files cost about 3 ms); then
    only the texts that changed are embedded, the others' vectors are reused. With a
    `cache_file` the vectors outlive the process (see embedding_cache)."""

    def __init__(
        self, root: Path, embedder: Embedder | None = None, *, cache_file: Path | None = None
    ) -> None:
        self.root = root
        self._embedder = embedder or shared_embedder()
        self._cache_file = cache_file
        self._lock = threading.Lock()
        self._fingerprint: Fingerprint | None = None
        self._index: CatalogIndex | None = None
        self._vectors_by_text: dict[str, Vectors] | None = None
        #: How many times the catalog was read and indexed, and how many texts were
        #: embedded (tests: reuse and invalidation).
        self.builds = 0
        self.embedded = 0

    def index(self) -> CatalogIndex:
        fingerprint = _fingerprint(self.root)
        with self._lock:
            if self._index is None or fingerprint != self._fingerprint:
                self._index = self._build()
                self._fingerprint = fingerprint
            return self._index

    def search(
        self, query: str, *, limit: int = DEFAULT_LIMIT, threshold: float = DEFAULT_THRESHOLD
    ) -> SearchResult:
        check_request(query, limit, threshold)
        return self.index().search(query, limit=limit, threshold=threshold)

    def _build(self) -> CatalogIndex:
        import numpy as np

        playbooks = load_catalog(self.root)
        texts = [document_text(p) for p in playbooks]
        known = self._vectors_by_text
        if known is None:
            known = load_vectors(self._cache_file) if self._cache_file else {}
        missing = sorted({t for t in texts if t not in known})
        if missing:
            known.update(zip(missing, self._embedder.embed(missing), strict=True))
            self.embedded += len(missing)
        # Keep only the current texts: a catalog's cache does not grow with its history.
        self._vectors_by_text = {t: known[t] for t in texts}
        if missing and self._cache_file:
            save_vectors(self._cache_file, self._vectors_by_text)
        vectors = (
            np.stack([self._vectors_by_text[t] for t in texts])
            if texts
            else np.zeros((0, DIMENSION), dtype=np.float32)
        )
        self.builds += 1
        return CatalogIndex(playbooks, self._embedder, vectors)
