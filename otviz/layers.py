"""Layer-by-layer comparison of two networks.

:func:`layer_distances` feeds the same probe batch to a teacher and a student,
turns each chosen layer into its neurons (:func:`otviz.capture.neurons`) and
fills a teacher-layer x student-layer table with the scale-free OT score of the
two neuron sets (:attr:`otviz.Alignment.score`: 0 = the same layer up to
permutation and scale, about 1 = unrelated), with the raw OT cost
(``measure="ot-raw"``), or, for comparison, with linear CKA (:func:`cka`), the
usual sample-space similarity.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
from torch import nn

from otviz.capture import Activations, capture

if TYPE_CHECKING:  # pandas is imported where the table is built: `import otviz` stays fast
    import pandas as pd

__all__ = ["cka", "layer_distances"]

Layers = Union[str, Sequence[str]]
_MEASURES = ("ot", "ot-raw", "cka")
#: solver options that choose the geometry of the raw cost; the score has its own
_GEOMETRY_OPTIONS = ("cost", "normalize")


# ----------------------------------------------------------------------------
# linear CKA
# ----------------------------------------------------------------------------
def _as_samples(X: Any, name: str) -> np.ndarray:
    """Return ``X`` as a finite float64 matrix of shape (n samples, features)."""
    if isinstance(X, torch.Tensor):
        if X.is_complex():
            raise TypeError(f"{name} is complex; pass real-valued activations.")
        arr = X.detach().cpu().to(torch.float64).numpy()
    elif isinstance(X, np.ndarray):
        if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool) or np.iscomplexobj(X):
            raise TypeError(f"{name} has dtype {X.dtype}; pass a real-valued numeric array.")
        arr = X.astype(np.float64, copy=False)
    else:
        raise TypeError(
            f"{name} must be a numpy array or a torch.Tensor, got {type(X).__name__}."
        )
    if arr.ndim < 2:
        raise ValueError(
            f"{name} has shape {arr.shape}; expected (n samples, features) or a conv activation "
            "(n, c, h, w). For a single feature use X.reshape(-1, 1)."
        )
    if arr.shape[0] < 2:
        raise ValueError(
            f"{name} has {arr.shape[0]} sample(s); CKA needs at least 2 samples (rows)."
        )
    arr = arr.reshape(arr.shape[0], -1)
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has no features (shape {arr.shape}).")
    if not np.isfinite(arr).all():
        raise ValueError(
            f"{name} contains {int((~np.isfinite(arr)).sum())} non-finite value(s) (NaN or inf)."
        )
    return arr


def _centred_unit(arr: np.ndarray, name: str) -> np.ndarray:
    """Centre the columns and scale to unit Frobenius norm (CKA is invariant to both)."""
    centred = arr - arr.mean(axis=0, keepdims=True)
    norm = np.linalg.norm(centred)
    if norm <= 1e-12 * np.linalg.norm(arr):
        raise ValueError(
            f"{name} has zero variance: every feature is constant across the samples, so its "
            "similarity to anything is undefined. Check that the probe inputs differ and that "
            "the layer is not dead (e.g. all-zero ReLU outputs)."
        )
    return centred / norm


def cka(X: np.ndarray | torch.Tensor, Y: np.ndarray | torch.Tensor) -> float:
    r"""Linear centred kernel alignment between two representations of the same samples.

    With :math:`X \in \mathbb{R}^{n \times p}` and :math:`Y \in
    \mathbb{R}^{n \times q}` the representations of the same :math:`n` inputs,
    and :math:`X_c = HX`, :math:`Y_c = HY` their column-centred versions
    (:math:`H = I_n - \frac{1}{n}\mathbf{1}\mathbf{1}^\top`),

    .. math::
        \mathrm{CKA}(X, Y) = \frac{\|Y_c^\top X_c\|_F^2}
                                  {\|X_c^\top X_c\|_F \, \|Y_c^\top Y_c\|_F}
        = \frac{\langle K_c, L_c \rangle_F}{\|K_c\|_F \, \|L_c\|_F},

    where :math:`K_c = X_c X_c^\top` and :math:`L_c = Y_c Y_c^\top` are the
    centred :math:`n \times n` Gram matrices (Kornblith et al., 2019). The
    value lies in :math:`[0, 1]`, equals 1 when :math:`Y` is an orthogonal
    transform of :math:`X` up to scale and translation, and is invariant to
    orthogonal transforms and isotropic scaling of either argument.

    The cheaper of the two forms is used: the :math:`n \times n` Gram form
    when the feature dimensions are large compared with :math:`n`, the
    feature-space form otherwise. Computation is in float64.

    Parameters
    ----------
    X : numpy.ndarray or torch.Tensor, shape (n, p) or (n, c, ...)
        First representation, one row per sample. Conv activations
        ``(n, c, h, w)`` are flattened to ``(n, c*h*w)``.
    Y : numpy.ndarray or torch.Tensor, shape (n, q) or (n, c, ...)
        Second representation of the same samples, in the same order.

    Returns
    -------
    float
        Linear CKA in :math:`[0, 1]`.

    Raises
    ------
    ValueError
        Different numbers of samples, fewer than 2 samples, fewer than 2 axes,
        NaN or inf values, or a representation with zero variance.
    TypeError
        Arguments that are not real numeric arrays or tensors.

    References
    ----------
    S. Kornblith, M. Norouzi, H. Lee, G. Hinton. "Similarity of Neural Network
    Representations Revisited." ICML 2019.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(50, 10))
    >>> round(cka(X, 3.0 * X + 1.0), 6)
    1.0
    """
    x = _as_samples(X, "X")
    y = _as_samples(Y, "Y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"X and Y must describe the same samples: X has {x.shape[0]} rows, Y has "
            f"{y.shape[0]}. Feed both models the same probe batch."
        )
    n, p = x.shape
    q = y.shape[1]
    xc = _centred_unit(x, "X")
    yc = _centred_unit(y, "Y")
    # cost of the Gram form ~ n^2 (p + q), of the feature form ~ n (p^2 + pq + q^2)
    if n * (p + q) < p * p + p * q + q * q:
        K = xc @ xc.T
        L = yc @ yc.T
        num = float(np.sum(K * L))
        den = float(np.linalg.norm(K) * np.linalg.norm(L))
    else:
        num = float(np.linalg.norm(yc.T @ xc) ** 2)
        den = float(np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    # den > 0: xc and yc have unit Frobenius norm, so K and L are non-zero.
    return float(min(max(num / den, 0.0), 1.0))


# ----------------------------------------------------------------------------
# layer x layer tables
# ----------------------------------------------------------------------------
def _sample_features(acts: Activations, name: str, spatial: str, size: Any) -> torch.Tensor:
    """Per-sample features (samples, features) for CKA, consistent with the neurons' options.

    One row per input; with a mask and ``spatial="flatten"``, one row per real token.
    """
    act = acts[name]
    if act.ndim <= 2:
        return act.reshape(act.shape[0], -1)
    mat = acts.neurons(name, spatial, size)  # (c, n) or (c, n * positions) or (c, real tokens)
    if spatial == "mean" or acts.mask_for(name) is not None:
        return mat.T
    n, c = act.shape[0], mat.shape[0]
    return mat.reshape(c, n, -1).permute(1, 0, 2).reshape(n, -1)


def _space(acts: Activations, name: str, spatial: str, size: Any) -> tuple:
    """What the responses of a layer's neurons index: inputs, (input, position) pairs of a map, tokens."""
    act, axis = acts[name], acts.info[name].channel_axis
    if act.ndim <= 2 or spatial == "mean":
        return ("inputs",)
    if acts.mask_for(name) is not None:
        return ("real tokens",)
    positions = tuple(s for i, s in enumerate(act.shape) if i not in (0, axis))
    if size is not None:
        positions = (size,) * len(positions) if isinstance(size, numbers.Integral) else tuple(size)
    return ("inputs",) if int(np.prod(positions)) == 1 else ("map",) + positions


