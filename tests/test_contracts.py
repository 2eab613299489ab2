"""The contracts of the redesign: a new model family is one file (here: one class in the test), a
new experiment is one module plus its registration, every command writes a manifest, and the
report shows every file every manifest lists."""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest
from tiny_pipelines import save_tiny_testbed

from interp.experiments.base import Experiment, ExperimentConfig, experiments, register
from interp.manifest import Manifest, is_manifest

TINY = {"num_layers": 2, "ffn_dim": 64, "num_attention_heads": 2, "attention_head_dim": 16}


@pytest.fixture(scope="module")
def tiny_testbed(tmp_path_factory):
    """A random testbed with 3 denoising steps: every command runs in seconds on it."""
    return str(save_tiny_testbed(tmp_path_factory.mktemp("tiny") / "testbed", TINY, num_steps=3))


def test_a_new_model_family_is_one_class_registered_where_it_is_defined(tmp_path, run_cli):
    from diffusers import WanPipeline
    from tiny_pipelines import build_tiny_wan, write_samples

    from interp.models.registry import register as register_family
    from interp.models.registry import unregister
    from interp.models.wan import WanAdapter

    class ToyWanPipeline(WanPipeline):  # a pipeline class diffusers has never heard of
        pass

    built = []

    @register_family("ToyWanPipeline", pipeline_class=ToyWanPipeline)
    class ToyAdapter(WanAdapter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.name = "toy-wan"
            built.append(self)

    try:
        model = build_tiny_wan(tmp_path / "toy")
        index = json.loads((model / "model_index.json").read_text())
        (model / "model_index.json").write_text(json.dumps({**index, "_class_name": "ToyWanPipeline"}))
        data = write_samples(tmp_path / "data", n=1)
        args = ["trace", "--model", model, "--data", data, "--height", 32, "--width", 32, "--num-frames", 5]
        code, _, err = run_cli(*args, "--num-steps", 2, "--layers", "0", "--out", tmp_path / "toy.h5")
        assert code == 0, err
    finally:
        unregister("ToyWanPipeline")
    from activations import ActivationStore

    with ActivationStore(tmp_path / "toy.h5") as store:
        assert store.layout.adapter == "toy-wan" and store.completed_videos == [0]
    # Built twice: the plan's skeleton (meta-device models, from the configs) and the loaded model, once.
    assert [next(a.transformer.parameters()).is_meta for a in built] == [True, False]
    code, _, err = run_cli(*args, "--out", tmp_path / "again.h5")
    assert code == 2 and "ToyWanPipeline has no adapter yet" in err


@dataclass
class CountConfig(ExperimentConfig):
    experiment = "count"
    model: str = "testbed"
    n: int = 3


def _run_count(cfg: CountConfig, progress: bool = True) -> list[int]:
    return list(range(cfg.n))


def _save_count(result: list[int], cfg: CountConfig, out) -> Manifest:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "count.json").write_text(json.dumps(result))
    manifest = Manifest("count", "counting", "counting", cfg.to_dict(), headline=[f"counted to {cfg.n}"])
    manifest.add(out / "count.json", "data", "the numbers")
    manifest.write(out)
    return manifest


def test_a_new_experiment_gets_its_command_report_section_and_demo_step(tmp_path, run_cli):
    from interp.report.html import write_report
    from interp.study import demo_steps

    register(Experiment("count", CountConfig, _run_count, _save_count, demo=lambda ctx: None, demo_order=99))
    try:
        code, out, err = run_cli("count", "--n", 5, "--out", tmp_path / "c")
        assert code == 0, err
        assert "counted to 5" in out
        assert "count" in [e.kind for e in demo_steps()]
        page = write_report(tmp_path).read_text()
        assert '<section id="counting">' in page and 'href="./c/count.json"' in page
        code, _, err = run_cli("count", "--config", tmp_path / "c" / "run.json", "--out", tmp_path / "d")
        assert code == 0 and json.loads((tmp_path / "d" / "count.json").read_text()) == [0, 1, 2, 3, 4]
    finally:
        from interp.experiments import base

        base._REGISTRY.pop("count")


