"""Attention knockout across frames (issue 30, item 3): the kernel runs on the processor's own q, k, v with the
rule's (query frame, key frame) entries removed and every row renormalised, equal to a hand-written masked
softmax; text rows are never masked; a knockout at no step leaves the run exactly as it was; one at step s
leaves every earlier step alone."""

import pytest
import torch
import torch.nn.functional as F
from test_attention_stats import FRAMES, SIZE, KernelCalls
from tiny_pipelines import BUILDERS, family_inputs

from interp.api import block, knockout, maze_inputs, open_model, run
from interp.execution.attention_kernel import KernelCall, TokenLayout
from interp.execution.frame_knockout import RULES, FrameKnockout, knocked_attention, removed_pairs
from interp.execution.loop import sample


def _masked_by_hand(q, k, v, frame_q, frame_k, removed, mask=None, scale=None):
    logits = q.double() @ k.double().transpose(-1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)
    cut = removed[frame_q.clamp_min(0)][:, frame_k.clamp_min(0)] & (frame_q[:, None] >= 0) & (frame_k[None] >= 0)
    logits = logits.masked_fill(cut, float("-inf"))
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return torch.softmax(logits, -1) @ v.double(), cut


def test_the_rules_remove_what_they_say_and_keep_each_frame_itself():
    assert removed_pairs("causal", 3).tolist() == [[False, True, True], [False, False, True], [False, False, False]]
    assert removed_pairs("to_first", 3).tolist() == [[False, False, False], [True, False, False], [True, False, False]]
    for rule in RULES:
        assert not removed_pairs(rule, 4).diagonal().any()
    with pytest.raises(ValueError, match="unknown knockout rule 'sideways'"):
        removed_pairs("sideways", 3)


@pytest.mark.parametrize("text", [None, "before", "after"])
def test_a_knockout_is_a_masked_softmax_by_hand(text):
    g = torch.Generator().manual_seed(0)
    layout = TokenLayout((3, 2, 2), text)
    length = 12 + (3 if text else 0)
    q, k, v = (torch.randn(2, 2, length, 8, generator=g) for _ in range(3))
    padding = torch.ones(1, 1, 1, length, dtype=torch.bool)
    if text:
        padding[..., layout.frame_of(length) < 0] = torch.tensor([True, True, False])  # one padded text key
    frame = layout.frame_of(length)

    def kernel(q_, k_, v_, mask):
        return F.scaled_dot_product_attention(q_, k_, v_, attn_mask=mask)

    for rule in RULES:
        removed = removed_pairs(rule, 3)
        expected, cut = _masked_by_hand(q, k, v, frame, frame, removed, padding)
        for chunk in (1, 5, 100):
            call = KernelCall(q, k, v, padding, None, "attn", layout, kernel)
            out = knocked_attention(call, removed, chunk_rows=chunk)
            torch.testing.assert_close(out.double(), expected, atol=1e-6, rtol=1e-5)
        assert not cut[frame < 0].any() and not cut[:, frame < 0].any()  # text rows: never cut


@pytest.mark.parametrize("family", list(BUILDERS))
def test_a_knockout_masks_the_processors_own_attention_on_every_family(tmp_path, family, monkeypatch):
    adapter, shape, noise, cond = family_inputs(family, tmp_path / family, SIZE, FRAMES)
    expert = next(iter(adapter.transformers()))
    site = block(0, "attn1", expert)
    plain = sample(adapter, noise.clone(), cond, 2).latents
    untouched = sample(adapter, noise.clone(), cond, 2, hooks=[FrameKnockout(adapter, [site], "cross", steps=[])])
    assert torch.equal(untouched.latents, plain)  # a knockout at no step: the run exactly as it was
    one_step = sample(adapter, noise.clone(), cond, 1).latents
    calls = KernelCalls(monkeypatch, adapter.site_module(site))  # sees the knocked calls (one chunk each)
    knocked = sample(adapter, noise.clone(), cond, 1, hooks=[FrameKnockout(adapter, [site], "causal", steps=[0])])
    assert not torch.equal(knocked.latents, one_step)
    layout = TokenLayout(adapter.token_grid(tuple(shape), expert), adapter.attention_text)
    removed = removed_pairs("causal", layout.grid[0])
    video_calls = [c for c in calls.calls if c[1].shape[2] >= layout.n_video]
    assert video_calls
    for q, k, v, mask, scale, out in video_calls:
        allowed = (mask if mask.dtype == torch.bool else torch.isfinite(mask)).expand(*q.shape[:3], k.shape[2])
        expected, _ = _masked_by_hand(q, k, v, layout.frame_of(q.shape[2]), layout.frame_of(k.shape[2]),
                                      torch.zeros_like(removed), allowed, scale)  # fmt: skip
        torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-4)  # the kernel obeys its mask
        rows, keys = layout.video_rows(q.shape[2]), layout.video_rows(k.shape[2])
        cut = removed.repeat_interleave(layout.grid[1] * layout.grid[2], 0).repeat_interleave(
            layout.grid[1] * layout.grid[2], 1)  # token x token
        assert torch.equal(~allowed[0, 0][rows][:, keys], cut)  # exactly the rule's pairs among video tokens
        if layout.text is not None:  # text queries keep every key they had
            text_rows = layout.frame_of(q.shape[2]) < 0
            assert allowed[0, 0][text_rows][:, keys].all()


