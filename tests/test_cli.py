"""The command line as a user meets it: one error line with exit code 2, skipping, determinism."""

import json
import math
import re
import sys

import pytest

from monosemantic.cli import main


def run_cli(args, capsys):
    old = sys.argv
    sys.argv = ["monosemantic", "-q", *args]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


def test_run_writes_manifest_then_skips_current_stages(tmp_path, corpus_file, capsys):
    args = [
        "run",
        "--preset",
        "tiny",
        "--corpus",
        str(corpus_file),
        "--out",
        str(tmp_path / "r"),
        "--upto",
        "lm",
        "--set",
        "corpus.val_fraction=0.2",
    ]
    code, out, _ = run_cli(args, capsys)
    assert code == 0
    manifest = json.loads((tmp_path / "r" / "run.json").read_text())
    lm = manifest["lm"]
    # each predicts better than a uniform guess over the vocabulary, the bigram better than the unigram
    assert lm["bigram_loss"] < lm["unigram_loss"] < math.log(manifest["corpus"]["vocab_size"])
    assert lm["val_loss"] < math.log(manifest["corpus"]["vocab_size"])
    assert set(manifest["timings"]) == {"corpus", "lm"}
    code, out, _ = run_cli(args, capsys)
    assert code == 0 and out.count("current (skipped)") == 2
    # Same seed, new directory: the same numbers.
    code, _, _ = run_cli(
        [*args[:-4], "--out", str(tmp_path / "r2"), "--upto", "lm", "--set", "corpus.val_fraction=0.2"], capsys
    )
    assert json.loads((tmp_path / "r2" / "run.json").read_text())["lm"]["val_loss"] == lm["val_loss"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--corpus", "/nonexistent/file.txt"], "no such file"),
        (["--preset", "nope"], "unknown preset"),
        (["--set", "lm.d_model=31"], "divisible"),
        (["--set", "lm.no_such_key=1"], "lm.no_such_key"),
        (["--set", "corpus.vocab_size=-5"], "corpus.vocab_size"),
        (["--device", "cuda:7"], "cuda"),
        (["--set", "sae.params={l1_coeff: -1}"], "l1_coeff must be ≥ 0"),
        (["--set", "sae.variant=topk", "--set", "sae.params={k: 600}"], "k=600 must be smaller"),
        (["--set", "sae.variant_params.topk.k=600"], "variant_params.topk: k=600 must be smaller"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, corpus_file, capsys, extra, message):
    args = ["run", "--preset", "tiny", "--corpus", str(corpus_file), "--out", str(tmp_path / "r"), *extra]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert re.search(message, lines[0])
    assert "Traceback" not in err
    assert not (tmp_path / "r" / "run.json").exists()


def test_non_utf8_and_empty_corpus(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok text " * 50 + b"\xff\xfe bad")
    code, _, err = run_cli(["run", "--preset", "tiny", "--corpus", str(bad), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "not UTF-8" in err and "bad.txt" in err
    assert not (tmp_path / "r" / "tokens").exists() and not (tmp_path / "r" / "tokenizer.json").exists()
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n ")
    code, _, err = run_cli(["run", "--preset", "tiny", "--corpus", str(empty), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "no non-empty documents" in err


def test_corrupt_lm_checkpoint_is_set_aside_and_training_restarts(tmp_path, corpus_file, capsys):
    out = tmp_path / "r"
    base = [
        "run",
        "--preset",
        "tiny",
        "--corpus",
        str(corpus_file),
        "--out",
        str(out),
        "--set",
        "corpus.val_fraction=0.2",
    ]
    assert run_cli([*base, "--upto", "corpus"], capsys)[0] == 0
    (out / "lm_checkpoint.pt").write_bytes(b"not a checkpoint")
    code, _, err = run_cli([*base, "--upto", "lm"], capsys)
    notices = [line for line in err.splitlines() if "lm_checkpoint.pt" in line]
    assert code == 0 and len(notices) == 1 and "unreadable" in notices[0] and "set aside" in notices[0]
    assert (out / "lm_checkpoint.pt.stale").read_bytes() == b"not a checkpoint"
    assert json.loads((out / "run.json").read_text())["lm"]["steps"] == 40  # trained from step 0 to the end


def test_debug_shows_traceback(tmp_path, capsys):
    from monosemantic.errors import UserError

    with pytest.raises(UserError):
        run_cli(["--debug", "run", "--corpus", "/nonexistent", "--out", str(tmp_path / "r")], capsys)
