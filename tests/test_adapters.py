"""Real-model adapters on tiny random-weight configs of the real diffusers classes (nothing from a hub)."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
from tiny_pipelines import (
    tiny_cogvideox_transformer,
    tiny_hunyuan_transformer,
    tiny_ltx_transformer,
    tiny_wan_transformer,
)

from activations import ActivationStore, Pooling, StoreWriter
from interp.execution.capture import build_layout, trace_batch
from interp.execution.loop import StepHook, sample
from interp.execution.runner import CallRunner
from interp.models.wan import WanAdapter, WanConditioning

LATENT = (4, 3, 4, 4)


def _wan(seed, **overrides):
    torch.manual_seed(seed)
    return tiny_wan_transformer(**overrides)


def _embeds(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 5, 16, generator=g), torch.randn(batch, 5, 16, generator=g)


@pytest.mark.parametrize("two_experts", [False, True])
def test_wan_adapter_reproduces_the_diffusers_pipeline(two_experts):
    t1, t2 = _wan(0), (_wan(1) if two_experts else None)
    boundary = 0.5 if two_experts else None
    pe, ne = _embeds()
    noise = torch.randn(2, *LATENT, generator=torch.Generator().manual_seed(3))
    pipe = WanPipeline(
        tokenizer=None,
        text_encoder=None,
        transformer=t1,
        vae=None,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer_2=t2,
        boundary_ratio=boundary,
    )
    extra = {"guidance_scale_2": 2.0} if two_experts else {}
    expected = pipe(
        prompt_embeds=pe,
        negative_prompt_embeds=ne,
        latents=noise.clone(),
        num_inference_steps=6,
        guidance_scale=4.0,
        output_type="latent",
        height=32,
        width=32,
        num_frames=9,
        **extra,
    ).frames
    adapter = WanAdapter(t1, t2, boundary, guidance_scale=4.0, guidance_scale_2=2.0 if two_experts else None)
    got = sample(adapter, noise.clone(), WanConditioning(pe, ne), num_steps=6, shift=3.0).latents
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert adapter.name == ("wan2.2" if two_experts else "wan2.1")


class _CallRecorder(StepHook):
    """Plain forward hooks on every block of every expert; keeps each call's outputs per step."""

    def __init__(self, adapter):
        self.step = -1
        self.calls: dict[tuple[int, str], list[torch.Tensor]] = {}
        self.handles = []
        for expert, model in adapter.transformers().items():
            for k, block in enumerate(model.blocks):
                site = f"{expert}.blocks.{k}" if expert else f"blocks.{k}"
                self.handles.append(block.register_forward_hook(self._hook(site)))

    def _hook(self, site):
        def hook(_m, _i, out):
            self.calls.setdefault((self.step, site), []).append(out.detach().clone())

        return hook

    def before_model(self, state):
        self.step = state.step

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _trace(adapter, conditioning, noise, sites, tmp_path, num_steps=4, shift=3.0):
    layout = build_layout(
        adapter,
        model="tiny",
        latent_shape=LATENT,
        num_steps=num_steps,
        shift=shift,
        steps=list(range(num_steps)),
        sites=sites,
        pooling=Pooling(),
        video_keys=[f"v{i}" for i in range(noise.shape[0])],
        dtype="float32",
    )
    with StoreWriter(tmp_path / "w.h5", layout) as writer:
        part = writer.begin_part(list(range(noise.shape[0])))
        result = trace_batch(adapter, part, layout, noise, conditioning, shift)
        part.finish(result.latents, [{} for _ in range(noise.shape[0])])
    return ActivationStore(tmp_path / "w.h5"), result


def test_wan22_store_equals_hooks_on_the_conditional_branch(tmp_path):
    adapter = WanAdapter(_wan(0), _wan(1), 0.5, guidance_scale=4.0)
    pe, ne = _embeds()
    noise = torch.randn(2, *LATENT, generator=torch.Generator().manual_seed(3))
    sites = adapter.site_names([0, 1])
    assert sites == ["high.blocks.0", "high.blocks.1", "low.blocks.0", "low.blocks.1"]
    recorder = _CallRecorder(adapter)
    reference = sample(adapter, noise.clone(), WanConditioning(pe, ne), num_steps=4, shift=3.0, hooks=[recorder])
    recorder.remove()
    store, result = _trace(adapter, WanConditioning(pe, ne), noise.clone(), sites, tmp_path)
    torch.testing.assert_close(result.latents, reference.latents)
    with store:
        assert store.layout.token_grid == (3, 2, 2)
        for step in range(4):
            expert = adapter.expert_at(torch.tensor(store.layout.timesteps[step]))
            for site in sites:
                got = store.activations(site, steps=[step])[:, 0]
                if site.startswith(expert):
                    cond, uncond = recorder.calls[(step, site)]  # Wan: conditional call first, then unconditional
                    assert np.array_equal(got, cond.numpy())
                    assert not np.allclose(got, uncond.numpy())
                else:
                    assert np.isnan(got).all() and (step, site) not in recorder.calls
        ran = {adapter.expert_at(torch.tensor(t)) for t in store.layout.timesteps[:4]}
        assert ran == {"high", "low"}


