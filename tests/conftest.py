import pytest
import torch

from interp.models import testbed


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture
def tiny_adapter():
    """A random-weight testbed transformer small enough for fast loop tests."""
    torch.manual_seed(0)
    model = testbed.build_transformer(
        {"num_layers": 2, "ffn_dim": 64, "num_attention_heads": 2, "attention_head_dim": 16}
    )
    return testbed.TestbedAdapter(model.eval(), testbed.SamplingDefaults(num_steps=6))


@pytest.fixture(scope="session")
def shipped_adapter():
    return testbed.TestbedAdapter.load()


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run ``interp ARGS`` in-process: returns (exit code, stdout, stderr)."""
    import sys

    from interp import cli

    def run(*args):
        capsys.readouterr()  # drop what the test printed before
        monkeypatch.setattr(sys, "argv", ["interp", *map(str, args)])
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def wan22(tmp_path_factory):
    """A tiny two-expert Wan 2.2 image-to-video pipeline with UniPC (as released), and two samples."""
    from tiny_pipelines import build_tiny_wan, write_samples

    root = tmp_path_factory.mktemp("wan22")
    model = build_tiny_wan(root / "wan", image_to_video=True, two_experts=True, unipc=True)
    return model, write_samples(root / "data", n=2)
