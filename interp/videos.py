"""Real videos in (issue 32): a video file decoded with PyAV, its first frames taken, and the trajectories a
store is traced along when the clean sample is given rather than generated.

- ``read_video``: RGB frames (T, H, W, 3) uint8 of any file FFmpeg reads (mp4, webm, gif, ...); the model's
  frame count is taken from the start, and a video shorter than that is refused in one line.
- ``ForwardNoising``: a step hook that puts x_s = the scheduler's own noising of the clean latent at every
  step's sigma before the model is called (``scale_noise`` of a flow scheduler, ``add_noise`` otherwise): the
  model reads the given video at each noise level, one call per step, no trajectory of its own.
- ``invert``: the flow-matching ODE run from the clean latent to noise with the model's own velocity (Euler, or
  Heun's corrector), the trajectory a generation would have to take to end at the video; traced like a
  forward-noised one (each step's x_s replaced by the inverted one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from interp.execution.loop import StepHook, StepState

SOLVERS = ("euler", "heun")
NOISINGS = ("forward", "invert")


def read_video(path: str | Path, num_frames: int) -> np.ndarray:
    """The first ``num_frames`` RGB frames (T, H, W, 3) uint8 of a video file, decoded by PyAV (FFmpeg), as a player
    shows them at the video's frame period (the shortest time a frame is shown): a frame held twice as long
    (an encoder merges repeated frames, as GIF writers do, the last ones too) counts twice."""
    import av

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no video at {path}")
    frames, starts, ends = [], [], []

    def period() -> float:
        gaps = [b - a for a, b in zip(starts, starts[1:]) if b > a] + [e - s for s, e in zip(starts, ends) if e > s]
        return min(gaps, default=1.0)

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path} holds no video stream")
            for frame in container.decode(video=0):
                start = float(frame.time) if frame.time is not None else float(len(starts))
                shown = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else 0.0
                frames.append(frame.to_ndarray(format="rgb24"))
                starts.append(start)
                ends.append(start + shown)
                if ends[-1] - starts[0] >= num_frames * period() - 1e-9:
                    break
    except av.error.FFmpegError as err:
        raise ValueError(f"{path} is not a video FFmpeg can read ({err})") from None
    step = period()
    end = max(ends[-1], starts[-1] + step) if frames else 0.0  # a last frame of unknown length: one period
    shows = round((end - starts[0]) / step) if frames else 0
    if shows < num_frames:
        raise ValueError(f"{path} shows {shows} frames; the model takes {num_frames}")
    shown = [int(np.searchsorted(starts, starts[0] + j * step + step / 2, side="right")) - 1 for j in range(num_frames)]
    return np.stack([frames[i] for i in shown])


def noised(scheduler, clean: torch.Tensor, noise: torch.Tensor, timestep) -> torch.Tensor:
    """The scheduler's own forward noising of ``clean`` at ``timestep`` (a flow scheduler's ``scale_noise``:
    (1 - sigma) x0 + sigma noise; a DDPM-family scheduler's ``add_noise``)."""
    t = torch.as_tensor(timestep).reshape(1).to(clean.device)
    if hasattr(scheduler, "scale_noise"):
        return scheduler.scale_noise(clean, t, noise)
    return scheduler.add_noise(clean, noise, t)


class ForwardNoising(StepHook):
    """At every step x_s is the scheduler's noising of ``clean`` (or, given ``trajectory``, that step's inverted
    latent); after the last step the latents are the clean latent itself: the store's final is the video."""

    def __init__(self, clean: torch.Tensor, noise: torch.Tensor, num_steps: int, trajectory=None, adapter=None):
        self.clean, self.noise, self.num_steps, self.trajectory = clean, noise, num_steps, trajectory
        self.adapter = adapter  # its tokens held clean (an image-to-video first frame) stay the video's

    def before_model(self, state: StepState) -> torch.Tensor:
        if self.trajectory is not None:
            return self.trajectory[state.step].to(state.latents)
        x = noised(state.scheduler, self.clean.to(state.latents), self.noise.to(state.latents), state.timestep)
        return hold_clean(self.adapter, x, self.clean.to(x)) if self.adapter is not None else x

    def after_step(self, state: StepState) -> torch.Tensor | None:
        return self.clean.to(state.latents) if state.step == self.num_steps - 1 else None


def require_flow(adapter) -> None:
    if adapter.prediction != "flow":
        raise ValueError(f"--noising invert follows a flow-matching model's velocity; {adapter.name} predicts "
                         f"{adapter.prediction}: use --noising forward")  # fmt: skip


