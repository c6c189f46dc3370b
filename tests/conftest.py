"""Shared fixtures: a small generated corpus and one tiny end-to-end run reused across tests."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

SUBJECTS = ["God", "the king", "a fox", "the river", "my friend", "Caesar", "the parser"]
VERBS = ["sees", "blesses", "returns", "follows", "forbids", "calls", "reads"]
OBJECTS = ["the light", "a token", "the city", "every list", "his people", "the sea", "Rome"]


def make_corpus_text(n_docs: int = 60, seed: int = 0) -> str:
    """Documents of templated sentences (regular enough for a tiny LM to learn in seconds),
    with some non-Latin script so byte-level BPE round-trips are exercised."""
    rng = random.Random(seed)
    docs = []
    for d in range(n_docs):
        sentences = [
            f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}." for _ in range(rng.randint(8, 20))
        ]
        if d % 7 == 0:
            sentences.append("Слово и دنيا 世界.")
        docs.append(" ".join(sentences))
    return "\n\n\n".join(docs)


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(make_corpus_text())
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run directory with corpus, LM and harvest stages done on the tiny preset."""
    from monosemantic import pipeline
    from monosemantic.config import load_config
    from monosemantic.progress import set_quiet

    root = tmp_path_factory.mktemp("tiny_run")
    corpus = root / "corpus.txt"
    corpus.write_text(make_corpus_text(n_docs=120))
    set_quiet(True)
    cfg = load_config("tiny", overrides=["corpus.val_fraction=0.2", f"corpus.corpus={corpus}"])
    pipeline.run(cfg, root / "run", "harvest")
    return root / "run"


@pytest.fixture(scope="session")
def analysed_run(tiny_run, tmp_path_factory):
    """The tiny run carried on through the sae and analysis stages: (run directory, its config)."""
    import shutil

    from monosemantic import pipeline
    from monosemantic.config import load_config

    run = tmp_path_factory.mktemp("analysed") / "run"
    shutil.copytree(tiny_run, run)
    cfg = load_config("tiny", overrides=["corpus.val_fraction=0.2", f"corpus.corpus={tiny_run.parent / 'corpus.txt'}"])
    pipeline.run(cfg, run, "analysis")
    return run, cfg
