"""Layer specialisation: per-layer profiles (probe selectivity, CKA to the final sample, patching
effect) and whether early / middle / late layers take different roles.

A profile is one number per layer with a 95% interval. It *localises* in a third of the layers
(early / middle / late) when its peak's lower bound lies above the upper bound of every layer in
the other two thirds. Roles separate when two profiles localise in different thirds. Model-free:
numbers in, a verdict out (``interp.analysis.claims``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from interp.analysis.claims import CANNOT_TELL, NOT_SHOWN, SHOWS, claim

THIRDS = ("early", "middle", "late")
CLAIM = "layers specialise: early, middle and late layers take different roles"


@dataclass
class Profile:
    """One quantity per layer: ``values`` with 95% interval ``low`` .. ``high`` (NaN: none)."""

    name: str
    layers: list[int]
    values: np.ndarray
    low: np.ndarray
    high: np.ndarray

    def record(self) -> dict:
        as_list = lambda a: [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=float)]  # noqa: E731
        return {"name": self.name, "layers": list(self.layers), "values": as_list(self.values),
                "low": as_list(self.low), "high": as_list(self.high)}  # fmt: skip


def thirds(n_layers: int) -> list[np.ndarray]:
    """Positions 0..n-1 cut into early / middle / late (as even as possible; needs 3 layers)."""
    return np.array_split(np.arange(n_layers), 3)


def third_of(position: int, n_layers: int) -> int:
    return next(i for i, part in enumerate(thirds(n_layers)) if position in part)


def localise(profile: Profile) -> tuple[str, int | None]:
    """("localised", third) when the peak's lower bound lies above the upper bound of every layer of
    the other thirds; ("flat", None) when every layer's value lies inside the peak's interval;
    ("unresolved", third of the peak) otherwise; ("empty", None) with no finite value."""
    values = np.asarray(profile.values, dtype=float)
    if not np.isfinite(values).any():
        return "empty", None
    peak = int(np.nanargmax(values))
    third = third_of(peak, len(values))
    low, high = float(np.asarray(profile.low, dtype=float)[peak]), float(np.asarray(profile.high, dtype=float)[peak])
    others = np.concatenate([p for i, p in enumerate(thirds(len(values))) if i != third])
    other_high = np.asarray(profile.high, dtype=float)[others]
    if np.isfinite(low) and np.isfinite(other_high).all() and (low > other_high).all():
        return "localised", third
    finite = values[np.isfinite(values)]
    if np.isfinite(low) and np.isfinite(high) and low <= finite.min() and finite.max() <= high:
        return "flat", None
    return "unresolved", third


def _describe(profile: Profile, state: str, third: int | None) -> str:
    if state == "empty":
        return f"{profile.name}: no value"
    if state == "flat":
        return f"{profile.name}: flat (every layer inside the peak's interval)"
    layer = profile.layers[int(np.nanargmax(np.asarray(profile.values, dtype=float)))]
    if state == "localised":
        return f"{profile.name} peaks at layer {layer} ({THIRDS[third]})"
    return f"{profile.name} highest at layer {layer} ({THIRDS[third]}, within the intervals of other thirds)"


def roles_claim(profiles: list[Profile]) -> dict:
    """The layer-specialisation verdict: roles separate when two profiles localise in different
    thirds; they do not when every profile is flat or localises in one and the same third."""
    states = [(p, *localise(p)) for p in profiles]
    measurement = "; ".join(_describe(p, state, third) for p, state, third in states)
    control = "each profile's 95% interval: a peak counts only above every layer of the other thirds"
    n_layers = {len(p.values) for p in profiles}
    if len(n_layers) != 1 or min(n_layers) < 3 or len(profiles) < 2:
        return claim(CLAIM, measurement, control, CANNOT_TELL, "fewer than three layers or two profiles")
    localised = {third for _, state, third in states if state == "localised"}
    if len(localised) >= 2:
        names = ", ".join(f"{p.name} {THIRDS[t]}" for p, state, t in states if state == "localised")
        return claim(CLAIM, measurement, control, SHOWS, f"profiles localise in different thirds ({names})")
    if all(state in ("flat", "localised") for _, state, _ in states):
        where = f"or localises in the {THIRDS[next(iter(localised))]} layers" if localised else "over layers"
        return claim(CLAIM, measurement, control, NOT_SHOWN, f"every profile is flat {where}")
    return claim(CLAIM, measurement, control, CANNOT_TELL,
                 "some profiles vary over layers but their intervals do not place the peak in one third")


def roles_sentence(verdict: dict) -> str:
    """The claim as one sentence for the headline."""
    return f"layer roles: {verdict['verdict']} ({verdict['why']}): {verdict['measurement']}"


def probe_profiles(table, layers: list[int], sites: list[str]) -> list[Profile]:
    """Per probe target, each layer's best selectivity over the probed steps at its block-output
    ``sites[i]``, with that cell's interval."""
    profiles = []
    for target in dict.fromkeys(table["target"]):
        rows = table[table["target"] == target]
        values, low, high = (np.full(len(layers), np.nan) for _ in range(3))
        for i, site in enumerate(sites):
            at = rows[rows["site"] == site]
            if len(at) and at["selectivity"].notna().any():
                best = at.loc[at["selectivity"].idxmax()]
                values[i], low[i], high[i] = best["selectivity"], best.get("selectivity_lo"), best.get("selectivity_hi")
        profiles.append(Profile(f"{target} selectivity", list(layers), values, low, high))
    return profiles


def bootstrap_profile(name: str, layers: list[int], per_unit: np.ndarray, seed: int = 0) -> Profile:
    """A profile from (units, layers) values (videos or pairs): their mean, 95% bootstrap over units."""
    import warnings

    from interp.analysis.bootstrap import pair_intervals

    per_unit = np.asarray(per_unit, dtype=float)
    low, high = pair_intervals(per_unit, seed=seed)
    with warnings.catch_warnings():  # a layer no unit has a value for stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        values = np.nanmean(per_unit, axis=0) if len(per_unit) else np.full(len(layers), np.nan)
    return Profile(name, list(layers), values, low, high)
