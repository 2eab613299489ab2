"""One sparse autoencoder per (step, layer) slab of a store, trained with SAELens' model-free ``SAETrainer``
fed by ``activations.batches.TokenBatches`` (memory: a mixing buffer, never the slab), saved in SAELens'
inference format (``sae_weights.safetensors``, ``cfg.json``, ``sparsity.safetensors``) so that
``sae_lens.SAE.load_from_disk`` and the tools built on it read it; and its quality on held-out videos, as
the field reports it (explained variance, MSE, L0, dead and rarely firing latents).

``sae_lens`` is imported inside the functions: it loads transformer_lens, datasets and wandb (4 s here).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "standard")
RARE = 1e-4  # a latent firing on fewer than this share of held-out tokens is "rare"


@dataclass(frozen=True)
class SAESpec:
    """What is trained: the architecture, its width (``expansion`` x the site's hidden size), its sparsity
    (``k`` for TopK/BatchTopK, ``sparsity_coefficient`` for JumpReLU's L0 and standard's L1 penalty), the
    optimiser and how many tokens it sees."""

    architecture: str = "topk"
    expansion: int = 4
    k: int = 16
    sparsity_coefficient: float = 1.0
    lr: float = 3e-4
    batch_size: int = 1024
    training_tokens: int = 1_000_000
    buffer_tokens: int = 1 << 16
    seed: int = 0


def _silence_remote_services() -> None:
    """Nothing of SAELens reaches the network: no wandb run, no hub lookup."""
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def training_sae(spec: SAESpec, d_in: int, device: str, metadata: dict):
    """A SAELens training SAE of ``spec`` for inputs of width ``d_in``; ``metadata`` goes into its cfg.json."""
    _silence_remote_services()
    import sae_lens
    from sae_lens.saes.sae import SAEMetadata

    common = dict(d_in=d_in, d_sae=spec.expansion * d_in, dtype="float32", device=device, apply_b_dec_to_input=True,
                  normalize_activations="none", metadata=SAEMetadata(**metadata))  # fmt: skip
    built = {
        "topk": lambda: sae_lens.TopKTrainingSAE(sae_lens.TopKTrainingSAEConfig(k=spec.k, **common)),
        "batchtopk": lambda: sae_lens.BatchTopKTrainingSAE(sae_lens.BatchTopKTrainingSAEConfig(k=spec.k, **common)),
        "jumprelu": lambda: sae_lens.JumpReLUTrainingSAE(
            sae_lens.JumpReLUTrainingSAEConfig(l0_coefficient=spec.sparsity_coefficient, **common)),
        "standard": lambda: sae_lens.StandardTrainingSAE(
            sae_lens.StandardTrainingSAEConfig(l1_coefficient=spec.sparsity_coefficient, **common)),
    }
    if spec.architecture not in built:
        raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {spec.architecture!r}")
    torch.manual_seed(spec.seed)  # the SAE's initial weights
    return built[spec.architecture]()


def train_sae(batches, spec: SAESpec, d_in: int, out: str | Path, metadata: dict, device: str = "cpu",
              progress: bool = True) -> Path:  # fmt: skip
    """Train on ``batches`` (an endless iterable of (batch, d_in) arrays) for ``spec.training_tokens`` tokens and
    save the inference SAE and its feature sparsity to ``out``."""
    _silence_remote_services()
    from functools import partial

    import sae_lens.training.sae_trainer as trainer_module
    from sae_lens import LoggingConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer
    from safetensors.torch import save_file

    steps = max(1, spec.training_tokens // spec.batch_size)
    window = max(1, min(1000, steps // 4))  # a latent silent this many steps is dead (short runs: scaled down)
    config = SAETrainerConfig(
        total_training_samples=steps * spec.batch_size, train_batch_size_samples=spec.batch_size, lr=spec.lr,
        lr_end=spec.lr, lr_scheduler_name="constant", lr_warm_up_steps=0, lr_decay_steps=0, n_restart_cycles=1,
        adam_beta1=0.9, adam_beta2=0.999, device=device, autocast=False, dead_feature_window=window,
        feature_sampling_window=max(window, 1), n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False),
    )  # fmt: skip
    provider = (torch.from_numpy(np.ascontiguousarray(b)) for b in batches)
    trainer = SAETrainer(cfg=config, sae=training_sae(spec, d_in, device, metadata), data_provider=provider)
    bar = trainer_module.tqdm  # the trainer draws its own progress bar, with no option to leave it out
    trainer_module.tqdm = partial(bar, disable=not progress)
    try:
        sae = trainer.fit()
    finally:
        trainer_module.tqdm = bar
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sae.save_inference_model(str(out))
    save_file({"sparsity": trainer.log_feature_sparsity.detach().cpu().contiguous()}, str(out / "sparsity.safetensors"))
    return out


STEP_MEANS = "step_means.safetensors"  # beside a step-shared SAE: each step's mean training token


class StepSAE:
    """A step-shared SAE read at one denoising step: it encodes the step's tokens minus that step's mean token
    and adds the mean back when decoding (a per-step decoder bias: the step conditions the SAE, as time-aware
    SAEs do); every other attribute (``cfg``, ``W_dec``, ``device``) is the SAELens SAE's."""

    def __init__(self, sae, mean: torch.Tensor, step: int):
        self.sae, self.mean, self.step = sae, mean.to(sae.device, torch.float32), step

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.sae.encode(x - self.mean)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.sae.decode(z) + self.mean

    def __getattr__(self, name: str):
        if name == "sae":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.sae, name)


