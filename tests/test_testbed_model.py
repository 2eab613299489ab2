"""The shipped testbed model: real diffusers class, small, loads offline, solves held-out mazes."""

import json

import numpy as np
from diffusers import WanTransformer3DModel

from interp.evaluation import evaluate_mazes
from interp.models import testbed
from interp.tasks.splits import held_out_seeds


def test_shipped_weights_are_a_small_diffusers_wan_model():
    files = list(testbed.WEIGHTS_DIR.glob("*.safetensors"))
    assert len(files) == 1 and files[0].stat().st_size <= 20 * 2**20
    assert not list(testbed.WEIGHTS_DIR.glob("*.bin")) and not list(testbed.WEIGHTS_DIR.glob("*.pt"))
    model = testbed.load_transformer()
    assert type(model) is WanTransformer3DModel


def test_shipped_model_solves_held_out_mazes(shipped_adapter):
    ev = evaluate_mazes(shipped_adapter, held_out_seeds(40), size=4, frames=4)
    assert ev.accuracy >= 0.85, ev.summary()
    # Not a copy of frame 0 or a fixed pattern: solved videos draw different trails per maze.
    assert len({v.prefix_lengths for v in ev.verdicts}) > 1


def test_generate_command_writes_video_filmstrip_and_verdict(tmp_path, run_cli):
    code, out, err = run_cli("generate", "--size", 4, "--seed", 3, "--out", tmp_path)
    assert code == 0, err
    assert "maze 4x4 seed 3:" in out
    folder = tmp_path / "maze4-f4-seed3"  # a folder per video, named by its key as in a store
    for name in ("video.gif", "filmstrip.png", "verdict.json", "step_00.gif", "step_19.gif"):
        assert (folder / name).stat().st_size > 0
    verdict = json.loads((folder / "verdict.json").read_text())
    assert verdict["maze_seed"] == 3 and set(verdict["verdict"]) >= {"solved", "final_exact", "frames_valid"}
    from PIL import Image

    strip = np.asarray(Image.open(folder / "filmstrip.png"))
    # 4 frame columns ((1.2 x 4 + 1.5) in at 100 dpi); only the steps where the picture changes, so fewer
    # rows than a strip of all 20 steps would have (the 4x4 testbed commits early)
    assert strip.shape[1] == 630 and strip.shape[0] < 100 * (1.2 * 20 + 0.95)
