"""A run directory is trusted for nothing: checkpoints run no code and resume only for their own
config, edited inputs and corrupt artifacts are recomputed by `run` and refused by the readers,
temporaries of killed runs are removed, and bad input is one line (exit 2) before any work."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from conftest import make_corpus_text
from test_cli import run_cli

import monosemantic.lm.train as train_module
from monosemantic import pipeline
from monosemantic.analysis import cli as analysis_cli
from monosemantic.analysis.store import FILENAME, DictionaryRow, FeatureStore, create_store
from monosemantic.browser.app import create_app
from monosemantic.browser.export import export_site
from monosemantic.config import LMConfig, load_config
from monosemantic.corpus.shards import is_val_document, write_token_shards
from monosemantic.corpus.tokenizer import train_tokenizer
from monosemantic.errors import UserError
from monosemantic.integrity import artifact_units, file_digest, unit_files, verify_run
from monosemantic.interventions import cli as interventions_cli
from monosemantic.lm.train import train_lm
from monosemantic.progress import set_quiet

set_quiet(True)
SRC = Path(__file__).parent.parent / "src" / "monosemantic"
TINY_LM = dict(
    d_model=32,
    d_mlp=64,
    n_heads=2,
    n_ctx=32,
    batch_size=8,
    warmup_steps=5,
    eval_every=10,
    eval_windows=8,
    checkpoint_every=10,
    n_steps=30,
)


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("trust") / "tokens"
    docs = make_corpus_text(n_docs=120).split("\n\n\n")
    write_token_shards(iter(docs), train_tokenizer(iter(docs), 400), out, val_fraction=0.2)
    return out


def _checkpoint_at_step_20(cfg: LMConfig, tokens_dir: Path, path: Path, monkeypatch) -> None:
    """Train ``cfg`` until a crash at step 25, leaving the step-20 checkpoint at ``path``."""
    real_lr_at = train_module.lr_at

    def crash_at_step_25(step, c):
        if step == 25:
            raise KeyboardInterrupt
        return real_lr_at(step, c)

    monkeypatch.setattr(train_module, "lr_at", crash_at_step_25)
    with pytest.raises(KeyboardInterrupt):
        train_lm(cfg, tokens_dir, path)
    monkeypatch.setattr(train_module, "lr_at", real_lr_at)
    assert path.exists()


# ---- checkpoints --------------------------------------------------------------------------------


@pytest.mark.parametrize("change", [{"lr": 0.01}, {"d_mlp": 32}])
def test_checkpoint_of_another_config_is_set_aside_and_training_restarts(
    tokens_dir, tmp_path, monkeypatch, capsys, change
):
    checkpoint = tmp_path / "lm_checkpoint.pt"
    _checkpoint_at_step_20(LMConfig(**TINY_LM), tokens_dir, checkpoint, monkeypatch)
    new_cfg = LMConfig(**{**TINY_LM, **change})
    capsys.readouterr()
    _, resumed = train_lm(new_cfg, tokens_dir, checkpoint)
    notices = capsys.readouterr().err.strip().splitlines()
    assert len(notices) == 1 and "another config" in notices[0] and "set aside" in notices[0]
    _, fresh = train_lm(new_cfg, tokens_dir, tmp_path / "fresh.pt")
    assert resumed["history"] == fresh["history"] and len(resumed["history"]) == 3
    assert (tmp_path / "lm_checkpoint.pt.stale").is_file()


def test_checkpoint_of_the_same_config_resumes_from_plain_tensors(tokens_dir, tmp_path, monkeypatch):
    checkpoint = tmp_path / "lm_checkpoint.pt"
    _checkpoint_at_step_20(LMConfig(**TINY_LM), tokens_dir, checkpoint, monkeypatch)
    state = torch.load(checkpoint, weights_only=True)  # plain tensors and values only
    assert state["step"] == 20 and json.loads(state["rng"])["bit_generator"] == "PCG64"


class _RunsCode:
    """Unpickling this calls os.mkdir(marker): what a crafted checkpoint could do with a shell."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_a_crafted_checkpoint_runs_no_code(tokens_dir, tmp_path, capsys):
    cfg = LMConfig(**TINY_LM)
    checkpoint, marker = tmp_path / "lm_checkpoint.pt", tmp_path / "pwned"
    torch.save({"key": train_module._checkpoint_key(cfg, tokens_dir), "model": _RunsCode(marker)}, checkpoint)
    _, figures = train_lm(cfg, tokens_dir, checkpoint)
    assert not marker.exists() and figures["steps"] == 30
    assert "unreadable" in capsys.readouterr().err


