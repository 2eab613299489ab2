"""The testbed: a small ``diffusers.WanTransformer3DModel`` that solves mazes, and its adapter.

The latent is the maze task's per-cell latent (one token per maze cell and frame, patch size 1);
the decoder is the task's deterministic renderer. Conditioning follows Wan image-to-video: the
mask channel and the condition frame's latent are concatenated to the noisy latent.
The prompt is a fixed all-zero text embedding of one token (the testbed has one task per model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import WanTransformer3DModel

from interp.models.base import ForwardCall, VideoDiTAdapter
from interp.models.registry import register_model_folder
from interp.tasks import maze as maze_task

WEIGHTS_DIR = Path(__file__).parent / "testbed_weights"
# Shipped testbeds by the name every command takes (``--model testbed``).
NAMED = {"testbed": WEIGHTS_DIR, "testbed-mixed": Path(__file__).parent / "testbed_mixed_weights"}
TEXT_DIM = 16
LATENT_CHANNELS = len(maze_task.LATENT_CHANNELS)

DEFAULT_CONFIG: dict = {
    "patch_size": (1, 1, 1),
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "in_channels": 2 * LATENT_CHANNELS + 1,  # noisy latent, mask, condition latent
    "out_channels": LATENT_CHANNELS,
    "text_dim": TEXT_DIM,
    "freq_dim": 64,
    "ffn_dim": 512,
    "num_layers": 8,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 64,
}


@dataclass(frozen=True)
class SamplingDefaults:
    """How the shipped model is sampled unless a user says otherwise (written beside the weights)."""

    num_steps: int = 20
    shift: float = 1.0
    frames: int = 4
    size: int = 4


def build_transformer(config: dict | None = None) -> WanTransformer3DModel:
    """A randomly initialised testbed transformer from a config (defaults: ``DEFAULT_CONFIG``)."""
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(config or {})
    return WanTransformer3DModel(**cfg)


def load_transformer(path: str | Path | None = None) -> WanTransformer3DModel:
    """Load testbed weights (safetensors) from a local folder; the shipped ones by default."""
    folder = Path(path) if path is not None else WEIGHTS_DIR
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"no testbed weights at {folder} (expected config.json and a .safetensors file); "
            "train them with `interp train testbed`"
        )
    _check_weights_folder(folder)
    model = WanTransformer3DModel.from_pretrained(folder, use_safetensors=True, local_files_only=True)
    return model.eval()


def _check_weights_folder(folder: Path) -> None:
    """config.json's sizes bounded, and its layer count the number of blocks the weights hold, before
    a model is built from it (a config asking for 1e8 layers would hang)."""
    from interp.models.config_checks import check_model_config, read_config, weight_block_count
    from interp.validation import UsageError

    path = folder / "config.json"
    config = read_config(path)
    check_model_config(path, config)
    held = weight_block_count(folder, TestbedAdapter.blocks_attr)
    layers = config.get("num_layers", DEFAULT_CONFIG["num_layers"])
    if held is not None and layers != held:
        raise UsageError(f"{path}: num_layers is {layers}, the weights beside it hold {held} blocks")


def load_sampling_defaults(path: str | Path | None = None) -> SamplingDefaults:
    """``sampling.json`` beside the weights, every field checked (``interp.validation``: a shift of -2
    or 1e300, 0 steps, a string) with one line naming the file and the field; defaults where absent."""
    from interp.models.config_checks import read_config
    from interp.validation import check_fields

    folder = Path(path) if path is not None else WEIGHTS_DIR
    meta = folder / "sampling.json"
    if not meta.is_file():
        return SamplingDefaults()
    fields = read_config(meta)
    known = {k: fields[k] for k in SamplingDefaults.__dataclass_fields__ if k in fields}  # other keys: notes
    check_fields(SamplingDefaults, known, str(meta))
    return SamplingDefaults(**known)


def load_folder(folder: Path, spec=None, torch_dtype: str = "float32", device: str = "cpu") -> TestbedAdapter:
    """The testbed of a weights folder in ``torch_dtype`` on ``device`` (``spec`` is a pipeline's: the
    testbed's video follows its maze)."""
    adapter = TestbedAdapter.load(folder)
    if (device, torch_dtype) != ("cpu", "float32"):
        adapter.transformer.to(device, getattr(torch, torch_dtype))
    return adapter


def skeleton_folder(folder: Path, spec=None, torch_dtype: str = "float32") -> TestbedAdapter:
    """The testbed built from its folder's ``config.json`` on the meta device, in ``torch_dtype``: what a plan
    reads (blocks, widths, sampling defaults) with no weight read; ``load_folder`` loads them after."""
    _check_weights_folder(folder)
    with torch.device("meta"):
        transformer = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(folder))
    transformer.register_to_config(_name_or_path=folder)  # as from_pretrained records it (the store's model_config)
    if torch_dtype != "float32":
        transformer.to(getattr(torch, torch_dtype))
    adapter = TestbedAdapter(transformer.eval(), load_sampling_defaults(folder), folder)
    adapter.is_skeleton = True
    return adapter