def test_wan21_image_to_video_store_equals_hooks(tmp_path):
    # I2V: mask (4 channels) and first-frame latent (4) concatenated to the noisy latent; CLIP image tokens.
    model = _wan(2, in_channels=12, image_dim=8)
    adapter = WanAdapter(model, guidance_scale=5.0)
    pe, ne = _embeds()
    g = torch.Generator().manual_seed(5)
    cond = WanConditioning(
        pe, ne, condition=torch.randn(2, 8, 3, 4, 4, generator=g), image_embeds=torch.randn(2, 3, 8, generator=g)
    )
    noise = torch.randn(2, *LATENT, generator=g)
    recorder = _CallRecorder(adapter)
    sample(adapter, noise.clone(), cond, num_steps=4, shift=3.0, hooks=[recorder])
    recorder.remove()
    store, _ = _trace(adapter, cond, noise.clone(), adapter.site_names([0, 1]), tmp_path)
    with store:
        for (step, site), outputs in recorder.calls.items():
            assert np.array_equal(store.activations(site, steps=[step])[:, 0], outputs[0].numpy())


def test_wan_site_errors_are_clear():
    adapter = WanAdapter(_wan(0), _wan(1), 0.5)
    with pytest.raises(ValueError, match="block 5 is out of range"):
        CallRunner(adapter).check_sites(["high.blocks.5"])
    with pytest.raises(ValueError, match="experts are"):
        CallRunner(adapter).check_sites(["blocks.0"])
    with pytest.raises(ValueError, match="both transformer_2 and boundary_ratio"):
        WanAdapter(_wan(0), _wan(1), None)


# -- CogVideoX, LTX-Video, HunyuanVideo ------------------------------------------------------------
from diffusers import (  # noqa: E402
    CogVideoXDDIMScheduler,
    CogVideoXPipeline,
    HunyuanVideoPipeline,
    LTXPipeline,
)

from interp.models.cogvideox import CogVideoXAdapter, CogVideoXConditioning  # noqa: E402
from interp.models.hunyuan import HunyuanConditioning, HunyuanVideoAdapter  # noqa: E402
from interp.models.ltx import LTXAdapter, LTXConditioning  # noqa: E402


def _cogvideox():
    torch.manual_seed(0)
    model = tiny_cogvideox_transformer(max_text_seq_length=5)
    scheduler = CogVideoXDDIMScheduler(
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        rescale_betas_zero_snr=True,
        clip_sample=False,
        beta_schedule="scaled_linear",
    )
    pe, ne = _embeds()
    noise = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(3))  # (B, frames, C, h, w)
    adapter = CogVideoXAdapter(model, scheduler, guidance_scale=6.0)
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=model, scheduler=scheduler)

    def run_pipeline(steps):
        return pipe(
            prompt_embeds=pe,
            negative_prompt_embeds=ne,
            latents=noise.clone(),
            num_inference_steps=steps,
            guidance_scale=6.0,
            output_type="latent",
            height=32,
            width=32,
            num_frames=9,
        ).frames

    return adapter, CogVideoXConditioning(pe, ne), noise, run_pipeline, "batched"


def _ltx():
    torch.manual_seed(0)
    model = tiny_ltx_transformer(channels=4)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    pe, ne = _embeds()
    mask = torch.ones(2, 5)
    noise = torch.randn(2, 8, 4, generator=torch.Generator().manual_seed(3))  # packed: (B, 2x2x2 tokens, C)
    adapter = LTXAdapter(model, scheduler, latent_grid=(2, 2, 2), guidance_scale=3.0)
    pipe = LTXPipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None, transformer=model)

    def run_pipeline(steps):
        return pipe(
            prompt_embeds=pe,
            prompt_attention_mask=mask,
            negative_prompt_embeds=ne,
            negative_prompt_attention_mask=mask,
            latents=noise.clone(),
            num_inference_steps=steps,
            guidance_scale=3.0,
            output_type="latent",
            height=64,
            width=64,
            num_frames=9,
        ).frames

    return adapter, LTXConditioning(pe, mask, ne, mask), noise, run_pipeline, "batched"


