"""Where videos come from: a testbed task with seeds, or a local pipeline folder with samples.

Every command and experiment gets its model, conditioning and noise here, so a testbed run and a
run on a user's pipeline differ only in their source. Samples are laid out as VBVR-Bench does: one
folder per sample holding ``prompt.txt`` and ``first_frame.png`` (read for image-to-video
pipelines). Nothing is fetched from a hub.
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import ClassVar

import torch

from interp.execution.loop import initial_noise
from interp.execution.patching import stack_conditioning
from interp.models.base import PipelineSpec, VideoDiTAdapter
from interp.models.loading import load_model
from interp.samples import Sample, Video, choose_samples, read_samples
from interp.tasks import maze as maze_task
from interp.validation import MAX_SIZE, SEED, Rule
from interp.videos import NOISINGS, SOLVERS


def default_dtype(device: str, torch_dtype: str | None) -> str:
    """The compute dtype of a pipeline: the user's, else float32 on CPU and bfloat16 on accelerators."""
    if torch_dtype is None:
        return "float32" if str(device) == "cpu" else "bfloat16"
    if torch_dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"torch_dtype must be float32, bfloat16 or float16, got {torch_dtype!r}")
    return torch_dtype


def sample_conditioning(adapter: VideoDiTAdapter, samples: list[Sample], noise: torch.Tensor, spec: PipelineSpec,
                        negative_prompt: str | None, max_sequence_length: int):  # fmt: skip
    """A pipeline's batched conditioning of ``samples`` (prompt, first frame), row i with ``noise[i]``."""
    from PIL import Image

    conds = []
    with torch.no_grad():
        for i, item in enumerate(samples):
            image = Image.open(item.first_frame).convert("RGB") if item.first_frame else None
            conds.append(adapter.pipeline_conditioning(
                [item.prompt], [image], noise[i : i + 1], negative_prompt, spec.height, spec.width, spec.num_frames,
                max_sequence_length,
            ))  # fmt: skip
    return stack_conditioning(conds)


