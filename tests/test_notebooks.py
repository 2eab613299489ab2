"""The notebooks run top to bottom: the two testbed tours as written (smaller), the Wan 2.2 recipe on a
tiny random Wan 2.2 pipeline built offline."""

from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient
from tiny_pipelines import build_tiny_wan, write_samples

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(name: str, parameters: dict, cwd: Path) -> nbformat.NotebookNode:
    """Run a notebook with its ``parameters`` cell replaced; raises on the first failing cell."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{name} needs exactly one cell tagged 'parameters'"
    cells[0].source = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def _outputs(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_store_and_probes_tour(tmp_path):
    out = tmp_path / "store"
    execute("01_store_and_probes.ipynb", {"OUT": str(out), "N_VIDEOS": 8, "THREADS": 2}, tmp_path)
    table = pd.read_csv(out / "probes" / "probes.csv")
    assert set(table["target"]) == {"on_path"} and len(table) == 8 * 7  # 8 layers x steps 0-19:3
    assert (out / "probes" / "probe_on_path.png").is_file()


def test_patching_walkthrough(tmp_path):
    out = tmp_path / "patching"
    nb = execute("02_patching_walkthrough.ipynb", {"OUT": str(out), "SEED": 0, "THREADS": 2}, tmp_path)
    assert "clean run solves its own maze: True" in _outputs(nb)
    assert (out / "patch_onward" / "heatmap.png").is_file()


@pytest.fixture
def tiny_wan22(tmp_path):
    return build_tiny_wan(tmp_path / "wan22", two_experts=True), write_samples(tmp_path / "data", n=4)


def test_wan22_recipe_runs_on_a_tiny_two_expert_pipeline(tmp_path, tiny_wan22):
    model, data = tiny_wan22
    out = tmp_path / "run"
    params = dict(
        MODEL_DIR=str(model), DATA_DIR=str(data), OUT=str(out), DEVICE="cpu", TORCH_DTYPE="float32",
        HEIGHT=32, WIDTH=32, NUM_FRAMES=5, NUM_STEPS=6, SEEDS=[0, 1], STEPS="all", LAYERS="all", POOLING="none",
    )  # fmt: skip
    nb = execute("03_wan22_recipe.ipynb", params, tmp_path)
    assert "model folder found: True" in _outputs(nb)
    table = pd.read_csv(out / "probes" / "probes.csv")
    # Each expert is probed only at the steps where it ran (boundary 0.875 of 1000: 2 high, 4 low here).
    per_site = table.groupby("site")["step"].apply(sorted).to_dict()
    assert per_site["high.blocks.0"] == [0, 1] and per_site["low.blocks.0"] == [2, 3, 4, 5]
    assert (out / "noise" / "noise_step_vs_frame.png").is_file() and (out / "report.html").is_file()


def test_wan22_recipe_builds_its_config_without_a_model(tmp_path):
    """As shipped (no model folder here): the configs build and nothing heavy runs."""
    nb = nbformat.read(NOTEBOOKS / "03_wan22_recipe.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert "model folder found: False" in _outputs(nb)


def test_python_api_notebook(tmp_path):
    out = tmp_path / "api"
    nb = execute("04_python_api.ipynb", {"OUT": str(out), "N_MAZES": 6, "NUM_STEPS": 5, "THREADS": 2}, tmp_path)
    text = _outputs(nb)
    assert "solved: [True, True, True, True, True, True]" in text and "block 4 outputs: (5, 6, 64, 128)" in text
    assert "zero block 4, every step: solved 0/6" in text and "patched run solves the clean maze:" in text
    assert (out / "on_path_block4.safetensors").is_file()
    assert "{'layer': 2, 'video': 6, 'step': 1, 'token': 64, 'hidden': 128}" in text
