"""Attention across frames (issue 30, item 1): the statistics are those of the attention the processor
computes. On every family the kernel call inside the watched attention module is captured by a plain
wrapper (q, k, v, mask, scale and its output, as the processor passed them); the softmax of those q and k
times v must give the kernel's output (so q, k, mask and scale are read as the kernel reads them), and the
recorder's chunked statistics must equal the ones computed from that full map by hand. The run is unchanged."""

import importlib

import pytest
import torch
import torch.nn.functional as F
from tiny_pipelines import family_inputs

from activations.axes import block_site
from interp.api import maze_inputs, open_model
from interp.execution.attention_kernel import TokenLayout
from interp.execution.attention_stats import FrameAttentionRecorder, frame_statistics
from interp.execution.loop import sample

SIZE, FRAMES = 32, 9
TEXT = {"wan": None, "cogvideox": "before", "ltx": None, "hunyuanvideo": "after"}  # text rows in attn1's keys


class KernelCalls:
    """Every attention-kernel call made inside ``module``: (q, k, v, mask, scale, out), (B, H, S, D)."""

    def __init__(self, monkeypatch, module: torch.nn.Module):
        self.calls, self.inside = [], False
        module.register_forward_pre_hook(lambda *_: setattr(self, "inside", True))
        module.register_forward_hook(lambda *_: setattr(self, "inside", False))
        processor_module = importlib.import_module(type(module.processor).__module__)
        dispatch = getattr(processor_module, "dispatch_attention_fn", None)
        if dispatch is not None:

            def capture_dispatch(query, key, value, attn_mask=None, *args, **kwargs):
                out = dispatch(query, key, value, attn_mask, *args, **kwargs)
                if self.inside:
                    t = [x.transpose(1, 2) for x in (query, key, value, out)]
                    self.calls.append((t[0], t[1], t[2], attn_mask, kwargs.get("scale"), t[3]))
                return out

            monkeypatch.setattr(processor_module, "dispatch_attention_fn", capture_dispatch)
        else:
            sdpa = F.scaled_dot_product_attention

            def capture_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
                out = sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                           scale=scale, **kw)  # fmt: skip
                if self.inside:
                    self.calls.append((query, key, value, attn_mask, scale, out))
                return out

            monkeypatch.setattr(F, "scaled_dot_product_attention", capture_sdpa)


def _by_hand(query, key, value, mask, scale, out, layout: TokenLayout) -> dict:
    """The full attention map, checked against the kernel's output, and its statistics by definition."""
    q, k, v = query.double(), key.double(), value.double()
    logits = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.double()
    p = torch.softmax(logits, -1)
    torch.testing.assert_close((p @ v).float(), out.float(), atol=2e-5, rtol=1e-4)  # the kernel's own attention
    rows, keys = layout.video_rows(q.shape[2]), layout.video_rows(k.shape[2])
    T, per = layout.grid[0], layout.grid[1] * layout.grid[2]
    pv = p[:, :, rows]  # video queries
    frame_q = torch.arange(pv.shape[2]) // per
    key_frames = pv[..., keys].reshape(*pv.shape[:3], T, per).sum(-1)
    text = pv.sum(-1) - key_frames.sum(-1)
    entropy = -(pv * torch.log(pv.clamp_min(1e-300))).sum(-1)
    mean = lambda x: torch.stack([x[:, :, frame_q == f].mean(2) for f in range(T)], 2)  # noqa: E731
    return {"mass": mean(key_frames), "text": mean(text), "entropy": mean(entropy)}


def _check(adapter, module, layout, noise, cond, monkeypatch):
    plain = sample(adapter, noise.clone(), cond, 1).latents
    calls = KernelCalls(monkeypatch, module)
    with FrameAttentionRecorder({"attn": (module, layout)}, chunk_bytes=4096) as recorder:  # many chunks
        recorded = sample(adapter, noise.clone(), cond, 1).latents
    assert torch.equal(recorded, plain)  # capturing leaves the run exactly as it was
    video_calls = [c for c in calls.calls if c[1].shape[2] >= layout.n_video]
    assert len(recorder.records["attn"]) == len(video_calls) >= 1
    for stats, call in zip(recorder.records["attn"], video_calls):
        expected = _by_hand(*call, layout)
        for name in ("mass", "text", "entropy"):
            torch.testing.assert_close(getattr(stats, name).double(), expected[name], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(stats.mass.sum(-1) + stats.text, torch.ones_like(stats.text), atol=1e-5, rtol=0)
    return recorder


@pytest.mark.parametrize("family", list(TEXT))
def test_frame_statistics_are_the_processors_attention_on_every_family(tmp_path, family, monkeypatch):
    adapter, shape, noise, cond = family_inputs(family, tmp_path / family, SIZE, FRAMES)
    expert = next(iter(adapter.transformers()))
    assert adapter.attention_text == TEXT[family]  # the family's declaration, checked against the calls below
    layout = TokenLayout(adapter.token_grid(tuple(shape), expert), adapter.attention_text)
    for index in sorted({0, adapter.num_blocks(expert) - 1}):  # Hunyuan's last block is a single-stream one
        module = adapter.site_module(block_site(index, "attn1", expert))
        recorder = _check(adapter, module, layout, noise, cond, monkeypatch)
        text = recorder.records["attn"][0].text
        assert (text > 0).all() if TEXT[family] else (text == 0).all()  # joint streams attend to their text rows
        monkeypatch.undo()


def test_the_testbed_attends_across_its_frames(monkeypatch):
    model = open_model("testbed")
    noise, cond, _ = maze_inputs(model, n=2)
    module = model.site_module("blocks.3.attn1")
    layout = TokenLayout(model.token_grid(tuple(noise.shape[1:])))
    recorder = _check(model, module, layout, noise, cond, monkeypatch)
    stats = recorder.records["attn"][0]
    assert stats.mass.shape == (2, 4, 4, 4) and stats.entropy.shape == (2, 4, 4)


def test_a_mask_and_a_chunk_size_change_nothing_but_what_they_should():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 2, 12, 8, generator=g), torch.randn(1, 2, 15, 8, generator=g)
    layout = TokenLayout((3, 2, 2), "after")  # 12 video keys, then 3 text keys
    whole = frame_statistics(q, k, layout)
    for chunk in (1, 7, 10**9):
        parts = frame_statistics(q, k, layout, chunk_bytes=chunk)
        torch.testing.assert_close(parts.mass, whole.mass)
    no_text = torch.ones(1, 1, 1, 15, dtype=torch.bool)
    no_text[..., 12:] = False  # a padding mask over the text keys
    masked = frame_statistics(q, k, layout, attn_mask=no_text)
    assert torch.all(masked.text == 0)
    torch.testing.assert_close(masked.mass.sum(-1), torch.ones(1, 2, 3))
    with pytest.raises(ValueError, match="cannot hold the 12-token video grid"):
        frame_statistics(q[:, :, :8], k[:, :, :8], layout)


