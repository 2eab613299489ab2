"""Sparse autoencoders per (step, layer) (issue 31, items 1-2, first part): trained with SAELens from tokens
streamed out of the store, saved in SAELens' format (its own loader reads them, with the step and layer in
their metadata), and measured on the held-out videos: the reported explained variance, L0 and dead latents
are those computed by hand from the loaded SAE on those videos' tokens."""

import json

import numpy as np
import pytest
import torch

from activations import ActivationStore
from interp.experiments.trace import TraceConfig, run_trace


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("saes") / "t.h5"
    return run_trace(TraceConfig(n=4, steps="0,9", layers="0,6", num_steps=10, dtype="float32"), path, progress=False)


def test_an_sae_per_slab_is_saved_in_saelens_format_and_measured_on_held_out_videos(store, tmp_path, run_cli):
    from sae_lens import SAE

    args = ["sae", store, "--training-tokens", 25600, "--batch-size", 256, "--buffer-tokens", 1024, "--k", 8]
    code, out, err = run_cli(*args, "--dry-run", "--out", tmp_path / "never")
    assert code == 0 and "4 SAEs (2 layers x 2 steps)" in out and not (tmp_path / "never").exists(), err
    code, out, err = run_cli(*args, "--out", tmp_path / "sae")
    assert code == 0, err
    record = json.loads((tmp_path / "sae" / "saes.json").read_text())
    rows = {(r["layer"], r["step"]): r for r in record["rows"]}
    assert set(rows) == {(0, 0), (0, 9), (6, 0), (6, 9)} and "explained variance on 1 held-out videos" in out
    row = rows[(6, 9)]
    sae = SAE.load_from_disk(str(tmp_path / "sae" / row["path"]))  # SAELens' own loader
    assert type(sae).__name__ == "TopKSAE" and sae.cfg.d_sae == 4 * 128
    assert (sae.cfg.metadata.hook_name, sae.cfg.metadata.denoise_step) == ("blocks.6", 9)
    with ActivationStore(store) as s:
        x = torch.from_numpy(s.activations("blocks.6", videos=record["test_videos"], steps=[9]).reshape(-1, 128))
    with torch.no_grad():
        z = sae.encode(x)
        x_hat = sae.decode(z)
    ev = 1 - float(((x_hat - x).double() ** 2).sum() / ((x - x.mean(0)).double() ** 2).sum())
    assert row["explained_variance"] == pytest.approx(ev, abs=1e-6) and row["tokens"] == len(x)
    assert row["l0"] == pytest.approx(float((z != 0).sum(-1).double().mean())) and 0 < row["l0"] <= 8
    assert row["dead"] == int(((z != 0).sum(0) == 0).sum())
    assert np.isfinite([r["explained_variance"] for r in rows.values()]).all()
    assert (tmp_path / "sae" / "explained_variance.png").stat().st_size > 0


def test_every_architecture_trains_and_reads_back(store, tmp_path):
    from interp.experiments.sae import SAEConfig, run_sae

    inference = {"batchtopk": "JumpReLUSAE", "jumprelu": "JumpReLUSAE", "standard": "StandardSAE"}  # as SAELens saves
    for architecture, loaded in inference.items():
        cfg = SAEConfig(store=str(store), steps="9", layers="0", architecture=architecture, training_tokens=4096,
                        batch_size=256, buffer_tokens=1024, k=8)  # fmt: skip
        result = run_sae(cfg, tmp_path / architecture, progress=False)
        from sae_lens import SAE

        sae = SAE.load_from_disk(str(tmp_path / architecture / result.rows[0]["path"]))
        assert type(sae).__name__ == loaded and np.isfinite(result.rows[0]["mse"])


def test_a_slab_the_store_does_not_keep_is_one_clear_error(store, tmp_path, run_cli):
    for args, message in ((["--steps", "5"], "step 5 is not in the store"), (["--layers", "3"], "keeps none of these"),
                          (["--architecture", "relu"], "architecture must be one of")):  # fmt: skip
        code, _, err = run_cli("sae", store, *args, "--out", tmp_path / "x")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


class _Exact:
    """An 'SAE' whose reconstruction is its input (``zeros``: nothing): what the splice-in score must call 1
    (and 0, where ablating the site changes the outcome)."""

    device = torch.device("cpu")

    def __init__(self, zeros: bool = False):
        self.zeros = zeros

    def encode(self, x):
        return x

    def decode(self, z):
        return torch.zeros_like(z) if self.zeros else z