def _hunyuan():
    torch.manual_seed(0)
    model = tiny_hunyuan_transformer()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    pe, _ = _embeds()
    mask, pooled = torch.ones(2, 5), torch.randn(2, 8, generator=torch.Generator().manual_seed(4))
    noise = torch.randn(2, 4, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    adapter = HunyuanVideoAdapter(model, scheduler, guidance_scale=6.0)
    pipe = HunyuanVideoPipeline(
        text_encoder=None,
        tokenizer=None,
        transformer=model,
        vae=None,
        scheduler=scheduler,
        text_encoder_2=None,
        tokenizer_2=None,
    )

    def run_pipeline(steps):
        return pipe(
            prompt_embeds=pe,
            prompt_attention_mask=mask,
            pooled_prompt_embeds=pooled,
            latents=noise.clone(),
            num_inference_steps=steps,
            guidance_scale=6.0,
            output_type="latent",
            height=32,
            width=32,
            num_frames=9,
        ).frames

    return adapter, HunyuanConditioning(pe, mask, pooled), noise, run_pipeline, "single"


FAMILIES = {"cogvideox": _cogvideox, "ltx": _ltx, "hunyuanvideo": _hunyuan}


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_reproduces_its_diffusers_pipeline(family):
    adapter, cond, noise, run_pipeline, _ = FAMILIES[family]()
    expected = run_pipeline(5)
    got = sample(adapter, noise.clone(), cond, num_steps=5, scheduler=adapter.make_scheduler()).latents
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert adapter.name == family


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_store_equals_hooks_on_the_conditional_branch(tmp_path, family):
    adapter, cond, noise, _, guidance = FAMILIES[family]()
    sites = adapter.site_names(list(range(adapter.num_blocks())))
    recorded: dict[tuple[int, str], list[torch.Tensor]] = {}
    step = {"i": -1}

    class Step(StepHook):
        def before_model(self, state):
            step["i"] = state.step

    def hook(site):
        def fn(_m, _i, out):
            out = out[0] if isinstance(out, tuple) else out
            recorded.setdefault((step["i"], site), []).append(out.detach().clone())

        return fn

    handles = [adapter.site_module(s).register_forward_hook(hook(s)) for s in sites]
    sample(adapter, noise.clone(), cond, num_steps=4, hooks=[Step()], scheduler=adapter.make_scheduler())
    for h in handles:
        h.remove()
    latent_shape = tuple(noise.shape[1:])
    layout = build_layout(
        adapter,
        model="tiny",
        latent_shape=latent_shape,
        num_steps=4,
        shift=1.0,
        steps=[0, 1, 2, 3],
        sites=sites,
        pooling=Pooling(),
        video_keys=["a", "b"],
        dtype="float32",
    )
    with StoreWriter(tmp_path / "w.h5", layout) as writer:
        part = writer.begin_part([0, 1])
        result = trace_batch(adapter, part, layout, noise.clone(), cond, 1.0)
        part.finish(result.latents, [{}, {}])
    with ActivationStore(tmp_path / "w.h5") as store:
        assert store.layout.adapter == family
        for (s, site), outputs in recorded.items():
            expected = outputs[0][2:] if guidance == "batched" else outputs[0]  # rows [uncond, cond] when batched
            got = store.activations(site, steps=[s])[:, 0]
            assert np.array_equal(got, expected.numpy()), (family, s, site)
            if guidance == "batched":
                assert not np.allclose(got, outputs[0][:2].numpy())
        # x0_hat is stored for every step and ends at the final latent
        assert np.isfinite(store.x0_hat()).all()


def test_hunyuan_sites_span_both_block_lists():
    adapter = _hunyuan()[0]
    assert adapter.num_blocks() == 3
    assert adapter.site_path("blocks.2") == (None, "single_transformer_blocks.1")
    assert adapter.site_path("blocks.0.attn1") == (None, "transformer_blocks.0.attn")
    with pytest.raises(ValueError, match="no sub-module 'ffn'"):
        adapter.site_path("blocks.1.ffn")


def test_cogvideox_refuses_a_two_step_solver():
    from diffusers import CogVideoXDPMScheduler

    with pytest.raises(ValueError, match="two-step solver"):
        CogVideoXAdapter(_cogvideox()[0].transformer, CogVideoXDPMScheduler())


@pytest.mark.parametrize("family", FAMILIES)
def test_resumed_and_self_patched_runs_reproduce_the_run_on_every_family(family):
    """Every family's scheduler (DDIM, dynamic-shift Euler, Euler): a row resumed at any step with the
    recorded scheduler state, or patched with its own activations, gives the uninterrupted result."""
    from interp.execution.patching import Patch, record_run, run_patched

    adapter, cond, noise, _, _ = FAMILIES[family]()
    sites = adapter.site_names([0])
    run = record_run(adapter, noise.clone(), cond, 5, sites)
    scale = float(run.final.abs().max())
    for s in range(5):
        resumed = run_patched(adapter, run, cond, run, [[], []], [0, 1], [0, 1], 5, start_step=s)
        torch.testing.assert_close(resumed, run.final, rtol=0, atol=1e-5 * scale)
    own = [[Patch(s, site) for s in range(5) for site in sites]] * 2
    torch.testing.assert_close(run_patched(adapter, run, cond, run, own, [0, 1], [0, 1], 5), run.final, rtol=0,
                               atol=1e-5 * scale)  # fmt: skip
