"""Tests for otviz.figures: plotly figure builders."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
from torch import nn

from otviz import figures as F
from otviz.layers import layer_distances
from otviz.transport import align


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def northwest_plan(m: int, k: int) -> np.ndarray:
    """The monotone (1-D) plan between uniform weights: a staircase with split rows."""
    a, b = np.full(m, 1 / m), np.full(k, 1 / k)
    P = np.zeros((m, k))
    i = j = 0
    while i < m and j < k:
        x = min(a[i], b[j])
        P[i, j] += x
        a[i] -= x
        b[j] -= x
        if a[i] <= 1e-15:
            i += 1
        if b[j] <= 1e-15:
            j += 1
    return P


def assert_staircase(Z: np.ndarray, tol: float = 1e-12) -> None:
    """Each row's mass fills a contiguous band of columns; the bands move right going down."""
    lo_prev = hi_prev = -1
    for i, row in enumerate(Z):
        nz = np.flatnonzero(row > tol)
        assert len(nz), f"row {i} is empty"
        lo, hi = nz[0], nz[-1]
        assert np.all(row[lo:hi + 1] > tol), f"row {i} has a gap: {row}"
        assert lo >= lo_prev and hi >= hi_prev, f"row {i} band [{lo},{hi}] goes back"
        lo_prev, hi_prev = lo, hi


def heat(fig: go.Figure) -> go.Heatmap:
    traces = [t for t in fig.data if t.type == "heatmap"]
    assert len(traces) == 1
    return traces[0]


def n_segments(fig: go.Figure) -> int:
    lines = [t for t in fig.data if t.meta and t.meta.get("kind") == "plan lines"]
    return sum(sum(v is None for v in t.x) for t in lines)


# ----------------------------------------------------------------------------
# plan_order
# ----------------------------------------------------------------------------
def test_plan_order_permutation_gives_diagonal(rng):
    perm = rng.permutation(9)
    P = np.eye(9)[perm] / 9
    rows, cols = F.plan_order(P)
    assert sorted(rows) == list(range(9)) and sorted(cols) == list(range(9))
    np.testing.assert_allclose(P[rows][:, cols], np.eye(9) / 9)


def test_plan_order_exact_alignment_of_shuffled_layer(rng):
    T = rng.normal(size=(12, 20))
    perm = rng.permutation(12)
    al = align(T, T[perm])
    rows, cols = F.plan_order(al)
    np.testing.assert_allclose(al.plan[rows][:, cols], np.eye(12) / 12, atol=1e-12)


@pytest.mark.parametrize("m,k", [(13, 5), (10, 4), (12, 3), (20, 7), (6, 6)])
def test_plan_order_many_to_one_staircase(rng, m, k):
    P = northwest_plan(m, k)
    P = P[rng.permutation(m)][:, rng.permutation(k)]
    rows, cols = F.plan_order(P)
    Z = P[rows][:, cols]
    assert_staircase(Z)
    assert_staircase(Z.T)  # columns are contiguous bands too


def test_plan_order_one_to_many_staircase(rng):
    P = northwest_plan(11, 4).T  # 4 teacher neurons, 11 student neurons
    P = P[rng.permutation(4)][:, rng.permutation(11)]
    rows, cols = F.plan_order(P)
    Z = P[rows][:, cols]
    assert_staircase(Z)
    assert_staircase(Z.T)


def test_plan_order_exact_plan_of_1d_neurons(rng):
    # in 1-D the exact plan is monotone: reordered, it must be a staircase
    al = align(rng.normal(size=(10, 1)), rng.normal(size=(4, 1)))
    rows, cols = F.plan_order(al.plan)
    assert_staircase(al.plan[rows][:, cols])


def test_plan_order_entropic_plan_puts_matching_on_diagonal(rng):
    T = rng.normal(size=(16, 30))
    perm = rng.permutation(16)
    al = align(T, T[perm] + 0.01 * rng.normal(size=(16, 30)), method="sinkhorn", eps=0.05)
    rows, cols = F.plan_order(al)
    Z = al.plan[rows][:, cols]
    assert (Z > 0).all()
    np.testing.assert_array_equal(Z.argmax(axis=1), np.arange(16))


def test_plan_order_handles_empty_rows_and_columns():
    P = np.zeros((4, 3))
    P[0, 2] = P[2, 0] = 0.5
    rows, cols = F.plan_order(P)
    assert list(rows[:2]) == [0, 2] or list(rows[:2]) == [2, 0]
    assert set(rows[2:]) == {1, 3}
    assert cols[-1] == 1  # the column without mass goes last


@pytest.mark.parametrize("bad,err", [
    (np.array([[np.nan, 0.5], [0.5, 0.0]]), ValueError),
    (np.array([[np.inf, 0.5], [0.5, 0.0]]), ValueError),
    (np.zeros((0, 3)), ValueError),
    (np.ones(4) / 4, ValueError),
    (np.ones((2, 2, 2)), ValueError),
    (np.array([[0.6, -0.1], [0.0, 0.5]]), ValueError),
    (np.zeros((3, 3)), ValueError),
    (np.array([["a", "b"]]), TypeError),
])
def test_bad_plans_are_rejected(bad, err):
    with pytest.raises(err):
        F.plan_order(bad)
    with pytest.raises(err):
        F.plan_heatmap(bad)


def test_plan_order_accepts_torch():
    P = torch.eye(3)[[1, 2, 0]] / 3
    rows, cols = F.plan_order(P)
    np.testing.assert_allclose(P.numpy()[rows][:, cols], np.eye(3) / 3)


