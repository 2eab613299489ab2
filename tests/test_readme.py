"""The README's real-model commands, run as written on a tiny two-expert Wan 2.2 pipeline: only
the sizes, paths and device are swapped for tiny ones."""

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands() -> tuple[str, list[str]]:
    text = README.read_text()
    section = text[text.index("## Real models") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    m_line = next(line for line in block.splitlines() if line.startswith("M="))
    return m_line.split("=", 1)[1].strip('"'), [line for line in block.splitlines() if line.startswith("interp ")]


def test_the_readme_real_model_commands_run(tmp_path, run_cli, wan22):
    model, data = wan22
    m_value, commands = _commands()
    assert len(commands) >= 9
    swaps = [
        (r"--layers 0-39:4", "--layers all"), (r"/models/[\w.-]+", str(model)), (r"/data/vbvr", str(data)),
        (r"--height 480", "--height 32"),
        (r"--width 832", "--width 32"), (r"--num-frames 81", "--num-frames 5"), (r"--num-steps 40", "--num-steps 4"),
        (r"0-39:4", "0-3"), (r"--device cuda", "--device cpu"), (r"maze_001", "sample_000"),
        (r"maze_002", "sample_001"), (r"my_rules:score", "scorers:mean_red"), (r"runs/wan", str(tmp_path / "wan")),
    ]  # fmt: skip
    for line in commands:
        line = line.replace("$M", m_value)
        for pattern, value in swaps:
            line = re.sub(pattern, value, line)
        if "--num-steps" not in line and line.split()[1] in ("patch", "swap", "perturb", "flow", "ensemble"):
            line += " --num-steps 4"
        args = shlex.split(line)[1:]
        code, _, err = run_cli(*args)
        assert code == 0, (line, err)
    assert (tmp_path / "wan" / "report.html").is_file()
