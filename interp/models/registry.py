"""The adapter registry: which adapter serves which diffusers pipeline class, and how models load.

An adapter registers itself where it is defined::

    @register("WanPipeline", "WanImageToVideoPipeline")
    class WanAdapter(VideoDiTAdapter): ...

so adding a family is one file in ``interp/models/`` (every module there is imported on the first
lookup). A pipeline class diffusers does not know (a user's own subclass) is registered with
``pipeline_class=`` and loaded through it. Named testbeds (``testbed``, ``testbed-mixed``) and folders
of testbed weights load through ``interp.models.testbed``.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from dataclasses import dataclass
from pathlib import Path

from interp.models.base import PipelineSpec, VideoDiTAdapter


@dataclass(frozen=True)
class Family:
    adapter: type[VideoDiTAdapter]
    pipeline_class: type | None = None  # None: diffusers resolves the class from model_index.json


_FAMILIES: dict[str, Family] = {}
_DISCOVERED = False


def register(*pipeline_names: str, pipeline_class: type | None = None):
    """Class decorator: ``adapter`` serves pipelines whose ``model_index.json`` names one of these classes."""
    if not pipeline_names:
        raise ValueError("register at least one pipeline class name")

    def decorate(adapter: type[VideoDiTAdapter]) -> type[VideoDiTAdapter]:
        for name in pipeline_names:
            _FAMILIES[name] = Family(adapter, pipeline_class)
        return adapter

    return decorate


def unregister(*pipeline_names: str) -> None:
    for name in pipeline_names:
        _FAMILIES.pop(name, None)


def _discover() -> None:
    """Import every module of ``interp.models`` once, so each adapter has registered itself."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    import interp.models as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("base", "registry"):
            importlib.import_module(f"interp.models.{info.name}")
    _DISCOVERED = True


def supported_pipelines() -> list[str]:
    _discover()
    return sorted(_FAMILIES)


def family(pipeline_name: str) -> Family:
    _discover()
    if pipeline_name not in _FAMILIES:
        raise ValueError(f"{pipeline_name} has no adapter yet (supported: {', '.join(supported_pipelines())})")
    return _FAMILIES[pipeline_name]


def is_pipeline_folder(model: str | Path) -> bool:
    return Path(model, "model_index.json").is_file()


def pipeline_class_name(folder: str | Path) -> str:
    index = Path(folder, "model_index.json")
    if not index.is_file():
        raise ValueError(f"--model {folder}: not a diffusers pipeline folder (no model_index.json)")
    return str(json.loads(index.read_text()).get("_class_name"))


def load_pipeline_adapter(
    folder: str | Path, spec: PipelineSpec | None = None, torch_dtype: str = "float32", device: str = "cpu"
) -> VideoDiTAdapter:
    """The adapter of a local pipeline folder, chosen by the pipeline class in its model_index.json."""
    import torch
    from diffusers import DiffusionPipeline

    entry = family(pipeline_class_name(folder))
    dtype = getattr(torch, torch_dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"torch_dtype must name a torch dtype (float32, bfloat16, float16), got {torch_dtype!r}")
    loader = entry.pipeline_class or DiffusionPipeline
    pipe = loader.from_pretrained(Path(folder), dtype=dtype, local_files_only=True).to(device)
    return entry.adapter.from_pipeline(pipe, spec or PipelineSpec())


def load_model(model: str | Path, spec: PipelineSpec | None = None, torch_dtype: str = "float32", device: str = "cpu"):
    """Any model by name or path: a named testbed, a folder of testbed weights, or a pipeline folder."""
    from interp.models import testbed

    if is_pipeline_folder(model):
        return load_pipeline_adapter(model, spec, torch_dtype, device)
    return testbed.load_named(str(model))