def hold_clean(adapter, x: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """``x`` with the tokens the model holds clean (``clean_index``: Wan 2.2 TI2V's, LTX image-to-video's first
    frame) set to the video's: the model reads them as given, never noised."""
    if adapter.clean_index is None:
        return x
    x = x.clone()
    x[adapter.clean_index] = clean[adapter.clean_index]
    return x


def invert(
    adapter, clean: torch.Tensor, conditioning, scheduler, num_steps: int, solver: str = "euler"
) -> torch.Tensor:
    """(steps, *clean.shape): x_s at each step's sigma, reached from the clean latent (sigma 0) by the flow ODE
    dx/dsigma = v run backwards with the model's velocity at each point (``heun``: the mean of the velocities at
    both ends of each step)."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    require_flow(adapter)
    adapter.set_timesteps(scheduler, num_steps, clean.device)
    sigmas = [float(s) for s in scheduler.sigmas]
    # The model reads each point at the timestep a generation gives it there (UniPC's are whole numbers); sigma 0: 0.
    timesteps = [*scheduler.timesteps.to(clean.device), torch.zeros((), device=clean.device)]
    out = [None] * num_steps
    x = clean
    with torch.no_grad():
        for k in reversed(range(num_steps)):
            here, there = sigmas[k + 1], sigmas[k]
            v = adapter.predict(x, timesteps[k + 1].to(timesteps[k].dtype), conditioning).to(x.dtype)
            step = x + (there - here) * v
            if solver == "heun":
                v_end = adapter.predict(hold_clean(adapter, step, clean), timesteps[k], conditioning).to(x.dtype)
                step = x + (there - here) * (v + v_end) / 2
            x = out[k] = hold_clean(adapter, step, clean)
    return torch.stack(out)


def video_paths(cfg, videos: list) -> list[Path]:
    return [Path(v.sample.folder or Path(cfg.data, v.sample.name)) / cfg.video_file for v in videos]


def check_videos(cfg, adapter, videos: list) -> None:
    """Before any compute: every sample folder holds its video, and an inversion has a flow to follow."""
    missing = [p for p in video_paths(cfg, videos) if not p.is_file()]
    if missing:
        raise ValueError(f"--video-file {cfg.video_file}: {missing[0]} is not there"
                         + (f" (nor in {len(missing) - 1} other sample folders)" if len(missing) > 1 else ""))
    if cfg.noising == "invert":
        require_flow(adapter)


def clean_latents(cfg, adapter, videos: list) -> tuple[torch.Tensor, list[Path]]:
    """Each video's clean latent (B, *latent) from its sample folder's ``cfg.video_file``: the model's frame count
    from the start, resized to the run's frame size, encoded (``VideoDiTAdapter.encode_video``)."""
    frames = cfg.frames_of(adapter)
    height, width = cfg.frame_size(adapter, videos)
    paths = video_paths(cfg, videos)
    latents = [adapter.encode_video(read_video(path, frames), height, width) for path in paths]
    return torch.cat(latents), paths


def invert_videos(cfg, adapter, clean: torch.Tensor, conditioning) -> torch.Tensor:
    """A source's clean latents inverted with its own scheduler, steps and solver (``invert``)."""
    scheduler = adapter.make_scheduler(cfg.shift_of(adapter))
    return invert(adapter, clean, conditioning, scheduler, cfg.num_steps_of(adapter), cfg.solver)


def video_hook(cfg, adapter, videos: list, noise: torch.Tensor, conditioning, num_steps: int, shift) -> tuple:
    """The hook that traces ``videos`` from their files (``ForwardNoising``, along the inversion for ``invert``)
    and what each video's store record adds: its file and, inverted, the relative distance of the video
    regenerated from the inverted noise to the video (the inversion's reconstruction error)."""
    from interp.execution.loop import sample

    clean, paths = clean_latents(cfg, adapter, videos)
    clean = clean.to(noise)
    if clean.shape != noise.shape:
        raise ValueError(f"{paths[0]}: its latent {tuple(clean.shape[1:])} is not the run's {tuple(noise.shape[1:])}")
    metas = [{"video_file": str(path), "noising": cfg.noising} for path in paths]
    trajectory = None
    if cfg.noising == "invert":
        trajectory = invert_videos(cfg, adapter, clean, conditioning)
        with torch.no_grad():
            regenerated = sample(adapter, trajectory[0], conditioning, num_steps, shift).latents
        flat, again = clean.flatten(1).double(), regenerated.flatten(1).double()
        errors = ((again - flat).norm(dim=1) / flat.norm(dim=1).clamp_min(1e-12)).tolist()
        for meta, error in zip(metas, errors):
            meta["inversion"] = {"solver": cfg.solver, "reconstruction_error": error}
    return ForwardNoising(clean, noise, num_steps, trajectory, adapter), metas