# ----------------------------------------------------------------------------
# plan_heatmap
# ----------------------------------------------------------------------------
def test_plan_heatmap_z_is_reordered_plan_with_original_labels(rng):
    al = align(rng.normal(size=(10, 5)), rng.normal(size=(4, 5)))
    fig = F.plan_heatmap(al)
    h = heat(fig)
    rows, cols = F.plan_order(al.plan)
    np.testing.assert_allclose(np.asarray(h.z), al.plan[rows][:, cols])
    assert list(h.y) == [str(i) for i in rows]
    assert list(h.x) == [str(j) for j in cols]
    assert "%{y}" in h.hovertemplate and "mass" in h.hovertemplate
    # title: distance and convergence
    text = fig.layout.title.text
    assert f"{al.distance:.4g}" in text and "exact solver" in text
    # heatmap rows read top to bottom
    assert fig.layout.yaxis.autorange == "reversed"
    # uniform marginals are said, not drawn as flat bars
    assert not [t for t in fig.data if t.type == "bar"]
    assert "marginals uniform" in text
    # hover names the pair, its cost and the row's main partner
    h = heat(fig)
    assert "main partner" in h.hovertemplate and "cost (sqeuclidean)" in h.hovertemplate
    custom = np.asarray(h.customdata, dtype=object)
    np.testing.assert_allclose(custom[..., 0].astype(float), al.plan[rows][:, cols])
    np.testing.assert_allclose(custom[..., 3].astype(float), al.cost_matrix[rows][:, cols])
    main = al.plan.argmax(axis=1)[rows]
    assert custom[:, 0, 2].tolist() == [str(j) for j in main]


