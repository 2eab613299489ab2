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
import os
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


# Libraries a model_index.json may name without the user's opt-in: any other is a module that importing
# would run (a .py shipped beside the weights, or whatever else that name finds on sys.path).
TRUSTED_LIBRARIES = ("diffusers", "transformers")
TRUST_ENV = "INTERP_TRUST_REMOTE_CODE"


def pipeline_class_name(folder: str | Path) -> str:
    """The pipeline class a folder's model_index.json names, after checking that every component comes
    from diffusers or transformers (``check_component_libraries``)."""
    index = Path(folder, "model_index.json")
    if not index.is_file():
        raise ValueError(f"--model {folder}: not a diffusers pipeline folder (no model_index.json)")
    from interp.models.config_checks import check_pipeline_folder, read_config

    data = read_config(index)
    check_component_libraries(folder, data)
    check_pipeline_folder(Path(folder), data)
    return str(data.get("_class_name"))


def check_component_libraries(folder: str | Path, index: dict) -> None:
    """Refuse, before anything is imported, a component whose library is not diffusers or transformers:
    loading it would import and run that module. A user who trusts the folder opts in with
    ``INTERP_TRUST_REMOTE_CODE=1`` (as diffusers' ``trust_remote_code``)."""
    if os.environ.get(TRUST_ENV, "") == "1":
        return
    for key, value in index.items():
        if key.startswith("_") or not (isinstance(value, list) and len(value) == 2):
            continue
        library = value[0]
        if library is not None and library not in TRUSTED_LIBRARIES:
            raise ValueError(
                f"--model {folder}: model_index.json loads {key!r} from the module {library!r}, which would run "
                f"its code; the toolkit loads diffusers and transformers components only (set {TRUST_ENV}=1 to "
                "allow it, if you trust the folder)"
            )


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
    spec = (spec or PipelineSpec()).resolved(pipe)
    adapter = entry.adapter.from_pipeline(pipe, spec)
    adapter.pipeline_spec = spec
    return adapter


def load_model(model: str | Path, spec: PipelineSpec | None = None, torch_dtype: str = "float32", device: str = "cpu"):
    """Any model by name or path: a named testbed, a folder of testbed weights, or a pipeline folder."""
    from interp.models import testbed

    if is_pipeline_folder(model):
        return load_pipeline_adapter(model, spec, torch_dtype, device)
    return testbed.load_named(str(model))
