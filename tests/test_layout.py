"""Package layout and experiment configs: the arrows of DESIGN.md, configs as data."""

import json
import subprocess
import sys
from pathlib import Path

from interp.pipeline_job import PipelineTraceConfig
from interp.trace_job import TraceConfig

ROOT = Path(__file__).resolve().parents[1]


def test_activations_and_probes_never_import_interp():
    code = (
        "import sys, activations, activations.reader, activations.writer, probes; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('interp', 'torch', 'diffusers', 'nnsight')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.replace("'", '"')) == []  # a store reads without the model stack


def test_trace_configs_round_trip_through_json():
    cfg = TraceConfig(n=7, steps="0-9,19", layers="0-7:2", subs=["attn1"], pooling="random:5:1", dtype="float32")
    assert TraceConfig.from_json(cfg.to_json()) == cfg
    from dataclasses import asdict

    pcfg = PipelineTraceConfig(model="/m", data="/d", seeds=[1, 2], negative_prompt=None)
    assert PipelineTraceConfig(**json.loads(json.dumps(asdict(pcfg)))) == pcfg