def test_the_source_never_unpickles():
    """Every load of a file goes through a loader that cannot run code."""
    problems = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in match.group(1):
                problems.append(f"{path.name}: {match.group(0)}")
        for pattern in (
            r"\bimport pickle\b",
            r"\bpickle\.loads?\(",
            r"allow_pickle\s*=\s*True",
            r"yaml\.(unsafe_)?load\(",
            r"yaml\.Loader\b",
            r"(?<![.\w])eval\(",
            r"(?<![.\w])exec\(",
        ):
            problems += [f"{path.name}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert not problems


# ---- SQLite URI ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["run#1", "run?x", "run%41", "r un;&'\"", "ok"])
def test_feature_store_opens_read_only_under_any_directory_name(tmp_path, name):
    run = tmp_path / name
    run.mkdir()
    with create_store(run / FILENAME) as db:
        db.add([DictionaryRow("neurons", "neuron", 4, 4, None, 10, None)])
    before = sorted(p.name for p in tmp_path.iterdir()) + sorted(p.name for p in run.iterdir())
    store = FeatureStore(run / FILENAME)
    assert [d["name"] for d in store.dictionaries()] == ["neurons"]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        store.db.execute("CREATE TABLE intruder (x)")
    store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) + sorted(p.name for p in run.iterdir()) == before


# ---- stale inputs and digests ------------------------------------------------------------------


def test_a_corpus_edited_in_place_is_tokenized_again(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"

    def write(seed: int) -> None:
        corpus.write_text("\n".join(json.dumps({"text": d}) for d in make_corpus_text(60, seed).split("\n\n\n")))

    write(seed=0)
    args = [
        "run",
        "--preset",
        "tiny",
        "--corpus",
        str(corpus),
        "--out",
        str(tmp_path / "r"),
        "--upto",
        "corpus",
        "--set",
        "corpus.val_fraction=0.2",
    ]
    assert run_cli(args, capsys)[0] == 0
    tokens = file_digest(tmp_path / "r" / "tokens" / "train_000.npy")
    os.utime(corpus)  # touched, not changed: still current
    code, out, _ = run_cli(args, capsys)
    assert code == 0 and "current (skipped)" in out
    write(seed=1)
    code, out, _ = run_cli(args, capsys)
    assert code == 0 and "current (skipped)" not in out
    assert file_digest(tmp_path / "r" / "tokens" / "train_000.npy") != tokens


def test_run_json_holds_a_digest_of_every_file_each_stage_wrote(analysed_run):
    run, _ = analysed_run
    manifest = json.loads((run / "run.json").read_text())
    for name, entry in manifest["stages"].items():
        recorded = entry["artifacts"]
        units = artifact_units(list(recorded))
        assert sorted(recorded) == sorted(f for u in units for f in unit_files(run, u)), name
        for rel, expected in recorded.items():
            assert expected == {"bytes": (run / rel).stat().st_size, "blake2b": file_digest(run / rel)}
    assert "lm/model.safetensors" in manifest["stages"]["lm"]["artifacts"]
    assert FILENAME in manifest["stages"]["analysis"]["artifacts"]
    assert "activations/train/acts_00000.bin" in manifest["stages"]["harvest"]["artifacts"]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _bit_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) * 3 // 4] ^= 0x10
    path.write_bytes(bytes(data))


CORRUPTIONS = [
    ("corpus", "tokens/val_000.npy", Path.unlink),
    ("lm", "lm/model.safetensors", _bit_flip),
    ("harvest", "activations/val/acts_00000.bin", _truncate),
    ("sae", "saes/{sae}/sae_weights.safetensors", _bit_flip),
    ("analysis", FILENAME, _bit_flip),
]