CROSS = {"wan": ("text",), "wan-i2v": ("image", "text"), "ltx": ("text",)}  # attn2's key groups, in call order


def _cross_inputs(family: str, folder):
    """(adapter, noise, conditioning) of one video through the source's own inputs (prompt tokens: the
    pipeline's default, as a user gets them); Wan 2.1 I2V with its CLIP image encoder."""
    from tiny_pipelines import BUILDERS, build_tiny_wan, write_samples

    from interp.sources import SourceConfig

    model = build_tiny_wan(folder / "m", image_to_video=True, image_encoder=True) if family == "wan-i2v" \
        else BUILDERS[family](folder / "m")  # fmt: skip
    source = SourceConfig(model=str(model), data=str(write_samples(folder / "data", n=1)), height=SIZE, width=SIZE,
                          num_frames=FRAMES, num_steps=1)  # fmt: skip
    adapter = source.load()
    videos = source.videos(adapter)
    return adapter, *source.inputs(adapter, videos)


@pytest.mark.parametrize("family", list(CROSS))
def test_cross_attention_statistics_are_the_processors_per_key_group(tmp_path, family, monkeypatch):
    """A cross-attention (attn2) reads the video's queries against each key group in a kernel call of its own
    (Wan I2V: the image's tokens, then the text, two softmaxes whose outputs are added): per group, the
    entropy of each query's attention and the norm of its output, means per query frame, as by hand."""
    adapter, noise, cond = _cross_inputs(family, tmp_path)
    expert = next(iter(adapter.transformers()))
    site = block_site(0, "attn2", expert)
    assert adapter.attention_context(site) == CROSS[family]
    assert adapter.attention_context(block_site(0, "attn1", expert)) == ()
    module = adapter.site_module(site)
    layout = TokenLayout(adapter.token_grid(tuple(noise.shape[1:]), expert), None, CROSS[family])
    plain = sample(adapter, noise.clone(), cond, 1).latents
    calls = KernelCalls(monkeypatch, module)
    with FrameAttentionRecorder({"attn": (module, layout)}, chunk_bytes=4096) as recorder:
        recorded = sample(adapter, noise.clone(), cond, 1).latents
    assert torch.equal(recorded, plain)
    groups = len(CROSS[family])
    assert len(calls.calls) == groups * len(recorder.records["attn"]) >= groups
    per, frames = layout.grid[1] * layout.grid[2], layout.grid[0]
    for i, stats in enumerate(recorder.records["attn"]):
        rows = calls.calls[i * groups][0].shape[0]  # guidance branches batched in one call, or one each
        assert stats.entropy.shape == stats.norm.shape == (rows, module.heads, groups, frames)
        for g in range(groups):
            q, k, v, mask, scale, out = calls.calls[i * groups + g]
            logits = q.double() @ k.double().transpose(-1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)
            if mask is not None:
                logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
            p = torch.softmax(logits, -1)
            torch.testing.assert_close((p @ v.double()).float(), out.float(), atol=2e-5, rtol=1e-4)
            entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(-1).unflatten(-1, (frames, per)).mean(-1)
            norm = out.double().norm(dim=-1).unflatten(-1, (frames, per)).mean(-1)
            torch.testing.assert_close(stats.entropy[:, :, g].double(), entropy, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(stats.norm[:, :, g].double(), norm, atol=1e-5, rtol=1e-4)
    if family == "wan-i2v":  # the image's tokens are read apart from the text: 17 CLIP tokens, 512 text tokens
        assert [c[1].shape[2] for c in calls.calls[:2]] == [17, 512]
