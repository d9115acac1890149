"""Notebook 08 of the OT lab: a differentiable top-k by entropic OT (Xie et al. 2020)."""

from cells import code, md

NAME = "08_lab_soft_topk.ipynb"
PREFIX = "topk"

CELLS = [
    md(r"""
    # Soft top-k: a differentiable top-k by optimal transport

    Keeping the $k$ largest of $n$ scores is a step function of the scores: its gradient is zero
    almost everywhere, so scores that decide *what to keep* (which neurons, which tokens, which
    samples) cannot be learned by gradient descent through a hard top-k. *Differentiable Top-k
    with Optimal Transport* (Xie, Dai, Chen, Dai, Zhao, Zha, Wei, Pfister, NeurIPS 2020) writes
    the top-k as a transport problem and smooths it with entropy.

    The scores $x_1, \dots, x_n$ are rescaled to $s_i \in [0, 1]$ (min to 0, max to 1), each
    carrying mass $1/n$. Two anchors receive them: **dropped** at $y_0 = 0$ with mass $(n-k)/n$
    and **kept** at $y_1 = 1$ with mass $k/n$. With the squared distance as cost,

    $$P^\varepsilon = \operatorname*{argmin}_{P \in U(a, b)} \sum_{ij} P_{ij}\,(s_i - y_j)^2
    + \varepsilon\,\mathrm{KL}(P \,|\, ab^\top), \qquad
    A_i = \frac{P^\varepsilon_{i1}}{P^\varepsilon_{i0} + P^\varepsilon_{i1}} = n P^\varepsilon_{i1}.$$

    $A_i$, the share of score $i$'s mass sent to *kept*, is the **soft top-k indicator**: it lies
    in $[0, 1]$, sums to $k$ (the mass of the *kept* anchor), and tends to the hard top-k as
    $\varepsilon \to 0$. The plan is the library's entropic plan
    (`otviz.lab.entropic_plan`), differentiated implicitly, so $A$ has exact gradients.

    What we do:

    1. compute a soft top-k and read its plan;
    2. watch it sharpen as $\varepsilon$ decreases, and check the logistic form it takes;
    3. check its gradients, ties and permutations;
    4. use it to learn which $k$ channels of a trained network matter most, against random
       channels and the channels that fire the most.

    Everything runs offline on a CPU in under a minute.
    """),
    code(r"""
    import os

    # The test suite sets OTVIZ_FAST=1: fewer seeds in section 4.
    FAST = os.environ.get("OTVIZ_FAST") == "1"
    SEEDS = [0, 1] if FAST else [0, 1, 2, 3, 4]

    import numpy as np
    import pandas as pd
    import torch

    from otviz.figures import lab_topk as figs
    from otviz.lab import hard_topk, select_neurons, soft_topk, topk_transport

    DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    if FAST:
        torch.set_num_threads(1)  # the test suite shares a small machine
    pd.set_option("display.precision", 4)
    """),
    md(r"""
    ## 1. A soft top-k and its transport plan

    Twelve scores, keep four. `soft_topk(scores, k, eps)` takes a 1-D tensor (or array, or a
    batch of rows) and returns the weights; `eps` is in squared units of the rescaled scores, so
    it means the same thing whatever the scores' units: the soft step is about `eps` wide on the
    $[0, 1]$ scale.
    """),
    code(r"""
    scores = torch.randn(12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    k = 4
    w = soft_topk(scores, k, eps=0.05)
    pd.DataFrame({"score": scores.numpy(), "soft weight (eps=0.05)": w.numpy(),
                  "hard top-4": hard_topk(scores, k).numpy()}).sort_values("score", ascending=False)
    """),
    code(r"""
    print(f"sum of the weights: {float(w.sum()):.12f} (k = {k})")
    print(f"all in [0, 1]: {bool((w >= 0).all() and (w <= 1).all())}")
    """),
    md(r"""
    `topk_transport` returns the whole transport problem: the rescaled scores, the $n \times 2$
    plan, the weights and the middle of the step. Each score sends its mass $1/n$ to the two
    anchors; the scores near the boundary between kept and dropped split theirs.
    """),
    code(r"""
    t = topk_transport(scores, k, eps=0.05)
    print("rows of the plan sum to 1/n:", np.allclose(t.plan.sum(1), 1 / t.n))
    print("columns sum to (n-k)/n and k/n:", t.plan.sum(0).round(6))
    print(f"middle of the step (weight 1/2) at rescaled score {t.threshold:.3f}")
    figs.topk_plan(t).show()
    """),
    md(r"""
    ## 2. How it sharpens

    As $\varepsilon$ decreases, the plan tends to the exact OT plan, which in one dimension is
    monotone: the $k$ largest scores go to *kept*. The largest gap between the soft and the hard
    indicator shrinks, while the sum stays $k$ at every $\varepsilon$.
    """),
    code(r"""
    eps_values = [1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001]
    hard = hard_topk(scores, k)
    pd.DataFrame([{"eps": e, "max |soft - hard|": float((soft_topk(scores, k, e) - hard).abs().max()),
                   "sum of the weights": float(soft_topk(scores, k, e).sum())} for e in eps_values])
    """),
    code(r"""
    figs.soft_topk_curves([topk_transport(scores, k, e) for e in (1.0, 0.1, 0.03, 0.01, 0.001)]).show()
    """),
    md(r"""
    With two anchors the plan has a closed form given the dual variables: since
    $(s - 0)^2 - (s - 1)^2 = 2s - 1$,

    $$A_i = \sigma\!\left(\frac{2 s_i - \theta}{\varepsilon}\right),$$

    a logistic of the rescaled score with slope $2/\varepsilon$, its threshold $\theta/2$ set by
    $\sum_i A_i = k$. The soft top-k is a sigmoid with a data-dependent threshold, and OT is what
    places the threshold. Check: the logit of the weights is a straight line in the rescaled
    score, of slope $2/\varepsilon$.
    """),
    code(r"""
    for eps in (0.3, 0.05):
        t = topk_transport(scores, k, eps)
        inside = (t.weights > 1e-9) & (t.weights < 1 - 1e-9)
        logit = np.log(t.weights[inside] / (1 - t.weights[inside]))
        slope, _ = np.polyfit(t.scaled[inside], logit, 1)
        print(f"eps = {eps}: slope of logit(A) against s = {slope:.6f}, 2/eps = {2 / eps:.6f}")
    """),
    md(r"""
    ## 3. Gradients, ties, permutations

    The weights are differentiable in the scores. `torch.autograd.gradcheck` compares the
    gradients with finite differences, in float64:
    """),
    code(r"""
    x = scores.clone().requires_grad_(True)
    for eps in (0.5, 0.05):
        ok = torch.autograd.gradcheck(lambda z: soft_topk(z, k, eps), (x,), eps=1e-6, atol=1e-5)
        print(f"eps = {eps}: gradients match finite differences: {ok}")

    w = soft_topk(x, k, 0.05)
    i = int(torch.argmin((w - 0.5).abs()))          # the score closest to the boundary
    (grad,) = torch.autograd.grad(w[i], x)
    print(f"d A_{i} / d x_{i} = {float(grad[i]):.3f}: raising a score near the boundary raises its weight")
    print(f"the gradients sum to {float(grad.sum()):.2e}: shifting all scores changes nothing")
    """),
    md(r"""
    Equal scores get equal weights: scores tied across the boundary share what is left. Permuting
    the scores permutes the weights (the problem has no notion of order).
    """),
    code(r"""
    print("ties:", soft_topk(torch.tensor([3.0, 2.0, 2.0, 1.0]), 2, eps=1e-4).numpy().round(9))
    perm = torch.randperm(12)
    print("permutation equivariant:", torch.allclose(soft_topk(scores[perm], k, 0.05),
                                                     soft_topk(scores, k, 0.05)[perm]))
    """),
    md(r"""
    ## 4. Which k channels of a trained network matter most?

    `select_neurons` freezes a trained network (here the shipped `cnn-digits` teacher, a small
    CNN on scikit-learn's 8x8 digits) and learns one score $\theta_c$ per channel of a layer
    (`features.conv3`, 64 channels): the layer's output is multiplied by the soft mask
    $m = \mathrm{soft\_topk}(\theta, k, \varepsilon)$, and $\theta$ follows the gradient of the
    classification loss on the training images, with $\varepsilon$ decreasing from 0.3 to 0.005
    so that the mask ends nearly hard. The learned selection (the top $k$ of $\theta$) is then
    compared on the 360 test images with random selections of $k$ channels and with the $k$
    channels of largest mean activation; every selection keeps its channels and zeroes the
    others.
    """),
    code(r"""
    sel = select_neurons("cnn-digits", k=8, seed=0, fast=FAST, device=DEVICE)
    print(sel.summary())
    sel.as_frame()
    """),
    code(r"""
    figs.neuron_selection(sel).show()
    figs.channel_scores(sel).show()
    """),
    md(r"""
    The channels that fire the most are not the ones the task needs. One seed is one run of a
    non-convex search, so we repeat it (accuracies are fractions of the 360 test images):
    """),
    code(r"""
    rows = []
    for seed in SEEDS:
        s = select_neurons("cnn-digits", k=8, seed=seed, fast=FAST, device=DEVICE)
        rows.append({"seed": seed, "learned": s.accuracy["learned"],
                     "random (mean)": s.random_accuracy.mean(), "random (best)": s.random_accuracy.max(),
                     "largest mean activation": s.accuracy["largest mean activation"],
                     "learned - random": s.margin_over_random, "seconds": s.seconds})
    pd.DataFrame(rows)
    """),
    md(r"""
    On this machine (2 CPU cores, fast mode, seeds 0-7), the learned 8 channels reached 85 to
    97 % test accuracy, random channels 61 to 71 % on average, and the 8 channels of largest mean
    activation 71 % (all 64 channels: 99.4 %). The same holds for the MLP teacher `mlp-digits`
    (layer `features.fc2`, 64 units): learned 75 to 88 %, random 35 to 42 %, largest mean
    activation 22 %.

    ## How this connects to aligning neurons

    Aligning two layers by OT moves each teacher neuron's mass onto student neurons; the soft
    top-k moves each channel's mass onto just two targets, *kept* and *dropped*, and the plan's
    soft assignment is what makes the choice trainable. The same mechanism can pick which teacher
    neurons a narrower student should receive, a top-k of the teacher's channels before the
    matching, and section 4 is a warning for such choices: the most active channels are not the
    ones the task needs.

    **Reference.** Yujia Xie, Hanjun Dai, Minshuo Chen, Bo Dai, Tuo Zhao, Hongyuan Zha, Wei Wei,
    Tomas Pfister. *Differentiable Top-k with Optimal Transport.* Advances in Neural Information
    Processing Systems 33 (NeurIPS 2020).
    """),
]
