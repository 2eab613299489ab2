"""Where videos come from: a testbed task with seeds, or a local pipeline folder with samples.

Every command and experiment gets its model, conditioning and noise here, so a testbed run and a
run on a user's pipeline differ only in their source. Samples are laid out as VBVR-Bench does: one
folder per sample holding ``prompt.txt`` and ``first_frame.png`` (read for image-to-video
pipelines). Nothing is fetched from a hub.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from interp.execution.loop import initial_noise
from interp.execution.patching import stack_conditioning
from interp.models.base import PipelineSpec, VideoDiTAdapter
from interp.models.registry import load_pipeline_adapter
from interp.tasks import maze as maze_task
from interp.validation import SEED


@dataclass
class Sample:
    name: str
    prompt: str
    first_frame: Path | None
    folder: Path | None = None  # where it was read from (a scorer such as ``maze`` reads its truth there)


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


def default_dtype(device: str, torch_dtype: str | None) -> str:
    """The compute dtype of a pipeline: the user's, else float32 on CPU and bfloat16 on accelerators."""
    if torch_dtype is None:
        return "float32" if str(device) == "cpu" else "bfloat16"
    if torch_dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"torch_dtype must be float32, bfloat16 or float16, got {torch_dtype!r}")
    return torch_dtype


@dataclass
class PipelineInputs:
    """A local diffusers pipeline folder and VBVR-style samples (``prompt.txt``, ``first_frame.png``)."""

    field_rules = {"seed": SEED}  # one noise seed (``seed`` elsewhere may be a maze's)

    model: str
    data: str
    samples: list[str] | None = None  # sample folder names; None: every sample
    height: int = 480
    width: int = 832
    num_frames: int = 81
    seed: int = 0  # one noise seed for every sample, so that the runs differ only in their inputs
    num_steps: int = 50
    device: str = "cpu"
    torch_dtype: str | None = None  # None: float32 on CPU, bfloat16 elsewhere
    guidance_scale: float | None = None
    negative_prompt: str | None = ""
    max_sequence_length: int = 226
    true_cfg_scale: float | None = None  # HunyuanVideo's true CFG (None: off)

    def __post_init__(self):
        self.torch_dtype = default_dtype(self.device, self.torch_dtype)

    @property
    def spec(self) -> PipelineSpec:
        return PipelineSpec(self.height, self.width, self.num_frames, self.guidance_scale, self.true_cfg_scale)

    def load(self, skeleton: bool = False) -> tuple[VideoDiTAdapter, list[Sample]]:
        """(adapter, chosen samples): the named samples, in order (all if none named). ``skeleton``: the
        adapter from the folder's configs alone (``interp.models.skeleton``: for a plan, no weight read)."""
        samples = read_samples(self.data)
        if self.samples is not None:
            by_name = {x.name: x for x in samples}
            missing = [name for name in self.samples if name not in by_name]
            if missing:
                raise ValueError(f"no sample {missing[0]!r} in {self.data} (samples: {sorted(by_name)})")
            samples = [by_name[name] for name in self.samples]
        if skeleton:
            from interp.models.skeleton import pipeline_skeleton

            return pipeline_skeleton(self.model, self.spec), samples
        return load_pipeline_adapter(self.model, self.spec, self.torch_dtype, self.device), samples

    def latent_shape(self, adapter: VideoDiTAdapter) -> tuple[int, ...]:
        return adapter.pipeline_latent_shape(self.height, self.width, self.num_frames)

    def conditioning(self, adapter: VideoDiTAdapter, samples: list[Sample], noise: torch.Tensor):
        """The batched conditioning of ``samples`` (row i goes with ``noise[i]``)."""
        from PIL import Image

        conds = []
        with torch.no_grad():
            for i, item in enumerate(samples):
                image = Image.open(item.first_frame).convert("RGB") if item.first_frame else None
                conds.append(
                    adapter.pipeline_conditioning(
                        [item.prompt],
                        [image],
                        noise[i : i + 1],
                        self.negative_prompt,
                        self.height,
                        self.width,
                        self.num_frames,
                        self.max_sequence_length,
                    )  # fmt: skip
                )
        return stack_conditioning(conds)

    def noise(self, adapter: VideoDiTAdapter, seeds: list[int]) -> torch.Tensor:
        return initial_noise(seeds, self.latent_shape(adapter), adapter.device, torch.float32)


@dataclass
class MazeSource:
    """Testbed mazes: seeds ``first_seed`` .. ``first_seed + n - 1`` of one size (noise seed = maze seed)."""

    model: str = "testbed"
    size: int = 4
    frames: int = 4
    n: int = 16
    first_seed: int = 0

    def mazes(self, offset: int = 0, count: int | None = None) -> list[maze_task.Maze]:
        count = self.n if count is None else count
        return [maze_task.generate_maze(self.size, self.first_seed + offset + i) for i in range(count)]

    def check(self) -> None:
        """Size and frames the task can draw (before any model is loaded)."""
        maze_task.encode(maze_task.generate_maze(self.size, self.first_seed), self.frames)


def load_testbed(model: str | Path):
    """A testbed adapter by name or weights folder (pipeline folders are refused here)."""
    from interp.models.registry import is_pipeline_folder
    from interp.models.testbed import load_named

    if is_pipeline_folder(model):  # refused before loading: a 14B pipeline takes minutes
        raise ValueError(f"model {model}: this needs a testbed (a maze model), not a pipeline folder")
    return load_named(str(model))


def maze_inputs(adapter, mazes: list[maze_task.Maze], frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise, conditioning) of testbed mazes, the noise seeded by each maze's seed."""
    noise = initial_noise([m.seed for m in mazes], adapter.latent_shape(mazes[0].size, frames), adapter.device,
                          adapter.dtype)  # fmt: skip
    return noise, adapter.conditioning(mazes, frames)


def pipeline_field():
    """A config's ``pipeline`` field: a dict of ``PipelineInputs`` fields (or None: the testbed). The
    validation layer checks the dict against the class named in the field's metadata."""
    return field(default=None, metadata={"fields": PipelineInputs})