@pytest.mark.parametrize("stage, rel, corrupt", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_a_corrupt_artifact_is_refused_by_readers_and_recomputed_by_run(
    analysed_run, tmp_path, capsys, stage, rel, corrupt
):
    original, cfg = analysed_run
    run = tmp_path / "run"
    shutil.copytree(original, run)
    sae = f"{cfg.sae.variant}-{cfg.sae.sizes[0]}"
    rel = rel.format(sae=sae)
    corrupt(run / rel)

    for read in (
        lambda: create_app(run),
        lambda: export_site(run, tmp_path / "site"),
        lambda: interventions_cli.steer(run, sae, 0, "God sees", n_tokens=1),
    ):
        with pytest.raises(UserError, match=re.escape(f"{run / rel}: does not match run.json")) as err:
            read()
        assert "\n" not in str(err.value)
    if rel == FILENAME:
        with pytest.raises(UserError, match="does not match run.json"):
            analysis_cli.search(run, token=" God")

    before = json.loads((run / "run.json").read_text())["stages"]
    capsys.readouterr()
    pipeline.run(cfg, run, stage)
    assert "recomputing the stage" in capsys.readouterr().err
    after = json.loads((run / "run.json").read_text())["stages"]
    verify_run(run)
    if rel != FILENAME:  # everything but the feature store is rebuilt bit for bit (seeded, CPU)
        assert file_digest(run / rel) == file_digest(original / rel)
        assert after[stage]["artifacts"][rel] == before[stage]["artifacts"][rel]
    for upstream in list(after)[: list(after).index(stage)]:
        assert after[upstream] == before[upstream]


def test_downstream_stages_follow_the_digests_they_were_built_on(analysed_run, tmp_path, capsys):
    original, cfg = analysed_run
    run = tmp_path / "run"
    shutil.copytree(original, run)
    manifest = json.loads((run / "run.json").read_text())
    manifest["stages"]["harvest"]["artifacts"]["activations/val/store.json"]["blake2b"] = "0" * 128
    (run / "run.json").write_text(json.dumps(manifest))
    pipeline.run(cfg, run, "harvest")  # recomputed, identical to what is on disk: sae stays current
    assert json.loads((run / "run.json").read_text())["stages"]["sae"] == manifest["stages"]["sae"]
    capsys.readouterr()
    code, out, _ = run_cli(
        [
            "run",
            "--preset",
            "tiny",
            "--corpus",
            cfg.corpus.corpus,
            "--out",
            str(run),
            "--upto",
            "sae",
            "--set",
            "corpus.val_fraction=0.2",
        ],
        capsys,
    )
    assert code == 0 and out.count("current (skipped)") == 4, out
    # harvest's files changed and run.json agrees (as after a recompute that came out different): sae re-runs
    _bit_flip(run / "activations/val/acts_00000.bin")
    manifest = json.loads((run / "run.json").read_text())
    manifest["stages"]["harvest"]["artifacts"]["activations/val/acts_00000.bin"]["blake2b"] = file_digest(
        run / "activations/val/acts_00000.bin"
    )
    (run / "run.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    code, out, _ = run_cli(
        [
            "run",
            "--preset",
            "tiny",
            "--corpus",
            cfg.corpus.corpus,
            "--out",
            str(run),
            "--upto",
            "sae",
            "--set",
            "corpus.val_fraction=0.2",
        ],
        capsys,
    )
    assert code == 0 and out.count("current (skipped)") == 3 and re.search(r"sae\s+│ ran", out), out


# ---- temporaries and the lock ------------------------------------------------------------------


def test_temporaries_of_killed_runs_are_removed_and_nothing_else(analysed_run, tmp_path, capsys):
    original, cfg = analysed_run
    run = tmp_path / "run"
    shutil.copytree(original, run)
    (run / ".features.sqlite.0badc0de.tmp").write_bytes(b"half a store")
    (run / ".tokens.12345678.tmp").mkdir()
    (run / ".tokens.12345678.tmp" / "train_000.npy").write_bytes(b"x")
    (run / "activations" / ".train.89abcdef.tmp").mkdir()
    (run / ".lm_checkpoint.pt.deadbeef.tmp").write_bytes(b"x")
    (run / "notes.tmp").write_text("the user's")
    (run / ".my-notes.txt").write_text("the user's")
    pipeline.run(cfg, run, "analysis")
    left = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.name.endswith(".tmp"))
    assert left == ["notes.tmp"] and (run / ".my-notes.txt").exists()
    assert "removed 4 temporary file(s)" in capsys.readouterr().err


def test_a_second_writer_is_refused(analysed_run, tmp_path):
    original, cfg = analysed_run
    run = tmp_path / "run"
    shutil.copytree(original, run)
    with open(run / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UserError, match="another monosemantic process"):
            pipeline.run(cfg, run, "corpus")


# ---- one line, exit 2, before any work ---------------------------------------------------------


