"""The bad-input matrix: every command run as a subprocess on bad or hostile input, each outcome classified.

    .venv/bin/python benchmarks/bad_inputs.py [--jobs 2] [--timeout 120] [--only SUBSTRING]

Classes: ``clear`` (exit 2 and one ``interp: error:`` line on stderr; for ``verify`` on a damaged store,
exit 1 and its report), ``caught`` (exit 1 with the one-line "rerun with --debug" hint: validation missed
it, but no traceback), ``traceback``, ``silent`` (exit 0 on bad input), ``runaway`` (killed at the
timeout), ``other`` (any other exit, e.g. a signal), ``allowed`` (exit 0 where that is right: root writing below
a chmod 0500 folder). Goal: 0 tracebacks, 0 silent. Each ``interp``
start is 3-5 s of imports (more on a loaded machine). Writes ``benchmarks/results/bad_inputs.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported (children inherit it)
os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
INTERP = str(ROOT / ".venv" / "bin" / "interp")


def make_fixtures(root: Path) -> dict[str, Path]:
    """A small good store and its damaged copies, config and label files, and awkward paths."""
    import h5py
    import numpy as np

    from activations.schema import parts_dir
    from interp.experiments.trace import TraceConfig, run_trace

    good = run_trace(TraceConfig(n=4, batch_size=2, layers="0-1", num_steps=4), root / "good.h5", progress=False)
    f = {"good": good}

    def copy(name: str) -> Path:
        dst = root / f"{name}.h5"
        shutil.copy(good, dst)
        shutil.copytree(parts_dir(good), parts_dir(dst))
        return dst

    parts = sorted(parts_dir(good).glob("part_*.h5"))
    f["truncated"] = copy("truncated")
    part = parts_dir(f["truncated"]) / parts[0].name
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    f["garbage"] = copy("garbage")
    part = parts_dir(f["garbage"]) / parts[0].name
    data = bytearray(part.read_bytes())
    # random bytes inside the first chunk of every data dataset (what each reader below reads), size
    # unchanged; bytes at the middle of the file alone can miss every chunk a case reads
    with h5py.File(part, "r") as h:
        chunks = [h[n].id.get_chunk_info(0) for n in ("sites/blocks.0", "x0_hat", "x_t", "condition", "final")]
    for c in chunks:
        data[c.byte_offset + 16 : c.byte_offset + min(c.size, 4096)] = os.urandom(min(c.size, 4096) - 16)
    part.write_bytes(bytes(data))
    f["no_part"] = copy("no_part")
    (parts_dir(f["no_part"]) / parts[0].name).unlink()
    f["no_parts_dir"] = copy("no_parts_dir")
    shutil.rmtree(parts_dir(f["no_parts_dir"]))
    moved = copy("to_move")
    f["moved"] = root / "moved.h5"
    moved.rename(f["moved"])
    parts_dir(moved).rename(parts_dir(f["moved"]))
    f["no_complete"] = copy("no_complete")
    with h5py.File(f["no_complete"], "a") as h:
        if "videos/complete" in h:
            del h["videos/complete"]
    f["junk"] = root / "junk.h5"
    f["junk"].write_bytes(os.urandom(4096))
    f["empty"] = root / "empty.h5"
    f["empty"].write_bytes(b"")
    f["foreign"] = root / "foreign.h5"
    with h5py.File(f["foreign"], "w") as h:
        h["x"] = np.zeros(3)
    f["dir"] = root / "a_folder.h5"
    f["dir"].mkdir()
    f["file"] = root / "regular_file"
    f["file"].write_text("x")
    f["ro"] = root / "readonly"
    f["ro"].mkdir()
    f["ro"].chmod(0o500)  # stops non-root; root is covered by the under-a-file cases
    labels = {
        "inf": np.full((4, 64), np.inf), "shape": np.zeros((3, 7)), "strings": np.array(["a", "b"]),
        "ok": np.zeros((4, 64)),
    }  # fmt: skip
    for name, array in labels.items():
        np.save(root / f"labels_{name}.npy", array)
    np.save(root / "labels_pickle.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (root / "labels.txt").write_text("1 2 3")
    configs = {
        "unknown": {"experiment": "patch", "stpes": "0"},
        "list": [1, 2],
        "string": "patch",
        "null_steps": {"experiment": "patch", "steps": None},
        "pipeline_str": {"experiment": "patch", "pipeline": "folder"},
        "pipeline_list": {"experiment": "flow", "pipeline": [1]},
        "float_n": {"experiment": "patch", "n": 2.5},
        "str_strength": {"experiment": "flow", "strength": "strong"},
        "int_steps": {"experiment": "swap", "steps": 3},
        "zero_steps": {"experiment": "perturb", "num_steps": 0},
        "nan_temp": {"experiment": "ensemble", "temperatures": [float("nan")]},
        "other_kind": {"experiment": "nothing"},
        "huge_n": {"experiment": "ensemble", "n": 10**12},
        "bool_n": {"experiment": "patch", "n": True},
        "nested_bad": {"experiment": "patch", "pipeline": {"model": "m", "data": "d", "height": "480"}},
    }
    for name, body in configs.items():
        (root / f"cfg_{name}.json").write_text(json.dumps(body))
    (root / "cfg_notjson.json").write_text("{not json")
    hostile_fixtures(f, root, good)
    return f


def hostile_fixtures(f: dict[str, Path], root: Path, good: Path) -> None:
    """Issue 28's families: mixed stores, NaN data, damaged samples, scorers that do not answer, a model
    folder whose files lie (sampling.json, config.json) or name a module to import, a crafted run folder."""
    import h5py
    import numpy as np
    import torch

    from activations.consolidate import consolidate_store
    from activations.schema import parts_dir
    from interp.experiments.trace import TraceConfig, run_trace
    from interp.models import testbed

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_pipelines import build_tiny_wan, write_samples

    other = run_trace(TraceConfig(n=4, batch_size=2, layers="0-1", num_steps=4, first_seed=100), root / "other.h5",
                      progress=False)  # fmt: skip
    f["mixed"] = root / "mixed.h5"
    shutil.copy(good, f["mixed"])
    shutil.copytree(parts_dir(other), parts_dir(f["mixed"]))
    f["nan_x0"] = consolidate_store(good, root / "nan_x0.h5")
    with h5py.File(f["nan_x0"], "a") as h:
        h["x0_hat"][1] = np.nan
    (root / "hostile_scorers.py").write_text(
        "import sys\ndef exits(frames):\n    sys.exit(0)\ndef nan(frames):\n    return float('nan')\n"
        "def text(frames):\n    return 'good'\n"
    )
    sys.path.insert(0, str(root))  # forked cases import the scorers from here
    f["wan"] = build_tiny_wan(root / "wan")
    f["samples_fifo"] = write_samples(root / "samples_fifo", n=2)
    (f["samples_fifo"] / "sample_001" / "prompt.txt").unlink()
    os.mkfifo(f["samples_fifo"] / "sample_001" / "prompt.txt")
    f["samples_good"] = write_samples(root / "samples_good", n=1)
    f["samples_missing"] = write_samples(root / "samples_missing", n=2)
    (f["samples_missing"] / "sample_001" / "prompt.txt").unlink()
    f["evil"] = build_tiny_wan(root / "evil")
    (f["evil"] / "evil_component.py").write_text(f"open({str(root / 'evil_ran')!r}, 'w')\nclass Evil: pass\n")
    index = json.loads((f["evil"] / "model_index.json").read_text())
    (f["evil"] / "model_index.json").write_text(json.dumps({**index, "transformer": ["evil_component", "Evil"]}))
    torch.manual_seed(0)
    tiny = {"num_layers": 2, "ffn_dim": 32, "num_attention_heads": 2, "attention_head_dim": 8}
    for name, sampling, config in [("shift_neg", {"shift": -2}, {}), ("layers_huge", {}, {"num_layers": 10**8}),
                                   ("layers_more", {}, {"num_layers": 3})]:  # fmt: skip
        folder = root / f"testbed_{name}"
        testbed.build_transformer(tiny).eval().save_pretrained(folder, safe_serialization=True)
        (folder / "sampling.json").write_text(json.dumps(sampling))
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, **config}))
        f[f"testbed_{name}"] = folder
    run = root / "crafted_run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"kind": "x", "title": "<img src=x onerror=alert(1)>",
                                              "section": '"><script>alert(1)</script>', "config": {},
                                              "files": [{"path": "javascript:alert(1)", "role": "data"}]}))  # fmt: skip
    (run / "javascript:alert(1)").write_text("x")
    (run / "bad.run.json").write_text(json.dumps({"kind": 1}))
    f["crafted_run"] = run


def cases(f: dict[str, Path], root: Path) -> list[tuple[str, list[str], tuple[int, ...]]]:
    out = str(root / "out")
    under_file = str(f["file"] / "sub")
    c: list[tuple[str, list[str], tuple[int, ...]]] = []

    def add(name, *args, codes=(2,)):
        c.append((name, [str(a) for a in args], codes))

    # numbers
    for flag, value in [("--size", 1), ("--size", 1000), ("--frames", 0), ("--frames", 100000), ("--steps", "0"),
                        ("--steps", "abc"), ("--num-steps", 0), ("--num-steps", 100000000), ("--shift", "nan"),
                        ("--shift", "inf"), ("--shift", "-1"), ("--seed", "-1"), ("--task", "sudoku"),
                        ("--model", "/nonexistent"), ("--noise-seed", "-5")]:  # fmt: skip
        add(f"generate {flag} {value}", "generate", flag, value, "--out", out)
    for flag, value in [("-n", 0), ("-n", 1000000000000), ("--size", 1), ("--steps", 0), ("--shift", "nan"),
                        ("--frames", 1)]:  # fmt: skip
        add(f"evaluate {flag} {value}", "evaluate", flag, value, "--out", out)
    trace_bad = [("-n", 0), ("-n", 1000000000000), ("-n", 1000000), ("--num-steps", 100000000), ("--num-steps", 0),
                 ("--layers", "99"), ("--layers", "99999999999999999999"), ("--layers", "0-99999999999"),
                 ("--steps", "0-20"), ("--steps", "5-1"), ("--steps", "x"), ("--pooling", "mean"),
                 ("--pooling", "spatial:99"), ("--pooling", "spatial:0"), ("--pooling", "random:0"),
                 ("--pooling", "random:100000"), ("--dtype", "int8"), ("--backend", "pyvene"), ("--sub", "mlp"),
                 ("--batch-size", 0), ("--threads", 0), ("--threads", -1), ("--threads", 100000), ("--size", 1000),
                 ("--frames", 1000), ("--first-seed", -1), ("--task", "sudoku"), ("--data", str(root))]  # fmt: skip
    for flag, value in trace_bad:
        add(f"trace {flag} {value}", "trace", flag, value, "--out", root / "t.h5")
    add("trace --out under a file", "trace", "-n", 1, "--out", under_file + "/t.h5")
    add("trace --out a folder", "trace", "-n", 1, "--out", f["dir"])
    # chmod 0500 stops everyone but root (CI runs as root: the under-a-file cases cover it there)
    add(
        "trace --out a read-only folder",
        "trace",
        "-n",
        1,
        "--out",
        f["ro"] / "t.h5",
        codes=(0, 2) if os.geteuid() == 0 else (2,),
    )
    add(
        "trace --out %% name",
        "trace",
        "-n",
        1,
        "--steps",
        "0",
        "--layers",
        "0",
        "--num-steps",
        1,
        "--out",
        root / "a%%b" / "t.h5",
        codes=(0,),
    )  # a valid request: must succeed (and read back, see verify below)
    # stores: every reader on every damaged store
    damaged = ["truncated", "garbage", "no_part", "no_parts_dir", "no_complete", "junk", "empty", "foreign", "dir"]
    for store in damaged:
        add(f"probe {store}", "probe", f[store], "--target", "on_path", "--steps", "0", "--layers", "0", "--out", out)
        add(f"energy {store}", "energy", f[store], "--out", out)
        add(f"chain {store}", "chain", f[store], "--out", out)
        add(f"filmstrip {store}", "filmstrip", f[store], "--out", out)
        add(f"verify {store}", "verify", f[store], codes=(1, 2))
        add(f"verify --checksums {store}", "verify", "--checksums", f[store], codes=(1, 2))
    add("verify moved store", "verify", f["moved"], codes=(0,))  # moved with its parts folder: still whole
    add("probe missing store", "probe", root / "nope.h5", "--out", out)
    # probes
    good = f["good"]
    for flag, value in [("--name", "a/b"), ("--name", ".."), ("--test-fraction", "1.5"), ("--test-fraction", "0"),
                        ("--folds", 1), ("--target", "nonsense"), ("--layers", "99"), ("--steps", "99"),
                        ("--method", "magic"), ("--tol", "nan"), ("--max-iter", 0), ("--group", 0),
                        ("--max-tokens", 0), ("--threads", 0), ("--seed", -1)]:  # fmt: skip
        add(
            f"probe {flag} {value}",
            "probe",
            good,
            *([] if flag == "--target" else ["--target", "on_path"]),
            flag,
            value,
            "--out",
            out,
        )
    for name in ["inf", "shape", "strings", "pickle"]:
        add(f"probe --labels {name}", "probe", good, "--labels", f"y={root / f'labels_{name}.npy'}", "--out", out)
    add("probe --labels not npy", "probe", good, "--labels", f"y={root / 'labels.txt'}", "--out", out)
    add(
        "probe --labels twice",
        "probe",
        good,
        "--labels",
        f"y={root / 'labels_ok.npy'}",
        "--labels",
        f"y={root / 'labels_ok.npy'}",
        "--out",
        out,
    )
    add("probe --labels no =", "probe", good, "--labels", "y", "--out", out)
    add("probe --out under a file", "probe", good, "--out", under_file)
    add("probe --out a file", "probe", good, "--out", f["file"])
    # energy, chain, filmstrip on a good store
    for args in [("--video", 99), ("--video", -1), ("--step", 99), ("--step", -1)]:
        add(f"energy {' '.join(map(str, args))}", "energy", good, *args, "--out", out)
    add("energy --out under a file", "energy", good, "--out", under_file)
    for flag, value in [("--formed-share", 2), ("--formed-share", "nan"), ("--min-branches", -1),
                        ("--superposition-share", 0), ("--superposition-extra", -1), ("--threshold", 0),
                        ("--threshold", "inf"), ("--scorer", "nomodule:fn")]:  # fmt: skip
        add(f"chain {flag} {value}", "chain", good, flag, value, "--out", out)
    add("chain --out under a file", "chain", good, "--out", under_file)
    for flag, value in [("--videos", "99"), ("--steps", "99"), ("--videos", "x")]:
        add(f"filmstrip {flag} {value}", "filmstrip", good, flag, value, "--out", out)
    # causal experiments and configs
    for cmd, flag, value in [("patch", "-n", "2.5"), ("patch", "-n", 0), ("patch", "-n", 1000000000000),
                             ("patch", "--num-steps", 100000000), ("patch", "--layers", "99"),
                             ("patch", "--direction", "sideways"), ("patch", "--metric", "x"), ("patch", "--span", "x"),
                             ("patch", "--sub", "mlp"), ("patch", "--region", "frame:99"), ("patch", "--threads", 0),
                             ("patch", "--size", 1000), ("patch", "--bogus", 1), ("swap", "--other", "abc"),
                             ("swap", "--steps", "99"), ("perturb", "--frames-to-noise", "99"), ("perturb", "-n", 0),
                             ("flow", "--strength", 2), ("flow", "--strength", "nan"), ("flow", "--inject-steps", "x"),
                             ("ensemble", "--temperature", "nan"), ("ensemble", "--temperature", 0),
                             ("ensemble", "--merge", "median"), ("ensemble", "--k", -1), ("ensemble", "--size", 1),
                             ("ensemble", "-n", 1000000000000), ("early_select", "--k", 0),
                             ("exploration", "--size", 1)]:  # fmt: skip
        add(f"{cmd} {flag} {value}", cmd, flag, value, "--out", out)
    add("patch --out under a file", "patch", "-n", 1, "--out", under_file)
    for name in ["unknown", "list", "string", "null_steps", "pipeline_str", "float_n", "int_steps", "bool_n",
                 "nested_bad", "notjson", "other_kind"]:  # fmt: skip
        add(f"patch --config {name}", "patch", "--config", root / f"cfg_{name}.json", "--out", out)
    add("flow --config pipeline list", "flow", "--config", root / "cfg_pipeline_list.json", "--out", out)
    add("flow --config string strength", "flow", "--config", root / "cfg_str_strength.json", "--out", out)
    add("swap --config int steps", "swap", "--config", root / "cfg_int_steps.json", "--out", out)
    add("perturb --config num_steps 0", "perturb", "--config", root / "cfg_zero_steps.json", "--out", out)
    add("ensemble --config nan temperature", "ensemble", "--config", root / "cfg_nan_temp.json", "--out", out)
    add("ensemble --config huge n", "ensemble", "--config", root / "cfg_huge_n.json", "--out", out)
    add("patch --config a swap config", "patch", "--config", root / "cfg_int_steps.json", "--out", out)
    add("patch --config missing", "patch", "--config", root / "none.json", "--out", out)
    # report, demo, train
    add("report missing folder", "report", root / "nope")
    add("report --out a folder", "report", root, "--out", f["dir"])
    add("report on a file", "report", f["file"])
    for flag, value in [("--probe-steps", "99"), ("--probe-target", "nonsense"), ("--n-trace", 0),
                        ("--n-accuracy", 1000000000000), ("--threads", 0), ("--model", "/nonexistent")]:  # fmt: skip
        add(f"demo {flag} {value}", "demo", flag, value, "--out", out)
    add("demo --out under a file", "demo", "--out", under_file)
    for flag, value in [("--steps", 0), ("--batch-size", 0), ("--export-weights", "x"), ("--threads", 0),
                        ("--checkpoint", under_file)]:  # fmt: skip
        add(
            f"train testbed {flag} {value}",
            "train",
            "testbed",
            flag,
            value,
            "--checkpoint",
            value if flag == "--checkpoint" else root / "ckpt",
        )
    add("no such command", "frobnicate")
    add("generate --out a file", "generate", "--out", f["file"])
    # issue 28's families (names start "hostile:")
    pipe = ["--height", 32, "--width", 32, "--num-frames", 5, "--num-steps", 2]
    add("hostile: index beside another store's parts (verify)", "verify", f["mixed"], codes=(1, 2))
    add("hostile: index beside another store's parts (chain)", "chain", f["mixed"], "--out", out)
    add("hostile: NaN x0_hat marked complete (verify --checksums)", "verify", f["nan_x0"], "--checksums", codes=(1,))
    for scorer in ("exits", "nan", "text"):
        add(f"hostile: scorer {scorer}", "chain", f["good"], "--scorer", f"hostile_scorers:{scorer}", "--model",
            "testbed", "--out", out)  # fmt: skip
    for name in ("samples_fifo", "samples_missing"):
        add(f"hostile: {name}", "trace", "--model", f["wan"], "--data", f[name], *pipe, "--out", root / f"{name}.h5")
    add("hostile: model_index names a module (dry run)", "trace", "--model", f["evil"], "--data", f["samples_good"],
        *pipe, "--dry-run", "--out", root / "evil.h5")  # fmt: skip
    for name in ("shift_neg", "layers_huge", "layers_more"):
        add(f"hostile: testbed {name} (dry run)", "trace", "--model", f[f"testbed_{name}"], "-n", 2, "--dry-run",
            "--out", root / f"{name}.h5")  # fmt: skip
    add("hostile: --shift 1e300", "generate", "--shift", "1e300", "--out", out)
    add("hostile: crafted run folder (report renders it escaped)", "report", f["crafted_run"], codes=(0,))
    # given videos, SAE features and steering (sixteenth session)
    for args in (["--video-file", "a.mp4"], ["--noising", "invert"], ["--noising", "sideways"], ["--solver", "rk4"],
                 ["--data", f["samples_good"], "--video-file", "nope.mp4"], ["--data", f["samples_good"],
                 "--video-file", "../x.mp4"], ["--data", f["samples_good"], "--video-file", "prompt.txt"]):  # fmt: skip
        add(f"trace {' '.join(map(str, args))}", "trace", "--model", f["wan"], *args, *pipe, "--out", root / "v.h5")
    add("perturb --video-file forward", "perturb", "--data", f["samples_good"], "--video-file", "a.mp4", "--out", out)
    add("ensemble --video-file", "ensemble", "--video-file", "a.mp4", "--out", out)
    add("given_videos missing store", "given_videos", root / "none.h5", "--out", out)
    add("given_videos a pipeline store", "given_videos", f["good"], "--target", "sideways", "--out", out)
    add("sae features not a run", "sae", "features", f["dir"], "--out", out)
    add("sae features a file", "sae", "features", f["file"], "--out", out)
    add("sae steer not a run", "sae", "steer", f["dir"], "--feature", 3, "--out", out)
    add("sae steer --mode explode", "sae", "steer", f["dir"], "--mode", "explode", "--out", out)
    add("sae train --test-fraction 1", "sae", "train", f["good"], "--test-fraction", 1, "--out", out)
    add("sae (old spelling) missing store", "sae", root / "none.h5", "--out", out)
    return c


def classify(rc: int | None, out: str, err: str, codes: tuple[int, ...]) -> str:
    if rc is None:
        return "runaway"
    if "Traceback (most recent call last)" in out + err:
        return "traceback"
    lines = [x for x in err.strip().splitlines() if x.strip()]
    if codes == (0,):  # a valid request among the bad ones: it must succeed
        return "clear" if rc == 0 else "other"
    if rc == 0:
        return "allowed" if 0 in codes else "silent"  # root writes below chmod 0500: not an error there
    if rc == 1 and any("rerun with --debug" in x for x in lines):
        return "caught"
    if rc == 2 and 2 in codes and len(lines) == 1 and lines[0].startswith("interp: error:"):
        return "clear"
    if rc == 1 and 1 in codes and (out + err).strip():  # verify: its report of the damaged parts, exit 1
        return "clear"
    return "other"


def _result(case, rc, out: str, err: str, seconds: float) -> dict:
    name, args, codes = case
    last = (err.strip().splitlines() or out.strip().splitlines() or [""])[-1]
    kind = classify(rc, out, err, codes)
    return {"case": name, "args": args, "exit": rc, "class": kind, "seconds": round(seconds, 1), "message": last[:300]}


def run_fresh(case, timeout: float, cwd: Path) -> dict:
    """One case as ``.venv/bin/interp ARGS`` (a fresh interpreter: 3-5 s of imports each)."""
    tic = time.time()
    try:
        p = subprocess.run([INTERP, *case[1]], capture_output=True, text=True, timeout=timeout, cwd=cwd)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = None, str(exc.stdout or ""), str(exc.stderr or "")
    return _result(case, rc, out, err, time.time() - tic)


def run_forked(all_cases, timeout: float, jobs: int, cwd: Path) -> list[dict]:
    """Each case in its own process forked from this one (``interp`` imported once): the child runs the
    CLI's ``main`` with the case's argv, its stdout/stderr in files, exits with the CLI's status; a child
    past ``timeout`` is killed (runaway). Same classification as fresh processes, a fraction of the time."""
    import signal
    import traceback

    from interp import cli

    results: dict[int, dict] = {}
    running: dict[int, tuple] = {}  # pid -> (index, start, out file, err file)
    pending = list(enumerate(all_cases))
    while pending or running:
        while pending and len(running) < jobs:
            index, case = pending.pop(0)
            out_f, err_f = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the child: the CLI as ``interp`` runs it
                code = 1
                try:
                    os.chdir(cwd)
                    os.dup2(out_f.fileno(), 1)
                    os.dup2(err_f.fileno(), 2)
                    sys.argv = ["interp", *case[1]]
                    cli.main()
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                except BaseException:  # what the interpreter would print for an uncaught exception
                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            running[pid] = (index, time.time(), out_f, err_f)
        time.sleep(0.05)
        for pid, (index, start, out_f, err_f) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            timed_out = not done and time.time() - start > timeout
            if timed_out:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            if done or timed_out:
                out_f.seek(0)
                err_f.seek(0)
                rc = None if timed_out else os.waitstatus_to_exitcode(status)
                results[index] = _result(all_cases[index], rc, out_f.read(), err_f.read(), time.time() - start)
                out_f.close()
                err_f.close()
                del running[pid]
    return [results[i] for i in range(len(all_cases))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--only", default=None, help="run the cases whose name contains this")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bad_inputs.json")
    parser.add_argument("--fresh", action="store_true", help="a fresh `.venv/bin/interp` per case (slow)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bad_inputs_") as tmp:
        root = Path(tmp)
        all_cases = cases(make_fixtures(root), root)
        chosen = [c for c in all_cases if args.only is None or args.only in c[0]]
        tic = time.time()
        if args.fresh:
            with ThreadPoolExecutor(args.jobs) as pool:
                results = list(pool.map(lambda c: run_fresh(c, args.timeout, root), chosen))
        else:
            results = run_forked(chosen, args.timeout, args.jobs, root)
        (root / "readonly").chmod(0o700)
        # the %% store must read back whole (HDF5 once read '%' in part names as a format code)
        pct = [r for r in results if r["case"] == "trace --out %% name"]
        if pct and pct[0]["class"] == "clear":
            check = ("verify %% store", ["verify", str(root / "a%%b" / "t.h5")], (0,))
            results += run_forked([check], args.timeout, 1, root)
    counts = Counter(r["class"] for r in results)
    print(f"{'case':48s} {'class':9s} exit  message")
    for r in results:
        if r["class"] != "clear":
            print(f"{r['case'][:48]:48s} {r['class']:9s} {str(r['exit']):5s} {r['message'][:120]}")
    classes = ("clear", "allowed", "caught", "traceback", "silent", "runaway", "other")
    print(f"tried {len(results)}: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in classes))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _record import save_record

    save_record({"tried": len(results), "counts": dict(counts), "wall_seconds": round(time.time() - tic),
                 "jobs": args.jobs, "timeout_s": args.timeout, "processes": "fresh" if args.fresh else "forked",
                 "cases": results}, args.out, threads=1)  # fmt: skip


if __name__ == "__main__":
    main()