ENCODE_TOKENS = 8192  # tokens encoded at once: a block's latents are the largest array an SAE reader holds


def encoded_blocks(store, sae, site: str, step: int, videos: list[int], features=None):
    """The SAE's latents of ``videos``' tokens of ``site`` at ``step``, one block at a time, in store order:
    (videos of the block, first token, end token, latents (block videos x tokens, d_sae or len(features)),
    float64). ``features``: only these latents' columns."""
    from activations.batches import TokenBatches

    for block, _, start, stop, rows in TokenBatches(store, site, [step], videos, block_tokens=ENCODE_TOKENS).in_order():
        with torch.no_grad():
            z = sae.encode(torch.as_tensor(rows.reshape(-1, rows.shape[-1]), dtype=torch.float32, device=sae.device))
        z = z if features is None else z[:, features]
        yield block, start, stop, z.double().cpu().numpy()


def random_directions(sae, feature: int, n: int, seed: int) -> list[torch.Tensor]:
    """``n`` seeded random directions (on the CPU) of the norm of ``feature``'s decoder row: the control of an edit
    along that row."""
    norm = sae.W_dec[feature].detach().norm().cpu()
    generator = torch.Generator().manual_seed(seed)
    draws = [torch.randn(sae.W_dec.shape[1:], generator=generator) for _ in range(n)]
    return [r / r.norm() * norm for r in draws]


def step_means(store, site: str, steps: list[int], videos: list[int]) -> dict[int, np.ndarray]:
    """Each step's mean token of ``site`` over ``videos`` (float64 sums, one block at a time)."""
    from activations.batches import TokenBatches

    means = {}
    for step in steps:
        total, n = None, 0
        for *_, rows in TokenBatches(store, site, [step], videos).in_order():
            flat = rows.reshape(-1, rows.shape[-1]).astype(np.float64)
            total, n = (flat.sum(0) if total is None else total + flat.sum(0)), n + len(flat)
        means[step] = (total / n).astype(np.float32)
    return means


def save_step_means(folder: str | Path, means: dict[int, np.ndarray]) -> None:
    from safetensors.torch import save_file

    save_file({f"step_{s}": torch.from_numpy(np.ascontiguousarray(m)) for s, m in means.items()},
              str(Path(folder) / STEP_MEANS))  # fmt: skip


def load_sae(path: str | Path, device: str = "cpu", step: int | None = None):
    """An SAE saved by ``train_sae`` (or any SAELens inference SAE folder); a step-shared one (``STEP_MEANS``
    beside it) read at ``step`` (a ``StepSAE``)."""
    _silence_remote_services()
    from sae_lens import SAE
    from safetensors.torch import load_file

    sae = SAE.load_from_disk(str(path), device=device)
    if not (Path(path) / STEP_MEANS).is_file():
        return sae
    means = load_file(str(Path(path) / STEP_MEANS))
    if step is None or f"step_{step}" not in means:
        shared = sorted(int(k.removeprefix("step_")) for k in means)
        raise ValueError(f"{path} is an SAE shared by steps {shared}: read it at one of them, not {step}")
    return StepSAE(sae, means[f"step_{step}"], step)


def sae_quality(sae, batches) -> dict:
    """Explained variance (1 - summed squared error / summed squared deviation from the mean, over every token),
    MSE (squared error summed over the hidden size, mean over tokens), L0 (mean active latents per token) and the
    dead (never active) and rare (active on fewer than ``RARE`` of the tokens) latents, over ``batches`` (one pass
    of held-out tokens), accumulated in float64."""
    n, sq_err, sum_x, sum_sq, l0 = 0, 0.0, None, 0.0, 0.0
    fired = None
    with torch.no_grad():
        for batch in batches:
            x = torch.as_tensor(np.ascontiguousarray(batch), dtype=torch.float32, device=sae.device)
            z = sae.encode(x)
            x_hat = sae.decode(z)
            n += len(x)
            sq_err += float((x_hat - x).double().pow(2).sum())
            sum_x = x.double().sum(0) if sum_x is None else sum_x + x.double().sum(0)
            sum_sq += float(x.double().pow(2).sum())
            active = z != 0
            l0 += float(active.sum())
            fired = active.sum(0) if fired is None else fired + active.sum(0)
    if not n:
        raise ValueError("no held-out tokens to measure the SAE on")
    deviation = sum_sq - float(sum_x.pow(2).sum()) / n  # sum of squared deviations from the mean token
    share = fired.double().cpu().numpy() / n
    return {"explained_variance": 1.0 - sq_err / deviation if deviation > 0 else float("nan"), "mse": sq_err / n,
            "l0": l0 / n, "dead": int((share == 0).sum()), "rare": int(((share > 0) & (share < RARE)).sum()),
            "d_sae": int(len(share)), "tokens": n}  # fmt: skip