def test_the_splice_in_score_is_one_for_an_exact_reconstruction_and_zero_for_none(store, tmp_path):
    from tiny_pipelines import build_tiny_wan, write_samples

    from interp.features.splice import splice_runs, splice_score

    with ActivationStore(store) as s:
        runs = splice_runs(s, [0, 1])
        # the store's own run, re-run (in a batch of 2, not the trace's 4: equal up to batched float sums)
        np.testing.assert_allclose(runs.clean.numpy(), s.final([0, 1]), atol=1e-4)
    assert set(runs.losses) == {"latent distance", "failure rate"}  # a maze model: the verifier too
    exact = splice_score(runs, _Exact(), "blocks.6", 0)
    assert exact["failure rate with SAE"] == exact["failure rate clean"]
    assert exact["latent distance with SAE"] == 0.0 and exact["splice_score"] == 1.0
    nothing = splice_score(runs, _Exact(zeros=True), "blocks.6", 0)
    assert nothing["failure rate with SAE"] == nothing["failure rate zero ablation"]
    assert nothing["splice_score"] == pytest.approx(0.0) and nothing["latent distance zero ablation"] > 0
    if nothing["failure rate zero ablation"] != nothing["failure rate clean"]:  # ablating the site matters here
        assert exact["splice_score_verifier"] == 1.0 and nothing["splice_score_verifier"] == 0.0
    wan = build_tiny_wan(tmp_path / "wan")
    path = run_trace(TraceConfig(model=str(wan), data=str(write_samples(tmp_path / "data", n=1)), height=32, width=32,
                                 num_frames=5, num_steps=3, layers="1", dtype="float32"), tmp_path / "w.h5",
                     progress=False)  # fmt: skip
    with ActivationStore(path) as s:
        runs = splice_runs(s, [0])
    assert set(runs.losses) == {"latent distance"}  # no verifier: the final latent alone
    exact = splice_score(runs, _Exact(), "blocks.1", 1)
    nothing = splice_score(runs, _Exact(zeros=True), "blocks.1", 1, ablation="zero")
    assert exact["latent distance with SAE"] == 0.0 and exact["splice_score"] == 1.0
    assert nothing["splice_score"] == pytest.approx(0.0) and nothing["latent distance zero ablation"] > 0
    assert "splice_score_verifier" not in exact


@pytest.mark.parametrize("family", ["cogvideox", "wan-unipc"])
def test_an_exact_splice_leaves_a_joint_stream_and_a_multistep_run_as_they_were(tmp_path, family):
    """On CogVideoX (text rows beside the video in every block's output) and on Wan with UniPC (a multistep
    solver): the run with an exact reconstruction spliced in ends where the clean run does, and a zero
    'reconstruction' where the zero ablation does."""
    from tiny_pipelines import build_tiny_cogvideox, build_tiny_wan, write_samples

    from interp.features.splice import splice_runs, splice_score

    cog = family == "cogvideox"
    model = build_tiny_cogvideox(tmp_path / "m") if cog else build_tiny_wan(tmp_path / "m", unipc=True)
    frames = 9 if cog else 5
    cfg = TraceConfig(model=str(model), data=str(write_samples(tmp_path / "data", n=1)), height=32, width=32,
                      num_frames=frames, num_steps=3, layers="0", dtype="float32", max_sequence_length=16)  # fmt: skip
    with ActivationStore(run_trace(cfg, tmp_path / "s.h5", progress=False)) as s:
        runs = splice_runs(s, [0])
    exact = splice_score(runs, _Exact(), "blocks.0", 1)
    nothing = splice_score(runs, _Exact(zeros=True), "blocks.0", 1)
    assert exact["latent distance with SAE"] == 0.0 and exact["splice_score"] == 1.0
    assert nothing["latent distance with SAE"] == nothing["latent distance zero ablation"] > 0


def test_a_step_shared_sae_centres_each_step_and_is_measured_at_each(store, tmp_path):
    """`--shared`: one SAE per layer trained on every chosen step's tokens, each step's mean training token
    subtracted first (saved beside it); read at a step it encodes x - mean and decodes + mean, and its quality at
    each step is the hand computation on that step's held-out tokens."""
    from safetensors.torch import load_file

    from interp.experiments.sae import SAEConfig, run_sae
    from interp.features.saes import StepSAE, load_sae

    cfg = SAEConfig(store=str(store), layers="6", shared=True, training_tokens=8192, batch_size=256,
                    buffer_tokens=1024, k=8, splice=False)  # fmt: skip
    result = run_sae(cfg, tmp_path / "shared", progress=False)
    assert [(r["step"], r["shared"]) for r in result.rows] == [(0, True), (9, True)]
    assert len({r["path"] for r in result.rows}) == 1
    folder = tmp_path / "shared" / result.rows[0]["path"]
    means = load_file(str(folder / "step_means.safetensors"))
    with ActivationStore(store) as s:
        for row in result.rows:
            step = row["step"]
            train = s.activations("blocks.6", videos=result.train_videos, steps=[step]).reshape(-1, 128)
            assert np.allclose(means[f"step_{step}"].numpy(), train.mean(0), atol=1e-5)
            sae = load_sae(folder, step=step)
            assert isinstance(sae, StepSAE) and sae.cfg.d_sae == 512
            x = torch.from_numpy(s.activations("blocks.6", videos=result.test_videos, steps=[step]).reshape(-1, 128))
            with torch.no_grad():
                z = sae.sae.encode(x - means[f"step_{step}"])
                x_hat = sae.sae.decode(z) + means[f"step_{step}"]
                assert torch.equal(sae.encode(x), z)
            ev = 1 - float(((x_hat - x).double() ** 2).sum() / ((x - x.mean(0)).double() ** 2).sum())
            assert row["explained_variance"] == pytest.approx(ev, abs=1e-6)
    with pytest.raises(ValueError, match="shared by steps \\[0, 9\\]"):
        load_sae(folder)
