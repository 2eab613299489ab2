"""One self-contained HTML page for a run folder, built from its run manifests alone.

Every command writes a manifest (``run.json`` or ``NAME.run.json``: kind, config, the files it wrote
with their roles, headline lines, summary tables); ``write_report(run_dir)`` reads them (it reruns
nothing and guesses nothing from file names) and renders each in its section: headline, notes,
tables, figures embedded as data URIs (the page works when moved or mailed), every other listed
file linked. Files of the folder no manifest lists are linked under "Other files", so nothing a run
wrote is hidden. Links are relative to the page, which is written into the run folder.

A run folder may come from someone else, so the page is built as if every manifest, file name and
cell were hostile: all text and attributes are escaped; links are ``./``-relative, percent-encoded
paths inside the folder (never a scheme such as ``javascript:``); files outside the folder (a link
out of it) are named, not linked; section anchors are sanitised; a manifest that is not what the
toolkit writes is named with its reason instead of rendered; and a Content-Security-Policy lets
only the page's own script (by hash) and embedded ``data:`` images run or load.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

import numpy as np

from interp.manifest import Manifest, ManifestError, is_manifest

_SKIP_DIRS = {".parts"}
MAX_VIDEOS = 12  # GIFs shown inline per manifest; the rest are linked

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1150px;color:#222;line-height:1.45}
h1{margin-bottom:.2rem} h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
figure{margin:1rem 0} figure img{max-width:100%;border:1px solid #eee} figcaption{font-size:.9rem;color:#555}
table{border-collapse:collapse;font-size:.88rem;margin:.6rem 0} td,th{border:1px solid #ccc;padding:.2rem .5rem}
th{background:#f3f3f3} .files{font-size:.85rem;color:#555} pre{background:#f7f7f7;padding:.6rem;overflow-x:auto}
.grid{display:flex;flex-wrap:wrap;gap:1rem} .strip{flex:0 1 260px} .headline li{margin:.25rem 0}
nav a{margin-right:.8rem} .videos{display:flex;flex-wrap:wrap;gap:.6rem} .videos figure{flex:0 1 170px;margin:0}
.videos img{width:160px;image-rendering:pixelated}
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


_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    f"script-src 'sha256-{base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()}'"
)
# What the page embeds as images, by suffix: the MIME type is ours, never guessed from a hostile name.
_IMAGE_TYPES = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                ".svg": "image/svg+xml"}  # fmt: skip
MAX_CELL = 200  # characters of a formatted table cell


class _Page:
    """Collects sections and remembers which files the page links or embeds."""

    def __init__(self, root: Path):
        self.root = root
        self.sections: list[tuple[str, str, str]] = []  # (anchor, title, body)
        self.linked: set[Path] = set()

    def rel(self, path: Path) -> str | None:
        """The path relative to the run folder; None for a file outside it (a link out of the folder)."""
        resolved, root = path.resolve(), self.root.resolve()
        return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else None

    def name(self, path: Path) -> str:
        """How the page names a file: its path in the folder, or where it lies outside."""
        rel = self.rel(path)
        return rel if rel is not None else f"outside this folder: {path.resolve()}"

    def link(self, path: Path, text: str | None = None) -> str:
        self.linked.add(path.resolve())
        rel = self.rel(path)
        if rel is None:  # shown, not linked: a link out of a shared folder is not followed from the page
            return html.escape(text or self.name(path))
        return f'<a href="./{html.escape(quote(rel))}">{html.escape(text or rel)}</a>'

    def image(self, path: Path, caption: str = "") -> str:
        self.linked.add(path.resolve())
        mime = _IMAGE_TYPES[path.suffix.lower()]
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        rel = html.escape(self.name(path))
        cap = f"<figcaption>{html.escape(caption)} ({self.link(path)})</figcaption>"
        return f'<figure><img src="data:{mime};base64,{data}" alt="{rel}" data-file="{rel}">{cap}</figure>'

    def files(self, paths: Iterable[Path]) -> str:
        links = [self.link(p) for p in sorted(paths) if p.is_file() or self.rel(p) is None]
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
                v = _formatted(v, formats[c])
            cells.append(f"<td>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _formatted(value, spec: str) -> str:
    """A cell in its manifest's format; the plain value where the format does not apply (or would
    blow the cell up: a format comes from the manifest, which may be someone else's)."""
    try:  # width and precision bounded before formatting (a 12-character spec holds no huge number)
        sizes = [int(n) for n in re.findall(r"\d+", spec)] if len(spec) <= 12 else [10**9]
        plain = not isinstance(value, (int, float)) or max(sizes, default=0) > 50
        text = str(value) if plain else format(value, spec)
    except (ValueError, TypeError, OverflowError):
        text = str(value)
    return text if len(text) <= MAX_CELL else str(value)[:MAX_CELL]