def _short_val_corpus(path: Path) -> None:
    """Long training documents and one val document of a few tokens (the split hashes the text)."""
    long_docs = [d for d in make_corpus_text(n_docs=80).split("\n\n\n") if not is_val_document(d, 0.1)]
    short = next(f"Rome {i}." for i in range(1000) if is_val_document(f"Rome {i}.", 0.1))
    path.write_text("\n".join(json.dumps({"text": t}) for t in [*long_docs, short]))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "lm.n_steps=[1,"], r"--set lm.n_steps=\[1,: the value is not valid YAML \(line 1"),
        (["--config", "{binary}"], "not a YAML text file"),
        (["--config", "{bad_yaml}"], r"not valid YAML \(line \d+, column \d+: "),
        (["--out", "{file}"], "is a file, not a directory"),
        (["--out", "{file}/run"], "cannot write there"),
        (["--device", "mps"], "MPS is not available"),
        (["--device", "meta"], "not a device that can train"),
        (["--set", "lm.hook_name=bogus"], "not a hook point"),
        (["--set", "lm.lr=.inf"], "lm.lr: inf is not a finite number"),
        (["--corpus", "{short_val}", "--set", "corpus.val_fraction=0.1"], "val split has .* less than one"),
    ],
)
def test_bad_input_is_one_line_before_any_work(tmp_path, corpus_file, capsys, extra, message):
    (tmp_path / "binary.yaml").write_bytes(b"lm:\x00\xff\xfe\x01")
    (tmp_path / "bad.yaml").write_text("lm:\n  n_steps: 5\n  lr: [1,\n")
    (tmp_path / "file").write_text("a file")
    _short_val_corpus(tmp_path / "short_val.jsonl")
    paths = {
        "binary": tmp_path / "binary.yaml",
        "bad_yaml": tmp_path / "bad.yaml",
        "file": tmp_path / "file",
        "short_val": tmp_path / "short_val.jsonl",
    }
    out = tmp_path / "r"
    args = [
        "run",
        "--preset",
        "tiny",
        "--corpus",
        str(corpus_file),
        "--out",
        str(out),
        *[e.format(**paths) for e in extra],
    ]
    code, _, err = run_cli(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(message, lines[0]), lines[0]
    assert not (out / "lm").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directories_are_one_line(tmp_path, corpus_file, analysed_run, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    code, _, err = run_cli(["run", "--preset", "tiny", "--corpus", str(corpus_file), "--out", str(locked)], capsys)
    assert code == 2 and "cannot write there" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["export-html", str(analysed_run[0]), str(locked / "site")], capsys)
    assert code == 2 and "cannot write the export there" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "command, message",
    [
        (["search", "{run}", "--token", " God", "--top", "99999999999999999999"], "--top 99999999999999999999"),
        (
            ["steer", "{run}", "--sae", "{sae}", "--feature", "99999999999999999999", "--prompt", "God"],
            "--feature 99999999999999999999: .* has features 0…63",
        ),
        (["steer", "{run}", "--sae", "{sae}", "--feature", "0", "--prompt", "God", "--value", "nan"], "--value nan"),
        (["steer", "{run}", "--sae", "{sae}", "--feature", "0", "--prompt", "God", "--value", "inf"], "--value inf"),
        (
            ["steer", "{run}", "--sae", "{sae}", "--feature", "0", "--prompt", "God", "--n-tokens", "100000"],
            "--n-tokens 100000: must be 0…40",
        ),
    ],
)
def test_reader_options_out_of_range_are_one_line(analysed_run, capsys, command, message):
    run, cfg = analysed_run
    names = {"run": str(run), "sae": f"{cfg.sae.variant}-{cfg.sae.sizes[0]}"}
    code, _, err = run_cli([c.format(**names) for c in command], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and re.search(message, lines[0]), err


def test_a_new_harvest_retrains_the_saes_instead_of_reusing_them(analysed_run, tmp_path):
    original, cfg = analysed_run
    run = tmp_path / "run"
    shutil.copytree(original, run)
    changed = load_config(
        "tiny",
        overrides=["corpus.val_fraction=0.2", "harvest.n_train_tokens=2048", f"corpus.corpus={cfg.corpus.corpus}"],
    )
    pipeline.run(changed, run, "sae")
    for size in cfg.sae.sizes:
        weights = f"saes/{cfg.sae.variant}-{size}/sae_weights.safetensors"
        assert file_digest(run / weights) != file_digest(original / weights)
    assert json.loads((run / "run.json").read_text())["harvest"]["train"]["rows"] == 2048


def test_export_html_where_it_cannot_write_is_one_line(analysed_run, tmp_path, capsys):
    (tmp_path / "file").write_text("a file")
    code, _, err = run_cli(["export-html", str(analysed_run[0]), str(tmp_path / "file" / "site")], capsys)
    assert code == 2 and "cannot write the export there" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "file").read_text() == "a file"
