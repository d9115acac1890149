"""The paired benchmark's figures: intervals, paired gains and the axes read the CSV tables right."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from otviz import figures


def _final(seed_effect=True):
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(10):
        base = 0.8 + (0.05 * rng.standard_normal() if seed_effect else 0.0)  # shared by all methods
        for method, gain in (("scratch", -0.05), ("fitnets", 0.0), ("ot", 0.02), ("kd+ot", 0.01)):
            rows.append(dict(setting="distill", method=method, seed=seed,
                             val_accuracy=base + gain, test_accuracy=base + gain + 0.002 * rng.standard_normal(),
                             seconds=1.0))
    return pd.DataFrame(rows)


def _interval_of(fig, name):
    for tr in fig.data:
        if list(tr.y) == [name]:
            x = tr.x[0]
            return x, x - tr.error_x.arrayminus[0], x + tr.error_x.array[0]
    raise AssertionError(f"no trace {name}")


def test_method_intervals_are_student_t_over_seeds():
    df = _final()
    fig = figures.method_intervals(df, "distill")
    acc = 100 * df[df.method == "ot"].test_accuracy.to_numpy()
    half = sps.t.ppf(0.975, len(acc) - 1) * acc.std(ddof=1) / np.sqrt(len(acc))
    mean, lo, hi = _interval_of(fig, "ot")
    assert mean == pytest.approx(acc.mean()) and lo == pytest.approx(acc.mean() - half)
    assert hi == pytest.approx(acc.mean() + half)
    assert [tr.y[0] for tr in fig.data][-1] == "ot"  # sorted by mean: the best on top


def test_paired_gains_pair_by_seed_and_colour_by_the_interval():
    df = _final()
    fig = figures.paired_gains(df, "distill", ours="ot")
    names = [tr.y[0] for tr in fig.data]
    assert set(names) == {"ot - scratch", "ot - fitnets"}  # kd+ot is not a baseline
    mean, lo, hi = _interval_of(fig, "ot - fitnets")
    # the seed effect is shared: paired, the difference is tight around +2 points
    assert mean == pytest.approx(2.0, abs=0.3) and lo > 0
    ot = df[df.method == "ot"].set_index("seed").test_accuracy
    fn = df[df.method == "fitnets"].set_index("seed").test_accuracy
    d = 100 * (ot - fn).to_numpy()
    half = sps.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    assert (lo, hi) == pytest.approx((d.mean() - half, d.mean() + half))
    colour = next(tr.marker.color for tr in fig.data if tr.y[0] == "ot - fitnets")
    assert colour == "#3a9a5b"  # green: the interval is above 0


def test_paired_gains_refuse_a_method_without_runs():
    with pytest.raises(ValueError, match="has no runs"):
        figures.paired_gains(_final(), "distill", ours="sp")


def test_axis_curves_draw_mean_and_band_per_method_on_a_log_axis():
    rows = [dict(setting="transfer", axis="k", value=k, method=m, seed=s,
                 test_accuracy=0.5 + 0.1 * np.log10(k) + (0.05 if m == "ot" else 0.0) + 0.01 * s,
                 val_accuracy=0.5, seconds=1.0)
            for k in (5, 10, 25, 100) for m in ("scratch", "ot") for s in range(3)]
    fig = figures.axis_curves(pd.DataFrame(rows), "transfer")
    lines = [tr for tr in fig.data if tr.mode == "lines+markers"]
    assert [tr.name for tr in lines] == ["scratch", "ot"]
    ot = lines[1]
    assert list(ot.x) == [5, 10, 25, 100]
    assert ot.y[0] == pytest.approx(100 * (0.5 + 0.1 * np.log10(5) + 0.05 + 0.01))
    assert fig.layout.xaxis.type == "log"


def test_figures_name_missing_columns():
    with pytest.raises(ValueError, match="lacks the column"):
        figures.method_intervals(pd.DataFrame({"setting": ["x"]}), "x")
    with pytest.raises(ValueError, match="no runs of setting"):
        figures.method_intervals(_final(), "transfer")


def test_budget_curves_one_line_per_setting_with_mean_per_epoch():
    rows = [dict(setting=s, epoch=e, seed=seed, val_accuracy=min(0.9, 0.2 + 0.2 * e) + 0.01 * seed)
            for s in ("distill", "transfer") for e in range(6) for seed in range(3)]
    fig = figures.budget_curves(pd.DataFrame(rows))
    lines = [tr for tr in fig.data if tr.mode == "lines+markers"]
    assert [tr.name for tr in lines] == ["distill", "transfer"]
    assert list(lines[0].x) == list(range(6))
    assert lines[0].y[-1] == pytest.approx(91.0) and lines[0].y[0] == pytest.approx(21.0)


def test_a_diverged_run_is_left_out_and_the_pairs_use_the_seeds_both_finished():
    df = _final()
    df.loc[(df.method == "ot") & (df.seed == 3), "test_accuracy"] = np.nan
    fig = figures.paired_gains(df, "distill", ours="ot")
    mean, lo, hi = _interval_of(fig, "ot - fitnets")
    ot = df[(df.method == "ot") & (df.seed != 3)].set_index("seed").test_accuracy
    fn = df[(df.method == "fitnets") & (df.seed != 3)].set_index("seed").test_accuracy
    assert mean == pytest.approx(100 * (ot - fn).mean())
    mean_ot, _, _ = _interval_of(figures.method_intervals(df, "distill"), "ot")
    assert mean_ot == pytest.approx(100 * ot.mean())


def _trials():
    """Tuning trials of two methods in two settings; NaN: a pruned, failed or running trial."""
    nan = float("nan")
    rows = []
    for setting, per_method in (("transfer", {"scratch": [0.5, nan, 0.7, 0.6], "ot": [nan, 0.55, 0.8, 0.9]}),
                                ("distill", {"scratch": [0.3, 0.4], "ot": [nan, nan]})):
        for method, values in per_method.items():
            rows += [dict(setting=setting, method=method, trial=i, val_accuracy=v) for i, v in enumerate(values)]
    return pd.DataFrame(rows)


def test_search_progress_draws_the_best_so_far_per_method_in_percent():
    from otviz.sweep import best_so_far

    fig = figures.search_progress(best_so_far(_trials()), "transfer")
    assert [tr.name for tr in fig.data] == ["scratch", "ot"]
    scratch, ot = fig.data
    assert list(scratch.x) == [1, 2, 3, 4] and list(ot.x) == [1, 2, 3, 4]
    # the best so far never falls: a pruned trial (NaN) and a worse one keep it
    assert list(scratch.y) == pytest.approx([50.0, 50.0, 70.0, 70.0])
    assert ot.y[0] is None and list(ot.y[1:]) == pytest.approx([55.0, 80.0, 90.0])
    # the colours of the other benchmark figures
    assert scratch.line.color == figures.method_intervals(_final(), "distill").data[0].marker.color
    assert "best validation accuracy" in fig.layout.yaxis.title.text and "%" in fig.layout.yaxis.title.text
    assert "trials" in fig.layout.xaxis.title.text
    assert "best validation accuracy" in ot.hovertemplate
    # a method without a complete trial says so in the legend
    distill = figures.search_progress(best_so_far(_trials()), "distill")
    assert [tr.name for tr in distill.data] == ["scratch", "ot (no complete trial yet)"]
    assert list(distill.data[0].y) == pytest.approx([30.0, 40.0])


def test_search_progress_names_bad_input():
    from otviz.sweep import best_so_far

    bsf = best_so_far(_trials())
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['best_val_accuracy'\]"):
        figures.search_progress(bsf.drop(columns="best_val_accuracy"), "transfer")
    with pytest.raises(ValueError, match="no trials of setting 'cifar'.*'distill', 'transfer'"):
        figures.search_progress(bsf, "cifar")
    with pytest.raises(ValueError, match="empty"):
        figures.search_progress(bsf.iloc[:0], "transfer")


def test_search_progress_leaves_a_running_trial_uncounted():
    from otviz.sweep import best_so_far

    trials = _trials().assign(state="complete")
    last = trials.index[(trials.setting == "transfer") & (trials.method == "ot")][-1]
    trials.loc[last, ["state", "val_accuracy"]] = ["running", float("nan")]
    scratch, ot = figures.search_progress(best_so_far(trials), "transfer").data
    assert list(scratch.x) == [1, 2, 3, 4] and list(ot.x) == [1, 2, 3]  # ot's 4th trial still runs
    assert list(ot.y[1:]) == pytest.approx([55.0, 80.0])
