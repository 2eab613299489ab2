"""The rules of the house, each checked statically: import arrows, site names, module sizes; and
configs as data."""

import ast
import json
import re
from pathlib import Path

from interp.experiments.trace import TraceConfig

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("interp", "activations", "probes")


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Top-level package names imported anywhere in a module (lazily inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.add(node.args[0].value.split(".")[0])
    return found


def test_import_arrows_point_one_way():
    """activations imports neither interp nor probes; probes imports activations only."""
    broken = []
    for package, forbidden in (("activations", {"interp", "probes"}), ("probes", {"interp"})):
        for path in _modules(package):
            bad = _imports(path) & forbidden
            if bad:
                broken.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not broken, broken


def test_a_store_and_its_probes_read_without_the_model_stack():
    import subprocess
    import sys

    code = (
        "import sys, activations, activations.reader, activations.writer, probes, probes.run; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('interp', 'diffusers', 'nnsight')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.replace("'", '"')) == []


_SITE_LITERAL = re.compile(r"""["'](?:\{[^}]*\}\.)?blocks\.""")


def test_site_names_are_built_only_in_axes():
    """No module but activations/axes.py spells a site name (``"blocks.`` or ``f"{expert}.blocks.``)."""
    offenders = []
    for package in PACKAGES:
        for path in _modules(package):
            if path.relative_to(ROOT).as_posix() == "activations/axes.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if _SITE_LITERAL.search(code) and "blocks_attr" not in code:
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, offenders


def test_no_module_is_too_long():
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for pkg in PACKAGES for p in _modules(pkg)}
    assert sizes["interp/cli.py"] < 350
    assert not {p: n for p, n in sizes.items() if n > 400}


def test_trace_configs_round_trip_through_json():
    cfg = TraceConfig(n=7, steps="0-9,19", layers="0-7:2", subs=["attn1"], pooling="random:5:1", dtype="float32")
    assert TraceConfig.from_json(cfg.to_json()) == cfg
    from dataclasses import asdict

    pcfg = TraceConfig(model="/m", data="/d", seeds=[1, 2], negative_prompt=None)
    assert TraceConfig(**json.loads(json.dumps(asdict(pcfg)))) == pcfg
    assert TraceConfig.from_json(pcfg.to_json()) == pcfg
    # a testbed config written before one shape ("frames"), and a pipeline one, still read back
    assert TraceConfig.from_dict({"n": 3, "frames": 5, "batch_size": 16}).num_frames == 5
    old_pipeline = {"model": "/m", "data": "/d", "seeds": [0], "height": 32, "width": 32, "num_frames": 9,
                    "num_steps": 50, "torch_dtype": "float32", "device": "cpu"}  # fmt: skip
    assert TraceConfig.from_dict(old_pipeline).height == 32


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_graph() -> dict[str, set[str]]:
    """Module -> the toolkit's modules it imports anywhere (inside functions too; ``from a import b``
    counts ``a.b`` where that is a module), packages' own ``__init__`` left out as targets."""
    modules = {_module_name(p): p for pkg in PACKAGES for p in _modules(pkg)}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            named = []
            if isinstance(node, ast.Import):
                named = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                named = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            for target in named:
                parts = target.split(".")
                while parts and ".".join(parts) not in modules:
                    parts.pop()
                found = ".".join(parts)
                if len(parts) > 1 and found != name and not name.startswith(found + "."):
                    targets.add(found)
        graph[name] = targets
    return graph


def test_no_import_cycle_anywhere():
    """No module reaches itself through imports, lazy ones included (Tarjan's strongly connected components)."""
    graph = _module_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, cycles
    assert "interp.validation" in graph and graph["interp.experiments.ensemble"]  # the graph is read at all


def test_the_report_and_the_analyses_import_no_experiment():
    """Rooms: the report reads manifests (``interp.manifest``) and the analyses compute statistics
    without importing any experiment, and the analyses import no figure code."""
    graph = _module_graph()
    wrong = []
    for module, targets in graph.items():
        if module.startswith(("interp.report", "interp.analysis")):
            wrong += [f"{module} -> {t}" for t in targets if t.startswith("interp.experiments")]
        if module.startswith("interp.analysis"):
            wrong += [f"{module} -> {t}" for t in targets if t.startswith("interp.report")]
    assert not wrong, wrong
    assert "interp.manifest" in graph["interp.report.html"]


def test_a_config_keeps_its_own_rules_when_renamed():
    """A class's field rules live on the class (``field_rules``), not under its name in a table: a
    subclass under another name checks what its parent checks."""
    from interp.experiments.flow import FlowConfig
    from interp.validation import UsageError, build

    renamed = type("MyFlow", (FlowConfig,), {})
    for cls in (FlowConfig, renamed):
        try:
            build(cls, {"strength": 2.0})
        except UsageError as err:
            assert "strength must be a finite number > 0 and <= 1" in str(err)
        else:
            raise AssertionError(f"{cls.__name__} accepted strength 2")
