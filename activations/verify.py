"""Check every part of a store against its index (``interp verify``), and repair what is damaged.

``verify_store`` reports damaged or missing parts and the videos they hold; ``repair_store`` moves
the damaged part files aside (into ``NAME.h5.parts/damaged/``) and rebuilds the index from the
parts that check out, so rerunning the same trace command recomputes exactly the dropped videos.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from activations.index import known_records, scan_parts, write_index
from activations.integrity import (
    WRITER_WAIT,
    PartRecord,
    Problem,
    WriterLock,
    contents_problem,
    coverage_problems,
    index_problems,
    listed_parts,
    one_line,
    part_problem,
    span,
    store_id_of,
)
from activations.nonfinite import nonfinite_counts
from activations.schema import StoreError, check_header, check_store_path, parts_dir, vds_file_name

DAMAGED = "damaged"  # folder inside NAME.h5.parts/ where repair moves damaged parts


@dataclass
class VerifyReport:
    """What ``verify_store`` found; after ``repair_store`` also what it moved aside."""

    path: Path
    n_videos: int
    complete: int  # videos the index lists complete
    parts: int  # parts the index lists
    problems: list[Problem] = field(default_factory=list)
    unindexed: list[str] = field(default_factory=list)  # finished parts not in the index yet: a rerun adds them
    stale_tmp: int = 0  # half-written parts of an interrupted run: the next writer removes them
    checksums: bool = False
    unhashed: int = 0  # listed parts without a recorded checksum (counted with checksums only)
    notes: list[str] = field(default_factory=list)
    moved: list[Path] = field(default_factory=list)
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def damaged_videos(self) -> list[int]:
        return sorted({v for p in self.problems for v in p.videos})

    def lines(self) -> list[str]:
        out = [f"damaged: {p.line()}" for p in self.problems]
        out += [f"note: {n}" for n in self.notes] + [f"moved aside: {m}" for m in self.moved]
        what = f"{_count(self.parts, 'part')}, {self.complete}/{self.n_videos} videos listed complete"
        if self.checksums:
            what += f", checksums compared for {_count(self.parts - self.unhashed, 'part')}"
        if self.repaired:
            videos = self.damaged_videos
            redo = f"; rerun the trace to recompute videos {_spans(videos)}" if videos else ""
            return [*out, f"{self.path}: repaired: the index was rebuilt from the parts that check out{redo}"]
        if self.ok:
            unread = "" if self.checksums else " (structure only: --checksums also reads the data)"
            return [*out, f"{self.path}: ok: {what}{unread}"]
        return [*out, f"{self.path}: {_count(len(self.problems), 'problem')} ({what}; damaged videos: "
                      f"{_spans(self.damaged_videos)}); run `interp verify {self.path} --repair`"]  # fmt: skip


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _spans(videos: list[int]) -> str:
    runs: list[list[int]] = []
    for v in videos:
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return ",".join(span(r) for r in runs) or "none"


def _unindexed_problem(part: Path, layout, store_id: str | None = None) -> tuple[list[int], str | None]:
    try:
        with h5py.File(part, "r") as f:
            videos = [int(v) for v in f.attrs.get("video_indices", [])]
            if not videos:
                return [], "holds no videos"
            return videos, contents_problem(f, layout, PartRecord(part.name, videos[0], len(videos)), store_id)
    except Exception as err:  # whatever damaged bytes make h5py raise
        return [], f"does not open as a part ({one_line(err)})"


def _open(path: Path) -> h5py.File:
    """The main file, or one StoreError (FileNotFoundError) saying why it is no store at all."""
    check_store_path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise StoreError(f"{path} is not a readable HDF5 file ({one_line(err)})") from err
    try:
        check_header(f.attrs, path)
    except StoreError:
        f.close()
        raise
    return f


def verify_store(path: str | Path, checksums: bool = False) -> VerifyReport:
    """Check the index and every part (``checksums``: also read every chunk and each recorded SHA-256)."""
    path = Path(path)
    with _open(path) as f:
        parts = parts_dir(path)
        layout = check_header(f.attrs, path)
        problems = index_problems(f, layout)
        complete = f.get("videos/complete")
        ok_complete = isinstance(complete, h5py.Dataset) and complete.shape == (layout.n_videos,)
        n_complete = int(complete[()].sum()) if ok_complete else 0
        try:
            records = listed_parts(f)
        except Exception as err:
            records = []
            problems.append(Problem("index", [], f"its list of parts does not read ({one_line(err)})"))
        if records is None:  # consolidated: one self-contained file, no parts
            report = VerifyReport(path, layout.n_videos, n_complete, 0, problems, checksums=checksums)
            if checksums and not problems:
                found, lines = data_nonfinite(path)
                report.problems += found
                report.notes += lines
            return report
        report = VerifyReport(path, layout.n_videos, n_complete, len(records), problems, checksums=checksums)
        store_id = store_id_of(f)
        for r in records:
            reason = part_problem(parts / r.name, layout, r, checksum=checksums, store_id=store_id)
            if reason is not None:
                problems.append(Problem(r.name, r.videos, reason))
            report.unhashed += int(checksums and not r.sha256)
        if ok_complete:
            problems += coverage_problems(complete[()].astype(bool), records)
        x0 = f.get("x0_hat")
        if records and isinstance(x0, h5py.Dataset) and x0.is_virtual:
            names = {m.file_name for m in x0.virtual_sources()}
            if names != {vds_file_name(parts.name, r.name) for r in records}:
                report.notes.append("the index names its parts under another folder (renamed store); readers "
                                    "resolve them, --repair rewrites the names")  # fmt: skip
    listed = {r.name for r in records}
    for part in sorted(parts.glob("part_*.h5")):
        if part.name in listed:
            continue
        videos, reason = _unindexed_problem(part, layout, store_id)
        if reason is None:
            report.unindexed.append(part.name)
        else:
            problems.append(Problem(part.name, videos, f"(not in the index) {reason}"))
    report.stale_tmp = len(list(parts.glob("*.tmp")))
    if report.unindexed:
        report.notes.append(f"{len(report.unindexed)} finished parts are not in the index yet; "
                            "rerunning the trace (or --repair) adds them")  # fmt: skip
    if checksums and report.unhashed:
        report.notes.append(f"{report.unhashed} parts have no recorded checksum (written before checksums)")
    if checksums and not problems:  # what the data holds, read back: a complete video is finite where computed
        found, lines = data_nonfinite(path)
        problems += found
        report.notes += lines
    if not problems and records:  # the NaN / Inf / overflow the writer counted at capture (activations.nonfinite)
        rows = nonfinite_counts(path)
        report.notes += [f"non-finite activations at {r.site} step {r.step}: {r.nan} nan, {r.inf} inf, {r.overflow} "
                         f"overflow (counted before the {layout.dtype} cast)" for r in rows[:20]]  # fmt: skip
        if len(rows) > 20:
            report.notes.append(f"... and {len(rows) - 20} more (site, step) pairs (activations.nonfinite)")
    return report


def data_nonfinite(path: Path, max_lines: int = 20) -> tuple[list[Problem], list[str]]:
    """Non-finite values of the complete videos, read back (``verify --checksums``): x0_hat, x_t or
    the final latent not finite, or a site with no value at any step, is a problem (the writer always
    computes them); NaN or Inf inside a (site, step) is counted in a note. A site NaN at a whole step
    is a step it did not run at (a two-expert model runs one expert per step): counted apart, and an
    expert's site with no value at any stored step is a note (Wan 2.2 traced at high-noise steps
    only), unless no site has any value."""
    from activations.axes import parse_site
    from activations.reader import ActivationStore

    problems, lines, idle, unused = [], [], 0, []
    with ActivationStore(path) as store:
        videos, layout = store.completed_videos, store.layout
        if not videos:
            return [], []
        for name in ("x0_hat", "x_t", "final"):
            ds = store.dataset(name)
            bad = [v for v in videos if not np.isfinite(ds[v]).all()]
            if bad:
                problems.append(Problem("data", bad, f"{name} holds NaN or Inf for videos listed complete"))
        for site in layout.sites:
            ds, ran = store.dataset(f"sites/{site}"), 0
            for pos, step in enumerate(layout.steps):
                nan = inf = size = 0
                for v in videos:
                    x = ds[v, pos]
                    nan, inf, size = nan + int(np.isnan(x).sum()), inf + int(np.isinf(x).sum()), size + x.size
                if nan == size:
                    idle += 1
                    continue
                ran += 1
                if nan or inf:
                    lines.append(f"non-finite values read at {site} step {step}: {nan} nan, {inf} inf")
            if not ran and parse_site(site)[0] is None:
                problems.append(Problem("data", list(videos), f"sites/{site} holds no value at any step"))
            elif not ran:
                unused.append(site)
    if len(lines) > max_lines:
        lines = [*lines[:max_lines], f"... and {len(lines) - max_lines} more (site, step) pairs with NaN or Inf"]
    if idle:
        lines.append(f"{idle} (site, step) slabs are NaN throughout: steps those sites did not run at")
    if unused and len(unused) == len(layout.sites):
        problems.append(Problem("data", list(videos), "no site holds a value at any step"))
    elif unused:
        lines.append(f"{len(unused)} expert sites never ran at the stored steps (first: {unused[0]})")
    return problems, lines


def _move_aside(part: Path) -> Path:
    folder = part.parent / DAMAGED
    folder.mkdir(exist_ok=True)
    target, n = folder / part.name, 1
    while target.exists():
        target, n = folder / f"{part.name}.{n}", n + 1
    shutil.move(part, target)
    return target


def repair_store(path: str | Path, checksums: bool = False) -> VerifyReport:
    """Verify, move damaged parts aside, and rebuild the index from the parts that check out (holding
    the writer's lock). Returns the report of what was found, with ``moved`` filled in."""
    path = Path(path)
    with _open(path) as f:  # refuses what is not a store at all, before anything is created
        layout = check_header(f.attrs, path)
        store_id = store_id_of(f)
    parts = parts_dir(path)
    parts.mkdir(exist_ok=True)
    lock = WriterLock(parts, path, wait=WRITER_WAIT)
    try:
        report = verify_store(path, checksums)  # under the lock: no writer changes the store meanwhile
        for problem in report.problems:
            part = parts / problem.part
            if problem.part != "index" and part.is_file():
                report.moved.append(_move_aside(part))
        for stale in parts.glob("*.tmp"):
            stale.unlink()
        known = {n: r for n, r in known_records(path).items() if (parts / n).is_file()}
        records, metas = scan_parts(parts, layout, known, True, path, store_id)
        write_index(path, layout, list(records.values()), metas, parts.name, store_id)
    finally:
        lock.release()
    report.repaired = True
    return report