def test_configs_refuse_unknown_fields_and_other_experiments(tmp_path):
    from interp.experiments.base import load_config
    from interp.experiments.patch import PatchConfig

    (tmp_path / "bad.json").write_text(json.dumps({"experiment": "patch", "stpes": "0"}))
    with pytest.raises(ValueError, match="unknown field 'stpes'"):
        load_config(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"experiment": "nothing"}))
    with pytest.raises(ValueError, match="not an experiment config"):
        load_config(tmp_path / "other.json")
    assert load_config(_write(tmp_path / "ok.json", PatchConfig(n=2).to_json())) == PatchConfig(n=2)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_every_command_writes_a_manifest_and_the_report_shows_every_listed_file(tmp_path, run_cli, tiny_testbed):
    run = tmp_path / "run"
    m = ["--model", tiny_testbed]
    commands = [
        ["generate", *m, "--seed", 1, "--out", run / "gen"],
        ["evaluate", *m, "-n", 2, "--out", run / "eval"],
        ["trace", *m, "-n", 4, "--out", run / "t.h5"],
        ["energy", run / "t.h5", "--step", 1, "--out", run / "energy"],
        ["probe", run / "t.h5", "--target", "on_path", "--layers", "0", "--steps", "0", "--out", run / "probes"],
        ["probe", run / "t.h5", "--target", "wall", "--layers", "1", "--steps", "2", "--name", "walls",
         "--out", run / "probes"],
        ["chain", run / "t.h5", "--out", run / "chain"],
        ["filmstrip", run / "t.h5", "--model", tiny_testbed, "--videos", "0-1", "--out", run / "film"],
        ["patch", *m, "-n", 1, "--steps", "1", "--metric", "latent", "--out", run / "patch"],
        ["swap", *m, "-n", 1, "--out", run / "swap"],
        ["perturb", *m, "-n", 2, "--steps", "1", "--frames-to-noise", "1", "--out", run / "perturb"],
        ["flow", *m, "-n", 2, "--inject-steps", "1", "--out", run / "flow"],
        ["knockout", *m, "-n", 2, "--steps", "1", "--rule", "cross", "--out", run / "knockout"],
        ["ensemble", *m, "-n", 2, "--size", 4, "--seeds", 2, "--k", 1, "--merge", "mean", "--temperature", 0.8,
         "--out", run / "ensemble"],
    ]  # fmt: skip
    for args in commands:
        code, _, err = run_cli(*args)
        assert code == 0, (args, err)
    manifests = [p for p in run.rglob("*") if is_manifest(p)]
    kinds = {Manifest.read(p).kind for p in manifests}
    assert kinds == {"generate", "evaluate", "trace", "energy", "probe", "chain", "filmstrip", "patch", "swap",
                     "perturb", "flow", "knockout", "ensemble"}  # fmt: skip
    assert {p.name for p in (run / "probes").iterdir()} >= {
        "probes.csv", "walls.csv", "probe_on_path.png", "walls.probe_wall.png", "probes.run.json", "walls.run.json",
    }  # fmt: skip
    code, out, err = run_cli("report", run)
    assert code == 0, err
    page = (run / "report.html").read_text()
    links = {unquote(h.removeprefix("./")) for h in re.findall(r'href="([^"#][^"]*)"', page)}  # ./ + percent-encoded
    links |= set(re.findall(r'data-file="([^"]*)"', page))
    for path in manifests:
        manifest = Manifest.read(path)
        for entry in manifest.files:
            listed = (path.parent / entry.path).relative_to(run).as_posix()
            assert (run / listed).exists(), listed
            assert listed in links, f"{listed} of {path.name} not shown"
    assert "walls" in page and "linear probes: probes" in page


def test_every_registered_cli_experiment_has_a_command():
    from interp import cli

    names = {(c.name,) for c in cli.app.registered_commands}
    names |= {(g.name, c.name) for g in cli.app.registered_groups for c in g.typer_instance.registered_commands}
    assert {e.command or (k,) for k, e in experiments().items() if e.cli} <= names
