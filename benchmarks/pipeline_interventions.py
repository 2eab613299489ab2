"""The study's interventions on a tiny two-expert Wan 2.2 image-to-video pipeline with UniPC (the
scheduler released Wan pipelines ship): noise at step, CKA information flow and the seed ensemble,
run through the CLI as a user would. Writes a table and ``results/pipeline_interventions.json``.

What to read: noise at step s replaces x_s by fresh noise, so the final output should be far from
the clean one at early steps (similarity near the two seeds' level); flow at strength 1 replaces x_s,
so CKA one step later should be low; a 2-seed merge at k=1 makes the seeds one trajectory, so the
merged output is *not* seed 0's (similarity well below 1).

    python benchmarks/pipeline_interventions.py [--label before|after]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def interp(*args) -> None:
    cmd = [str(Path(sys.executable).parent / "interp"), *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{args[0]} failed:\n{done.stderr[-2000:]}")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="run")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    from tiny_pipelines import build_tiny_wan, write_samples

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_wan(root / "wan", image_to_video=True, two_experts=True, unipc=True)
        data = write_samples(root / "data", n=2)
        last = args.steps - 1
        pipe = ["--model", model, "--data", data, "--height", 32, "--width", 32, "--num-frames", 5,
                "--num-steps", args.steps, "--samples", "sample_000"]  # fmt: skip
        interp("perturb", *pipe, "--steps", f"0-{last}", "--frames-to-noise", "1", "--out", root / "noise")
        noise = json.loads((root / "noise" / "result.json").read_text())
        interp("flow", *pipe, "--inject-steps", f"0-{last - 1}", "--strength", 1.0, "--out", root / "flow")
        flow = json.loads((root / "flow" / "result.json").read_text())
        interp("ensemble", *pipe, "--seeds", 2, "--k", 1, "--merge", "mean", "--out", root / "ensemble")
        ensemble = json.loads((root / "ensemble" / "ensemble.json").read_text())["rows"]
    at_step = {int(k): v["similarity"] for k, v in noise["at_step"].items()}
    # block CKA one step after each injection, mean over layers (the recovery the issue measured)
    cka, coords = flow["cka"], flow["coords"]
    after = {}
    for i, s in enumerate(coords["inject_step"]):
        row = cka[i][s + 1] if s + 1 < len(cka[i]) else None
        vals = [v for v in (row or []) if v is not None]
        after[int(s)] = sum(vals) / len(vals) if vals else None
    merged = {r["variant"]: r["similarity_to_seed0"] for r in ensemble}
    result = {"label": args.label, "steps": args.steps, "noise_at_step_similarity": at_step,
              "flow_block_cka_one_step_after": after, "ensemble_similarity_to_seed0": merged}  # fmt: skip
    print(f"{'step':>5} {'noise at step: similarity':>26} {'flow CKA at s+1':>16}")
    for s in sorted(at_step):
        cka_next = after.get(s)
        print(f"{s:>5} {at_step[s]:>26.3f} {'' if cka_next is None else f'{cka_next:.3f}':>16}")
    for name, sim in merged.items():
        print(f"ensemble {name}: similarity to seed 0 {sim:.4f}")
    from _record import save_record

    save_record(result, HERE / "results" / f"pipeline_interventions_{args.label}.json", torch_threads())


if __name__ == "__main__":
    main()
