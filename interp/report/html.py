"""One self-contained HTML page for a run folder: every figure embedded, every file linked.

``write_report(run_dir)`` looks for what the toolkit's commands write (it does not rerun anything):

- ``accuracy.json`` (``interp evaluate`` / the demo), ``study.json`` (the demo's headline numbers);
- x0_hat filmstrips: folders with ``verdict.json`` + ``filmstrip.png`` (``interp generate``);
- probes: ``probes.csv`` with its ``probe_*.png`` heatmaps and ``probes.config.json``;
- causal experiments: folders whose ``config.json`` names ``patch``, ``swap``, ``perturb`` or ``flow``;
- token energy: folders with ``energy_maps.png``; Chain-of-Steps: ``chain.json``; ensemble: ``ensemble.json``;
- activation stores (``*.h5`` with ``*.h5.config.json``) and every other config.

Figures are embedded as data URIs (the page works when moved or mailed); links to the files are
relative to the page, which is written into the run folder. Sections with nothing found are left out.
"""

from __future__ import annotations

import base64
import html
import json
import mimetypes
from collections.abc import Iterable
from pathlib import Path

import numpy as np

EXPERIMENTS = ("patch", "swap", "perturb", "flow")
_SKIP_DIRS = {".parts"}

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1150px;color:#222;line-height:1.45}
h1{margin-bottom:.2rem} h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
figure{margin:1rem 0} figure img{max-width:100%;border:1px solid #eee} figcaption{font-size:.9rem;color:#555}
table{border-collapse:collapse;font-size:.88rem;margin:.6rem 0} td,th{border:1px solid #ccc;padding:.2rem .5rem}
th{background:#f3f3f3} .files{font-size:.85rem;color:#555} pre{background:#f7f7f7;padding:.6rem;overflow-x:auto}
.grid{display:flex;flex-wrap:wrap;gap:1rem} .strip{flex:0 1 260px} .headline li{margin:.25rem 0}
nav a{margin-right:.8rem}
"""

# After load, count images that decoded; the screenshot test reads these attributes.
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-images-loaded', String(ok.length));
  document.body.setAttribute('data-images-broken',
    imgs.filter(function (i) { return ok.indexOf(i) < 0; }).map(function (i) { return i.dataset.file; }).join(','));
});
"""


class _Page:
    """Collects sections and remembers which files the page links or embeds."""

    def __init__(self, root: Path):
        self.root = root
        self.sections: list[tuple[str, str, str]] = []  # (anchor, title, body)
        self.linked: set[Path] = set()

    def rel(self, path: Path) -> str:
        return path.resolve().relative_to(self.root.resolve()).as_posix()

    def link(self, path: Path, text: str | None = None) -> str:
        self.linked.add(path.resolve())
        rel = self.rel(path)
        return f'<a href="{html.escape(rel)}">{html.escape(text or rel)}</a>'

    def image(self, path: Path, caption: str = "") -> str:
        self.linked.add(path.resolve())
        mime = mimetypes.guess_type(path.name)[0] or "image/png"
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        rel = html.escape(self.rel(path))
        cap = f"<figcaption>{html.escape(caption)} ({self.link(path)})</figcaption>"
        return f'<figure><img src="data:{mime};base64,{data}" alt="{rel}" data-file="{rel}">{cap}</figure>'

    def files(self, paths: Iterable[Path]) -> str:
        links = [self.link(p) for p in sorted(paths) if p.is_file()]
        return f'<p class="files">files: {", ".join(links)}</p>' if links else ""

    def add(self, anchor: str, title: str, body: str) -> None:
        self.sections.append((anchor, title, body))


def _table(rows: list[dict], columns: list[str], formats: dict[str, str] | None = None) -> str:
    formats = formats or {}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c, "")
            if isinstance(v, float) and not np.isfinite(v):
                v = ""
            elif c in formats and v not in ("", None):
                v = format(v, formats[c])
            cells.append(f"<td>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _pre_json(obj) -> str:
    return f"<pre>{html.escape(json.dumps(obj, indent=2, sort_keys=True))}</pre>"


def _walk(root: Path, max_depth: int = 4) -> list[Path]:
    """Files under ``root``, skipping store part folders and the report itself."""
    found: list[Path] = []

    def visit(folder: Path, depth: int) -> None:
        for entry in sorted(folder.iterdir()):
            if entry.is_dir():
                if depth < max_depth and not any(entry.name.endswith(s) for s in _SKIP_DIRS):
                    visit(entry, depth + 1)
            elif entry.is_file():
                found.append(entry)

    visit(root, 0)
    return found


def _ci(ci) -> str:
    return f"{ci[0]:.1%}-{ci[1]:.1%}"


def _headline(page: _Page, files: list[Path]) -> None:
    items = []
    for path in files:
        if path.name == "study.json":
            study = json.loads(path.read_text())
            items += [f"<li>{html.escape(line)}</li>" for line in study.get("headline", [])]
            page.link(path)
    for path in files:
        if path.name == "accuracy.json" and not items:
            acc = json.loads(path.read_text())
            items.append(
                f"<li>held-out {acc['size']}x{acc['size']} mazes: {acc['accuracy']:.1%} exact "
                f"(95% CI {_ci(acc['ci95'])}, n={acc['n']})</li>"
            )
    accuracy = [p for p in files if p.name == "accuracy.json"]
    if items or accuracy:
        body = f'<ul class="headline">{"".join(items)}</ul>' + page.files(
            accuracy + [p for p in files if p.name == "study.json"]
        )
        page.add("headline", "Headline numbers", body)


def _filmstrips(page: _Page, files: list[Path]) -> None:
    figures = []
    for verdict_path in [p for p in files if p.name == "verdict.json"]:
        folder = verdict_path.parent
        strip = folder / "filmstrip.png"
        if not strip.is_file():
            continue
        record = json.loads(verdict_path.read_text())
        verdict = record.get("verdict", record)
        solved = "solved" if verdict.get("solved") else "NOT solved"
        figures.append(
            f'<div class="strip">{page.image(strip, f"{folder.name}: {solved}")}'
            f"{page.files([verdict_path, folder / 'video.gif'])}</div>"
        )
    if figures:
        intro = (
            "<p>Rows: denoising steps (the clean-sample estimate x0_hat of each step, decoded); columns: frames. "
            "The last row is the sampled video.</p>"
        )
        page.add("filmstrips", "x0_hat filmstrips", intro + f'<div class="grid">{"".join(figures)}</div>')


def _probes(page: _Page, files: list[Path]) -> None:
    import pandas as pd

    body = []
    for csv in [p for p in files if p.name.endswith(".csv") and (p.parent / "probes.config.json").is_file()]:
        table = pd.read_csv(csv)
        if "selectivity" not in table:
            continue
        rows = []
        for target, group in table.groupby("target", sort=False):
            best = group.loc[group["selectivity"].idxmax()]
            rows.append({"target": target, **best.drop("target").to_dict()})
        cols = [
            "target",
            "metric",
            "step",
            "layer",
            "value",
            "control",
            "selectivity",
            "x_t",
            "condition",
            "majority_rate",
        ]
        body.append(
            f"<h3>{html.escape(page.rel(csv.parent))}</h3><p>Best selectivity (score minus control task) per target. "
            "Controls: the Hewitt-Liang control task, the same probe on the noisy input x_t alone and on the "
            "conditioning latent alone, and the majority-class rate; splits are by video.</p>"
            + _table(rows, cols, {c: ".3f" for c in cols[4:]})
        )
        for png in sorted(csv.parent.glob("probe_*.png")):
            body.append(
                page.image(png, f"probe heatmaps, {png.stem.removeprefix('probe_')}: layers x steps with controls")
            )
        body.append(page.files([csv, csv.parent / "probes.config.json"]))
    if body:
        page.add("probes", "Linear probes per (step, layer)", "".join(body))


def _experiment_dirs(files: list[Path]) -> dict[str, list[tuple[Path, dict]]]:
    found: dict[str, list[tuple[Path, dict]]] = {k: [] for k in EXPERIMENTS}
    for cfg_path in [p for p in files if p.name == "config.json"]:
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError:
            continue
        kind = cfg.get("experiment") if isinstance(cfg, dict) else None
        if kind in found and (cfg_path.parent / "result.json").is_file():
            found[kind].append((cfg_path.parent, json.loads((cfg_path.parent / "result.json").read_text())))
    return found


def _grid_summary(result: dict) -> str:
    values = np.array([[np.nan if v is None else v for v in row] for row in result["values"]], dtype=float)
    if not np.isfinite(values).any():
        return "<p>No finite scores (the model answered clean and corrupted inputs alike).</p>"
    i, j = np.unravel_index(np.nanargmax(values), values.shape)
    dims, coords = result["dims"], result["coords"]
    where = ", ".join(f"{d} {coords[d][k]}" for d, k in zip(dims, (i, j)))
    return (
        f"<p>{html.escape(result.get('name', 'score'))}: highest {values[i, j]:.2f} at {where}; "
        f"mean {np.nanmean(values):.2f} over {np.isfinite(values).sum()} cells.</p>"
    )


_THREE_DIGITS = {"solved": ".3f", "answer_right": ".3f", "similarity": ".3f"}


def _causal(page: _Page, files: list[Path]) -> None:
    found = _experiment_dirs(files)
    grids = []
    for kind in ("patch", "swap"):
        for folder, result in found[kind]:
            cfg = result["config"]
            what = (
                f"activation patching, {cfg.get('direction')} direction, span {cfg.get('span')}, "
                f"region {cfg.get('region')}"
                if kind == "patch"
                else f"latent swap with {cfg.get('other')} inputs at steps {cfg.get('steps')}"
            )
            grids.append(
                f"<h3>{html.escape(page.rel(folder))}</h3>{_grid_summary(result)}"
                + page.image(folder / "heatmap.png", what)
                + page.files([folder / "config.json", folder / "result.json"])
            )
    if grids:
        intro = (
            "<p>Score 1: the run behaves like the clean (source) input; 0: like the corrupted (base) one. "
            "Each cell patches one (step, layer); with span 'onward' every later step is patched too.</p>"
        )
        page.add("patching", "Activation patching and latent swapping", intro + "".join(grids))
    noise = []
    for folder, result in found["perturb"]:
        rows = []
        for key, label in (("at_step", "noise at step"), ("at_frame", "noise at frame")):
            for x, r in sorted(result[key].items(), key=lambda kv: int(kv[0])):
                row = {"where": label, "index": int(x)}
                if "accuracy" in r:
                    row.update(solved=r["accuracy"], ci95=_ci(r["ci95"]), answer_right=r.get("final_exact", ""))
                else:
                    row.update(similarity=r.get("similarity", ""))
                rows.append(row)
        base = result["baseline"]
        base_text = (
            f"no noise: {base['accuracy']:.1%} solved (95% CI {_ci(base['ci95'])}, n={base['n']})"
            if "accuracy" in base
            else "pipeline model: cosine similarity of the final latent to the unperturbed run"
        )
        cols = (
            ["where", "index", "solved", "ci95", "answer_right"]
            if "accuracy" in base
            else ["where", "index", "similarity"]
        )
        noise.append(
            f"<h3>{html.escape(page.rel(folder))}</h3><p>{html.escape(base_text)}</p>"
            + page.image(
                folder / "noise_step_vs_frame.png", "noise at step (chain of steps) vs noise at frame (chain of frames)"
            )
            + f"<details><summary>table</summary>{_table(rows, cols, _THREE_DIGITS)}</details>"
            + page.files([folder / "config.json", folder / "result.json"])
        )
    if noise:
        page.add("noise", "Noise at step vs noise at frame", "".join(noise))
    flows = []
    for folder, result in found["flow"]:
        sens = result.get("sensitivity") or []
        steps = result["coords"]["inject_step"]
        text = ""
        if sens:
            k = int(np.nanargmax(np.array(sens, dtype=float)))
            text = (
                f"<p>Most sensitive injection step: {steps[k]} (mean 1 - CKA of later block outputs {sens[k]:.3f}).</p>"
            )
        flows.append(
            f"<h3>{html.escape(page.rel(folder))}</h3>{text}"
            + page.image(folder / "flow.png", "information flow: linear CKA to the clean run after noise at step s")
            + page.files([folder / "config.json", folder / "result.json"])
        )
    if flows:
        page.add("flow", "Information flow (CKA)", "".join(flows))


def _energy(page: _Page, files: list[Path]) -> None:
    body = []
    for maps in [p for p in files if p.name == "energy_maps.png"]:
        folder = maps.parent
        figs = [page.image(folder / n, f"{folder.name}: {n.removesuffix('.png').replace('_', ' ')}") for n in
                ("energy_maps.png", "pca_maps.png", "energy_layers_frames.png") if (folder / n).is_file()]  # fmt: skip
        body.append(f"<h3>{html.escape(page.rel(folder))}</h3>" + "".join(figs) + page.files(folder.glob("*.npy")))
    if body:
        page.add("energy", "Token energy", "<p>Per-token residual norm and PCA maps, one video.</p>" + "".join(body))


_CHAIN_CAPTION = "verifier on x0_hat per step, lit side branches, perception vs commit"


def _chain(page: _Page, files: list[Path]) -> None:
    body = []
    for path in [p for p in files if p.name == "chain.json"]:
        record = json.loads(path.read_text())
        s = record["summary"]
        solved = s["solved_per_step"]
        rows = [{"statistic": "videos", "value": s["n"]},
                {"statistic": "x0_hat solved at step 0", "value": f"{solved[0]:.1%}"},
                {"statistic": f"x0_hat solved at step {len(solved) // 2}", "value": f"{solved[len(solved) // 2]:.1%}"},
                {"statistic": "final video solved", "value": f"{s['final_solved']:.1%}"},
                {"statistic": "commit step (median, min-max)",
                 "value": f"{s['commit_step']['median']:.0f} ({s['commit_step']['min']}-{s['commit_step']['max']})"},
                {"statistic": "perception step (median)",
                 "value": f"{s['perception_step']['median']:.0f}"}]  # fmt: skip
        rows += [{"statistic": f"share: {k}", "value": f"{v:.1%}"} for k, v in s["behaviour_share"].items()]
        figure = path.parent / "chain.png"
        body.append(
            f"<h3>{html.escape(page.rel(path.parent))}</h3>"
            + _table(rows, ["statistic", "value"])
            + (page.image(figure, _CHAIN_CAPTION) if figure.is_file() else "")
            + "<details><summary>thresholds</summary>" + _pre_json(record["config"]) + "</details>"
            + page.files([path])
        )  # fmt: skip
    if body:
        page.add("chain", "Chain of Steps", "".join(body))


def _ensemble(page: _Page, files: list[Path]) -> None:
    body = []
    for path in [p for p in files if p.name == "ensemble.json"]:
        record = json.loads(path.read_text())
        if record["rows"] and "accuracy" not in record["rows"][0]:  # a pipeline model: no verifier
            cols = ["sample", "variant", "method", "n_seeds", "k", "scale", "similarity_to_seed0", "latent_std_ratio"]
            body.append(
                f"<h3>{html.escape(page.rel(path.parent))}</h3><p>No verifier for this model: each variant's "
                "video is in <code>videos/</code> for your own scorer; a latent spread ratio below 1 means "
                "a smoother (lower-temperature) output than one seed's.</p>"
                + _table(
                    record["rows"], cols, {"similarity_to_seed0": ".3f", "latent_std_ratio": ".3f", "scale": ".2f"}
                )
                + page.files([path, path.parent / "ensemble.csv", path.parent / "finals.safetensors"])
            )
            continue
        rows = [{**r, "ci95": _ci(r["ci95"])} for r in record["rows"]]
        cols = ["size", "method", "n_seeds", "k", "scale", "accuracy", "ci95", "n"]
        figure = path.parent / "ensemble.png"
        body.append(
            f"<h3>{html.escape(page.rel(path.parent))}</h3><p>The controls (one seed with its noise shrunk as the "
            "mean of N seeds shrinks it; low temperature) say how much of an ensemble's gain is a temperature "
            "effect: a gain is more than that only where it clears the controls' intervals.</p>"
            + _table(rows, cols, {"accuracy": ".3f", "scale": ".2f"})
            + (page.image(figure, "accuracy with 95% intervals") if figure.is_file() else "")
            + page.files([path, path.parent / "ensemble.csv", path.parent / "ensemble.txt"])
        )
    if body:
        page.add("ensemble", "Seed ensemble", "".join(body))


def _stores(page: _Page, files: list[Path]) -> None:
    from activations.reader import ActivationStore

    body = []
    for path in [p for p in files if p.suffix == ".h5" and Path(str(p) + ".config.json").is_file()]:
        try:
            with ActivationStore(path) as store:
                info = {"videos": store.n_videos, "steps": len(store.steps), "sites": len(store.sites)}
        except (OSError, ValueError) as err:
            info = {"error": str(err)}
        text = ", ".join(f"{k}: {v}" for k, v in info.items())
        body.append(f"<p>{page.link(path)}: {html.escape(text)}</p>")
    if body:
        page.add("stores", "Activation stores", "".join(body))


def _configs(page: _Page, files: list[Path]) -> None:
    body = []
    for path in files:
        if path.name.endswith("config.json") or path.name == "study.json":
            try:
                cfg = json.loads(path.read_text())
            except json.JSONDecodeError:
                continue
            body.append(f"<details><summary>{page.link(path)}</summary>{_pre_json(cfg)}</details>")
    if body:
        page.add("config", "The run's configuration", "".join(body))


def write_report(run_dir: str | Path, out: str | Path | None = None, title: str | None = None) -> Path:
    """Write ``report.html`` (or ``out``, which must lie in ``run_dir``) for the artefacts in ``run_dir``."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no run folder at {root}")
    out = Path(out) if out is not None else root / "report.html"
    try:
        out.resolve().parent.relative_to(root.resolve())
    except ValueError as err:
        raise ValueError(f"the report must be written inside {root} so its links resolve, got {out}") from err
    files = [p for p in _walk(root) if p.resolve() != out.resolve()]
    page = _Page(root)
    for section in (_headline, _filmstrips, _probes, _causal, _energy, _chain, _ensemble, _stores, _configs):
        section(page, files)
    if not page.sections:
        raise ValueError(f"nothing to report in {root}: no results of the toolkit's commands found")
    rest = [p for p in files if p.resolve() not in page.linked and p.suffix != ".tmp"]
    if rest:
        page.add("files", "Other files", page.files(rest))
    nav = "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t, _ in page.sections)
    sections = "".join(f'<section id="{a}"><h2>{html.escape(t)}</h2>{b}</section>' for a, t, b in page.sections)
    title = title or f"Interpretability report: {root.resolve().name}"
    doc = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style><script>{_SCRIPT}</script></head><body><h1>{html.escape(title)}</h1>"
        f"<nav>{nav}</nav>{sections}</body></html>"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(out)
    return out
