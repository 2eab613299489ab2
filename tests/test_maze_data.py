"""Mazes as a data set: `interp data maze` writes sample folders a pipeline reads with --data, and
`--scorer maze` judges any model's decoded video against the sample's maze.json with the maze verifier."""

import json

import numpy as np
import pytest
from PIL import Image, ImageSequence

from interp.analysis.scorers import ScorerError, load_scorer
from interp.tasks import maze as maze_task
from interp.tasks.maze import to_grid
from interp.tasks.maze_data import maze_from_record, maze_record, read_maze, render_frames


def _gif(path) -> np.ndarray:
    return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(Image.open(path))])


def test_maze_samples_read_back_and_the_verifier_judges_their_videos(tmp_path, run_cli):
    code, out, err = run_cli("data", "maze", "--size", 4, "-n", 2, "--frames", 5, "--pixels", 96, "--out", tmp_path)
    assert code == 0, err
    folders = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert [p.name for p in folders] == ["maze4_seed000000", "maze4_seed000001"]
    for name in ("first_frame.png", "final_frame.png", "ground_truth.gif", "prompt.txt", "maze.json"):
        assert (folders[0] / name).is_file(), name
    maze = read_maze(folders[0])
    reference = maze_task.generate_maze(4, 0)
    assert maze.path == reference.path and np.array_equal(maze.open_sides, reference.open_sides)
    assert np.array_equal(maze.dist_to_goal, reference.dist_to_goal)
    assert Image.open(folders[0] / "first_frame.png").size == (96, 96)
    scorer = load_scorer("maze")
    truth = _gif(folders[0] / "ground_truth.gif")
    assert scorer(truth, "maze 0", folders[0]) == 1.0
    assert scorer(truth[::-1].copy(), "maze 0", folders[0]) == 0.0  # the walk backwards is not a solution
    assert scorer(truth, "maze 1 with maze 0's video", folders[1]) == 0.0
    wide = np.stack([np.asarray(Image.fromarray(f).resize((832, 480), Image.BILINEAR)) for f in truth])
    assert scorer(wide, "maze 0 at 480x832", folders[0]) == 1.0  # another model's frame size, smoothed edges
    assert np.array_equal(to_grid(render_frames(maze, 5, 480), 4), maze_task.render(maze_task.encode(maze, 5)))
    with pytest.raises(ScorerError, match="needs the sample's folder"):
        scorer(truth, "a video without its sample")


def test_a_maze_record_that_lies_is_one_line(tmp_path):
    record = maze_record(maze_task.generate_maze(4, 3))
    assert maze_from_record(json.loads(json.dumps(record)), "m").path == maze_task.generate_maze(4, 3).path
    walled = {**record, "open_sides": np.zeros((4, 4, 4), int).tolist()}
    outside = {**record, "start": [5, 0], "goal": [6, 0], "path": [[5, 0], [6, 0]]}
    for bad, message in ((walled, "open_sides is not that of the maze seed 3"),
                         ({**record, "seed": 7}, "open_sides is not that of the maze seed 7"),  # another maze's seed
                         ({**record, "seed": -1}, "seed must be an integer from 0"),
                         ({**record, "seed": 2**64}, "seed must be an integer from 0"),
                         ({**record, "size": 10**9}, "size must be an integer"),
                         (outside, "start is not that of the maze"),
                         ({**record, "path": [[0, 0]]}, "path is not that of the maze"),
                         ({**record, "open_sides": [[2**70]]}, "open_sides is not"),
                         ({**record, "task": "sudoku"}, "not a maze record")):  # fmt: skip
        with pytest.raises(ValueError, match=message) as err:
            maze_from_record(bad, "x/maze.json")
        assert str(err.value).startswith("x/maze.json: ")


def test_a_pipeline_ensemble_is_scored_by_the_maze_verifier(tmp_path, run_cli):
    from tiny_pipelines import build_tiny_wan

    model = build_tiny_wan(tmp_path / "wan", image_to_video=True)
    code, _, err = run_cli("data", "maze", "--size", 4, "-n", 1, "--pixels", 32, "--out", tmp_path / "mazes")
    assert code == 0, err
    code, _, err = run_cli("ensemble", "--model", model, "--data", tmp_path / "mazes", "--height", 32, "--width", 32,
                           "--num-frames", 5, "--num-steps", 2, "--seeds", 2, "--k", 1, "--scorer", "maze",
                           "--out", tmp_path / "ens")  # fmt: skip
    assert code == 0, err
    rows = json.loads((tmp_path / "ens" / "ensemble.json").read_text())["rows"]
    assert rows and all(r["score"] in (0.0, 1.0) for r in rows)  # a random model: judged, not solved


