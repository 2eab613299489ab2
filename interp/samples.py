"""Samples as VBVR-Bench lays them out: one folder per sample holding ``prompt.txt`` and, for image-to-video,
``first_frame.png`` (a maze sample adds its truth, ``maze.json``). Model-free: the task modules and the
sources both read them here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from interp.tasks import maze as maze_task


@dataclass
class Sample:
    name: str
    prompt: str
    first_frame: Path | None
    folder: Path | None = None  # where it was read from (a scorer such as ``maze`` reads its truth there)
    truth: maze_task.Maze | None = None  # the task instance, where the sample is one (a maze)


@dataclass(frozen=True)
class Video:
    """One video of a run: a sample and the seed of its noise, under the key the store files it by."""

    key: str
    sample: Sample
    seed: int


def read_samples(folder: str | Path) -> list[Sample]:
    """Every sub-folder is a sample (``prompt.txt``, optional ``first_frame.png``), sorted by name;
    hidden ones (``.name``) are skipped. A sample that cannot be read is an error naming it: a
    missing, non-regular or unreadable prompt never drops the sample silently."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--data {folder}: no such folder")
    try:
        subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        has_prompt = [(sub / "prompt.txt").exists() for sub in subs]
    except OSError as err:  # an unreadable sub-folder (mode 000)
        raise ValueError(f"--data {folder}: cannot read {err.filename or folder} ({err.strerror or err})") from None
    if not any(has_prompt):  # not a samples folder at all
        raise ValueError(f"--data {folder}: no sample folders with a prompt.txt")
    samples = []
    for sub in subs:
        prompt, frame = sub / "prompt.txt", sub / "first_frame.png"
        if not prompt.exists():
            raise ValueError(f"--data {folder}: sample {sub.name!r} has no prompt.txt")
        if not prompt.is_file():  # a folder, a FIFO (opening it would wait forever), a device
            raise ValueError(f"--data {folder}: sample {sub.name!r}: prompt.txt is not a regular file")
        try:
            text = prompt.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else "not UTF-8 text"
            raise ValueError(f"--data {folder}: sample {sub.name!r}: cannot read prompt.txt ({reason})") from None
        if frame.is_symlink() and not frame.exists():  # a dangling link: never read as "no frame" (text only)
            raise ValueError(f"--data {folder}: sample {sub.name!r}: first_frame.png is a broken link")
        if frame.exists() and not frame.is_file():
            raise ValueError(f"--data {folder}: sample {sub.name!r}: first_frame.png is not a regular file")
        samples.append(Sample(sub.name, text, frame if frame.exists() else None, sub))
    return samples



def choose_samples(samples: list[Sample], names: list[str] | None, data) -> list[Sample]:
    """The named samples, in order (all if none named)."""
    if names is None:
        return samples
    by_name = {x.name: x for x in samples}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise ValueError(f"no sample {missing[0]!r} in {data} (samples: {sorted(by_name)})")
    return [by_name[name] for name in names]
