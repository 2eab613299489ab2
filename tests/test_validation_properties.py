"""Property tests (hypothesis) of what users type: any spec string, label option or JSON config either
parses to a valid plan or raises the toolkit's one error type for bad input, ``ValueError``
(``interp.validation.UsageError`` is its subclass); never a TypeError, KeyError or a runaway."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activations.pooling import Pooling
from activations.schema import StoreLayout
from activations.selection import parse_index_spec
from interp.validation import UsageError, build, is_index_spec, parse_labels

FAST = settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPEC_CHARS = st.sampled_from(list("0123456789-:,") + ["all", " ", "x", "99999999999999999999", "-1"])
specs = st.one_of(st.text(max_size=12), st.lists(SPEC_CHARS, max_size=8).map("".join))


@FAST
@given(specs, st.integers(1, 50))
def test_any_index_spec_parses_into_range_or_raises_valueerror(spec, count):
    try:
        indices = parse_index_spec(spec, count, "step")
    except ValueError:
        return
    assert indices == sorted(set(indices)) and all(0 <= i < count for i in indices)
    assert indices or spec.strip() == ""


@FAST
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(1, 5)), min_size=1, max_size=4),
       st.integers(1, 40))  # fmt: skip
def test_range_specs_select_exactly_their_indices(parts, count):
    spec = ",".join(f"{a}-{max(a, b)}:{k}" for a, b, k in parts)
    expected = sorted({i for a, b, k in parts for i in range(a, max(a, b) + 1, k)})
    assert is_index_spec(spec)
    if expected[-1] < count:
        assert parse_index_spec(spec, count) == expected
    else:
        with pytest.raises(ValueError, match="out of range"):
            parse_index_spec(spec, count)


def test_a_huge_range_is_refused_without_building_it():
    with pytest.raises(ValueError, match="layer 8 is out of range"):
        parse_index_spec("0-99999999999999999999", 8, "layer")


poolings = st.one_of(
    st.text(max_size=14),
    st.tuples(st.sampled_from(["none", "frame", "spatial", "random", "mean", ""]),
              st.sampled_from(["", ":", ":0", ":2", ":99", ":-1", ":x", ":3:7", ":2:"])).map("".join),
)  # fmt: skip


@FAST
@given(poolings, st.tuples(st.integers(1, 6), st.integers(1, 8), st.integers(1, 8)))
def test_any_pooling_parses_and_fits_its_grid_or_raises_valueerror(text, grid):
    try:
        pooling = Pooling.parse(text)
        pooling.check(grid)
    except ValueError:
        return
    assert Pooling.from_json(pooling.to_json()) == pooling
    assert 1 <= pooling.num_tokens(grid) <= math.prod(grid)
    assert pooling.token_positions(grid).shape == (pooling.num_tokens(grid), 3)


@FAST
@given(st.lists(st.text(max_size=10), max_size=4))
def test_label_options_parse_or_raise_usageerror(items):
    try:
        labels = parse_labels(items)
    except UsageError:
        return
    assert len(labels) == len(items)


def test_a_label_name_given_twice_is_refused(tmp_path):
    import numpy as np

    np.save(tmp_path / "a.npy", np.zeros(2))
    with pytest.raises(UsageError, match="given twice"):
        parse_labels([f"y={tmp_path / 'a.npy'}", f"y={tmp_path / 'a.npy'}"])


@FAST
@given(
    sites=st.lists(st.integers(0, 40), min_size=1, max_size=5, unique=True),
    steps=st.lists(st.integers(0, 49), min_size=1, max_size=6, unique=True),
    grid=st.tuples(st.integers(1, 4), st.integers(1, 9), st.integers(1, 9)),
    n_videos=st.integers(1, 5),
    dtype=st.sampled_from(["float16", "float32"]),
    extra=st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5), st.none()), max_size=3),
)
def test_layout_round_trips_through_json(sites, steps, grid, n_videos, dtype, extra):
    from activations.axes import block_site

    names = [block_site(i) for i in sorted(sites)]
    layout = StoreLayout(
        model="m", adapter="testbed", num_steps=50, steps=sorted(steps), timesteps=[float(i) for i in range(50)],
        sigmas=[1 - i / 50 for i in range(50)], sites=names, hidden={s: 8 for s in names}, token_grid=grid,
        pooling=Pooling().to_json(), n_tokens=math.prod(grid), latent_shape=(8, *grid), n_videos=n_videos,
        video_keys=[f"v{i}" for i in range(n_videos)], dtype=dtype, extra=extra,
    )  # fmt: skip
    again = StoreLayout.from_json(layout.to_json())
    assert again == layout and again.differences(layout) == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _config_classes():
    from interp.experiments.base import experiments

    return [(kind, e.config) for kind, e in experiments().items()]


@settings(FAST, max_examples=40)
@given(data=st.data())
def test_any_json_config_loads_to_a_valid_config_or_raises_usageerror(data, tmp_path_factory):
    from dataclasses import fields

    from interp.experiments.base import load_config
    from interp.validation import check

    kind, cls = data.draw(st.sampled_from(_config_classes()))
    names = [f.name for f in fields(cls)]
    keys = st.one_of(st.sampled_from(names), st.text(max_size=6))
    body = data.draw(st.dictionaries(keys, json_values, max_size=4))
    text = json.dumps({"experiment": kind, **body}) if data.draw(st.booleans()) else json.dumps(body)
    path = tmp_path_factory.getbasetemp() / "config.json"
    path.write_text(text)
    try:
        cfg = load_config(path)
    except ValueError:
        return
    check(cfg)  # what loads is valid by every rule


@FAST
@given(data=st.data())
def test_any_field_value_builds_a_valid_config_or_raises_usageerror(data):
    from dataclasses import fields

    _, cls = data.draw(st.sampled_from(_config_classes()))
    field = data.draw(st.sampled_from([f.name for f in fields(cls)]))
    value = data.draw(json_values)
    base = {"model": "m", "data": "d"} if cls.__name__.startswith("Pipeline") else {}
    try:
        build(cls, {**base, field: value})
    except UsageError:
        pass


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"n": 2.5}, "n must be an integer"),
        ({"strength": "1"}, "strength must be a number"),
        ({"inject_steps": 3}, "inject_steps must be a string"),
        ({"num_steps": 0}, "num_steps must be an integer from 1 to 1000"),
        ({"num_steps": 100000000}, "num_steps must be an integer from 1 to 1000"),
        ({"n": 1000000000000}, "n must be an integer from 1 to 1000000"),
        ({"pipeline": [1]}, "pipeline must be an object or null"),
        ({"pipeline": "dir"}, "pipeline must be an object or null"),
        ({"pipeline": {"model": "a", "data": "b", "height": "480"}}, "height must be an integer"),  # read as fields
        ({"layers": None}, "layers must be a string"),
        ({"strength": float("nan")}, "no NaN or Inf"),
        ({"stregth": 1.0}, "unknown field 'stregth'"),
    ],
)
def test_flow_config_errors_name_the_field_and_what_is_allowed(fields, message):
    from interp.experiments.flow import FlowConfig

    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        FlowConfig.from_dict(fields)