@dataclass
class SourceConfig:
    """Where a run's videos come from, for every family: a model, its samples, their noise seeds and how
    they are sampled. A config that samples videos is one of these plus its own fields.

    The family decides what a sample is (``VideoDiTAdapter.task``): a task model (the testbed) takes task
    instances (mazes: the sample folders of ``data``, or with no ``data`` the generated mazes ``first_seed``
    .. ``first_seed + n - 1`` of ``size``); a pipeline takes prompts and first frames (``data`` required).
    ``None`` fields are the family's defaults (``num_frames``, ``num_steps``, ``shift``, ``batch_size``,
    ``height``/``width``, ``torch_dtype``). This is the one place that asks which kind of family it is.
    """

    field_rules = {"seed": SEED, "noising": Rule(lambda x: x in NOISINGS, "one of " + ", ".join(NOISINGS)),
                   "solver": Rule(lambda x: x in SOLVERS, "one of " + ", ".join(SOLVERS))}  # fmt: skip
    # How this experiment may read a given video (``video_file``): ``invert`` (its runs start from the video's
    # inverted noise: a trajectory that regenerates it, resumable as any run), ``forward`` (a trace's x_s
    # only: no trajectory to continue); () none (an experiment that draws its own noise per seed).
    video_noisings: ClassVar[tuple[str, ...]] = ("invert",)
    old_spellings: ClassVar[dict[str, str]] = {"frames": "num_frames"}  # configs written before one source
    cli_help = {
        "model": "A shipped testbed (testbed, testbed-mixed), a folder of testbed weights, or a pipeline folder.",
        "data": "Folder of samples (prompt.txt, first_frame.png; mazes: interp data maze).",
        "samples": "Sample folder names of --data (repeatable or A,B); default: all.",
        "seeds": "Noise seeds per sample (repeatable); default: a maze's own, else 0.",
        "task": "Reasoning task.",
        "size": "Testbed without --data: maze cells per side.",
        "n": "Testbed without --data: mazes (seeds first-seed ..).",
        "first_seed": "Testbed without --data: first maze seed (held-out: below 500000).",
        "num_frames": "Frames per video; default: the model's (a pipeline's own call's: Wan 81).",
        "height": "Pipeline models: video height (default: the pipeline's own, Wan 480).",
        "width": "Pipeline models: video width (default: the pipeline's own, Wan 832).",
        "num_steps": "Denoising steps; default: the model's (pipelines 50).",
        "shift": "Flow shift of the scheduler; default: the model's.",
        "guidance_scale": "Pipeline models: guidance scale (default: the family's).",
        "negative_prompt": "Pipeline models: negative prompt of classifier-free guidance.",
        "max_sequence_length": "Pipeline models: prompt tokens (default: the pipeline's own, e.g. Wan 512).",
        "true_cfg_scale": "Pipeline models: HunyuanVideo's true CFG scale.",
        "device": "Torch device.",
        "torch_dtype": "float32 (default on CPU), bfloat16 (default elsewhere).",
        "batch_size": "Videos per forward; default: the family's.",
        "video_file": "A real video: this file of each sample folder (e.g. ground_truth.mp4) is the clean sample the "
                      "runs follow.",
        "noising": "With --video-file: forward (each step's x_s the scheduler's noising of the video; trace only) "
                   "or invert (the flow ODE run from the video to noise: runs regenerate it from there).",
        "solver": "With --noising invert: euler or heun.",
    }
    cli_flags = {"n": ("-n", "--n"), "num_frames": ("--num-frames", "--frames"), "seeds": ("--seed",)}

    model: str = "testbed"  # a shipped testbed by name, a folder of testbed weights, or a pipeline folder
    data: str | None = None  # a folder of samples (prompt.txt, first_frame.png; mazes: ``interp data maze``)
    samples: list[str] | None = None  # sample folder names; None: every sample
    seeds: list[int] | None = None  # noise seeds per sample; None: a task sample's own seed, else [0]
    task: str = "maze"
    size: int = 4  # the testbed's generated mazes (no ``data``): cells per side
    n: int = 16  # ... how many
    first_seed: int = 0  # ... from which maze seed (held-out: below 500000)
    num_frames: int | None = None
    height: int | None = None  # pipelines: video size (the testbed's follows the maze)
    width: int | None = None
    num_steps: int | None = None
    shift: float | None = None
    guidance_scale: float | None = None  # None: the family's default
    negative_prompt: str | None = ""  # None: no classifier-free guidance
    max_sequence_length: int | None = None  # prompt tokens; None: the pipeline's default (Wan 512, CogVideoX 226)
    true_cfg_scale: float | None = None  # HunyuanVideo's true CFG (None: off)
    device: str = "cpu"
    torch_dtype: str | None = None  # None: float32 on CPU, bfloat16 elsewhere (recorded resolved)
    # Real videos in (``interp.videos``): a file of each sample folder is the clean sample; None: generated.
    video_file: str | None = None
    noising: str = "forward"
    solver: str = "euler"

    def __post_init__(self):
        self.torch_dtype = default_dtype(self.device, self.torch_dtype)

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        """A config written while the prompt-token count defaulted to 226 for every model: a testbed's
        recorded it without reading it (kept for a pipeline: it is what that run used)."""
        from interp.models.registry import model_task

        if data.get("max_sequence_length") != 226:
            return data
        try:
            task = model_task(data.get("model", "testbed"))
        except ValueError:  # a model no longer there: refused where it is loaded, with its own line
            return data
        return {k: v for k, v in data.items() if k != "max_sequence_length"} if task else data

    # -- the family's defaults -------------------------------------------------------------------
    def spec(self) -> PipelineSpec:
        """The run settings a pipeline adapter is built with (None sizes: the pipeline's own, resolved on load
        into ``adapter.pipeline_spec``)."""
        return PipelineSpec(self.height, self.width, self.num_frames, self.guidance_scale, self.true_cfg_scale)

    def frames_of(self, adapter: VideoDiTAdapter) -> int:
        return self.num_frames or (adapter.defaults.frames if adapter.task else self.video_spec(adapter).num_frames)

    def video_spec(self, adapter: VideoDiTAdapter) -> PipelineSpec:
        """A pipeline's video: the source's size and frames where given, else the pipeline's own (resolved when
        the model was loaded, ``adapter.pipeline_spec``)."""
        own = adapter.pipeline_spec or PipelineSpec().resolved(adapter.pipeline)
        return replace(own, height=self.height or own.height, width=self.width or own.width,
                       num_frames=self.num_frames or own.num_frames)  # fmt: skip

    def num_steps_of(self, adapter: VideoDiTAdapter) -> int:
        return self.num_steps or (adapter.defaults.num_steps if adapter.task else 50)

    def shift_of(self, adapter: VideoDiTAdapter) -> float | None:
        """The flow shift; None: the pipeline scheduler's own."""
        return adapter.defaults.shift if self.shift is None and adapter.task else self.shift

    def max_sequence_length_of(self, adapter: VideoDiTAdapter) -> int | None:
        """Prompt tokens: the user's, else what the pipeline's own call uses (None for a task model)."""
        return None if adapter.task else self.max_sequence_length or adapter.pipeline_default("max_sequence_length")

    def batch_of(self, adapter: VideoDiTAdapter, batch_size: int | None, task_batch: int = 16) -> int:
        """Videos per forward: the testbed batches; a pipeline samples one video at a time unless told."""
        return batch_size or (task_batch if adapter.task else 1)

    # -- model and videos --------------------------------------------------------------------------
    def model_task(self) -> str | None:
        """The task the model is made for (a maze model's verifier), None for a prompt-taking pipeline: the
        family's capability, read from the model's files with nothing loaded."""
        from interp.models.registry import model_task

        return model_task(self.model)

    def check(self, pipeline: bool | None = None) -> None:
        """What the fields alone can tell, before any model is read: no field is silently ignored.
        ``pipeline``: the kind of model (default: whether ``model`` is a pipeline folder)."""
        pipeline = self.model_task() is None if pipeline is None else pipeline
        defaults = type(self).__dataclass_fields__
        given = {k for k in _SOURCE_FIELDS if getattr(self, k) != defaults[k].default}
        if pipeline and self.data is None:
            raise ValueError(f"model {self.model}: a pipeline model needs --data DIR (sample folders with prompt.txt, "
                             "first_frame.png)")  # fmt: skip
        if (pipeline or self.data is not None) and given & {"size", "n", "first_seed"}:
            raise ValueError("-n, --size and --first-seed choose the testbed's generated mazes; with --data the "
                             "folder's samples are run, all or those named by --samples")  # fmt: skip
        if self.data is None and self.samples is not None:
            raise ValueError("--samples names sample folders of --data; give --data DIR")
        if not pipeline:
            for_pipelines = given & {"height", "width", "guidance_scale", "negative_prompt", "max_sequence_length",
                                     "true_cfg_scale"}  # fmt: skip
            if for_pipelines:
                flag = "--" + sorted(for_pipelines)[0].replace("_", "-")
                raise ValueError(f"{flag} is a pipeline's; the testbed has no prompt or guidance, and its video size "
                                 "follows the maze")  # fmt: skip
        elif self.shift is not None:
            raise ValueError("--shift is the testbed's sampler; a pipeline samples with its own scheduler's shift "
                             "(set in the folder's scheduler_config.json)")  # fmt: skip
        self._check_video()

    def _check_video(self) -> None:
        defaults = type(self).__dataclass_fields__
        if self.video_file is None:
            if (self.noising, self.solver) != (defaults["noising"].default, defaults["solver"].default):
                raise ValueError("--noising and --solver choose how a given video is read: give --video-file")
            return
        if not self.video_noisings:
            raise ValueError("--video-file: this experiment draws its own noise per seed; it does not read videos")
        if self.data is None:
            raise ValueError("--video-file names a file of each sample folder: give --data DIR")
        if Path(self.video_file).name != self.video_file:
            raise ValueError(f"--video-file {self.video_file!r}: a file name inside each sample folder, not a path")
        if self.noising not in self.video_noisings:
            raise ValueError(f"--noising {self.noising}: each step's x_s is then set, with no trajectory to resume; "
                             f"this experiment takes --noising {' or '.join(self.video_noisings)}")  # fmt: skip

    def load(self, skeleton: bool = False) -> VideoDiTAdapter:
        """The model through its family. ``skeleton``: the adapter built from the folder's configs alone on
        the meta device (a plan's; it cannot run), whatever the family."""
        self.check()
        adapter = load_model(self.model, self.spec(), self.torch_dtype, self.device, skeleton)
        if skeleton:
            adapter.check_prompt_tokens(self.max_sequence_length_of(adapter))  # planned: nothing loaded yet
        return adapter

    def videos(self, adapter: VideoDiTAdapter) -> list[Video]:
        """Every video of the run, in store order: each sample with each of its noise seeds. The sample
        folders are read once per config: a command's plan and its run share what the plan read."""
        key = (adapter.task, self.frames_of(adapter), *(repr(getattr(self, f)) for f in _READ_FIELDS))
        read = _VIDEOS_READ.get(id(self))
        if read is None or read[0]() is not self or read[1] != key:
            ref = weakref.ref(self, lambda _, i=id(self): _VIDEOS_READ.pop(i, None))
            found = self._read_videos(adapter)
            if self.video_file is not None:  # every sample folder holds its video; an inversion has a flow
                from interp.videos import check_videos

                check_videos(self, adapter, found)
            read = _VIDEOS_READ[id(self)] = (ref, key, found)
        return list(read[2])

    def _read_videos(self, adapter: VideoDiTAdapter) -> list[Video]:
        frames = self.frames_of(adapter)
        if adapter.task and not 2 <= frames <= MAX_SIZE:  # the puzzle and the solution; the testbed's rotary range
            raise ValueError(f"num_frames must be from 2 to {MAX_SIZE} for a maze model, got {frames}")
        if self.data is None:
            if not adapter.task:
                raise ValueError(f"model {self.model}: needs --data DIR (sample folders with prompt.txt)")
            mazes = [maze_task.generate_maze(self.size, self.first_seed + i) for i in range(self.n)]
            maze_task.encode(mazes[0], frames)  # size and frames the task can draw
            prompt = f"Solve the {self.size}x{self.size} maze: walk from the green start to the red goal."
            samples = [Sample(f"{self.task}{self.size}-f{frames}-seed{m.seed}", prompt, None, None, m) for m in mazes]
        elif adapter.task:
            from interp.tasks.maze_data import read_maze_samples

            found = read_maze_samples(self.data, self.samples)  # each first frame checked against its maze
            samples = [Sample(name, prompt, None, Path(self.data, name), maze) for name, maze, prompt in found]
            maze_task.encode(samples[0].truth, frames)
            sizes = sorted({s.truth.size for s in samples})
            if len(sizes) > 1:
                raise ValueError(f"--data {self.data}: mazes of sizes {sizes}; one store holds one size")
        else:
            samples = choose_samples(read_samples(self.data), self.samples, self.data)
        if self.seeds is None and all(s.truth is not None for s in samples):
            return [Video(s.name, s, s.truth.seed) for s in samples]  # a maze's noise seed is its own
        return [Video(f"{s.name}-seed{seed}", s, seed) for s in samples for seed in (self.seeds or [0])]

    def latent_shape(self, adapter: VideoDiTAdapter, videos: list[Video]) -> tuple[int, ...]:
        if adapter.task:
            return adapter.latent_shape(videos[0].sample.truth.size, self.frames_of(adapter))
        spec = self.video_spec(adapter)
        return adapter.pipeline_latent_shape(spec.height, spec.width, spec.num_frames)

    def frame_size(self, adapter: VideoDiTAdapter, videos: list[Video]) -> tuple[int, int]:
        """(height, width) of a decoded frame: the testbed's renderer draws a maze of N cells in 2N+1 pixels."""
        if adapter.task:
            side = 2 * videos[0].sample.truth.size + 1
            return side, side
        spec = self.video_spec(adapter)
        return spec.height, spec.width

    def noise(self, adapter: VideoDiTAdapter, seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
        """One draw per seed on the model's device: a task model's own dtype; a pipeline's latents are
        float32, as its pipeline prepares them."""
        return initial_noise(seeds, shape, adapter.device, adapter.dtype if adapter.task else torch.float32)

    def inputs(self, adapter: VideoDiTAdapter, videos: list[Video], drawn: bool = False) -> tuple[torch.Tensor, object]:
        """(noise, conditioning) of ``videos``, row i for video i; each row's noise drawn from its seed alone. With
        ``video_file`` and ``noising invert`` the noise is each video's inverted latent at the first step: a run
        from it regenerates the video (``drawn``: the drawn noise all the same, for a trace's own hook)."""
        noise = self.noise(adapter, [v.seed for v in videos], self.latent_shape(adapter, videos))
        if adapter.task:
            cond = adapter.conditioning([v.sample.truth for v in videos], self.frames_of(adapter))
        else:
            adapter.check_prompt_tokens(self.max_sequence_length_of(adapter))
            cond = sample_conditioning(adapter, [v.sample for v in videos], noise, self.video_spec(adapter),
                                       self.negative_prompt, self.max_sequence_length_of(adapter))  # fmt: skip
        if self.video_file is None or drawn:
            return noise, cond
        from interp.videos import clean_latents, invert_videos

        if self.noising != "invert":  # a forward-noised video has no noise that regenerates it
            raise ValueError("--noising forward sets each step's x_s with no trajectory to resume: use --noising "
                             "invert")  # fmt: skip
        return invert_videos(self, adapter, clean_latents(self, adapter, videos)[0].to(noise), cond)[0], cond

    def metas(self, adapter: VideoDiTAdapter, videos: list[Video], latents: torch.Tensor) -> list[dict]:
        """What the store records of finished videos: their inputs and, for a task's own model, the
        verifier's verdict on the decoded video (a pipeline's videos are not decoded here)."""
        if not adapter.task:
            return [{"sample": v.sample.name, "prompt": v.sample.prompt, "seed": v.seed, "model": str(self.model)}
                    for v in videos]  # fmt: skip
        metas, frames = [], self.frames_of(adapter)
        for video, rgb in zip(videos, adapter.decode(latents)):
            maze = video.sample.truth
            metas.append({"task": self.task, "size": maze.size, "frames": frames, "maze_seed": maze.seed,
                          "noise_seed": video.seed, "prompt": video.sample.prompt,
                          "verdict": asdict(maze_task.verify(rgb, maze))})  # fmt: skip
            if self.data is not None:
                metas[-1]["sample"] = video.sample.name
        return metas


class MazeSizes:
    """A source over several maze sizes (mixed into a ``SourceConfig`` with a ``sizes`` field): one source
    per size of the testbed's generated mazes, or the data folder's samples (then ``--size`` is refused)."""

    cli_hidden = ("size", "video_file", "noising", "solver")  # each group's size is one of ``sizes``; no videos
    video_noisings = ()  # it draws its own noise per seed

    def groups(self) -> list:
        return [replace(self, size=size) for size in self.sizes] if self.data is None else [self]

    def check(self, pipeline: bool | None = None) -> None:
        super().check(pipeline)
        default = type(self).__dataclass_fields__["sizes"].default_factory()
        if self.data is not None and self.sizes != default:
            raise ValueError("--size chooses the testbed's generated mazes; with --data the folder's samples are run")
        if self.size != type(self).__dataclass_fields__["size"].default:
            raise ValueError("this experiment's maze sizes are its sizes (--size, repeatable), not size")


def load_testbed(model: str | Path):
    """A task model (the testbed: a maze model with a verifier) by name or folder; a pipeline is refused
    before anything is loaded (a 14B pipeline takes minutes)."""
    from interp.models.registry import model_task

    if model_task(model) is None:
        raise ValueError(f"model {model}: this needs a testbed (a maze model), not a pipeline folder")
    return load_model(model)


_VIDEOS_READ: dict[int, tuple] = {}  # id(config) -> (its weak reference, what it was read from, the videos)
_READ_FIELDS = ("data", "samples", "seeds", "task", "size", "n", "first_seed")  # what ``videos`` reads from
_SOURCE_FIELDS = {f.name for f in fields(SourceConfig)} - {"model", "data", "device", "torch_dtype"}
