"""The whole-study demo (small) and its HTML report: artefacts exist, the page links them, and every
image loads in a real browser."""

import json
import os
import re
import shutil
import subprocess
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from interp import cli
from interp.report.html import write_report

DEMO_ARGS = ["--n-filmstrips", "1", "--n-accuracy", "8", "--n-trace", "8", "--probe-target", "on_path"]
DEMO_ARGS += ["--n-causal", "1", "--n-noise", "4", "--n-ensemble", "4"]
ARTEFACTS = [
    "maze4_seed*/maze4-f4-seed*/filmstrip.png",  # the filmstrip maze is chosen to show change: any held-out seed
    "maze4_seed*/maze4-f4-seed*/video.gif",
    "accuracy.json",
    "trace.h5",
    "energy_step00/energy_maps.png",
    "probes/probes.csv",
    "probes/probe_on_path.png",
    "chain/chain.json",
    "chain/chain.png",
    "causal/patch_onward/heatmap.png",
    "causal/swap/heatmap.png",
    "causal/noise/noise_step_vs_frame.png",
    "causal/flow/flow.png",
    "causal/layers/layer_profiles.png",
    "causal/layers/layers.json",
    "ensemble/ensemble.json",
    "ensemble/ensemble.png",
    "study.json",
    "report.html",
]


def _resolve(out, path: str) -> str:
    """An artefact's path; a pattern (``*``) resolves to the one file it matches."""
    if "*" not in path:
        return path
    found = sorted(out.glob(path))
    assert len(found) == 1, f"{path}: {found}"
    return found[0].relative_to(out).as_posix()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    result = CliRunner().invoke(cli.app, ["demo", "--out", str(out), *DEMO_ARGS])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_demo_writes_every_artefact_and_prints_headlines(demo_run):
    out, output = demo_run
    for path in ARTEFACTS:
        assert (out / _resolve(out, path)).is_file(), path
    assert "held-out 4x4 mazes:" in output and "probe on_path: best selectivity" in output
    assert "seed ensemble, 5x5: one seed" in output and "noise at step:" in output
    assert "layer roles: " in output
    assert f"report: {(out / 'report.html').resolve()}" in output
    study = json.loads((out / "study.json").read_text())
    assert study["options"]["n_trace"] == 8 and len(study["headline"]) >= 7


def _figures(out) -> list:
    """The PNGs a run drew: every one under the run folder but the sample folders it wrote as data (a maze
    sample's puzzle and solution frames, beside its prompt.txt: the given-videos stage's inputs)."""
    return [p for p in out.rglob("*.png") if not (p.parent / "prompt.txt").is_file()]


def test_report_links_every_artefact(demo_run):
    out, _ = demo_run
    page = (out / "report.html").read_text()
    links = {unquote(h.removeprefix("./")) for h in re.findall(r'href="([^"#][^"]*)"', page)}  # ./ + percent-encoded
    embedded = set(re.findall(r'data-file="([^"]*)"', page))
    for path in ARTEFACTS[:-1]:
        assert _resolve(out, path) in links, f"{path} not linked"
    for png in _figures(out):
        assert png.relative_to(out).as_posix() in embedded, f"{png} not shown"
    # Intervention videos play inline beside each other: the ensemble's one seed / ensemble / control.
    assert len([f for f in embedded if f.startswith("ensemble/videos/") and f.endswith(".gif")]) == 3
    assert any(f.startswith("causal/patch_onward/videos/") for f in embedded)
    for f in out.rglob("*"):  # nothing the run wrote is left out (store parts are the store's own)
        if f.is_file() and ".parts" not in f.as_posix() and f.name != "report.html":
            assert f.relative_to(out).as_posix() in links, f"{f} not linked"
    sections = ("claims", "probes", "patching", "noise", "flow", "energy", "filmstrips", "chain", "ensemble", "config")
    for section in sections:
        assert f'<section id="{section}">' in page, section
    for link in links:
        assert (out / link).is_file(), link


def test_report_refuses_empty_folders_and_pages_outside(tmp_path, demo_run):
    with pytest.raises(ValueError, match="nothing to report"):
        write_report(tmp_path)
    with pytest.raises(FileNotFoundError, match="no run folder"):
        write_report(tmp_path / "missing")
    with pytest.raises(ValueError, match="must be written inside"):
        write_report(demo_run[0], tmp_path / "elsewhere.html")


def _browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_renders_in_headless_chromium_with_every_image_loaded(demo_run, tmp_path):
    browser = _browser()
    if browser is None:
        if os.environ.get("REQUIRE_BROWSER"):
            pytest.fail("REQUIRE_BROWSER is set but no chromium is installed (apt-get install chromium)")
        pytest.skip("no chromium on this machine: install Debian's chromium package to run the report test")
    out, _ = demo_run
    # The page moves with its figures embedded: render a copy away from the run folder.
    page = tmp_path / "moved.html"
    shutil.copy(out / "report.html", page)
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
    ]  # fmt: skip
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body))
    gifs = {f for f in re.findall(r'data-file="([^"]*)"', page.read_text()) if f.endswith(".gif")}  # videos inline
    n_images = len(_figures(out)) + len(gifs)
    assert int(attrs["data-images"]) == n_images, attrs
    assert attrs["data-images-loaded"] == attrs["data-images"], f"broken: {attrs.get('data-images-broken')}"
    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2400, 1280) and pixels.std() > 10  # a rendered page, not a blank one


ORGANISM_ARGS = ["--n-filmstrips", "1", "--n-accuracy", "4", "--n-trace", "4", "--probe-target", "on_path"]
ORGANISM_ARGS += ["--probe-steps", "0-19:10", "--n-causal", "1", "--n-noise", "2", "--n-ensemble", "2"]
ORGANISM_ARGS += ["--n-exploration", "2", "--n-select", "2"]
ORGANISM_ARTEFACTS = ["maze6_seed*/maze6-f4-seed*/filmstrip.png", "trace.h5", "exploration/exploration.png",
                      "exploration/exploration.json", "causal/layers/layer_profiles.png",
                      "early_select/early_select.png", "early_select/early_select.json",
                      "ensemble/ensemble.json", "report.html"]  # fmt: skip


def test_organism_demo_writes_its_artefacts_and_both_testbeds_show_side_by_side(demo_run):
    out = demo_run[0].parent / "organism"
    result = CliRunner().invoke(cli.app, ["demo", "--model", "testbed-mixed", "--out", str(out), *ORGANISM_ARGS])
    assert result.exit_code == 0, result.output
    for path in ORGANISM_ARTEFACTS:
        assert (out / _resolve(out, path)).is_file(), path
    assert "held-out 6x6 mazes:" in result.output and "early selection 6x6: one seed" in result.output
    assert "testbed-mixed 6x6: final" in result.output
    page = (out / "report.html").read_text()
    links = {unquote(h.removeprefix("./")) for h in re.findall(r'href="([^"#][^"]*)"', page)}  # ./ + percent-encoded
    for path in ORGANISM_ARTEFACTS[:-1]:
        assert _resolve(out, path) in links, f"{path} not linked"
    assert "early-step selection beats one seed" in page and "multi-path exploration then convergence" in page
    assert "layers specialise: early, middle and late layers take different roles" in page
    both = write_report(out.parent).read_text()  # the folder holding both studies
    assert '<section id="side-by-side">' in both
    header = re.search(r'<section id="side-by-side">.*?<tr>(.*?)</tr>', both, re.S).group(1)
    assert "<th>testbed</th>" in header and "<th>testbed-mixed</th>" in header