def _describe(acts: Activations, name: str) -> str:
    act, axis = acts[name], acts.info[name].channel_axis
    positions = [str(s) for i, s in enumerate(act.shape) if i not in (0, axis)]
    return "x".join(positions) if positions else "none: dense"


def _per_side(option: Any, what: str) -> tuple[Any, Any]:
    """An option for both models, or a (teacher, student) pair of them."""
    if isinstance(option, tuple):
        if len(option) != 2:
            raise ValueError(f"{what} as a tuple must be (teacher option, student option), got {option!r}.")
        return option
    return option, option


def layer_distances(
    teacher_model: nn.Module,
    student_model: nn.Module,
    inputs: Any,
    teacher_layers: Layers,
    student_layers: Layers,
    measure: str = "ot",
    *,
    spatial: str = "mean",
    size: int | tuple[int, ...] | None = None,
    batch_size: int | None = None,
    channel_axis: Any = None,
    output_field: Any = None,
    mask: Any = "auto",
    drop_dead: bool = False,
    **align_kwargs: Any,
) -> pd.DataFrame:
    r"""Compare every teacher layer with every student layer on one probe batch.

    Both models are run once on ``inputs`` (without gradients; their
    train/eval modes are left as they are, so call ``.eval()`` first). For
    each teacher layer :math:`T` and student layer :math:`S`:

    - ``measure="ot"`` (default): the scale-free OT score of the two layers
      seen as uniform distributions over their neurons
      (:attr:`otviz.Alignment.score`),

      .. math::
          \mathrm{score}(T, S) = \min_{P \in U(a, b)} \sum_{ij} P_{ij}\,
          \frac{\|\hat t_i - \hat s_j\|^2}{2d}
          = 1 - \max_{P} \sum_{ij} P_{ij} \frac{\langle \hat t_i, \hat s_j\rangle}{d},

      with :math:`t_i` the rows of ``neurons(act_T, spatial, size)`` and
      :math:`s_j` those of ``neurons(act_S, spatial, size)``, each neuron
      centred and each layer divided by its root-mean-square response
      (:math:`\hat t, \hat s`). 0 = the same layer up to a permutation of
      neurons and a scale, about 1 = unrelated layers; lower is more similar,
      and values of different pairs, layers, models and probe sets are
      comparable.
    - ``measure="ot-raw"``: the raw OT cost
      :math:`\min_P \sum_{ij} P_{ij} c(t_i, s_j)` (``Alignment.distance``)
      with the ``cost`` and ``normalize`` you pass, in the units of the
      activations (it grows with their scale and with the number of probe
      responses).
    - ``measure="cka"``: linear CKA (:func:`cka`) between the per-sample
      features, after the same spatial treatment (``"mean"``: one feature per
      channel; ``"flatten"``: every channel and position, after resizing to
      ``size`` if given). Higher is more similar.

    Parameters
    ----------
    teacher_model, student_model : torch.nn.Module
        The two networks (may be the same object).
    inputs : tensor, array, tuple or mapping
        Probe batch fed to both models: a tensor, positional arguments (a
        tuple) or keyword arguments (a dict or a tokenizer's
        ``BatchEncoding``); see :func:`otviz.capture.capture`.
    teacher_layers, student_layers : str or sequence of str
        Dotted module names in each model (duplicates are ignored).
    measure : {"ot", "ot-raw", "cka"}, default "ot"
        What to compute.
    spatial : {"mean", "flatten"}, default "mean"
        How a convolutional channel becomes a vector (see
        :func:`otviz.capture.neurons`). With ``"flatten"`` and
        ``measure="ot"``, both layers of a pair need maps of the same size,
        so pass ``size`` when they differ.
    size : int or tuple of int, optional
        Resize convolutional maps to this size (adaptive average pooling)
        before flattening; only with ``spatial="flatten"``. Dense layers are
        left as they are.
    batch_size : int, optional
        Run the probe batch through each model in chunks of this size (same
        result as one batch).
    channel_axis : int, dict or (teacher, student) pair, optional
        The axis holding the neurons, when the automatic choice is wrong (see
        :func:`otviz.capture.capture`: ``Conv*d`` -> 1; ``Linear``,
        ``LayerNorm``, transformer blocks -> the last axis of
        ``(n, tokens, features)``). An int or ``{layer: axis}`` applies to
        both models; a tuple gives the teacher's and the student's.
    output_field : str, int, dict or (teacher, student) pair, optional
        Which field of a structured output to read (``ModelOutput``, dict,
        tuple); default the first floating-point tensor.
    mask : "auto", None or tensor, default "auto"
        Real-token mask of shape ``(n, tokens)``; ``"auto"`` takes the inputs'
        ``attention_mask``. Token positions are averaged over real tokens
        (``spatial="mean"``) or kept one response per real token
        (``"flatten"``); padding never enters a neuron's responses.
    drop_dead : bool, default False
        With ``measure="ot"`` or ``"ot-raw"``: remove the neurons that are constant over the probe batch
        (:func:`otviz.capture.dead_neurons`: a silent ReLU, a unit with a
        LayerNorm weight of ~0) before comparing; the removed indices are in
        ``df.attrs["dropped"]``. Needed for ``normalize="standardize"`` and the
        cosine/correlation costs, which are undefined for such a neuron.
    **align_kwargs
        Options for :func:`otviz.transport.align`: ``method``, ``eps``,
        ``tol``, ``max_iter``, ... with ``measure="ot"``; also ``cost`` and
        ``normalize`` (the geometry of the raw cost) with ``measure="ot-raw"``.

    Returns
    -------
    pandas.DataFrame
        Index: teacher layers; columns: student layers; values: float64.
        ``df.attrs`` records ``measure``, ``spatial``, ``size``,
        ``align_kwargs``, ``n_inputs``, ``converged``, the neuron axis of
        every layer (``channel_axis``: ``{"teacher": {...}, "student": {...}}``),
        the output fields read (``fields``), whether a mask was used
        (``masked``) and the dropped neurons (``dropped``).

    Raises
    ------
    ValueError
        Unknown ``measure``; ``align_kwargs`` given with ``measure="cka"``;
        ``cost`` or ``normalize`` given with ``measure="ot"`` (the score has its
        own geometry); a layer whose neurons are all constant with
        ``measure="ot"`` (its score is undefined; the message names the pair);
        with ``measure="ot"``/``"ot-raw"``, a pair whose neurons live in different spaces
        (maps of different sizes with ``spatial="flatten"`` and no ``size``,
        or a dense layer paired with a flattened conv layer); plus everything
        :func:`otviz.capture.capture`, :func:`otviz.capture.neurons` and
        :func:`otviz.transport.align` reject.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> x = np.random.default_rng(0).normal(size=(32, 4))
    >>> df = layer_distances(net, net, x, ["0", "2"], ["0", "2"], measure="cka")
    >>> df.shape
    (2, 2)
    >>> float(df.loc["0", "0"].round(6))
    1.0
    """
    if measure not in _MEASURES:
        raise ValueError(f"Unknown measure={measure!r}. Pass one of {list(_MEASURES)}.")
    if measure == "cka" and align_kwargs:
        raise ValueError(
            f"Options {sorted(align_kwargs)} are for the OT solver and have no effect with "
            "measure='cka'. Drop them, or pass measure='ot'."
        )
    geometry = sorted(set(align_kwargs) & set(_GEOMETRY_OPTIONS))
    if measure == "ot" and geometry:
        raise ValueError(
            f"Option(s) {geometry} choose the geometry of the raw OT cost, but measure='ot' is the "
            "scale-free OT score, which has its own (centred neurons, one scale per layer, squared "
            "Euclidean). Pass measure='ot-raw' to get the raw cost with these options, or drop them."
        )
    if spatial not in ("flatten", "mean"):
        raise ValueError(f"Unknown spatial={spatial!r}. Pass one of ['flatten', 'mean'].")
    if size is not None and spatial != "flatten":
        raise ValueError(
            f"size={size!r} only has an effect with spatial='flatten'. Pass size=None, or "
            "spatial='flatten'."
        )
    t_axis, s_axis = _per_side(channel_axis, "channel_axis")
    t_field, s_field = _per_side(output_field, "output_field")
    t_acts = capture(teacher_model, inputs, teacher_layers, batch_size=batch_size,
                     channel_axis=t_axis, output_field=t_field, mask=mask)
    s_acts = capture(student_model, inputs, student_layers, batch_size=batch_size,
                     channel_axis=s_axis, output_field=s_field, mask=mask)
    t_names, s_names = list(t_acts), list(s_acts)
    first = next(iter(t_acts.values()))
    n_t = int(first.shape[0]) if first.ndim else 0
    for side, acts in (("teacher", t_acts), ("student", s_acts)):
        for name, act in acts.items():
            if act.ndim == 0 or act.shape[0] != n_t:
                raise ValueError(
                    f"{side} layer {name!r} has activation shape {tuple(act.shape)}, whose first "
                    f"axis is not the probe batch ({n_t} inputs). Only layers with the batch on "
                    "the first axis can be compared."
                )

    values = np.empty((len(t_names), len(s_names)), dtype=np.float64)
    dropped: dict[str, dict[str, list[int]]] = {"teacher": {}, "student": {}}
    if measure == "cka":
        t_feats = {k: _sample_features(t_acts, k, spatial, size) for k in t_names}
        s_feats = {k: _sample_features(s_acts, k, spatial, size) for k in s_names}
        for i, tn in enumerate(t_names):
            for j, sn in enumerate(s_names):
                values[i, j] = cka(t_feats[tn], s_feats[sn])
    else:
        t_neur = {k: t_acts.neurons(k, spatial, size, drop_dead=drop_dead) for k in t_names}
        s_neur = {k: s_acts.neurons(k, spatial, size, drop_dead=drop_dead) for k in s_names}
        if drop_dead:
            dropped = {"teacher": {k: v for k, v in t_acts.dropped.items() if v},
                       "student": {k: v for k, v in s_acts.dropped.items() if v}}
        # check every pair before solving anything
        t_space = {k: _space(t_acts, k, spatial, size) for k in t_names}
        s_space = {k: _space(s_acts, k, spatial, size) for k in s_names}
        for tn in t_names:
            for sn in s_names:
                t_pos, s_pos = t_space[tn], s_space[sn]
                if t_pos != s_pos or t_neur[tn].shape[1] != s_neur[sn].shape[1]:
                    if t_pos[0] == s_pos[0] == "map" and len(t_pos) == len(s_pos):
                        common = tuple(min(a, b) for a, b in zip(t_pos[1:], s_pos[1:]))
                        fix = f"pass size= (e.g. size={common}) to resize both maps, or spatial='mean'"
                    else:
                        fix = "pass spatial='mean' (one response per input for every layer)"
                    raise ValueError(
                        f"Teacher layer {tn!r} (positions {_describe(t_acts, tn)}) and student layer "
                        f"{sn!r} (positions {_describe(s_acts, sn)}) give neurons in different spaces "
                        f"(lengths {t_neur[tn].shape[1]} and {s_neur[sn].shape[1]}) with "
                        f"spatial={spatial!r}, size={size!r}, so they cannot be compared: {fix}."
                    )

        from otviz.transport import align

        converged = np.ones_like(values, dtype=bool)
        for i, tn in enumerate(t_names):
            for j, sn in enumerate(s_names):
                with warnings.catch_warnings():
                    # non-convergence is recorded in attrs["converged"], once per table
                    warnings.simplefilter("ignore", RuntimeWarning)
                    if measure == "ot":
                        # in the score's own geometry: this one solve serves the score
                        try:
                            details = align(t_neur[tn], s_neur[sn], normalize="layer",
                                            **align_kwargs).score_details
                        except ValueError as exc:
                            raise ValueError(f"teacher layer {tn!r} against student layer {sn!r}: "
                                             f"{exc}") from None
                        value, converged[i, j] = details["score"], details["converged"]
                    else:
                        result = align(t_neur[tn], s_neur[sn], **align_kwargs)
                        value, converged[i, j] = result.distance, result.converged
                if not np.isfinite(value):
                    raise ValueError(
                        f"The OT value between teacher layer {tn!r} and student layer {sn!r} "
                        f"is not finite ({value}); try another solver or a larger eps."
                    )
                values[i, j] = value
        if not converged.all():
            bad = [f"{t_names[i]}->{s_names[j]}" for i, j in zip(*np.nonzero(~converged))]
            warnings.warn(f"OT did not converge for {len(bad)} pair(s) ({', '.join(bad[:4])}"
                          f"{', ...' if len(bad) > 4 else ''}); their values are approximate: "
                          "raise max_iter or eps", RuntimeWarning, stacklevel=2)

    import pandas as pd

    df = pd.DataFrame(
        values,
        index=pd.Index(list(t_names), name="teacher"),
        columns=pd.Index(list(s_names), name="student"),
    )
    df.attrs.update(
        measure=measure,
        converged=None if measure == "cka" else converged,
        spatial=spatial,
        size=size,
        align_kwargs=dict(align_kwargs),
        n_inputs=int(n_t),
        channel_axis={"teacher": t_acts.channel_axis, "student": s_acts.channel_axis},
        fields={"teacher": {k: v.field for k, v in t_acts.info.items()},
                "student": {k: v.field for k, v in s_acts.info.items()}},
        masked=t_acts.mask is not None,
        dropped=dropped,
    )
    return df