def test_plan_heatmap_big_plans_in_blocks_and_height_from_shape(rng):
    P = np.zeros((512, 128))
    P[np.arange(512), np.arange(512) // 4] = 1 / 512
    fig = F.plan_heatmap(P, reorder=False)
    Z = np.asarray(heat(fig).z, float)
    assert Z.shape == (64, 64)  # 8 x 2 neurons per cell
    np.testing.assert_allclose(Z, np.eye(64) / 64)
    assert "blocks of 8 x 2" in fig.layout.title.text
    assert heat(fig).y[0] == "teachers 0, 1, 2, 3, 4, ... (8)"
    full = F.plan_heatmap(P, reorder=False, max_cells=None)
    assert np.asarray(heat(full).z).shape == (512, 128)
    small = F.plan_heatmap(np.eye(16) / 16)
    assert small.layout.height < F.plan_heatmap(np.eye(64) / 64).layout.height <= 900
    with pytest.raises(ValueError, match="max_cells"):
        F.plan_heatmap(P, max_cells=0)


def test_plan_heatmap_marginals_sum_to_one_and_match_targets(rng):
    al = align(rng.normal(size=(8, 6)), rng.normal(size=(5, 6)), method="unbalanced", eps=0.1)
    fig = F.plan_heatmap(al)
    bars = {t.name: t for t in fig.data if t.type == "bar"}
    assert set(bars) == {"row sums", "column sums"}
    row_sums = np.asarray(bars["row sums"].x, float)
    col_sums = np.asarray(bars["column sums"].y, float)
    assert row_sums.sum() == pytest.approx(al.plan.sum())
    assert col_sums.sum() == pytest.approx(al.plan.sum())
    rows, cols = F.plan_order(al.plan)
    np.testing.assert_allclose(row_sums, al.plan.sum(1)[rows])
    np.testing.assert_allclose(col_sums, al.plan.sum(0)[cols])
    targets = {t.name: t for t in fig.data if t.type == "scatter"}
    np.testing.assert_allclose(np.asarray(targets["target a"].x, float), al.a[rows])
    np.testing.assert_allclose(np.asarray(targets["target b"].y, float), al.b[cols])
    assert "converged" in fig.layout.title.text
    # forced on, uniform marginals are drawn too
    bal = align(rng.normal(size=(8, 6)), rng.normal(size=(5, 6)))
    assert {t.name for t in F.plan_heatmap(bal, show_marginals=True).data if t.type == "bar"} == \
        {"row sums", "column sums"}


def test_plan_heatmap_array_options(rng):
    P = rng.random((5, 7))
    P /= P.sum()
    fig = F.plan_heatmap(P, reorder=False, show_marginals=False, title="T",
                         teacher_label="conv1 (teacher) neurons")
    assert len(fig.data) == 1
    np.testing.assert_allclose(np.asarray(fig.data[0].z), P)
    assert list(fig.data[0].y) == [str(i) for i in range(5)]
    assert fig.layout.title.text == "T"
    assert fig.layout.yaxis.title.text == "conv1 (teacher) neurons"
    assert fig.layout.yaxis.type == "category"
    # a plain array has no targets
    fig = F.plan_heatmap(P)
    assert not [t for t in fig.data if t.type == "scatter"]


def test_plan_heatmap_log_color_and_fixed_order(rng):
    P = np.eye(4)[[3, 1, 0, 2]] * 0.25 + 1e-9
    P[0, 0] = 0.0
    rows, cols = np.arange(4)[::-1], np.arange(4)
    fig = F.plan_heatmap(P, log_color=True, order=(rows, cols), show_marginals=False)
    h = heat(fig)
    Z = P[rows][:, cols]
    custom = np.asarray(h.customdata, dtype=object)
    np.testing.assert_allclose(custom[..., 0].astype(float), Z)  # hover shows the real mass
    z = np.asarray(h.z, float)
    top = np.log10(Z.max())
    assert h.zmax == pytest.approx(top) and h.zmin == pytest.approx(top - 6)
    np.testing.assert_allclose(z, np.clip(np.log10(np.where(Z > 0, Z, 1e-300)), top - 6, None))
    assert z.min() == pytest.approx(top - 6)  # the zero sits at the floor
    with pytest.raises(ValueError, match="permutation"):
        F.plan_heatmap(P, order=(np.arange(3), cols))
    with pytest.raises(ValueError, match="permutation"):
        F.plan_heatmap(P, order=(np.array([0, 0, 1, 2]), cols))
    with pytest.raises(TypeError):
        F.plan_heatmap(P, order=np.arange(4))
    with pytest.raises(ValueError, match="zmax"):
        F.plan_heatmap(P, zmax=-1.0)


# ----------------------------------------------------------------------------
# plan_snapshots
# ----------------------------------------------------------------------------
def test_plan_snapshots_frames_slider_and_shared_order(rng):
    plans = []
    for t in range(4):
        P = rng.random((6, 3)) + 5 * t * northwest_plan(6, 3)
        plans.append(P / P.sum())
    labels = [f"epoch {t + 1}" for t in range(4)]
    fig = F.plan_snapshots(plans, labels)
    assert len(fig.frames) == 4
    assert [f.name for f in fig.frames] == labels
    assert len(fig.layout.sliders) == 1
    assert [s.label for s in fig.layout.sliders[0].steps] == labels
    assert fig.layout.updatemenus and len(fig.layout.updatemenus[0].buttons) == 2
    rows, cols = F.plan_order(plans[-1])
    for P, frame in zip(plans, fig.frames):
        np.testing.assert_allclose(np.asarray(frame.data[0].z), P[rows][:, cols])
        assert frame.data[0].zmax == pytest.approx(max(p.max() for p in plans))
    np.testing.assert_allclose(np.asarray(fig.data[0].z), plans[0][rows][:, cols])
    fig = F.plan_snapshots(plans, labels, active=-1, order=(np.arange(6), np.arange(3)))
    np.testing.assert_allclose(np.asarray(fig.data[0].z), plans[-1])
    assert fig.layout.sliders[0].active == 3


def test_plan_snapshots_bad_input(rng):
    P = np.eye(3) / 3
    with pytest.raises(ValueError, match="empty"):
        F.plan_snapshots([], [])
    with pytest.raises(ValueError, match="labels"):
        F.plan_snapshots([P, P], ["epoch 1"])
    with pytest.raises(ValueError, match="distinct"):
        F.plan_snapshots([P, P], ["e", "e"])
    with pytest.raises(ValueError, match="shape"):
        F.plan_snapshots([P, np.eye(4) / 4], ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        F.plan_snapshots([P, np.full((3, 3), np.nan)], ["a", "b"])
    with pytest.raises(TypeError):
        F.plan_snapshots(P, ["a", "b", "c"])
    with pytest.raises(ValueError, match="active"):
        F.plan_snapshots([P], ["a"], active=1)


# ----------------------------------------------------------------------------
# embeddings and neuron maps
# ----------------------------------------------------------------------------
def test_embed_neurons_pca_shape_determinism_and_normalisation(rng):
    T, S = rng.normal(size=(9, 40)), rng.normal(size=(5, 40))
    E = F.embed_neurons(T, S, method="pca")
    assert E.shape == (14, 2) and np.isfinite(E).all()
    np.testing.assert_allclose(F.embed_neurons(T, S, method="pca"), E)
    # standardised per neuron: shifting and rescaling a neuron changes nothing
    T2 = T.copy()
    T2[3] = 7.0 * T2[3] - 2.0
    np.testing.assert_allclose(F.embed_neurons(T2, S, method="pca"), E, atol=1e-9)
    # identical neurons land on the same point
    E = F.embed_neurons(T, T[[2, 0]], method="pca")
    np.testing.assert_allclose(E[9], E[2], atol=1e-9)
    np.testing.assert_allclose(E[10], E[0], atol=1e-9)
    # torch input, raw normalisation
    E = F.embed_neurons(torch.from_numpy(T), torch.from_numpy(S), method="pca", normalize=None)
    assert E.shape == (14, 2)


def test_embed_neurons_degenerate_and_bad_input(rng):
    assert F.embed_neurons(np.ones((1, 5)), np.ones((1, 5)) * 2, method="pca").shape == (2, 2)
    E = F.embed_neurons(rng.normal(size=(1, 4)), rng.normal(size=(1, 4)), method="pca")
    assert E.shape == (2, 2) and np.isfinite(E).all()
    with pytest.warns(UserWarning, match="too few for UMAP"):
        E = F.embed_neurons(rng.normal(size=(3, 8)), rng.normal(size=(2, 8)), method="umap")
    assert E.shape == (5, 2)
    with pytest.raises(ValueError, match="features"):
        F.embed_neurons(rng.normal(size=(3, 8)), rng.normal(size=(2, 7)))
    with pytest.raises(ValueError, match="empty"):
        F.embed_neurons(np.zeros((0, 8)), rng.normal(size=(2, 8)))
    with pytest.raises(ValueError, match="NaN"):
        F.embed_neurons(np.full((3, 8), np.nan), rng.normal(size=(2, 8)))
    with pytest.raises(ValueError, match="2-D"):
        F.embed_neurons(np.zeros(8), rng.normal(size=(2, 8)))
    with pytest.raises(ValueError, match="method"):
        F.embed_neurons(rng.normal(size=(3, 8)), rng.normal(size=(2, 8)), method="tsne")
    with pytest.raises(ValueError, match="normalize"):
        F.embed_neurons(rng.normal(size=(3, 8)), rng.normal(size=(2, 8)), method="pca",
                        normalize="zscore")
    with pytest.raises(ValueError, match="n_neighbors"):
        F.embed_neurons(rng.normal(size=(3, 8)), rng.normal(size=(2, 8)), n_neighbors=1)


@pytest.mark.skipif(os.environ.get("OTVIZ_SLOW") != "1",
                    reason="UMAP's first fit compiles with numba (about 1-3 min); set OTVIZ_SLOW=1")
def test_embed_neurons_umap(rng):
    T, S = rng.normal(size=(30, 20)), rng.normal(size=(12, 20))
    E = F.embed_neurons(T, S, method="umap")
    assert E.shape == (42, 2) and np.isfinite(E).all()
    np.testing.assert_allclose(F.embed_neurons(T, S, method="umap"), E)
    with pytest.warns(UserWarning, match="n_neighbors"):
        E = F.embed_neurons(T[:5], S[:3], method="umap")
    assert E.shape == (8, 2)


def test_neuron_map_markers_lines_and_hover(rng):
    T = rng.normal(size=(8, 12))
    perm = rng.permutation(8)
    al = align(T, T[perm])
    fig = F.neuron_map(T, T[perm], al, top=5)
    assert n_segments(fig) == 5
    markers = [t for t in fig.data if t.mode == "markers"]
    assert [len(t.x) for t in markers] == [8, 8]
    assert "teacher neuron 0" in markers[0].text[0] and "mass sent 0.125" in markers[0].text[0]
    assert "student neuron" in markers[1].text[0]
    # fraction of mass: each entry carries 1/8, so half the mass is 4 lines
    assert n_segments(F.neuron_map(T, T[perm], al.plan, top=0.5)) == 4
    assert n_segments(F.neuron_map(T, T[perm], al.plan, top=1.0)) == 8
    # an int beyond the non-zero entries draws them all
    assert n_segments(F.neuron_map(T, T[perm], al.plan, top=100)) == 8
    # lines join the matched pair: endpoints are the teacher and student markers
    E = F.embed_neurons(T, T[perm], method="pca")
    fig = F.neuron_map(T, T[perm], al, embedding=E, top=8)
    lines = [t for t in fig.data if t.meta and t.meta.get("kind") == "plan lines"]
    xs = np.array([v for t in lines for v in t.x], dtype=object).reshape(-1, 3)
    for x0, x1, sep in xs:
        assert sep is None
        i = int(np.flatnonzero(np.isclose(E[:8, 0], x0))[0])
        assert np.isclose(E[8 + al.plan[i].argmax(), 0], x1)
    markers = [t for t in fig.data if t.mode == "markers"]
    np.testing.assert_allclose(np.asarray(markers[0].x, float), E[:8, 0])
    np.testing.assert_allclose(np.asarray(markers[1].y, float), E[8:, 1])


def test_neuron_map_widths_by_mass_and_line_cap(rng):
    X, Y = rng.normal(size=(20, 10)), rng.normal(size=(6, 10))
    al = align(X, Y, method="sinkhorn", eps=0.5)
    fig = F.neuron_map(X, Y, al, top=0.99, max_lines=30)
    assert n_segments(fig) == 30
    lines = [t for t in fig.data if t.meta and t.meta.get("kind") == "plan lines"]
    widths = [t.line.width for t in lines]
    assert widths == sorted(widths, reverse=True)  # strongest band first and widest
    assert sum(t.showlegend for t in lines) == 1


def test_neuron_map_without_plan_and_bad_input(rng):
    T, S = rng.normal(size=(6, 10)), rng.normal(size=(4, 10))
    fig = F.neuron_map(T, S)
    assert len(fig.data) == 2 and n_segments(fig) == 0
    assert fig.layout.xaxis.title.text == "PC 1"
    with pytest.raises(ValueError, match="shape"):
        F.neuron_map(T, S, np.ones((4, 6)) / 24)
    with pytest.raises(ValueError, match="m \\+ k"):
        F.neuron_map(T, S, embedding=np.zeros((9, 2)))
    with pytest.raises(ValueError, match="2 columns"):
        F.neuron_map(T, S, embedding=np.zeros((10, 3)))
    with pytest.raises(ValueError, match="top"):
        F.neuron_map(T, S, np.ones((6, 4)) / 24, top=1.5)
    with pytest.raises(ValueError, match="top"):
        F.neuron_map(T, S, np.ones((6, 4)) / 24, top=-2)
    with pytest.raises(TypeError, match="top"):
        F.neuron_map(T, S, np.ones((6, 4)) / 24, top=True)
    with pytest.raises(ValueError, match="NaN"):
        F.neuron_map(T, S, np.full((6, 4), np.nan))


def test_point_cloud_transport(rng):
    X, Y = rng.normal(size=(7, 2)), rng.normal(size=(5, 2)) + 3
    a = rng.random(7)
    a /= a.sum()
    al = align(X, Y, a=a, method="emd")
    fig = F.point_cloud_transport(X, Y, al, top=1.0)
    assert n_segments(fig) == int((al.plan > 0).sum())
    markers = [t for t in fig.data if t.mode == "markers"]
    assert [len(t.x) for t in markers] == [7, 5]
    sizes = np.asarray(markers[0].marker.size, float)
    assert np.argmax(sizes) == np.argmax(a) and np.argmin(sizes) == np.argmin(a)
    assert fig.layout.yaxis.scaleanchor == "x"
    assert "emd" in fig.layout.title.text
    fig = F.point_cloud_transport(X, Y, None)
    assert len(fig.data) == 2
    fig = F.point_cloud_transport(X, Y, al.plan, top=3, b=np.ones(5))
    assert n_segments(fig) == 3
    with pytest.raises(ValueError, match="2 columns"):
        F.point_cloud_transport(rng.normal(size=(7, 3)), Y, None)
    with pytest.raises(ValueError, match="shape"):
        F.point_cloud_transport(X, Y, al.plan.T)
    with pytest.raises(ValueError, match="a must"):
        F.point_cloud_transport(X, Y, al.plan, a=np.ones(3))


# ----------------------------------------------------------------------------
# curves
# ----------------------------------------------------------------------------
def long_metrics() -> pd.DataFrame:
    rows = []
    for step in range(1, 21):
        epoch = (step - 1) // 5 + 1
        rows.append((step, epoch, "train/loss", 1.0 / step))
        rows.append((step, epoch, "train/ot", 2.0 / step))
        if step % 5 == 0:
            rows.append((step, epoch, "test/accuracy", 0.5 + 0.1 * epoch))
    df = pd.DataFrame(rows, columns=["step", "epoch", "key", "value"])
    df["epoch"] = df["epoch"].astype("Int64")
    df["time"] = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(df["step"], unit="s")
    return df


def _named(fig, name):
    return next(t for t in fig.data if t.name == name)


def test_training_curves_one_panel_per_family():
    df = long_metrics()
    fig = F.training_curves(df)
    # train/loss and test/... group by what follows the split; train/ot is its own family
    assert [t.name for t in fig.data] == ["test", "train", "train"]
    titles = [a.text for a in fig.layout.annotations[:3]]
    assert titles == ["accuracy (%)", "raw OT term per layer pair, as optimised (before λ)", "loss per split (mean per image)"]
    loss = next(t for t in fig.data if t.hovertemplate.startswith("train/loss"))
    np.testing.assert_allclose(np.asarray(loss.x, float), np.arange(1, 21))
    np.testing.assert_allclose(np.asarray(loss.y, float), 1.0 / np.arange(1, 21))
    # each panel has its own y axis
    assert len({t.yaxis for t in fig.data}) == 3
    assert fig.layout.xaxis3.title.text == "step"  # under the last panel of each column


def test_training_curves_loss_terms_get_a_panel_each_labelled_with_their_weight():
    rows = [(s, 1, k, v) for s in range(1, 11) for k, v in
            (("loss/ce", 2.0 / s), ("loss/ot", 0.0), ("loss/kd", 15.0), ("loss/total", 17.0),
             ("ot/features.conv3->features.conv3", 0.5), ("ot/features.conv2->features.conv2", 0.7),
             ("score/features.conv3->features.conv3", 0.3))]
    df = pd.DataFrame(rows, columns=["step", "epoch", "key", "value"])
    cfg = {"setting": "transfer-small", "method": "kd+ot", "lam": 0.5, "kd_weight": 1.0,
           "temperature": 4.0}
    fig = F.training_curves(df, config=cfg)
    titles = [a.text for a in fig.layout.annotations]
    assert "λ × OT, summed over pairs (λ = 0.5)" in titles
    assert "1 × KD (T = 4)" in titles and "cross-entropy (task loss)" in titles
    assert "raw OT term per layer pair, as optimised (before λ)" in titles
    assert "OT score per layer pair (0 = same layer, ~1 = unrelated)" in titles
    # loss/ot (flat at 0) and loss/kd (15) are on different y axes
    ot_axis = next(t.yaxis for t in fig.data if t.hovertemplate.startswith("loss/ot"))
    kd_axis = next(t.yaxis for t in fig.data if t.hovertemplate.startswith("loss/kd"))
    assert ot_axis != kd_axis
    # the two OT pairs share one panel, with a legend of short names
    pairs = [t for t in fig.data if t.hovertemplate.startswith("ot/")]
    assert {t.name for t in pairs} == {"conv3->conv3", "conv2->conv2"}
    assert len({t.yaxis for t in pairs}) == 1 and all(t.showlegend for t in pairs)
    # the score panel starts at 0
    score_axis = next(t.yaxis for t in fig.data if t.hovertemplate.startswith("score/"))
    layout_name = "yaxis" + score_axis[1:]
    assert fig.layout[layout_name].rangemode == "tozero"
    # log scale: positive panels become log, loss/ot (zeros) stays linear and says so
    fig = F.training_curves(df, config=cfg, log_y=True)
    kd_axis = next(t.yaxis for t in fig.data if t.hovertemplate.startswith("loss/kd"))
    assert fig.layout["yaxis" + kd_axis[1:]].type == "log"
    ot_axis = next(t.yaxis for t in fig.data if t.hovertemplate.startswith("loss/ot"))
    assert fig.layout["yaxis" + ot_axis[1:]].type != "log"
    assert any("linear: has values ≤ 0" in a.text for a in fig.layout.annotations)
    assert fig.layout["yaxis" + score_axis[1:]].type != "log"
    # a method without ot monitors the distance: the title says it is not in the loss
    fig = F.training_curves(df, ["ot/features.conv3->features.conv3"], config={"method": "kd"})
    assert "not in the loss" in fig.layout.title.text


def test_training_curves_accuracy_in_percent_with_chance_level():
    df = long_metrics()
    fig = F.training_curves(df, ["test/accuracy"], x="epoch", config={"setting": "transfer"})
    np.testing.assert_allclose(np.asarray(fig.data[0].y, float), [60, 70, 80, 90])
    assert tuple(fig.layout.yaxis.range) == (0, 100)
    assert fig.layout.yaxis.ticksuffix == " %"
    chance = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(chance) == 1 and chance[0].y0 == pytest.approx(20.0)  # 5 classes
    label = [a for a in fig.layout.annotations if a.text == "chance 20 %"]
    assert len(label) == 1
    # at the right end of the line, where the rising curves have left chance (they start on it)
    assert label[0].x == 1 and label[0].xanchor == "right" and label[0].xref.endswith("domain")
    assert "chance 20 %" in fig.layout.title.text
    over = F.accuracy_curves({"a": df[df.key == "test/accuracy"]}, chance=0.2)
    label = [a for a in over.layout.annotations if a.text.startswith("chance 20 %")]
    assert len(label) == 1 and label[0].x == 1 and label[0].xanchor == "right"
    # one point only: still the fixed 0-100 axis, never negative
    one = df[(df.key == "test/accuracy") & (df.step == 5)]
    fig = F.training_curves(one, "test/accuracy", chance=0.1)
    assert tuple(fig.layout.yaxis.range) == (0, 100)
    assert fig.layout.shapes[0].y0 == pytest.approx(10.0)
    # a custom task without a known setting: no chance line
    assert not F.training_curves(df, ["test/accuracy"], config={"setting": "mine"}).layout.shapes
    assert F.chance_level({"setting": "distill"}) == pytest.approx(0.1)
    assert F.chance_level({"num_classes": 4}) == pytest.approx(0.25)
    assert F.chance_level(None) is None and F.chance_level({"setting": "mine"}) is None
    with pytest.raises(ValueError, match="chance"):
        F.training_curves(df, ["test/accuracy"], chance=20)


def test_training_curves_of_a_run_with_a_validation_part():
    # val/accuracy every epoch, test/accuracy once at the last step (otviz.train with val_size)
    rows = [(5 * e, e, "val/accuracy", v) for e, v in enumerate((0.3, 0.6, 0.8))]
    rows += [(5 * e, e, "train/accuracy", v + 0.05) for e, v in enumerate((0.3, 0.6, 0.8))]
    rows += [(5 * e, e, "val/loss", 1.5 - e / 2) for e in range(3)] + [(10, 2, "test/accuracy", 0.75)]
    df = pd.DataFrame(rows, columns=["step", "epoch", "key", "value"])
    assert F.metric_panels(df.key.unique()) == [["val/accuracy", "train/accuracy", "test/accuracy"],
                                                ["val/loss"]]
    fig = F.training_curves(df, ["val/accuracy", "train/accuracy", "test/accuracy"], x="epoch",
                            config={"setting": "distill"})
    by_name = {t.name: t for t in fig.data}
    np.testing.assert_allclose(np.asarray(by_name["val"].y, float), [30, 60, 80])
    np.testing.assert_allclose(np.asarray(by_name["test"].y, float), [75])
    assert by_name["test"].mode == "lines+markers" and list(by_name["test"].x) == [2]
    assert by_name["val"].line.color != by_name["test"].line.color
    assert tuple(fig.layout.yaxis.range) == (0, 100) and "chance 10 %" in fig.layout.title.text
    fig = F.training_curves(df, ["val/loss"], x="epoch")
    assert fig.layout.title.text == "loss per split (mean per image)" and fig.data[0].name == "val/loss"


def test_metric_family():
    assert F.metric_family("ot/a->b") == "ot"
    assert F.metric_family("score/a->b") == "score"
    assert F.metric_family("train/accuracy") == F.metric_family("test/accuracy") == "accuracy"
    assert F.metric_family("lr") == "lr"


def test_metric_panels_match_the_panels_of_training_curves():
    keys = ["loss/total", "loss/ce", "loss/ot", "ot/a->b", "ot/c->d", "score/a->b",
            "train/accuracy", "test/accuracy"]
    assert F.metric_panels(keys) == [["train/accuracy", "test/accuracy"], ["score/a->b"],
                                     ["ot/a->b", "ot/c->d"], ["loss/total"], ["loss/ce"],
                                     ["loss/ot"]]
    assert F.metric_panels(keys, "one") == [keys]
    assert len(F.metric_panels(keys, "key")) == len(keys)
    with pytest.raises(ValueError, match="panels"):
        F.metric_panels(keys, "cards")


def test_training_curves_smoothing_is_a_debiased_ema_over_faint_raw_values():
    df = long_metrics()
    y = 1.0 / np.arange(1, 21)
    fig = F.training_curves(df, ["train/loss"], smooth=0.6, title="loss")
    raw, smooth = fig.data
    assert raw.opacity < 0.5 and not raw.showlegend
    np.testing.assert_allclose(np.asarray(raw.y, float), y)
    expected, m = [], 0.0
    for t, v in enumerate(y, start=1):
        m = 0.6 * m + 0.4 * v
        expected.append(m / (1 - 0.6 ** t))
    np.testing.assert_allclose(np.asarray(smooth.y, float), expected)
    assert smooth.y[0] == pytest.approx(y[0])  # debiased: no pull toward 0 at the start
    assert fig.layout.title.text.startswith("loss") and "EMA weight 0.6" in fig.layout.title.text
    # accuracies are evaluations: never smoothed
    fig = F.training_curves(df, ["test/accuracy"], smooth=0.9)
    assert len(fig.data) == 1
    for bad in (1.0, -0.1, 3, True):
        with pytest.raises(ValueError, match="smooth"):
            F.training_curves(df, smooth=bad)


def test_training_curves_by_epoch_and_by_wall_time():
    df = long_metrics()
    fig = F.training_curves(df, "train/loss", x="epoch")
    y = 1.0 / np.arange(1, 21)
    np.testing.assert_allclose(np.asarray(fig.data[0].y, float), y.reshape(4, 5).mean(1))
    np.testing.assert_array_equal(np.asarray(fig.data[0].x), [1, 2, 3, 4])
    # a key not logged yet keeps its (empty) trace
    fig = F.training_curves(df, ["test/accuracy", "test/loss"], x="epoch")
    assert "test (no data yet)" in [t.name for t in fig.data]
    # epoch may be missing for some rows
    df2 = df.copy()
    df2.loc[0, "epoch"] = pd.NA
    assert len(F.training_curves(df2, "train/loss", x="epoch").data[0].x) == 4
    # wall time: seconds since the first metric (one per step here)
    fig = F.training_curves(df, "train/loss", x="time")
    np.testing.assert_allclose(np.asarray(fig.data[0].x, float), np.arange(0, 20))
    assert fig.layout.xaxis.title.text == "wall time (s)"
    slow = df.assign(time=df["time"].iloc[0] + (df["time"] - df["time"].iloc[0]) * 60)
    fig = F.training_curves(slow, "train/loss", x="time")
    assert fig.layout.xaxis.title.text == "wall time (min)"
    np.testing.assert_allclose(np.asarray(fig.data[0].x, float), np.arange(0, 20))
    # every key on one axis, or one panel per key
    assert len({t.yaxis for t in F.training_curves(df, panels="one").data}) == 1
    assert len({t.yaxis for t in F.training_curves(df, panels="key").data}) == 3


def test_training_curves_empty_and_bad_input():
    empty = long_metrics().iloc[:0]
    fig = F.training_curves(empty)
    assert len(fig.data) == 0 and "no metrics" in fig.layout.annotations[0].text
    fig = F.training_curves(empty, ["loss/total", "test/accuracy"])
    assert sum("no data yet" in a.text for a in fig.layout.annotations) == 2
    with pytest.raises(TypeError):
        F.training_curves({"step": [1]})
    with pytest.raises(ValueError, match="lacks column"):
        F.training_curves(long_metrics().drop(columns="key"))
    with pytest.raises(ValueError, match="lacks column"):
        F.training_curves(long_metrics().drop(columns="time"), x="time")
    with pytest.raises(ValueError, match="x must be one of"):
        F.training_curves(long_metrics(), x="wall")
    with pytest.raises(ValueError, match="empty"):
        F.training_curves(long_metrics(), keys=[])
    with pytest.raises(ValueError, match="panels"):
        F.training_curves(long_metrics(), panels="grid")
    with pytest.raises(ValueError, match="cols"):
        F.training_curves(long_metrics(), cols=0)


def test_accuracy_curves():
    df = long_metrics()
    other = df.assign(value=df["value"] * 0.9)
    fig = F.accuracy_curves({"ot": df, "kd": other, "new": df.iloc[:0]})
    assert [t.name for t in fig.data] == ["ot", "kd", "new (no data yet)"]
    np.testing.assert_allclose(np.asarray(fig.data[0].y, float), [60, 70, 80, 90])
    np.testing.assert_allclose(np.asarray(fig.data[1].y, float), [54, 63, 72, 81])
    assert tuple(fig.layout.yaxis.range) == (0, 100)
    assert fig.layout.xaxis.title.text == "epoch"
    assert not fig.layout.shapes
    # chance levels: one line per distinct level, labelled with its runs when they differ
    fig = F.accuracy_curves({"ot": df, "kd": other}, chance={"ot": 0.2, "kd": 0.1})
    assert sorted(s.y0 for s in fig.layout.shapes) == pytest.approx([10.0, 20.0])
    assert any(a.text == "chance 10 % (kd)" for a in fig.layout.annotations)
    fig = F.accuracy_curves({"ot": df, "kd": other}, chance=0.2)
    assert [a.text for a in fig.layout.annotations] == ["chance 20 %"]
    # another metric: automatic axis, smoothing and log allowed
    fig = F.accuracy_curves({"ot": df}, key="train/loss", x="step", smooth=0.5, log_y=True)
    assert len(fig.data) == 2 and fig.data[0].opacity < 0.5 and len(fig.data[1].x) == 20
    assert fig.layout.yaxis.range is None and fig.layout.yaxis.type == "log"
    fig = F.accuracy_curves({"ot": df}, x="time")
    assert fig.layout.xaxis.title.text == "wall time (s)"
    assert "no runs" in F.accuracy_curves({}).layout.annotations[0].text
    with pytest.raises(TypeError):
        F.accuracy_curves([df])
    with pytest.raises(ValueError, match="runs\\['bad'\\]"):
        F.accuracy_curves({"bad": df.drop(columns="value")})
    with pytest.raises(ValueError, match="chance"):
        F.accuracy_curves({"ot": df}, chance={"ot": 1.5})


# ----------------------------------------------------------------------------
# layer tables
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    torch.manual_seed(0)
    t = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    s = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(40, 6)
    ot_df = layer_distances(t, s, x, ["1", "3", "4"], ["1", "2"], measure="ot")
    cka_df = layer_distances(t, s, x, ["1", "3", "4"], ["1", "2"], measure="cka")
    return ot_df, cka_df


def test_distance_matrix_z_labels_and_measure(tables):
    ot_df, cka_df = tables
    fig = F.distance_matrix(ot_df)
    h = heat(fig)
    np.testing.assert_allclose(np.asarray(h.z), ot_df.to_numpy())
    assert list(h.y) == ["1", "3", "4"] and list(h.x) == ["1", "2"]
    assert h.texttemplate == "%{z:.3f}" and "OT score" in h.hovertemplate
    assert h.colorbar.title.text == "OT score"
    assert "~1 = unrelated" in fig.layout.title.text  # the scale is on the figure
    assert fig.layout.yaxis.autorange == "reversed"
    assert fig.layout.yaxis.title.text == "teacher layer"
    cka_fig = F.distance_matrix(cka_df)
    assert heat(cka_fig).colorbar.title.text == "linear CKA"
    # similar pairs are dark in both: the two scales run in opposite directions
    assert bool(heat(cka_fig).reversescale) != bool(h.reversescale)
    plain = pd.DataFrame([[1.0, 2.0]], index=["a"], columns=["b", "c"])
    assert heat(F.distance_matrix(plain, measure="cka")).colorbar.title.text == "linear CKA"
    assert heat(F.distance_matrix(plain)).colorbar.title.text == "value"


def test_distance_matrices_side_by_side(tables):
    ot_df, cka_df = tables
    fig = F.distance_matrices(ot_df, cka_df)
    heats = [t for t in fig.data if t.type == "heatmap"]
    assert len(heats) == 2
    np.testing.assert_allclose(np.asarray(heats[0].z), ot_df.to_numpy())
    np.testing.assert_allclose(np.asarray(heats[1].z), cka_df.to_numpy())
    assert {heats[0].coloraxis, heats[1].coloraxis} == {"coloraxis", "coloraxis2"}
    assert "OT" in fig.layout.annotations[0].text and "CKA" in fig.layout.annotations[1].text
    with pytest.raises(ValueError, match="swapped"):
        F.distance_matrices(cka_df, ot_df)


def test_distance_matrix_bad_input():
    with pytest.raises(TypeError):
        F.distance_matrix(np.ones((2, 2)))
    with pytest.raises(ValueError, match="empty"):
        F.distance_matrix(pd.DataFrame())
    with pytest.raises(ValueError, match="NaN"):
        F.distance_matrix(pd.DataFrame([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="numbers"):
        F.distance_matrix(pd.DataFrame([["x", "y"]]))


def test_distance_bars(rng):
    X, Y = rng.normal(size=(6, 4)), rng.normal(size=(3, 4))
    als = {"emd": align(X, Y), "eps=0.1": align(X, Y, method="sinkhorn", eps=0.1)}
    fig = F.distance_bars(als)
    np.testing.assert_allclose(np.asarray(fig.data[0].x, float),
                               [als["emd"].score, als["eps=0.1"].score])
    assert fig.layout.xaxis.title.text == "OT score"
    raw = F.distance_bars(als, value="distance")
    np.testing.assert_allclose(np.asarray(raw.data[0].x, float),
                               [als["emd"].distance, als["eps=0.1"].distance])
    assert list(fig.data[0].y) == ["emd", "eps=0.1"]
    with pytest.raises(ValueError, match="score"):
        F.distance_bars(als, value="cost")
    with pytest.raises(ValueError):
        F.distance_bars({})
    with pytest.raises(TypeError):
        F.distance_bars({"x": np.eye(2)})


# ----------------------------------------------------------------------------
# every figure serialises
# ----------------------------------------------------------------------------
def test_every_figure_serialises(rng, tables, tmp_path):
    T, S = rng.normal(size=(12, 16)), rng.normal(size=(5, 16))
    al = align(T, S, method="sinkhorn", eps=0.05)
    df = long_metrics()
    figs = {
        "plan": F.plan_heatmap(al),
        "plan_log": F.plan_heatmap(al, log_color=True),
        "snapshots": F.plan_snapshots([al.plan, al.plan], ["epoch 1", "epoch 2"]),
        "panel": F.alignment_panel(al),
        "matched": F.matched_cost_distribution(al),
        "quality": F.match_quality(al),
        "realloc": F.reallocation_chart([al.plan, al.plan[::-1]]),
        "map": F.neuron_map(T, S, al),
        "clouds": F.point_cloud_transport(rng.normal(size=(6, 2)), rng.normal(size=(4, 2)),
                                          np.ones((6, 4)) / 24),
        "curves": F.training_curves(df, smooth=0.6, log_y=True, config={"setting": "transfer"}),
        "curves_one": F.training_curves(df, ["train/loss"], x="time"),
        "accuracy": F.accuracy_curves({"a": df}, chance=0.2),
        "matrix": F.distance_matrix(tables[0]),
        "matrices": F.distance_matrices(*tables),
        "bars": F.distance_bars({"x": al}),
    }
    for name, fig in figs.items():
        assert isinstance(fig, go.Figure), name
        assert fig.layout.template.layout.paper_bgcolor is not None  # template applied
        path = tmp_path / f"{name}.html"
        fig.write_html(path, include_plotlyjs=False)
        assert path.stat().st_size > 2000, name
        json.loads(fig.to_json())


def test_alignment_panel_takes_a_shared_cost_range():
    rng = np.random.default_rng(0)
    P = np.eye(4) / 4
    C = rng.random((4, 4)) + 1.0
    own = next(t for t in F.alignment_panel(P, C).data if t.name == "cost")
    assert own.zmin is None and own.zmax is None and own.showscale is not False
    fig = F.alignment_panel(P, C, cost_range=(0.5, 3.0), cost_colorbar=False)
    cost = next(t for t in fig.data if t.name == "cost")
    assert (cost.zmin, cost.zmax, cost.showscale) == (0.5, 3.0, False)
    for bad in ((1.0, 1.0), (2.0, 1.0), (0.0, float("nan")), (1.0,), "ab"):
        with pytest.raises(ValueError, match="cost_range"):
            F.alignment_panel(P, C, cost_range=bad)


def test_lab_maps_curves_label_their_log_axes_and_keep_the_legend_off_the_axis_titles():
    from types import SimpleNamespace

    from otviz.figures.lab_maps import lambda_sweep, training_curves

    steps = np.arange(0, 100, 10)
    hist = dict(transport_cost=np.linspace(0, 2, 100), critic_w2sq=np.linspace(3, 0, 100),
                reference_step=steps, reference_mse=2 * np.exp(-steps / 20.0))
    fig = training_curves(SimpleNamespace(history=hist), reference_w2sq=2.0)
    sweep = lambda_sweep([0.3, 1, 10], [0.6, 0.25, 0.01])
    for axis, fmt in ((fig.layout.yaxis2, "~g"), (sweep.layout.xaxis, "~g"), (sweep.layout.yaxis, "~%")):
        # one labelled tick per decade (0.01, 0.1, 1 or 1 %, 10 %), not plotly's bare 2s and 5s
        assert axis.type == "log" and axis.dtick == 1 and axis.tickformat == fmt
    from otviz.figures.lab_maps import map_figure

    pts = np.random.default_rng(0).standard_normal((20, 2))
    shown = map_figure(pts, pts + 1, pts + 1)
    assert map_figure(pts, pts + 1, pts + 1, showlegend=False).layout.showlegend is False
    for f in (fig, sweep, shown):
        # the legend hangs from the figure's bottom edge, in a margin of its own under the
        # x axis title (a legend placed relative to the plot ran into it)
        legend = f.layout.legend
        assert (legend.yref, legend.y, legend.yanchor, legend.orientation) == ("container", 0, "bottom", "h")
        assert f.layout.margin.b >= 90
