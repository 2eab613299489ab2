"""The adapter registry: which adapter serves which diffusers pipeline class, and how models load.

An adapter registers itself where it is defined::

    @register("WanPipeline", "WanImageToVideoPipeline")
    class WanAdapter(VideoDiTAdapter): ...

so adding a family is one file in ``interp/models/`` (every module there is imported on the first
lookup). A pipeline class diffusers does not know (a user's own subclass) is registered with
``pipeline_class=`` and loaded through it. A family whose folder holds one model and no pipeline (the
testbed: ``config.json`` of a ``WanTransformer3DModel``, its safetensors and ``sampling.json``) registers
that model class with ``register_model_folder``, with its own loader and skeleton and the names it ships
under (``testbed``, ``testbed-mixed``). Every model, whatever its family, is found by ``resolve`` and
loaded by ``load_model``: weights, or a skeleton built from the configs alone for a plan.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from interp.models.base import VideoDiTAdapter


@dataclass(frozen=True)
class Family:
    adapter: type[VideoDiTAdapter]
    pipeline_class: type | None = None  # None: diffusers resolves the class from model_index.json
    # A one-model folder's family loads through its own functions: (folder, spec, torch_dtype, device) and
    # (folder, spec, torch_dtype) to an adapter; a pipeline family through diffusers' pipeline loader.
    load: Callable[..., VideoDiTAdapter] | None = None
    skeleton: Callable[..., VideoDiTAdapter] | None = None


_FAMILIES: dict[str, Family] = {}  # pipeline class name (model_index.json) -> family
_MODEL_FOLDERS: dict[str, Family] = {}  # model class name (config.json of a folder without a pipeline) -> family
_NAMED: dict[str, tuple[Family, Path]] = {}  # a shipped model's name -> its family and folder
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


def register_model_folder(
    class_name: str, load: Callable[..., VideoDiTAdapter], skeleton: Callable[..., VideoDiTAdapter],
    names: dict[str, Path] | None = None,
):  # fmt: skip
    """Class decorator: ``adapter`` serves folders of one model whose ``config.json`` names ``class_name``
    (no ``model_index.json``), loaded by ``load`` and planned from ``skeleton``; ``names``: the models it
    ships, by the name every command takes (``--model testbed``)."""

    def decorate(adapter: type[VideoDiTAdapter]) -> type[VideoDiTAdapter]:
        entry = Family(adapter, load=load, skeleton=skeleton)
        _MODEL_FOLDERS[class_name] = entry
        _NAMED.update({name: (entry, Path(folder)) for name, folder in (names or {}).items()})
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
        if info.name not in ("base", "registry", "loading", "config_checks"):
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


def resolve(model: str | Path) -> tuple[Family, Path]:
    """The family and folder of a model given by name or path, from its JSON files alone: a shipped model's
    name, a diffusers pipeline folder (``model_index.json``) or a registered one-model folder."""
    _discover()
    if str(model) in _NAMED:
        return _NAMED[str(model)]
    folder = Path(model)
    if is_pipeline_folder(folder):
        return family(pipeline_class_name(folder)), folder
    config = folder / "config.json"
    if config.is_file():
        from interp.models.config_checks import read_config

        name = read_config(config).get("_class_name")
        if name in _MODEL_FOLDERS:
            return _MODEL_FOLDERS[name], folder
        raise ValueError(f"--model {folder}: its config.json names {name!r}, which no family serves (folders of one "
                         f"model: {', '.join(sorted(_MODEL_FOLDERS))}; or a diffusers pipeline folder)")  # fmt: skip
    raise ValueError(
        f"model {str(model)!r}: not a shipped testbed ({', '.join(_NAMED)}), a folder of testbed weights "
        "or a diffusers pipeline folder"
    )


def model_task(model: str | Path) -> str | None:
    """The task a model is made for (``"maze"``: it takes task instances and has a verifier), None for a
    pipeline that takes prompts: a capability read from the family, nothing loaded."""
    return resolve(model)[0].adapter.task


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