def _anchor(section: str) -> str:
    """A section's id: as it is when made of letters, digits, ``_`` and ``-``; otherwise reduced to those."""
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,39}", section):
        return section
    return "section-" + (re.sub(r"[^A-Za-z0-9_-]", "_", section)[:40] or "_")


def _pre_json(obj) -> str:
    return f"<pre>{html.escape(json.dumps(obj, indent=2, sort_keys=True))}</pre>"


def _walk(root: Path, max_depth: int = 4) -> list[Path]:
    """Files under ``root``, skipping store part folders and the report itself; a link that leads out
    of the folder is listed (the page names it as outside) and not followed."""
    found: list[Path] = []
    inside = root.resolve()

    def visit(folder: Path, depth: int) -> None:
        for entry in sorted(folder.iterdir()):
            if entry.is_symlink() and not entry.resolve().is_relative_to(inside):
                found.append(entry)
            elif entry.is_dir():
                if depth < max_depth and not any(entry.name.endswith(s) for s in _SKIP_DIRS):
                    visit(entry, depth + 1)
            elif entry.is_file():
                found.append(entry)

    visit(root, 0)
    return found


# Report sections in page order (id, title); a manifest names its section, unknown ones come last.
SECTIONS = [
    ("headline", "Headline numbers"), ("filmstrips", "x0_hat filmstrips"),
    ("probes", "Linear probes per (step, layer)"), ("features", "Sparse autoencoders per (step, layer)"),
    ("patching", "Activation patching and latent swapping"), ("noise", "Noise at step vs noise at frame"),
    ("attention", "Attention across frames"),
    ("flow", "Information flow (CKA)"), ("layers", "Layer specialisation"),
    ("energy", "Token energy"), ("chain", "Chain of Steps"),
    ("ensemble", "Seed ensemble"), ("stores", "Activation stores"),
]  # fmt: skip


def _manifest_body(page: _Page, path: Path, manifest: Manifest) -> str:
    """One manifest: its headline, notes, tables, figures (embedded) and every other file (linked)."""
    folder = path.parent
    parts = [f"<h3>{html.escape(manifest.title)} <small>({page.link(path, page.name(folder) or '.')})</small></h3>"]
    if manifest.headline:
        items = "".join(f"<li>{html.escape(x)}</li>" for x in manifest.headline)
        parts.append(f'<ul class="headline">{items}</ul>')
    parts += [f"<p>{html.escape(note)}</p>" for note in manifest.notes]
    for table in manifest.tables:
        parts.append(f"<p><b>{html.escape(table.title)}</b></p>" + _table(table.rows, table.columns, table.formats))
    others, videos = [], []
    for entry in manifest.files:
        file = folder / entry.path
        if not file.resolve().is_relative_to(page.root.resolve()):  # e.g. exported weights elsewhere
            parts.append(f'<p class="files">outside this folder: {html.escape(str(file.resolve()))}</p>')
        elif not file.is_file():
            parts.append(f'<p class="files">missing: {html.escape(entry.path)}</p>')
        elif (kind := embedded_as(entry.role, file, len(videos))) == "figure":
            parts.append(page.image(file, entry.caption))
        elif kind == "video":
            videos.append(page.image(file, entry.caption))  # playing beside each other, not a list of links
        else:
            others.append(file)
    if videos:
        parts.append(f'<div class="videos">{"".join(videos)}</div>')
    parts.append(page.files(others))
    return "".join(parts)


def _claims(page: _Page, manifests: list[tuple[Path, Manifest]]) -> None:
    """The study's claims first: each with its measurement, control and verdict, from the runs."""
    rows = [{**c, "run": page.name(p.parent) or "."} for p, m in manifests for c in m.claims]
    if rows:
        cols = ["claim", "verdict", "measurement", "control", "why", "run"]
        body = ("<p>Each verdict is computed from this folder's results against its control; the thresholds "
                "are in <i>why</i>.</p>" + _table(rows, cols))  # fmt: skip
        page.sections.insert(0, ("claims", "The study's claims", body))