@register_model_folder("WanTransformer3DModel", load_folder, skeleton_folder, NAMED)
class TestbedAdapter(VideoDiTAdapter):
    """Model adapter for the testbed: what the sampler, tracer and interventions need to know."""

    name = "testbed"
    task = "maze"
    blocks_attr = "blocks"
    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self, transformer: WanTransformer3DModel, defaults: SamplingDefaults | None = None, folder: Path | None = None
    ):
        self.transformer = transformer
        self.defaults = defaults or SamplingDefaults()
        self.folder = folder  # the weights folder it was loaded from (training.json beside them), if any

    @classmethod
    def load(cls, path: str | Path | None = None) -> TestbedAdapter:
        folder = Path(path) if path is not None else WEIGHTS_DIR
        return cls(load_transformer(folder), load_sampling_defaults(folder), folder)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def latent_shape(self, size: int, frames: int) -> tuple[int, int, int, int]:
        """(C, T, H, W) of one video's latent; tokens are the (T, H, W) grid with patch size 1."""
        return (LATENT_CHANNELS, frames, size, size)

    def conditioning(self, mazes: list[maze_task.Maze], frames: int) -> torch.Tensor:
        """Image-to-video conditioning for a batch of mazes: (B, 1+C, T, N, N)."""
        cond = np.stack([maze_task.condition(m, frames) for m in mazes])
        return torch.from_numpy(cond).to(self.device, self.dtype)

    def condition_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The I2V conditioning: a mask channel plus the frame-0 latent, on the latent grid."""
        return (latent_shape[0] + 1, *latent_shape[1:])

    def condition_latent(self, conditioning: torch.Tensor) -> torch.Tensor:
        return conditioning

    def attention_context(self, site: str) -> tuple[str, ...]:
        return ()  # its cross-attention reads one fixed all-zero text token: nothing to measure

    def pixel_box(self, cell: tuple[int, int], cells: tuple[int, int], frame: tuple[int, int]) -> tuple[float, ...]:
        """The renderer draws cell (r, c) at pixel (2r+1, 2c+1) of a (2N+1)-pixel frame: the box takes its walls."""
        if frame != (2 * cells[0] + 1, 2 * cells[1] + 1):  # a pooled grid: an even block
            return super().pixel_box(cell, cells, frame)
        return 2 * cell[0], 2 * cell[1], 3, 3

    def token_grid(self, latent_shape: tuple[int, ...], expert: str | None = None) -> tuple[int, int, int]:
        return tuple(int(v) for v in latent_shape[-3:])

    def forward_calls(self, latents: torch.Tensor, timestep: torch.Tensor, conditioning: torch.Tensor):
        """One call per step, no guidance: velocity v for noisy ``latents`` at ``timestep`` (sigma*1000)."""
        batch = latents.shape[0]
        text = torch.zeros(batch, 1, TEXT_DIM, device=latents.device, dtype=latents.dtype)
        model_input = torch.cat([latents, conditioning], dim=1)
        timesteps = timestep.expand(batch) if timestep.ndim == 0 else timestep
        return [ForwardCall(self.transformer, (model_input, timesteps, text), {"return_dict": False})]

    def encode_video(self, frames: np.ndarray, height: int, width: int) -> torch.Tensor:
        """RGB frames of a maze video (any pixel size) to its per-cell latent (1, C, T, N, N): the renderer's
        inverse (``maze.latent_from_frames``) at N = (height - 1) / 2 cells."""
        latent = maze_task.latent_from_frames(frames, (height - 1) // 2)
        return torch.from_numpy(latent[None]).to(self.device, self.dtype)

    def decode(self, latents: torch.Tensor | np.ndarray) -> np.ndarray:
        """Latents (B, C, T, N, N) to RGB videos (B, T, 2N+1, 2N+1, 3) uint8."""
        arr = latents.detach().float().cpu().numpy() if isinstance(latents, torch.Tensor) else latents
        return np.stack([maze_task.render(z) for z in arr])
