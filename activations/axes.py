"""The one place where axis and activation-site names are defined.

Every module (sampler, store, probes, report) names tensor axes and model sites with
these strings, so that a store written on a GPU cluster reads the same on a laptop.
"""

from __future__ import annotations

import re

# Axis names, in the order a full activation tensor is laid out.
VIDEO = "video"
STEP = "step"
LAYER = "layer"
FRAME = "frame"
HEIGHT = "h"
WIDTH = "w"
HIDDEN = "hidden"
CHANNEL = "channel"

TOKEN_GRID_AXES = (FRAME, HEIGHT, WIDTH)
LATENT_AXES = (CHANNEL, FRAME, HEIGHT, WIDTH)

_SITE_RE = re.compile(r"^(?:(?P<expert>[a-z]+)\.)?blocks\.(?P<index>\d+)(?:\.(?P<sub>[a-z0-9_]+))?$")


def block_site(index: int, sub: str | None = None, expert: str | None = None) -> str:
    """Name of a block's output site, e.g. ``blocks.12``, ``blocks.12.attn1``, ``high.blocks.3``."""
    if index < 0:
        raise ValueError(f"block index must be >= 0, got {index}")
    name = f"blocks.{index}"
    if sub:
        name = f"{name}.{sub}"
    if expert:
        name = f"{expert}.{name}"
    return name


def parse_site(name: str) -> tuple[str | None, int, str | None]:
    """Split a site name into (expert, block index, sub-module); raise ValueError if malformed."""
    match = _SITE_RE.match(name)
    if match is None:
        raise ValueError(
            f"not an activation site name: {name!r} (expected e.g. 'blocks.12', 'blocks.12.attn1', 'high.blocks.12')"
        )
    return match.group("expert"), int(match.group("index")), match.group("sub")


def block_output_sites(sites: list[str]) -> dict[int, list[str]]:
    """Block-output sites (no sub-module) by layer, every expert's, in the given order."""
    by_layer: dict[int, list[str]] = {}
    for site in sites:
        _, index, sub = parse_site(site)
        if sub is None:
            by_layer.setdefault(index, []).append(site)
    return dict(sorted(by_layer.items()))
