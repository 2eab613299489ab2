"""The study's claims, each decided from a run's own numbers with its control: a verdict in words
(shows / does not show / cannot tell) and why. Thresholds are stated in the ``why`` of every claim;
nothing here is typed in per run."""

from __future__ import annotations

from interp.evaluation import wilson_interval

SHOWS, NOT_SHOWN, CANNOT_TELL = "shows", "does not show", "cannot tell"


def claim(name: str, measurement: str, control: str, verdict: str, why: str) -> dict:
    return {"claim": name, "measurement": measurement, "control": control, "verdict": verdict, "why": why}


def _pct(ci) -> str:
    return f"{ci[0]:.0%}-{ci[1]:.0%}"


def steps_not_frames(baseline: dict, at_step: dict, at_frame: dict) -> dict:
    """Chain of steps vs chain of frames, from noise at step vs noise at frame (verifier runs)."""
    name = "reasoning runs along denoising steps, not along frames"
    if "accuracy" not in baseline:
        return claim(name, "cosine similarity only", "none", CANNOT_TELL, "no verifier for this model: use --scorer")
    half = baseline["accuracy"] / 2
    broken = [s for s, r in sorted(at_step.items()) if r["ci95"][1] < half]
    last = max(at_frame) if at_frame else None
    earlier = {f: r for f, r in at_frame.items() if f != last}
    if not broken or not earlier:
        why = "no noised step falls clearly below half the baseline, or no earlier frame was noised"
        return claim(name, "noise at step / at frame", f"no noise: {baseline['accuracy']:.0%}", CANNOT_TELL, why)
    worst = min(earlier.items(), key=lambda kv: kv[1]["final_exact"])
    kept = worst[1]["final_exact_ci95"][0] >= half
    measurement = (f"noise at step {broken[0]}: solved {at_step[broken[0]]['accuracy']:.0%} "
                   f"({_pct(at_step[broken[0]]['ci95'])}); noise at frame {worst[0]}: answer right "
                   f"{worst[1]['final_exact']:.0%} ({_pct(worst[1]['final_exact_ci95'])})")  # fmt: skip
    control = f"no noise: solved {baseline['accuracy']:.0%} ({_pct(baseline['ci95'])})"
    why = ("step noise breaks the answer (interval below half the baseline) while noise in any earlier frame "
           "keeps it (interval at or above half)" if kept else
           "noise in an earlier frame breaks the answer too (interval below half the baseline)")  # fmt: skip
    if not kept and worst[1]["final_exact_ci95"][1] >= half:
        return claim(name, measurement, control, CANNOT_TELL, "the frame-noise interval straddles half the baseline")
    return claim(name, measurement, control, SHOWS if kept else NOT_SHOWN, why)


def behaviour_share(name: str, label: str, shares: dict, n: int, floor: float = 0.05) -> dict:
    """A chain-of-steps behaviour (multi-path, self-correction, ...) from the share of videos showing it."""
    k = round(shares[label] * n)
    lo, hi = wilson_interval(k, n)
    measurement = f"{k}/{n} videos ({shares[label]:.0%}, 95% CI {lo:.0%}-{hi:.0%})"
    control = f"a floor of {floor:.0%} of videos (what a detector's false alarms could give)"
    if lo > floor:
        return claim(name, measurement, control, SHOWS, f"the interval lies above {floor:.0%}")
    if hi < floor:
        return claim(name, measurement, control, NOT_SHOWN, f"the interval lies below {floor:.0%}")
    return claim(name, measurement, control, CANNOT_TELL, f"the interval contains {floor:.0%}: more videos needed")


def ensemble_gain(rows: list[dict]) -> list[dict]:
    """Per maze size: the best ensemble against the best noise-shrinking control."""
    out = []
    for size in sorted({r["size"] for r in rows}):
        sel = [r for r in rows if r["size"] == size]
        ens = [r for r in sel if r["method"].startswith("ensemble")]
        ctl = [r for r in sel if r["method"].startswith("control")]
        if not ens or not ctl:
            continue
        e, c = max(ens, key=lambda r: r["accuracy"]), max(ctl, key=lambda r: r["accuracy"])
        name = f"the seed ensemble gains more than a temperature effect ({size}x{size})"
        measurement = f"{e['method']} N={e.get('n_seeds')}: {e['accuracy']:.0%} ({_pct(e['ci95'])})"
        control = f"{c['method']}: {c['accuracy']:.0%} ({_pct(c['ci95'])})"
        if "solved" in e and "solved" in c:  # the same mazes: a paired test
            only_e, only_c, p = mcnemar(e["solved"], c["solved"])
            measurement += f"; solved by it alone on {only_e} mazes, by the control alone on {only_c}"
            if e["accuracy"] <= c["accuracy"]:
                verdict, why = NOT_SHOWN, "the best control is at least as accurate as the best ensemble"
            elif p < 0.05:
                verdict, why = SHOWS, f"paired on the same mazes, exact McNemar p = {p:.3f} < 0.05"
            else:
                verdict, why = CANNOT_TELL, f"paired on the same mazes, exact McNemar p = {p:.2f} >= 0.05"
        elif e["ci95"][0] > c["ci95"][1]:
            verdict, why = SHOWS, "the ensemble's interval lies above the best control's"
        elif e["accuracy"] <= c["accuracy"]:
            verdict, why = NOT_SHOWN, "the best control is at least as accurate as the best ensemble"
        else:
            verdict, why = (
                CANNOT_TELL,
                "the intervals overlap (independent intervals; per-maze outcomes would allow a paired test)",
            )
        out.append(claim(name, measurement, control, verdict, why))
    return out


