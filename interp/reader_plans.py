"""Plans of the commands that read a store or a run folder (filmstrip, energy, chain, verify, report):
what they read of it, write and hold, from the store's layout alone (``interp.plans`` for the rest).
``READERS`` maps a command to its plan; ``interp.cli_options`` prints it before the command runs."""

from __future__ import annotations

import math
from pathlib import Path

from interp.plans import FIGURES, FLOAT32, Plan, count, folder_weight_bytes, model_bytes
from interp.validation import UsageError


def _store_layout(path: Path):
    from activations.reader import ActivationStore

    with ActivationStore(path) as store:
        return store.layout, list(store.completed_videos)


def decoder_bytes(model: str | None, device: str, torch_dtype: str | None) -> int:
    """What decodes x0_hat: a testbed (its weights are small: loaded) or a pipeline folder (loaded whole)."""
    from interp.models.registry import is_pipeline_folder
    from interp.sources import default_dtype, load_testbed

    if not model:
        return 0
    if is_pipeline_folder(model):
        return folder_weight_bytes(model, default_dtype(device, torch_dtype))
    return model_bytes(load_testbed(model))


def filmstrip_plan(values: dict) -> Plan:
    from activations.selection import parse_index_spec

    layout, _ = _store_layout(values["store"])
    videos = parse_index_spec(values["videos"], layout.n_videos, "video")
    steps = [s for s in parse_index_spec(values["steps"], layout.num_steps, "step") if s in layout.steps]
    read = len(videos) * len(steps) * math.prod(layout.latent_shape) * FLOAT32
    memory = decoder_bytes(values["model"], values["device"], values.get("torch_dtype")) + read // len(videos)
    return Plan("filmstrip", Path(values["out"]), len(videos), layout.num_steps, len(steps), None,
                FIGURES * len(videos), memory, [f"decodes x0_hat with {values['model']}"], read,
                Path(values["store"]))  # fmt: skip


def energy_plan(values: dict) -> Plan:
    layout, _ = _store_layout(values["store"])
    steps = len({values["step"], *(values.get("scale_step") or [])})  # steps sharing the colour scale are read too
    read = sum(layout.n_tokens * layout.hidden[s] for s in layout.sites) * FLOAT32 * steps  # every site, one video
    return Plan("energy", Path(values["out"]), 1, layout.num_steps, steps, len(layout.sites), FIGURES, 3 * read,
                [f"video {values['video']} at step {values['step']}"], read, Path(values["store"]))  # fmt: skip


def chain_plan(values: dict) -> Plan:
    layout, done = _store_layout(values["store"])
    per_video = len(layout.steps) * math.prod(layout.latent_shape) * FLOAT32
    scorer_model = values.get("model") if values.get("scorer") else None
    decoder = decoder_bytes(scorer_model, values["device"], values.get("torch_dtype"))
    # read one video at a time, as float64 (one sample's seeds together: not known from the layout)
    return Plan("chain", Path(values["out"]), len(done), layout.num_steps, len(layout.steps), None, FIGURES,
                decoder + 2 * 2 * per_video, ["x0_hat of every stored step of every complete video, one at a time"],
                per_video * len(done), Path(values["store"]))  # fmt: skip


def verify_plan(values: dict) -> Plan:
    from activations.schema import check_store_path, parts_dir

    store = check_store_path(values["store"])
    parts = parts_dir(store)
    files = [p for p in (parts.glob("part_*.h5") if parts.is_dir() else []) if p.is_file()]
    read = sum(p.stat().st_size for p in files) if values.get("checksums") else 0
    detail = "every chunk checked" if values.get("checksums") else "headers, shapes, flags (--checksums: every chunk)"
    return Plan("verify", store.parent, 0, details=[f"{count(len(files), 'part')}: {detail}"], read_bytes=read,
                source=store)  # fmt: skip


def report_plan(values: dict) -> Plan:
    run_dir = Path(values["run_dir"])
    if not run_dir.is_dir():
        raise UsageError(f"no run folder at {run_dir}")
    from interp.report.html import embedded_files

    images = embedded_files(run_dir)
    embedded = sum(p.stat().st_size for p in images) * 4 // 3  # base64 in the page
    out = Path(values["out"]) if values.get("out") else run_dir / "report.html"
    return Plan("report", out, 0, disk_bytes=embedded + 2**20, memory_bytes=2 * embedded,
                details=[f"{count(len(images), 'figure')} embedded"], read_bytes=embedded * 3 // 4,
                source=run_dir)  # fmt: skip


READERS = {"filmstrip": filmstrip_plan, "energy": energy_plan, "chain": chain_plan, "verify": verify_plan,
           "report": report_plan}  # fmt: skip
