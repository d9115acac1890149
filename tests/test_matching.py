"""Tests for otviz.matching and the figures built on it (cost beside plan, matched costs,
per-neuron quality, reallocation, runs on one chart)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from otviz import figures as F
from otviz import matching as M
from otviz.transport import align


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def perm_plan(perm: np.ndarray) -> np.ndarray:
    n = len(perm)
    P = np.zeros((n, n))
    P[np.arange(n), perm] = 1.0 / n
    return P


# ----------------------------------------------------------------------------- library
def test_reallocation_counts_on_constructed_plans():
    I = np.eye(4) / 4
    swap2 = I[[1, 0, 2, 3]]                    # teachers 0 and 1 swap partners
    split = swap2.copy()
    split[2] = [0, 0, 0.125, 0.125]            # teacher 2 splits evenly: a tie is not a change
    shift = np.zeros((4, 4))
    shift[:, 0] = 0.25                         # everyone to student 0
    df = M.reallocation([I, I, swap2, split, shift], epochs=[0, 1, 2, 5, 6])
    assert df["epoch"].tolist() == [1, 2, 5, 6]
    assert df["previous_epoch"].tolist() == [0, 1, 2, 5]
    assert df["changed_partners"].tolist() == [0, 2, 0, 3]
    np.testing.assert_allclose(df["fraction"], [0, 0.5, 0, 0.75])
    np.testing.assert_allclose(df["moved_mass"], [0, 0.5, 0.125, 0.75])


def test_reallocation_normalises_mass_and_rejects_bad_input():
    I = np.eye(3)
    df = M.reallocation([I, 5 * I[[2, 0, 1]]])
    assert df["changed_partners"].tolist() == [3] and df["moved_mass"].iloc[0] == pytest.approx(1)
    with pytest.raises(ValueError, match="two snapshots"):
        M.reallocation([I])
    with pytest.raises(ValueError, match="shape"):
        M.reallocation([I, np.eye(4)])
    with pytest.raises(ValueError, match="increase"):
        M.reallocation([I, I], epochs=[1, 1])
    with pytest.raises(ValueError, match="NaN"):
        M.reallocation([I, np.full((3, 3), np.nan)])
    with pytest.raises(TypeError):
        M.reallocation(I)


def test_matched_costs_and_contrast():
    C = np.array([[0.0, 2.0], [2.0, 0.0]])
    P = np.eye(2) / 2
    assert M.cost_contrast(P, C) == 0.0
    assert M.cost_contrast(np.full((2, 2), 0.25), C) == pytest.approx(1.0)
    assert M.cost_contrast(P, 7 * C + 1) == pytest.approx(1 / 8)  # (0*7+1) / (1*7+1)
    d = M.matched_costs(P, C)
    assert d["matched_cost"].tolist() == [0.0, 0.0] and d["matched_weight"].sum() == 1
    assert d["all_weight"].sum() == pytest.approx(1) and len(d["all_cost"]) == 4
    with pytest.raises(ValueError, match="shape"):
        M.cost_contrast(P, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="negative"):
        M.cost_contrast(P, -C)
    with pytest.raises(ValueError, match="costs 0"):
        M.cost_contrast(P, np.zeros((2, 2)))
    with pytest.raises(TypeError, match="cost"):
        M.cost_contrast(P)


def test_neuron_match_quality_per_side(rng):
    T = rng.normal(size=(6, 30))
    perm = rng.permutation(6)
    al = align(T, T[perm] + 0.01 * rng.normal(size=(6, 30)))
    q = M.neuron_match_quality(al)
    assert q["neuron"].tolist() == list(range(6))
    np.testing.assert_array_equal(q["partner"], np.argsort(perm))  # teacher i -> its copy
    assert (q["rank"] == 0).all() and (q["relative_cost"] < 0.01).all()
    qs = M.neuron_match_quality(al, side="student")
    np.testing.assert_array_equal(qs["partner"], perm)
    # a uniform plan over a random cost is no better than typical: mean ratio ~ mean / median
    C = rng.random((5, 7))
    q = M.neuron_match_quality(np.full((5, 7), 1 / 35), C)
    np.testing.assert_allclose(q["relative_cost"], C.mean(1) / np.median(C, 1))
    with pytest.raises(ValueError, match="side"):
        M.neuron_match_quality(al, side="both")


def test_main_partners():
    P = np.array([[0.1, 0.3], [0.0, 0.0], [0.2, 0.2]])
    assert M.main_partners(P).tolist() == [1, -1, 0]


# ----------------------------------------------------------------------------- figures
def test_alignment_panel_same_order_and_contrast(rng):
    T = rng.normal(size=(10, 20))
    al = align(T, rng.normal(size=(4, 20)))
    fig = F.alignment_panel(al)
    cost, plan = [t for t in fig.data if t.type == "heatmap"]
    assert (cost.name, plan.name) == ("cost", "plan")
    rows, cols = F.plan_order(al.plan)
    np.testing.assert_allclose(np.asarray(cost.z, float), al.cost_matrix[rows][:, cols])
    np.testing.assert_allclose(np.asarray(plan.z, float), al.plan[rows][:, cols])
    assert list(cost.y) == list(plan.y) == [str(i) for i in rows]
    assert list(cost.x) == list(plan.x) == [str(j) for j in cols]
    assert cost.colorbar.title.text == "cost" and plan.colorbar.title.text == "mass"
    assert f"{M.cost_contrast(al):.0%}" in fig.layout.title.text
    assert "sqeuclidean" in fig.layout.annotations[0].text  # cost named over its panel
    # hover names the partner
    assert "main partner" in plan.hovertemplate and "main partner" in cost.hovertemplate
    with pytest.raises(TypeError, match="cost"):
        F.alignment_panel(al.plan)


def test_alignment_panel_blocks_for_big_plans(rng):
    al = align(rng.normal(size=(512, 12)), rng.normal(size=(128, 12)))
    fig = F.alignment_panel(al)
    cost, plan = [t for t in fig.data if t.type == "heatmap"]
    Z = np.asarray(plan.z, float)
    assert Z.shape == (64, 64) and Z.sum() == pytest.approx(1.0)
    rows, cols = F.plan_order(al.plan)
    np.testing.assert_allclose(Z[0, 0], al.plan[rows[:8]][:, cols[:2]].sum())
    Cz = np.asarray(cost.z, float)
    assert Cz.shape == (64, 64) and np.isfinite(Cz).all()
    assert plan.y[0].startswith("teachers ") and "blocks of 8" in fig.layout.yaxis.title.text


def test_matched_cost_distribution_separates_good_from_random(rng):
    T = rng.normal(size=(16, 40))
    good = align(T, T[rng.permutation(16)] + 0.1 * rng.normal(size=(16, 40)))
    bad = align(T, rng.normal(size=(16, 40)))
    for al, sep in ((good, True), (bad, False)):
        fig = F.matched_cost_distribution(al, cost_label="my cost")
        tr = {t.name: t for t in fig.data}
        assert set(tr) == {"all pairs", "matched pairs"}
        m, a = tr["matched pairs"].meta, tr["all pairs"].meta
        assert m["mean"] == pytest.approx(al.distance / al.plan.sum())
        assert a["mean"] == pytest.approx(al.cost_matrix.mean())
        assert (m["median"] < 0.2 * a["median"]) == sep
        assert fig.layout.xaxis.title.text == "my cost"
        y = np.asarray(tr["matched pairs"].y, float)
        assert y[0] == 0 and y[-1] == pytest.approx(1) and (np.diff(y) >= 0).all()
    fig = F.matched_cost_distribution(good, kind="histogram")
    assert sum(np.asarray(t.y, float).sum() for t in fig.data) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="kind"):
        F.matched_cost_distribution(good, kind="violin")


def test_match_quality_sorted_bars_with_partner_hover(rng):
    T = rng.normal(size=(8, 30))
    al = align(T, rng.normal(size=(4, 30)))
    fig = F.match_quality(al)
    bars = {t.name: t for t in fig.data if t.type == "bar"}
    assert set(bars) == {"teacher neurons", "student neurons"}
    for side, n in (("teacher", 8), ("student", 4)):
        b = bars[f"{side} neurons"]
        y = np.asarray(b.y, float)
        assert len(y) == n and (np.diff(y) >= 0).all()
        q = M.neuron_match_quality(al, side=side).set_index("neuron")
        custom = np.asarray(b.customdata, float)
        np.testing.assert_allclose(y, q.loc[custom[:, 0].astype(int), "relative_cost"])
        np.testing.assert_array_equal(custom[:, 1], q.loc[custom[:, 0].astype(int), "partner"])
        assert "main partner" in b.hovertemplate
    assert len(F.match_quality(al, side="student").data) == 1


def test_reallocation_chart_and_compare_runs():
    I = np.eye(4) / 4
    fig = F.reallocation_chart([I, I[[1, 0, 2, 3]], I[[1, 0, 2, 3]]], [0, 1, 2])
    tr = {t.name: t for t in fig.data}
    assert list(tr["changed partners"].x) == [1, 2]
    np.testing.assert_allclose(np.asarray(tr["changed partners"].y, float), [0.5, 0.0])
    np.testing.assert_allclose(np.asarray(tr["moved mass"].y, float), [0.5, 0.0])
    series = pd.DataFrame(dict(run=["ot"] * 4 + ["scratch"] * 4, epoch=[0, 1, 1, 2] * 2,
                               pair="c3->c3", value=[1.0, 0.6, 0.4, 0.3, 1.0, 0.9, 0.9, 0.8]))
    fig = F.compare_runs(series, value_label="score", runs=["scratch", "ot"])
    assert [t.name for t in fig.data] == ["scratch", "ot"]
    np.testing.assert_allclose(np.asarray(fig.data[1].y, float), [1.0, 0.5, 0.3])
    assert fig.layout.yaxis.title.text == "score"
    with pytest.raises(ValueError, match="columns"):
        F.compare_runs(series.drop(columns="pair"))
    with pytest.raises(ValueError, match="NaN"):
        F.compare_runs(series.assign(value=np.nan))
    assert "No values" in F.compare_runs(series.iloc[:0]).layout.annotations[0].text
