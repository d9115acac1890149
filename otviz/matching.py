r"""How a transport plan matches neurons: partners, matched costs, per-neuron quality, reallocation.

A plan :math:`P` (teacher neurons as rows, student neurons as columns) always
*looks* like a matching once reordered, whether or not the two layers are
related: an exact plan between uniform weights is a (partial) permutation
matrix even between two random layers. What tells a good alignment from a
poor one is the cost of what is matched, compared with the cost of what could
have been matched. These functions measure it on the plan and its cost matrix
:math:`C` (both of shape ``(m, k)``, e.g. ``Alignment.plan`` and
``Alignment.cost_matrix``), and follow a plan's main partners across training
snapshots. They use numpy and pandas only.

Functions
---------
:func:`main_partners`
    For each teacher neuron, the student neuron receiving most of its mass.
:func:`matched_costs`
    The costs of matched pairs with their plan weights, and of all pairs with
    the weights of a random pairing.
:func:`cost_contrast`
    :math:`\langle P, C\rangle / \langle a b^\top, C\rangle`: matched cost
    relative to a random pairing (0 = matched on free pairs, 1 = no better
    than random).
:func:`neuron_match_quality`
    Per neuron: its plan-weighted matched cost relative to its median cost.
:func:`reallocation`
    Per snapshot: how many teacher neurons changed their main partner and how
    much mass moved since the previous snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["main_partners", "matched_costs", "cost_contrast", "neuron_match_quality",
           "reallocation"]

_TIE = 1e-9  # relative tolerance under which two masses of one row are a tie


def _array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "plan") and hasattr(x, "cost_matrix") and name == "plan":  # an Alignment
        x = x.plan
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) \
            or np.iscomplexobj(arr):
        raise TypeError(f"{name} must be a real numeric matrix, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-D matrix of shape (teacher neurons, "
                         f"student neurons), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(arr)).sum())} NaN or infinite "
                         f"value(s); pass a finite matrix (did the solver diverge?)")
    return arr


def nonnegative_mass(P: np.ndarray, name: str = "plan") -> np.ndarray:
    """``P`` (finite, 2-D) with rounding negatives clipped; refuses real negatives and no mass."""
    top = float(np.abs(P).max())
    if (P < -1e-12 * top).any():
        i, j = np.unravel_index(int(np.argmin(P)), P.shape)
        raise ValueError(f"{name} has negative entries (e.g. {P[i, j]:.3g} at [{i}, {j}]); "
                         f"transported mass must be non-negative")
    if top == 0:
        raise ValueError(f"{name} is all zeros; nothing is transported")
    return np.clip(P, 0.0, None)


def _plan(plan: Any, name: str = "plan") -> np.ndarray:
    return nonnegative_mass(_array(plan, name), name)


def _plan_cost(plan: Any, cost: Any) -> tuple[np.ndarray, np.ndarray]:
    if cost is None and hasattr(plan, "cost_matrix"):
        cost = plan.cost_matrix
    P = _plan(plan)
    if cost is None:
        raise TypeError("cost is required with a plain plan; pass the cost matrix the plan "
                        "was solved on (Alignment.cost_matrix), or pass the Alignment itself")
    C = _array(cost, "cost")
    if C.shape != P.shape:
        raise ValueError(f"cost has shape {C.shape} but plan has shape {P.shape}; pass the cost "
                         f"matrix the plan was solved on (same rows and columns)")
    if (C < 0).any():
        raise ValueError(f"cost has negative entries (min {C.min():.3g}); the match measures "
                         f"compare non-negative costs (squared Euclidean, Euclidean, cosine, "
                         f"correlation are all >= 0)")
    return P, C


def main_partners(plan: Any) -> np.ndarray:
    """For each teacher neuron (row), the student neuron (column) that receives most of its mass.

    Ties go to the lowest column index. Rows that send no mass get ``-1``.

    Returns
    -------
    ndarray of int, shape (m,)
    """
    P = _plan(plan)
    out = P.argmax(axis=1).astype(np.int64)
    out[P.sum(axis=1) <= 0] = -1
    return out


def matched_costs(plan: Any, cost: Any = None) -> dict[str, np.ndarray]:
    r"""The cost of matched pairs (plan-weighted) and of all pairs (random-pairing weights).

    Matched pairs are the entries with mass, weighted by
    :math:`w_{ij} = P_{ij} / \sum P`. All pairs are every entry, weighted by
    the independent coupling of the plan's marginals,
    :math:`u_{ij} = a_i b_j` with :math:`a = P\mathbf 1 / \sum P`,
    :math:`b = P^\top \mathbf 1 / \sum P` (uniform :math:`1/(mk)` for uniform
    marginals): the pairs a random matching with the same marginals would
    draw. The two weighted means are :math:`\langle P, C\rangle/\sum P` and
    :math:`\langle a b^\top, C\rangle`.

    Parameters
    ----------
    plan : array of shape (m, k) or Alignment
    cost : array of shape (m, k), optional
        Default: the Alignment's ``cost_matrix``.

    Returns
    -------
    dict
        ``matched_cost``, ``matched_weight`` (entries with positive mass,
        weights summing to 1), ``all_cost``, ``all_weight`` (every entry,
        weights summing to 1).
    """
    P, C = _plan_cost(plan, cost)
    total = P.sum()
    mask = P > 0
    a, b = P.sum(axis=1) / total, P.sum(axis=0) / total
    U = np.outer(a, b)
    return dict(matched_cost=C[mask], matched_weight=P[mask] / total,
                all_cost=C.ravel(), all_weight=U.ravel() / U.sum())


def cost_contrast(plan: Any, cost: Any = None) -> float:
    r"""Matched cost relative to a random pairing: :math:`\langle P, C\rangle / \langle a b^\top, C\rangle`.

    With :math:`P` normalised to mass 1 and :math:`a, b` its marginals. The
    independent coupling :math:`a b^\top` is itself a plan with these
    marginals, so an optimal plan scores at most 1. 0: every matched pair
    costs nothing; 1: the matched pairs cost what random pairs cost, as for a
    student whose layer is unrelated to the teacher's. Dimensionless and
    unchanged when the cost is multiplied by a constant.

    Raises
    ------
    ValueError
        If every pair costs 0 under the random pairing (the ratio is
        undefined: both layers are one identical point).
    """
    d = matched_costs(plan, cost)
    ref = float(np.dot(d["all_cost"], d["all_weight"]))
    if ref <= 0:
        raise ValueError("every pair of neurons costs 0, so the matched cost cannot be compared "
                         "with a random pairing; the two layers are identical constant points")
    return float(np.dot(d["matched_cost"], d["matched_weight"])) / ref


def neuron_match_quality(plan: Any, cost: Any = None, *, side: str = "teacher") -> pd.DataFrame:
    r"""How well each neuron of one side is matched, relative to its typical pair.

    For teacher neuron :math:`i` (``side="teacher"``; the student side uses
    the columns the same way):

    .. math::

        c_i = \frac{\sum_j P_{ij} C_{ij}}{\sum_j P_{ij}}, \qquad
        r_i = \frac{c_i}{\operatorname{median}_j C_{ij}}

    :math:`c_i` is the plan-weighted cost of its matches, :math:`r_i` the same
    relative to its median cost to all neurons of the other layer: near 0 the
    neuron found a partner much closer than its typical one, near 1 its match
    is no better than a random neuron. ``rank`` is the fraction of the other
    layer's neurons that are cheaper than its main partner (0 = matched to its
    nearest neuron). When a neuron's median cost is 0, ``relative_cost`` is 0
    if its matched cost is 0 too, else it is computed against
    :math:`10^{-12}\max C`.

    Parameters
    ----------
    plan : array of shape (m, k) or Alignment
    cost : array of shape (m, k), optional
        Default: the Alignment's ``cost_matrix``.
    side : {"teacher", "student"}

    Returns
    -------
    pandas.DataFrame
        One row per neuron with mass, in index order: ``neuron``,
        ``partner`` (main partner on the other side), ``partner_share``
        (fraction of the neuron's mass that goes to it), ``mass``,
        ``matched_cost`` (:math:`c_i`), ``median_cost``, ``relative_cost``
        (:math:`r_i`), ``rank``. Neurons that send or receive no mass are
        left out.
    """
    if side not in ("teacher", "student"):
        raise ValueError(f"side must be 'teacher' or 'student', got {side!r}")
    P, C = _plan_cost(plan, cost)
    if side == "student":
        P, C = P.T, C.T
    mass = P.sum(axis=1)
    keep = np.flatnonzero(mass > 0)
    P, C, mass = P[keep], C[keep], mass[keep]
    matched = (P * C).sum(axis=1) / mass
    median = np.median(C, axis=1)
    floor = 1e-12 * float(C.max()) if C.max() > 0 else 1.0
    relative = np.where(matched <= 0, 0.0, matched / np.maximum(median, floor))
    partner = P.argmax(axis=1)
    partner_cost = C[np.arange(len(keep)), partner]
    rank = (C < partner_cost[:, None]).sum(axis=1) / C.shape[1]
    return pd.DataFrame(dict(
        neuron=keep.astype(np.int64), partner=partner.astype(np.int64),
        partner_share=P[np.arange(len(keep)), partner] / mass, mass=mass,
        matched_cost=matched, median_cost=median, relative_cost=relative, rank=rank))


def reallocation(plans: Sequence[Any], epochs: Sequence[int] | None = None) -> pd.DataFrame:
    r"""How the matching changes between consecutive plan snapshots.

    For snapshots :math:`P^{(0)}, \dots, P^{(T)}` of one layer pair (each
    normalised to mass 1), row :math:`t \ge 1` compares :math:`P^{(t)}` with
    :math:`P^{(t-1)}`:

    * ``changed_partners``: teacher neurons whose main partner
      (:func:`main_partners` of :math:`P^{(t-1)}`) no longer receives the
      largest share of their mass in :math:`P^{(t)}` (a tie with the new
      largest, within a relative ``1e-9``, is not a change);
    * ``fraction``: ``changed_partners`` over the number of teacher neurons;
    * ``moved_mass``: the total variation
      :math:`\tfrac12 \sum_{ij} |P^{(t)}_{ij} - P^{(t-1)}_{ij}|`, the share
      of the mass that sits on other pairs (0 = same plan, 1 = disjoint
      supports).

    Parameters
    ----------
    plans : sequence of arrays of shape (m, k)
        At least two snapshots of the same shape, in training order.
    epochs : sequence of int, optional
        The epoch of each snapshot (default ``0, 1, ...``), increasing.

    Returns
    -------
    pandas.DataFrame
        One row per snapshot after the first: ``epoch``, ``previous_epoch``,
        ``changed_partners`` (int), ``fraction``, ``moved_mass``.

    Examples
    --------
    >>> I = np.eye(3) / 3
    >>> reallocation([I, I[[1, 0, 2]]])[["changed_partners", "moved_mass"]].values.tolist()
    [[2.0, 0.6666666666666666]]
    """
    if isinstance(plans, np.ndarray) and plans.ndim == 2:
        raise TypeError("plans must be a sequence of plans (snapshots), not one plan")
    mats = [_plan(p, f"plans[{i}]") for i, p in enumerate(plans)]
    if len(mats) < 2:
        raise ValueError(f"reallocation needs at least two snapshots, got {len(mats)}")
    for i, M in enumerate(mats):
        if M.shape != mats[0].shape:
            raise ValueError(f"plans[{i}] has shape {M.shape} but plans[0] has shape "
                             f"{mats[0].shape}; snapshots of one layer pair share a shape")
    if epochs is None:
        epochs = list(range(len(mats)))
    epochs = [int(e) for e in epochs]
    if len(epochs) != len(mats):
        raise ValueError(f"got {len(epochs)} epochs for {len(mats)} plans; pass one per plan")
    if any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise ValueError(f"epochs must increase, got {epochs}")
    mats = [M / M.sum() for M in mats]
    rows = []
    m = mats[0].shape[0]
    for t in range(1, len(mats)):
        prev, cur = mats[t - 1], mats[t]
        old = main_partners(prev)
        sent = old >= 0
        best = cur.max(axis=1)
        held = cur[np.arange(m), np.where(sent, old, 0)]
        changed = int((sent & (held < best * (1 - _TIE))).sum())
        rows.append(dict(epoch=epochs[t], previous_epoch=epochs[t - 1],
                         changed_partners=changed, fraction=changed / m,
                         moved_mass=0.5 * float(np.abs(cur - prev).sum())))
    df = pd.DataFrame(rows)
    df["changed_partners"] = df["changed_partners"].astype(np.int64)
    return df
