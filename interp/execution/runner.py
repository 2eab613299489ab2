"""The one call runner: a transformer call with save / replace functions at named sites.

Every activation-level operation (tracing into a store, recording a run, patching) is a set of
``SiteAction``s per call, run through either backend: nnsight (``NNsight(transformer).trace``) or
plain torch forward hooks. Sites are addressed by their one name (``activations.axes``) and
resolved to modules by the adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from activations.axes import parse_site
from interp.models.base import SUB_MODULES, ForwardCall, VideoDiTAdapter, first_tensor

BACKENDS = ("nnsight", "hooks")


@dataclass(frozen=True)
class SiteAction:
    """At one site of one call: ``replace`` maps the output (first tensor, every batch row) to a new
    one; ``save`` sees the value that flows on (after any replacement)."""

    save: Callable[[torch.Tensor], None] | None = None
    replace: Callable[[torch.Tensor], torch.Tensor] | None = None


_CACHE_HOOKS = ("fbc_", "mag_cache", "faster_cache", "pyramid_attention_broadcast", "taylorseer", "seacache")


def block_caches(transformer: torch.nn.Module) -> list[str]:
    """Names of diffusers block-cache hooks on a transformer or its modules (they skip blocks and
    reuse old outputs, so a site would show a stale activation)."""
    found = []
    config = getattr(transformer, "_cache_config", None)  # CacheMixin.enable_cache
    if config is not None:
        found.append(type(config).__name__)
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        for name in getattr(registry, "hooks", {}) if registry is not None else ():
            if name.startswith(_CACHE_HOOKS) and name not in found:
                found.append(name)
    return found


def execution_order(site: str) -> tuple[int, int]:
    """Sort key of sites in the order a block runs them (nnsight requires that order)."""
    _, index, sub = parse_site(site)
    return (index, SUB_MODULES.index(sub) if sub in SUB_MODULES else len(SUB_MODULES))


def replace_first(output, new: torch.Tensor):
    """A module output with its first tensor replaced (tensors, or tuples as CogVideoX blocks return)."""
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple):
        return (new, *output[1:])
    raise TypeError(f"cannot replace a module output of type {type(output).__name__}")


def _apply_rows(actions: Sequence[SiteAction], value: torch.Tensor, rows: slice | None) -> torch.Tensor:
    """``_apply`` on the video rows ``rows`` of a site's output (None: every row); the other rows (a
    joint stream's text) flow on untouched."""
    if rows is None or (rows.start == 0 and rows.stop == value.shape[1]):
        return _apply(actions, value)
    view = value[:, rows]
    new = _apply(actions, view)
    if new is view:
        return value
    out = value.clone()
    out[:, rows] = new
    return out


def _apply(actions: Sequence[SiteAction], value: torch.Tensor) -> torch.Tensor:
    for action in actions:
        if action.replace is not None:
            value = action.replace(value)
    for action in actions:
        if action.save is not None:
            action.save(value)
    return value


class CallRunner:
    """Runs ``ForwardCall``s with site actions through one backend."""

    def __init__(self, adapter: VideoDiTAdapter, backend: str = "hooks"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.adapter = adapter
        self.backend = backend
        self._wrapped: dict[int, object] = {}
        self._paths: dict[str, tuple[str | None, str]] = {}
        self._checked: set[int] = set()
        self._n_video: int | None = None

    def site_path(self, site: str) -> tuple[str | None, str]:
        if site not in self._paths:
            self._paths[site] = self.adapter.site_path(site)  # validates the name against the model
        return self._paths[site]

    def check_sites(self, sites: Sequence[str]) -> None:
        for site in sites:
            self.site_path(site)

    def run(
        self, call: ForwardCall, actions: Mapping[str, Sequence[SiteAction]], n_video: int | None = None
    ) -> torch.Tensor:
        """The call's output, with ``actions`` applied at their sites (all must belong to the call's
        expert). ``n_video``: the call's video tokens; the actions then see only a site's video rows
        (``VideoDiTAdapter.video_rows``), so a joint stream's text rows are never saved or replaced."""
        if not actions:
            return call.run()
        if id(call.transformer) not in self._checked:
            caches = block_caches(call.transformer)
            if caches:
                raise ValueError(
                    f"a block cache is active on the transformer ({', '.join(caches)}): it skips blocks and leaves "
                    "stale activations; disable it (transformer.disable_cache()) before tracing or patching"
                )
            self._checked.add(id(call.transformer))
        entries = []
        for site in sorted(actions, key=execution_order):
            expert, path = self.site_path(site)
            if expert != call.expert:
                raise ValueError(f"site {site!r} is not in the transformer of this call (expert {call.expert!r})")
            entries.append((site, path, actions[site]))
        self._n_video = n_video
        if self.backend == "hooks":
            return self._run_hooks(call, entries)
        return self._run_nnsight(call, entries)

    def _rows(self, site: str, value: torch.Tensor) -> slice | None:
        if self._n_video is None:
            return None
        return self.adapter.video_rows(site, value.shape[1], self._n_video)

    def _run_hooks(self, call: ForwardCall, entries) -> torch.Tensor:
        handles = []
        for site, _, acts in entries:

            def hook(_module, _inputs, output, acts=acts, site=site):
                value = first_tensor(output)
                new = _apply_rows(acts, value, self._rows(site, value))
                return None if new is value else replace_first(output, new)

            handles.append(self.adapter.site_module(site).register_forward_hook(hook))
        try:
            return call.run()
        finally:
            for handle in handles:
                handle.remove()

    def _nnsight(self, module: torch.nn.Module):
        from nnsight import NNsight

        key = id(module)
        if key not in self._wrapped:
            self._wrapped[key] = NNsight(module)
        return self._wrapped[key]

    def _run_nnsight(self, call: ForwardCall, entries) -> torch.Tensor:
        model = self._nnsight(call.transformer)
        with model.trace(*call.args, **call.kwargs):
            for site, path, acts in entries:
                envoy = model
                for part in path.split("."):
                    envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
                output = envoy.output
                value = first_tensor(output)
                new = _apply_rows(acts, value, self._rows(site, value))
                if new is not value:
                    envoy.output = replace_first(output, new)
            result = model.output.save()
        return first_tensor(result)