def mcnemar(a, b) -> tuple[int, int, float]:
    """Exact McNemar test of two methods' per-maze outcomes (paired, same mazes): (a only, b only,
    two-sided p)."""
    import numpy as np
    from scipy.stats import binomtest

    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    return only_a, only_b, float(binomtest(only_a, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0


def _knocked(rows: list[dict], rule: str) -> list[dict]:
    return sorted((r for r in rows if r["rule"] == rule), key=lambda r: r["step"])


def cross_frames_carry(baseline: dict, rows: list[dict]) -> dict:
    """Cross-frame attention carries the reasoning at early steps: knocking out every attention between
    different frames at an early step (the first third of the knocked steps) solves clearly fewer mazes
    than removing as many attention entries at random there."""
    name = "cross-frame attention carries the reasoning at early steps"
    cross = _knocked(rows, "cross")
    if "accuracy" not in baseline or not cross:
        why = "no verifier for this model" if cross else "no cross-frame knockout was run (--rule cross)"
        return claim(name, "cosine similarity only" if cross else "none", "none", CANNOT_TELL, why)
    early = cross[: max(1, len(cross) // 3)]
    below = [r for r in early if r["knocked"]["ci95"][1] < r["control"]["ci95"][0]]
    first = below[0] if below else early[0]
    measurement = (f"cross knockout at step {first['step']}: solved {first['knocked']['accuracy']:.0%} "
                   f"({_pct(first['knocked']['ci95'])}); clearly below its control at {len(below)} of "
                   f"{len(early)} early steps ({', '.join(str(r['step']) for r in early)})")  # fmt: skip
    control = (f"as many entries removed at random at step {first['step']}: {first['control']['accuracy']:.0%} "
               f"({_pct(first['control']['ci95'])}); no knockout {baseline['accuracy']:.0%}")  # fmt: skip
    if all(r["knocked"]["ci95"][0] == 0.0 and r["control"]["ci95"][0] == 0.0 for r in early):
        return claim(name, measurement, control, CANNOT_TELL, "removing as many entries at random breaks the run as "
                     "fully: the test is saturated (knock out fewer layers or a single step)")  # fmt: skip
    if 2 * len(below) >= len(early):
        return claim(name, measurement, control, SHOWS, "at half or more of the early steps the knockout's interval "
                     "lies below the random control's")  # fmt: skip
    if all(r["knocked"]["ci95"][1] >= r["control"]["accuracy"] for r in early):
        return claim(name, measurement, control, NOT_SHOWN, "at every early step the knockout's interval reaches "
                     "the random control's accuracy")  # fmt: skip
    return claim(name, measurement, control, CANNOT_TELL, "the intervals neither separate nor agree at most early "
                 "steps")  # fmt: skip


def causal_frames_suffice(baseline: dict, rows: list[dict]) -> dict:
    """Frame-causal attention suffices (what a Chain-of-Frames would need): removing every attention to
    later frames, at any one step, leaves the accuracy within the unknocked run's interval, while removing
    as many entries at random somewhere does not (else the test could not tell anything apart)."""
    name = "frame-causal attention suffices (what Chain-of-Frames would need)"
    causal = _knocked(rows, "causal")
    if "accuracy" not in baseline or not causal:
        why = "no verifier for this model" if causal else "no frame-causal knockout was run (--rule causal)"
        return claim(name, "cosine similarity only" if causal else "none", "none", CANNOT_TELL, why)
    lo = baseline["ci95"][0]
    dropped = [r for r in causal if r["knocked"]["ci95"][1] < lo]
    worst = min(causal, key=lambda r: r["knocked"]["accuracy"])
    control_hurts = [r for r in causal if r["control"]["ci95"][1] < lo]
    measurement = (f"causal knockout: lowest at step {worst['step']}, solved {worst['knocked']['accuracy']:.0%} "
                   f"({_pct(worst['knocked']['ci95'])}); clearly below the unknocked run at {len(dropped)} of "
                   f"{len(causal)} steps")  # fmt: skip
    control = (f"no knockout {baseline['accuracy']:.0%} ({_pct(baseline['ci95'])}); as many entries at random hurt "
               f"clearly at {len(control_hurts)} of {len(causal)} steps")  # fmt: skip
    if dropped:
        return claim(name, measurement, control, NOT_SHOWN, "at some step the knockout's interval lies below the "
                     "unknocked run's")  # fmt: skip
    if not control_hurts:
        return claim(name, measurement, control, CANNOT_TELL, "removing as many entries at random hurts at no step "
                     "either: the test cannot tell these entries from any others")  # fmt: skip
    if any(r["knocked"]["ci95"][1] < baseline["accuracy"] for r in causal):
        return claim(name, measurement, control, CANNOT_TELL, "at some step the knockout's interval neither reaches "
                     "the unknocked accuracy nor lies below its interval: more mazes needed")  # fmt: skip
    return claim(name, measurement, control, SHOWS, "at every step the knockout's interval reaches the unknocked "
                 "accuracy, while removing as many entries at random hurts at some step")  # fmt: skip
