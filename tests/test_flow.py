"""Information flow on a family that batches both guidance halves in one call (CogVideoX): the block
CKA is the conditional rows' CKA, read here by a plain torch hook on the block, not by the toolkit;
the x0_hat CKA takes latent positions as samples, so one video gives a number and it is not 1 by
construction."""

import numpy as np
import pytest
import torch
from tiny_pipelines import build_tiny_cogvideox, write_samples

from interp.analysis.similarity import linear_cka
from interp.experiments.flow import FlowConfig, latent_positions, run_flow


class BlockOutputs:
    """Every output of the first CogVideoX block called in each transformer forward, in call order."""

    def __init__(self):
        self.outputs: list[torch.Tensor] = []
        self.seen: set[int] = set()

    def __call__(self, module, _inputs, output):
        if type(module).__name__ == "CogVideoXBlock" and not self.seen:
            self.outputs.append(output[0].detach().clone())
        if type(module).__name__ == "CogVideoXBlock":
            self.seen.add(id(module))
        if type(module).__name__ == "CogVideoXTransformer3DModel":
            self.seen.clear()  # the transformer's own hook fires after its blocks'


def test_flow_compares_the_conditional_rows_and_latent_positions(tmp_path):
    model = build_tiny_cogvideox(tmp_path / "cog")
    data = write_samples(tmp_path / "data", n=1)
    pipeline = {"model": str(model), "data": str(data), "height": 32, "width": 32, "num_frames": 9,
                "num_steps": 3, "torch_dtype": "float32", "guidance_scale": 6.0, "negative_prompt": "",
                "max_sequence_length": 16}  # fmt: skip
    watch = BlockOutputs()
    handle = torch.nn.modules.module.register_module_forward_hook(watch)
    try:
        result = run_flow(FlowConfig(**pipeline, inject_steps="1", layers="0", strength=1.0), progress=False)
    finally:
        handle.remove()
    clean, perturbed = watch.outputs[:3], watch.outputs[3:]
    assert len(perturbed) == 2 and clean[0].shape[0] == 2  # one video, [unconditional; conditional] rows
    for step in (1, 2):
        x, y = clean[step][1:].flatten(0, -2), perturbed[step - 1][1:].flatten(0, -2)
        mixed = linear_cka(clean[step].flatten(0, -2), perturbed[step - 1].flatten(0, -2))
        expected = linear_cka(x, y)
        assert result.cka.values[0, step, 0] == pytest.approx(expected, abs=1e-9)
        assert abs(expected - mixed) > 1e-6  # the check can tell the two apart
    x0 = result.x0_hat_cka[0]
    assert np.isnan(x0[0]) and np.isfinite(x0[1:]).all()  # one video: a number from the injection on
    assert (x0[1:] >= 0).all() and x0[1] < 0.999  # replacing x_1 by noise moves x0_hat at step 1


def test_latent_positions_take_the_channel_axis_as_features():
    cthw = torch.arange(2 * 3 * 4 * 5 * 6, dtype=torch.float32).reshape(2, 3, 4, 5, 6)  # (B, C, T, H, W)
    rows = latent_positions(cthw, 0)
    assert rows.shape == (2 * 4 * 5 * 6, 3)
    assert torch.equal(rows[7], cthw[0, :, 0, 1, 1])
    tchw = cthw.movedim(1, 2)  # CogVideoX's (B, T, C, H, W)
    assert torch.equal(latent_positions(tchw, 1).sort(0).values, rows.sort(0).values)
