"""Inputs never vanish: a sample folder that cannot be read is an error naming it, and a scorer
that exits, raises, answers with something other than a finite number or runs past its time limit
ends the command with one line naming the scorer and the sample, never with exit 0."""

import os

import numpy as np
import pytest
from tiny_pipelines import save_tiny_testbed

from interp.analysis.scorers import ScorerError, load_scorer
from interp.samples import read_samples


def _sample(folder, name, prompt="solve the maze"):
    (folder / name).mkdir(parents=True)
    if prompt is not None:
        (folder / name / "prompt.txt").write_text(prompt)
    return folder / name


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda s: (s / "prompt.txt").unlink(), "has no prompt.txt"),
        (lambda s: ((s / "prompt.txt").unlink(), (s / "prompt.txt").mkdir()), "not a regular file"),
        (lambda s: ((s / "prompt.txt").unlink(), os.mkfifo(s / "prompt.txt")), "not a regular file"),
        (lambda s: (s / "prompt.txt").write_bytes(b"\xff\xfe\x00bad"), "not UTF-8"),
        (lambda s: (s / "first_frame.png").mkdir(), "first_frame.png is not a regular file"),
        (lambda s: os.symlink(s / "gone.png", s / "first_frame.png"), "first_frame.png is a broken link"),
    ],
)
def test_a_damaged_sample_is_an_error_naming_it(tmp_path, damage, message):
    _sample(tmp_path, "sample_000")
    damage(_sample(tmp_path, "sample_001"))
    with pytest.raises(ValueError, match=message) as err:
        read_samples(tmp_path)
    assert "sample_001" in str(err.value) and "\n" not in str(err.value)


def test_hidden_folders_are_not_samples(tmp_path):
    _sample(tmp_path, "sample_000")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    assert [s.name for s in read_samples(tmp_path)] == ["sample_000"]


@pytest.mark.parametrize(
    "name, message",
    [("exits", r"called sys.exit\(0\) on video 3"), ("not_a_number", "returned nan, not a finite number"),
     ("text", "returned str, not a number"), ("raises", "failed on video 3: RuntimeError: the rule file is missing")],
)  # fmt: skip
def test_a_scorer_that_does_not_answer_is_an_error(name, message):
    scorer = load_scorer(f"scorers:{name}")
    with pytest.raises(ScorerError, match=message) as err:
        scorer(np.zeros((2, 4, 4, 3), np.uint8), "video 3")
    assert f"scorers:{name}" in str(err.value) and "\n" not in str(err.value)


def test_a_scorer_past_its_time_limit_is_an_error_and_numbers_pass():
    with pytest.raises(ScorerError, match="took longer than 0.2 s on sample_001"):
        load_scorer("scorers:slow", timeout=0.2)(np.zeros((1, 2, 2, 3), np.uint8), "sample_001")
    frames = np.full((1, 2, 2, 3), 255, np.uint8)
    assert load_scorer("scorers:mean_red", timeout=5)(frames) == 1.0
    with pytest.raises(ScorerError, match="took longer than 0.2 s"):  # its fallback answer is not a score
        load_scorer("scorers:swallows", timeout=0.2)(np.zeros((1, 2, 2, 3), np.uint8), "sample_001")
    for bad in (-1, 1e12, float("inf")):
        with pytest.raises(ValueError, match="positive number of seconds"):
            load_scorer("scorers:mean_red", timeout=bad)


def test_chain_with_an_exiting_scorer_fails_with_one_line(tmp_path, run_cli):
    cfg = {"num_layers": 1, "ffn_dim": 32, "num_attention_heads": 2, "attention_head_dim": 8}
    folder = save_tiny_testbed(tmp_path / "tiny", cfg, num_steps=2)
    code, _, err = run_cli("trace", "--model", folder, "-n", 2, "--layers", "0", "--out", tmp_path / "t.h5")
    assert code == 0, err
    for scorer, message in (("exits", "called sys.exit(0) on video 0"), ("slow", "took longer than 0.5 s")):
        code, out, err = run_cli("chain", tmp_path / "t.h5", "--scorer", f"scorers:{scorer}", "--scorer-timeout", 0.5,
                                 "--model", folder, "--out", tmp_path / scorer)  # fmt: skip
        assert code == 2 and message in err, (code, err)
        assert len([line for line in err.splitlines() if line.startswith("interp: error:")]) == 1
        assert not (tmp_path / scorer / "convergence.json").exists()
