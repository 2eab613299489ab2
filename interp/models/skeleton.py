"""A pipeline's adapter built from its folder's configs alone, on the meta device: what a plan needs.

A plan (``interp.plans``) needs the layout of a trace before any weight is read: the number of blocks, the
site names and widths, the token grid, the latent shape and the scheduler's steps. All of it follows from
the ``config.json`` files of the pipeline folder. Here every diffusers model of the folder is built with
``from_config`` under ``torch.device("meta")`` (shapes, no storage), the scheduler from its config, and
the text encoders, tokenizers and image processors (needed only to encode prompts) are left out. The
adapter answers every layout question exactly as the loaded one does (tested for each registered family),
and cannot run: its parameters have no data.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch

from interp.models.base import PipelineSpec, VideoDiTAdapter
from interp.models.registry import family, pipeline_class_name
from interp.validation import UsageError


def pipeline_skeleton(folder: str | Path, spec: PipelineSpec | None = None) -> VideoDiTAdapter:
    """The adapter of the pipeline folder with meta-device models; reads only its JSON configs."""
    import diffusers
    from diffusers import ModelMixin
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

    folder = Path(folder)
    name = pipeline_class_name(folder)
    entry = family(name)
    index = json.loads((folder / "model_index.json").read_text())
    components: dict[str, object] = {}
    options: dict[str, object] = {}
    for key, value in index.items():
        if key.startswith("_"):
            continue
        if not (isinstance(value, list) and len(value) == 2):
            options[key] = value  # a pipeline option (e.g. Wan 2.2's boundary_ratio, expand_timesteps)
            continue
        cls = _component_class(*value)
        if isinstance(cls, type) and issubclass(cls, ModelMixin):
            with torch.device("meta"):
                components[key] = cls.from_config(_config(cls, folder / key))
            components[key].register_to_config(_name_or_path=str(folder / key))  # as from_pretrained records it
        elif isinstance(cls, type) and issubclass(cls, SchedulerMixin):
            components[key] = cls.from_config(_config(cls, folder / key))
        else:
            components[key] = None  # encoders, tokenizers, processors: not part of the layout
    pipeline_class = entry.pipeline_class or getattr(diffusers, name)
    accepted = inspect.signature(pipeline_class.__init__).parameters  # as diffusers, ignore what it does not take
    pipe = pipeline_class(**{k: v for k, v in {**components, **options}.items() if k in accepted})
    spec = (spec or PipelineSpec()).resolved(pipe)
    adapter = entry.adapter.from_pipeline(pipe, spec)
    adapter.pipeline_spec = spec
    adapter.is_skeleton = True
    return adapter


def _config(cls, folder: Path) -> dict:
    try:
        return cls.load_config(folder)
    except (OSError, ValueError) as err:  # diffusers raises EnvironmentError for a missing or broken config.json
        raise UsageError(f"{folder}: no readable config.json for its {cls.__name__} ({err})") from None


def _component_class(library: str | None, class_name: str | None) -> type | None:
    """The class of a model_index entry: diffusers', or a user's own module's (as diffusers imports it);
    None for transformers' encoders and tokenizers and anything that cannot be imported (not needed here)."""
    import importlib

    if library is None or class_name is None or library == "transformers":
        return None
    try:
        module = importlib.import_module("diffusers" if library == "diffusers" else library)
    except ImportError:
        return None
    return getattr(module, class_name, None)
