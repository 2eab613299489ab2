"""A token region touches only its video tokens, on every family and sub-module: patching frame f
changes that frame's video rows of the site's output and nothing else there, text rows of a joint
text+video stream (CogVideoX's feed-forward runs on ``[text; video]``) included. The output is read
by a plain torch hook that runs after the toolkit's, not by the toolkit."""

import pytest
import torch
from tiny_pipelines import BUILDERS, family_inputs

from interp import api
from interp.execution.loop import sample
from interp.models.base import PipelineSpec, first_tensor
from interp.models.loading import load_pipeline_adapter

SIZE, FRAMES = 32, 9


class LastWord:
    """The output a module hands on, after every other forward hook (registered at call time)."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.outputs = module, []
        module.register_forward_pre_hook(self._arm)

    def _arm(self, module, _inputs):
        def keep(_m, _i, output):
            self.outputs.append(first_tensor(output).detach().clone())
            handle.remove()

        handle = module.register_forward_hook(keep)


def _sites(adapter) -> list[str]:
    """Block 0's output and every sub-module; the last block too (Hunyuan's single stream)."""
    last = adapter.num_blocks() - 1
    expert = next(iter(adapter.transformers()))
    prefix = f"{expert}." if expert else ""
    sites = []
    for index in sorted({0, last}):
        sites.append(f"{prefix}blocks.{index}")
        for sub in adapter.sub_modules:
            site = f"{prefix}blocks.{index}.{sub}"
            try:
                adapter.site_path(site)
            except ValueError:
                continue
            sites.append(site)
    return sites


@pytest.mark.parametrize("family", list(BUILDERS))
def test_a_frame_region_changes_that_frames_video_tokens_and_nothing_else(tmp_path, family):
    adapter, shape, noise, cond = family_inputs(family, tmp_path / family, SIZE, FRAMES)
    grid = adapter.token_grid(tuple(shape))
    n_video = grid[0] * grid[1] * grid[2]
    frame = grid[0] - 1
    tokens = api.frame_tokens(adapter, noise, [frame])
    joint = []
    for site in _sites(adapter):
        hidden = adapter.hidden_size(adapter.site_path(site)[0])
        outputs = []
        for edit in (False, True):
            spy = LastWord(adapter.site_module(site))
            hooks = []
            if edit:
                hooks = [api.add_direction(site, torch.ones(hidden), 1.0, steps=[0], tokens=tokens).bind(adapter, 1)]
            sample(adapter, noise.clone(), cond, 1, hooks=hooks)
            outputs.append(spy.outputs[0])  # the first call of step 0
            spy.module._forward_pre_hooks.clear()
        clean, edited = outputs
        rows = adapter.video_rows(site, clean.shape[1], n_video)
        changed = (edited != clean).any(-1).any(0)  # per row of the output
        expected = torch.zeros(clean.shape[1], dtype=torch.bool)
        expected[torch.arange(clean.shape[1])[rows][torch.as_tensor(tokens)]] = True
        assert torch.equal(changed, expected), (site, int(changed.sum()), len(tokens), clean.shape)
        torch.testing.assert_close((edited - clean)[:, expected], torch.ones_like(edited[:, expected]), atol=1e-5,
                                   rtol=0)  # fmt: skip
        if clean.shape[1] != n_video:  # a joint stream: the text rows are there and untouched
            joint.append(site)
    assert joint == (["blocks.0.ffn", "blocks.1.ffn"] if family == "cogvideox" else [])


def test_a_site_whose_video_rows_are_unknown_is_refused(tmp_path):
    folder = BUILDERS["cogvideox"](tmp_path / "cogvideox")
    adapter = load_pipeline_adapter(folder, PipelineSpec(height=SIZE, width=SIZE, num_frames=FRAMES), "float32")
    assert adapter.video_rows("blocks.0.ffn", 30, 18) == slice(12, 30)
    with pytest.raises(ValueError, match="carries 30 rows for 18 video tokens"):
        adapter.video_rows("blocks.0", 30, 18)

