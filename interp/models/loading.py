"""Loading a model through its family: the weights, or a skeleton a plan reads before any weight is.

``load_model`` takes any model by name or path (``registry.resolve``). A pipeline folder loads through
diffusers' pipeline loader; a registered one-model folder (the testbed) through its family's functions.

A plan (``interp.plans``) needs the layout of a run before any weight is read: the number of blocks, the
site names and widths, the token grid, the latent shape and the scheduler's steps. All of it follows from
the ``config.json`` files of the folder. For a pipeline, ``pipeline_skeleton`` builds every diffusers model
of the folder with ``from_config`` under ``torch.device("meta")`` (shapes, no storage), the scheduler from
its config, and leaves out the text encoders, tokenizers and image processors (needed only to encode
prompts). The adapter answers every layout question exactly as the loaded one does (tested for each
registered family), and cannot run: its parameters have no data.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch

from interp.models.base import PipelineSpec, VideoDiTAdapter
from interp.models.registry import family, pipeline_class_name, resolve
from interp.validation import UsageError


def load_model(
    model: str | Path, spec: PipelineSpec | None = None, torch_dtype: str = "float32", device: str = "cpu",
    skeleton: bool = False,
) -> VideoDiTAdapter:  # fmt: skip
    """Any model by name or path, through its family (``resolve``). ``skeleton``: the adapter built from the
    folder's configs on the meta device (what a plan reads: layout, sizes, steps; it cannot run), the
    weights loaded later by a second call, as nnsight plans on a meta model and dispatches."""
    entry, folder = resolve(model)
    torch_dtype_of(torch_dtype)  # any family: a bad name is one line, before anything is built
    if skeleton:
        if entry.skeleton is not None:
            return entry.skeleton(folder, spec, torch_dtype)
        return pipeline_skeleton(folder, spec)
    if entry.load is not None:
        return entry.load(folder, spec, torch_dtype, device)
    return load_pipeline_adapter(folder, spec, torch_dtype, device)


def torch_dtype_of(name) -> torch.dtype:
    """The torch dtype a name says (float32, bfloat16, float16); one line for any other."""
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"torch_dtype must name a torch dtype (float32, bfloat16, float16), got {name!r}")
    return dtype


def load_pipeline_adapter(
    folder: str | Path, spec: PipelineSpec | None = None, torch_dtype: str = "float32", device: str = "cpu"
) -> VideoDiTAdapter:
    """The adapter of a local pipeline folder, chosen by the pipeline class in its model_index.json."""
    from diffusers import DiffusionPipeline

    entry = family(pipeline_class_name(folder))
    dtype = torch_dtype_of(torch_dtype)
    loader = entry.pipeline_class or DiffusionPipeline
    pipe = loader.from_pretrained(Path(folder), dtype=dtype, local_files_only=True).to(device)
    spec = (spec or PipelineSpec()).resolved(pipe)
    adapter = entry.adapter.from_pipeline(pipe, spec)
    adapter.pipeline_spec = spec
    return adapter


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
