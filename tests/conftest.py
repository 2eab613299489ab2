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