def test_a_knockout_at_step_s_leaves_the_steps_before_it_alone():
    model = open_model("testbed")
    noise, cond, mazes = maze_inputs(model, n=2)
    sites = [block(k, "attn1") for k in range(model.num_blocks())]
    plain = run(model, noise, cond, num_steps=6)
    cut = run(model, noise, cond, num_steps=6, interventions=[knockout(sites, "cross", steps=[3])])
    assert all(torch.equal(cut.cache.latents[s], plain.cache.latents[s]) for s in range(4))  # x_0..x_3
    assert not torch.equal(cut.final, plain.final)
    with pytest.raises(ValueError, match="unknown knockout rule"):
        run(model, noise, cond, num_steps=2, interventions=[knockout(sites, "sideways")])


def test_the_random_control_removes_as_many_entries_per_row_at_random():
    g = torch.Generator().manual_seed(3)
    layout = TokenLayout((4, 2, 2), "after")
    length = 16 + 2
    q, k, v = (torch.randn(1, 2, length, 8, generator=g) for _ in range(3))
    seen = []

    def kernel(q_, k_, v_, mask):
        seen.append(mask[0, 0])
        return F.scaled_dot_product_attention(q_, k_, v_, attn_mask=mask)

    removed = removed_pairs("causal", 4)
    call = KernelCall(q, k, v, None, None, "attn", layout, kernel)
    knocked_attention(call, removed, chunk_rows=5, generator=torch.Generator().manual_seed(0))
    control = ~torch.cat(seen)  # the removed entries, every row
    seen.clear()
    knocked_attention(call, removed, chunk_rows=5)
    rule = ~torch.cat(seen)
    assert torch.equal(control.sum(1), rule.sum(1))  # as many per row as the rule removes
    assert not torch.equal(control, rule) and not control.diagonal().any()  # elsewhere, never a row's own token
    assert not control[16:].any() and not control[:, 16:].any()  # text rows and keys: untouched
    seen.clear()
    knocked_attention(call, removed, chunk_rows=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(~torch.cat(seen), control)  # seeded: the same draws again


def test_the_knockout_experiment_decides_its_claims_against_random_removal(tmp_path, run_cli):
    """`interp knockout`: per (rule, step) the score after the knockout beside its random control, and the two
    claims with their verdicts, computed from those rows (on a pipeline: similarities, claims cannot tell)."""
    import json

    from interp.analysis.claims import CANNOT_TELL, NOT_SHOWN, SHOWS, causal_frames_suffice, cross_frames_carry

    code, out, err = run_cli("knockout", "-n", 8, "--steps", "0,10", "--span", "onward", "--num-steps", 12,
                             "--out", tmp_path / "k")  # fmt: skip
    assert code == 0, err
    record = json.loads((tmp_path / "k" / "result.json").read_text())
    assert [(r["rule"], r["step"]) for r in record["rows"]] == [("cross", 0), ("cross", 10), ("causal", 0),
                                                                 ("causal", 10)]  # fmt: skip
    assert all({"accuracy", "ci95"} <= set(r["knocked"]) and "accuracy" in r["control"] for r in record["rows"])
    assert "cross-frame attention carries the reasoning at early steps:" in out
    assert (tmp_path / "k" / "knockout.png").stat().st_size > 0

    def row(rule, step, knocked, control):
        ci = lambda a: [max(0.0, a - 0.1), min(1.0, a + 0.1)]  # noqa: E731
        return {"rule": rule, "step": step, "knocked": {"accuracy": knocked, "ci95": ci(knocked)},
                "control": {"accuracy": control, "ci95": ci(control)}}  # fmt: skip

    base = {"accuracy": 0.95, "ci95": [0.85, 1.0]}
    assert cross_frames_carry(base, [row("cross", 0, 0.2, 0.9)])["verdict"] == SHOWS
    assert cross_frames_carry(base, [row("cross", 0, 0.9, 0.9)])["verdict"] == NOT_SHOWN
    assert cross_frames_carry(base, [row("cross", 0, 0.0, 0.0)])["verdict"] == CANNOT_TELL  # both at the floor
    assert causal_frames_suffice(base, [row("causal", 0, 0.95, 0.3)])["verdict"] == SHOWS
    assert causal_frames_suffice(base, [row("causal", 0, 0.95, 0.95)])["verdict"] == CANNOT_TELL  # control harmless
    assert causal_frames_suffice(base, [row("causal", 0, 0.4, 0.3)])["verdict"] == NOT_SHOWN
    wide = causal_frames_suffice(base, [row("causal", 0, 0.8, 0.3)])  # 0.7-0.9: not below 0.85, not reaching 0.95
    assert wide["verdict"] == CANNOT_TELL and "more mazes" in wide["why"]
    assert cross_frames_carry({"similarity": 1.0}, [row("cross", 0, 0.2, 0.9)])["verdict"] == CANNOT_TELL


def test_a_knockout_in_chosen_heads_leaves_the_other_heads_alone():
    g = torch.Generator().manual_seed(5)
    layout = TokenLayout((3, 2, 2))
    q, k, v = (torch.randn(1, 4, 12, 8, generator=g) for _ in range(3))

    def kernel(q_, k_, v_, mask):
        return F.scaled_dot_product_attention(q_, k_, v_, attn_mask=mask)

    call = KernelCall(q, k, v, None, None, "attn", layout, kernel)
    plain = kernel(q, k, v, None)
    every = knocked_attention(call, removed_pairs("cross", 3), chunk_rows=5)
    some = knocked_attention(call, removed_pairs("cross", 3), chunk_rows=5, heads=[1, 3])
    torch.testing.assert_close(some[:, [0, 2]], plain[:, [0, 2]])  # untouched heads: the plain attention
    torch.testing.assert_close(some[:, [1, 3]], every[:, [1, 3]])  # chosen heads: the knockout's
    with pytest.raises(ValueError, match="this attention has heads 0-3"):
        knocked_attention(call, removed_pairs("cross", 3), heads=[4])
    model = open_model("testbed")
    with pytest.raises(ValueError, match="has heads 0-3"):
        FrameKnockout(model, [block(0, "attn1")], "cross", heads=[7])


def test_a_knockout_unit_resumes_exactly_on_a_multistep_scheduler(tmp_path):
    """On UniPC (a multistep solver with history), the experiment's unit resumes the recorded run at step s: a
    knockout at no step there returns the recorded final bitwise, a causal knockout changes it."""
    from tiny_pipelines import build_tiny_wan, write_samples

    from interp.experiments.knockout import KnockoutConfig, _knocked, _prepare

    model, data = build_tiny_wan(tmp_path / "wan", unipc=True), write_samples(tmp_path / "data", n=1)
    cfg = KnockoutConfig(model=str(model), data=str(data), height=32, width=32, num_frames=5, num_steps=6,
                         steps="2", layers="0", rules=["causal"])  # fmt: skip
    r = _prepare(cfg, None)
    assert type(r.run.schedulers[2]).__name__ == "UniPCMultistepScheduler"
    noop = FrameKnockout(r.adapter, r.sites, "causal", steps=[])
    resumed = sample(r.adapter, r.run.latents[2], r.cond, r.num_steps, start_step=2,
                     resume_scheduler=r.run.schedulers.get(2), hooks=[noop]).latents  # fmt: skip
    assert torch.equal(resumed, r.run.final)
    assert not torch.equal(_knocked(r, ("causal", 2, False)), r.run.final)
