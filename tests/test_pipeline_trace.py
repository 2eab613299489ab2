"""`interp trace --model PIPELINE_FOLDER --data DIR` on tiny Wan pipelines saved to disk."""

import numpy as np
import pytest
from tiny_pipelines import build_tiny_wan, write_samples

from activations import ActivationStore


@pytest.mark.parametrize("image_to_video", [False, True])
def test_trace_a_local_wan_pipeline_over_vbvr_samples(tmp_path, run_cli, image_to_video):
    model = build_tiny_wan(tmp_path / "wan", image_to_video)
    data = write_samples(tmp_path / "data", n=2)
    out = tmp_path / "store.h5"
    code, _, err = run_cli(
        "trace",
        "--model",
        model,
        "--data",
        data,
        "--height",
        32,
        "--width",
        32,
        "--num-frames",
        5,
        "--num-steps",
        3,
        "--seed",
        0,
        "--seed",
        1,
        "--out",
        out,
    )
    assert code == 0, err
    with ActivationStore(out) as store:
        assert store.layout.adapter == "wan2.1" and store.sites == ["blocks.0", "blocks.1"]
        assert store.completed_videos == [0, 1, 2, 3]
        assert store.layout.token_grid == (2, 2, 2)  # 5 frames -> 2 latent frames; 32 px -> 4 latent -> 2 tokens
        assert [store.meta(v)["sample"] for v in range(4)] == ["sample_000"] * 2 + ["sample_001"] * 2
        assert store.meta(1)["seed"] == 1 and store.meta(2)["prompt"] == "walk from green start to red goal"
        acts = store.activations("blocks.1")
        assert acts.shape == (4, 3, 8, 16) and np.isfinite(acts).all()
        assert not np.allclose(acts[0], acts[1])  # another seed, another trajectory


def test_pipeline_errors_are_clear(tmp_path, run_cli):
    model = build_tiny_wan(tmp_path / "wan")
    write_samples(tmp_path / "data", n=1)
    sized = ["--height", 32, "--width", 32, "--num-frames", 5]
    for extra, message in [
        ([], "needs --data"),
        (["--data", tmp_path / "nope"], "no such folder"),
        (["--data", tmp_path / "wan"], "no sample folders"),
        (["--data", tmp_path / "data", "--layers", 5, *sized], "layer 5 is out of range"),
        (["--data", tmp_path / "data", "--height", 30, "--width", 32, "--num-frames", 5], "multiples of 16"),
        (["--data", tmp_path / "data", "--height", 32, "--width", 32, "--num-frames", 6], "multiple of 4"),
    ]:
        code, _, err = run_cli("trace", "--model", model, *extra, "--out", tmp_path / "never.h5")
        last = err.strip().splitlines()[-1]  # progress bars of pipeline loading may come before it
        assert code == 2 and last.startswith("interp: error:") and message in last and "Traceback" not in err, err
    assert not list(tmp_path.glob("never*"))