def test_the_testbed_traces_a_maze_data_set_and_the_maze_scorer_reads_it_back(tmp_path, run_cli):
    """The same sample folders a pipeline takes: the testbed's store holds their mazes, named by sample,
    and `chain --scorer maze` judges the testbed's decoded x0_hat against each sample's maze.json."""
    from activations import ActivationStore

    code, _, err = run_cli("data", "maze", "--size", 4, "-n", 3, "--first-seed", 7, "--pixels", 64,
                           "--out", tmp_path / "mazes")  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli("trace", "--data", tmp_path / "mazes", "--layers", "0", "--num-steps", 4,
                           "--out", tmp_path / "t.h5")  # fmt: skip
    assert code == 0, err
    with ActivationStore(tmp_path / "t.h5") as store:
        assert store.layout.video_keys == ["maze4_seed000007", "maze4_seed000008", "maze4_seed000009"]
        metas = [store.meta(v) for v in store.completed_videos]
    assert [m["maze_seed"] for m in metas] == [7, 8, 9] and all(m["sample"].startswith("maze4_") for m in metas)
    code, _, err = run_cli("chain", tmp_path / "t.h5", "--scorer", "maze", "--model", "testbed",
                           "--out", tmp_path / "chain")  # fmt: skip
    assert code == 0, err
    chain = json.loads((tmp_path / "chain" / "convergence.json").read_text())
    final_scores = [v["score"][-1] for v in chain["videos"]]
    verdicts = [float(m["verdict"]["solved"]) for m in metas]
    assert final_scores == verdicts  # the scorer on decoded frames agrees with the testbed's own verifier
    code, _, err = run_cli("trace", "--data", tmp_path / "mazes", "-n", 2, "--out", tmp_path / "t3.h5")
    assert code == 2 and "with --data the folder's samples are run" in err  # the folder decides, not a flag
    code, _, err = run_cli("trace", "--data", tmp_path / "mazes", "--samples", "maze4_seed000009,maze4_seed000007",
                           "--layers", "0", "--num-steps", 2, "--out", tmp_path / "chosen.h5")  # fmt: skip
    assert code == 0, err  # samples chosen by name, as on a pipeline
    with ActivationStore(tmp_path / "chosen.h5") as store:
        assert store.layout.video_keys == ["maze4_seed000009", "maze4_seed000007"]
        assert [store.meta(v)["maze_seed"] for v in store.completed_videos] == [9, 7]
    bad = tmp_path / "mazes" / "maze4_seed000008" / "first_frame.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(bad)
    code, _, err = run_cli("trace", "--data", tmp_path / "mazes", "--out", tmp_path / "t2.h5")
    assert code == 2 and "does not show the maze its maze.json describes" in err


def test_evaluate_puts_any_model_on_the_same_mazes(tmp_path, run_cli):
    """`interp evaluate` is one command over one source: the testbed on a maze folder gives the verdicts it gives
    on the same mazes generated from their seeds, and a pipeline on that folder is judged by the same verifier
    on its decoded frames (a random tiny Wan solves none)."""
    from tiny_pipelines import build_tiny_wan

    code, _, err = run_cli("data", "maze", "--size", 4, "-n", 3, "--first-seed", 5, "--pixels", 32,
                           "--out", tmp_path / "mazes")  # fmt: skip
    assert code == 0, err
    common = ["--num-steps", 4, "--frames", 4]
    code, _, err = run_cli("evaluate", "--data", tmp_path / "mazes", *common, "--out", tmp_path / "from_data")
    assert code == 0, err
    code, _, err = run_cli("evaluate", "-n", 3, "--first-seed", 5, *common, "--out", tmp_path / "generated")
    assert code == 0, err
    from_data, generated = (json.loads((tmp_path / k / "accuracy.json").read_text()) for k in ("from_data",
                                                                                                 "generated"))
    assert from_data == generated and from_data["seeds"] == [5, 7] and from_data["n"] == 3
    model = build_tiny_wan(tmp_path / "wan", image_to_video=True)
    code, out, err = run_cli("evaluate", "--model", model, "--data", tmp_path / "mazes", "--height", 32, "--width", 32,
                             "--num-frames", 5, "--num-steps", 2, "--out", tmp_path / "wan_eval")  # fmt: skip
    assert code == 0, err
    assert "weights counted from their safetensors headers" in out  # planned without loading
    wan = json.loads((tmp_path / "wan_eval" / "accuracy.json").read_text())
    assert wan["n"] == 3 and wan["accuracy"] == 0.0 and wan["seeds"] == [5, 7]
    code, _, err = run_cli("evaluate", "--model", model, "--data", tmp_path / "mazes", "-n", 2, "--out", tmp_path / "x")
    assert code == 2 and "with --data the folder's samples are run" in err