def _side_by_side(page: _Page, manifests: list[tuple[Path, Manifest]]) -> None:
    """Where the folder holds several studies (one per testbed): their claims' verdicts in columns."""
    studies = sorted({p.parent for p, m in manifests if m.kind == "study"}, key=lambda f: f.as_posix())
    if len(studies) < 2:
        return
    read = {p.resolve(): m for p, m in manifests}
    names = {}
    for f in studies:  # a column per study folder, named by its model (and folder where two share one)
        own = read.get((f / "run.json").resolve())
        model = str(own.config.get("model", page.name(f))) if own is not None else page.name(f)
        names[f] = model if model not in names.values() else f"{model} ({page.name(f)})"
    cells: dict[str, dict[str, str]] = {}
    for path, manifest in manifests:
        owner = next((f for f in studies if path.resolve().is_relative_to(f.resolve())), None)
        for c in manifest.claims if owner is not None else ():
            cells.setdefault(c["claim"], {})[names[owner]] = f"{c.get('verdict')}: {c.get('measurement')}"
    rows = [{"claim": claim, **{names[f]: by.get(names[f], "not run") for f in studies}} for claim, by in cells.items()]
    body = "<p>Each study's verdicts, from its own folder; 'not run' where a study did not measure it.</p>"
    body += _table(rows, ["claim", *names.values()])
    page.sections.insert(0, ("side-by-side", "The testbeds side by side", body))


def _configs(page: _Page, manifests: list[tuple[Path, Manifest]]) -> None:
    body = [f"<details><summary>{html.escape(page.name(p))}: {html.escape(m.kind)}</summary>{_pre_json(m.config)}"
            "</details>" for p, m in manifests]  # fmt: skip
    if body:
        page.add("config", "The run's configuration", "".join(body))


def embedded_as(role: str, file: Path, videos_so_far: int) -> str | None:
    """How the page shows a manifest's file: embedded as a figure, as a playing video, or linked (None)."""
    if role == "figure" and file.suffix.lower() in _IMAGE_TYPES:
        return "figure"
    if role == "video" and file.suffix.lower() == ".gif" and videos_so_far < MAX_VIDEOS:
        return "video"
    return None


def embedded_files(run_dir: str | Path) -> list[Path]:
    """The files a report of ``run_dir`` embeds (what ``interp.plans`` counts before writing it)."""
    root, embedded = Path(run_dir), []
    for path in (p for p in _walk(root) if is_manifest(p)):
        try:
            manifest, videos = Manifest.read(path), 0
        except ManifestError:  # the report names it and embeds nothing of it
            continue
        for entry in manifest.files:
            file = path.parent / entry.path
            kind = embedded_as(entry.role, file, videos) if file.is_file() else None
            videos += kind == "video"
            embedded += [file] if kind else []
    return embedded


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
    manifests, unreadable = [], []
    for p in files:
        if is_manifest(p):
            try:
                manifests.append((p, Manifest.read(p)))
            except ManifestError as err:
                unreadable.append(str(err))
    page = _Page(root)
    order = {sid: i for i, (sid, _) in enumerate(SECTIONS)}
    titles = dict(SECTIONS)
    by_section: dict[str, list[str]] = {}
    for path, manifest in sorted(manifests, key=lambda pm: (order.get(pm[1].section, len(order)), pm[0].as_posix())):
        page.linked.add(path.resolve())
        by_section.setdefault(manifest.section, []).append(_manifest_body(page, path, manifest))
    for sid, bodies in by_section.items():
        grid = sid == "filmstrips"
        body = "".join(f'<div class="strip">{b}</div>' for b in bodies) if grid else "".join(bodies)
        page.add(sid, titles.get(sid, sid), f'<div class="grid">{body}</div>' if grid else body)
    _configs(page, manifests)
    if unreadable:
        items = "".join(f"<li>{html.escape(reason)}</li>" for reason in unreadable)
        note = "<p>Not rendered: not what the toolkit writes.</p>"
        page.add("unreadable", "Unreadable run manifests", f"{note}<ul>{items}</ul>")
    _claims(page, manifests)
    _side_by_side(page, manifests)
    if not page.sections:
        raise ValueError(f"nothing to report in {root}: no run manifests (run.json) of the toolkit's commands found")
    rest = [p for p in files if p.resolve() not in page.linked and p.suffix != ".tmp"]
    if rest:
        page.add("files", "Other files", page.files(rest))
    nav = "".join(f'<a href="#{html.escape(_anchor(a))}">{html.escape(t)}</a>' for a, t, _ in page.sections)
    sections = "".join(f'<section id="{html.escape(_anchor(a))}"><h2>{html.escape(t)}</h2>{b}</section>'
                       for a, t, b in page.sections)  # fmt: skip
    title = title or f"Interpretability report: {root.resolve().name}"
    doc = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style><script>{_SCRIPT}</script></head><body><h1>{html.escape(title)}</h1>"
        f"<nav>{nav}</nav>{sections}</body></html>"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(out)
    return out
