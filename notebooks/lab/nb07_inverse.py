"""OT lab notebook 07: inverse OT, learning the cost from observed matchings (Ma et al. 2020)."""

from cells import code, md

NAME = "07_lab_inverse_ot.ipynb"
PREFIX = "inverse"

CELLS = [
    md(r"""
    # Inverse OT: which cost explains a matching?

    Optimal transport takes a cost and returns a plan. **Inverse OT** goes the other way: given
    observed couplings $\hat P$ between two sets of points, find a cost whose optimal plans
    reproduce them. This notebook follows *Learning Cost Functions for Optimal Transport*
    (Shaojun Ma, Haodong Sun, Xiaojing Ye, Hongyuan Zha, Haomin Zhou, arXiv:2002.09650, 2020).

    **The model.** For a cost matrix $C$ and the observed marginals $a = \hat P\mathbf 1$,
    $b = \hat P^\top \mathbf 1$, the entropic plan

    $$P(C) = \operatorname*{argmin}_{P \in U(a, b)} \langle P, C\rangle
      + \varepsilon\,\mathrm{KL}(P \,|\, ab^\top), \qquad
      P(C)_{ij} = a_i b_j\, e^{(f_i + g_j - C_{ij})/\varepsilon}$$

    is a log-linear model of the observed pairs, and the cost is fitted by maximum likelihood:

    $$\min_\theta\ \mathrm{KL}\big(\hat P \,\big|\, P(C_\theta)\big)
      = \frac1\varepsilon\Big(\langle \hat P, C_\theta\rangle - \mathrm{OT}_\varepsilon(C_\theta)\Big)
      + \text{const}, \qquad
      \frac{\partial\,\mathrm{KL}}{\partial C} = \frac{\hat P - P(C)}{\varepsilon}.$$

    $\mathrm{OT}_\varepsilon$ is concave in $C$, so the objective is **convex in the cost
    matrix**, and by the envelope theorem its gradient costs one entropic OT solve, with no
    differentiation through the solver. $\varepsilon$ is *absolute* here (in the units of the cost).

    What we do:

    1. generate plans from a known Mahalanobis cost $C_M(x, y) = (x - y)^\top M (x - y)$;
    2. recover $M$ from them, and read the fit;
    3. see what the plans can and cannot identify;
    4. recover it from noisy observations (sampled pairs);
    5. learn a cost of your own design with `inverse_ot_loss`;
    6. ask which cost explains a matching between the neurons of two trained networks.
    """),
    code(r"""
    import os

    # The test suite sets OTVIZ_FAST=1: fewer repetitions, same steps.
    FAST = os.environ.get("OTVIZ_FAST") == "1"
    SAMPLE_SIZES = (200, 2000) if FAST else (100, 300, 1000, 3000, 10000, 30000)

    import numpy as np
    import pandas as pd
    import torch

    import otviz
    from otviz import figures
    from otviz.figures import lab_inverse as figs
    from otviz.lab import (explain_matching, fit_cost, generate_plans, inverse_ot_loss,
                           mahalanobis_cost, neuron_costs, readout_coupling, solve)

    torch.manual_seed(0)
    if FAST:
        torch.set_num_threads(1)  # the test suite shares a small machine
    pd.set_option("display.precision", 4)
    """),
    md(r"""
    ## 1. Plans from a known cost

    A symmetric positive semi-definite $M$ defines the cost $C_M(x, y) = (x - y)^\top M (x - y)$;
    $M = I$ is the squared Euclidean cost. We pick one that is three times cheaper along an axis at
    30 degrees than across it (eigenvalues $\sqrt 3$ and $1/\sqrt 3$, determinant 1).

    `generate_plans` draws point sets from a standard normal and returns the entropic plans of
    $C_M$ at absolute $\varepsilon$, solved by the library's Sinkhorn (`otviz.lab.solve`).
    """),
    code(r"""
    EPS = 0.5
    theta = np.deg2rad(30)
    R = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    M_true = R @ np.diag([np.sqrt(3), 1 / np.sqrt(3)]) @ R.T
    print("M_true =\n", M_true.round(4))

    xs, ys, plans = generate_plans(M_true, n_plans=4, n_points=30, eps=EPS, seed=0)
    print(f"{len(plans)} observed plans of shape {plans[0].shape}, total mass {plans[0].sum():.3f}")

    # M = I is the squared Euclidean cost
    x, y = xs[0], ys[0]
    sq = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    print("identity M == squared Euclidean:", np.allclose(mahalanobis_cost(x, y, np.eye(2)), sq))
    """),
    md(r"""
    ## 2. Recover it

    `fit_cost` first fits the best **isotropic** cost $s\,\|x - y\|^2$ (one parameter), then the
    full $M = LL^\top$ from there, by L-BFGS with a strong-Wolfe line search. Each evaluation solves
    one entropic problem per observed plan. It stops when the objective decreases by less than
    `tol * (1 + F)` over an iteration.

    The result says how well the cost explains the plans: `kl` per plan (nats) and `explained`,
    the share of the plans' divergence from the independent coupling $ab^\top$ (what a zero cost
    gives) that the learned cost removes.
    """),
    code(r"""
    fit = fit_cost(xs, ys, plans, eps=EPS)
    iso_share = 1 - fit.kl_isotropic / fit.kl_independent.mean()
    print(f"relative error ||M_fit - M_true||_F / ||M_true||_F = {fit.relative_error(M_true):.2e}")
    print(f"divergence explained: learned M {fit.explained:.2%}, best isotropic cost {iso_share:.2%}")
    print(f"{fit.n_iter} L-BFGS iterations, {fit.seconds:.2f} s, stopping rule met: {fit.converged}")
    print("M_fit =\n", fit.M.round(6))
    """),
    code(r"""
    figs.metric_balls(M_true, fit.M, fit.isotropic_scale * np.eye(2))
    """),
    md(r"""
    Each curve is the set of displacements $z = x - y$ that cost exactly 1: the true and the
    learned balls coincide, the best isotropic cost (dotted) is the circle that compromises. The
    objective falls to the accuracy of the entropic solves:
    """),
    code(r"""
    figs.fit_curve(fit)
    """),
    code(r"""
    figs.plan_pair(plans[0], fit.plans[0])
    """),
    md(r"""
    ## 3. What the plans identify

    An entropic plan does not change when a function of $x$ alone or of $y$ alone is added to the
    cost: the potentials $f, g$ absorb it. Expanding the Mahalanobis cost,

    $$(x_i - y_j)^\top M (x_i - y_j) = x_i^\top M x_i + y_j^\top M y_j - 2\,x_i^\top M y_j,$$

    so the plans see $M$ only through $\bar X M \bar Y^\top / \varepsilon$, with the points
    centred. Two consequences:

    * **the scale of $M$ is tied to $\varepsilon$**: the same plans read with twice the
      $\varepsilon$ give twice the $M$. Knowing $\varepsilon$ is what makes the scale identifiable;
    * **only directions the points span are identified**: points on a line say nothing about
      the cost across it.
    """),
    code(r"""
    fit2 = fit_cost(xs, ys, plans, eps=2 * EPS)
    print(f"fit at eps = {2 * EPS}: M_fit / M_true =\n", (fit2.M / M_true).round(4))

    rng = np.random.default_rng(0)
    u = np.array([np.cos(0.4), np.sin(0.4)])
    line_x = [np.outer(rng.normal(size=20), u) for _ in range(3)]
    line_y = [np.outer(rng.normal(size=20), u) for _ in range(3)]
    line_plans = [solve(mahalanobis_cost(a, b, M_true), eps=EPS).plan for a, b in zip(line_x, line_y)]
    fit_line = fit_cost(line_x, line_y, line_plans, eps=EPS)
    print(f"points on a line: span of dimension {fit_line.span.shape[1]}; relative error "
          f"{fit_line.relative_error(M_true, on_span=True):.1e} on the line, "
          f"{fit_line.relative_error(M_true):.2f} on the whole matrix")
    """),
    md(r"""
    ## 4. Noisy observations

    Real matchings are counted, not solved: `n_samples` replaces each plan by the frequencies of
    that many pairs drawn from it. The KL objective is then the negative log-likelihood of the
    observed pairs (up to a constant), and the error of $\hat M$ shrinks as pairs accumulate (one
    draw per row, so not exactly monotone). The share explained stays below 100 %: sampling noise
    is not a cost.
    """),
    code(r"""
    rows = []
    for n in SAMPLE_SIZES:
        noisy = generate_plans(M_true, n_plans=4, n_points=30, eps=EPS, n_samples=n, seed=1)
        f = fit_cost(*noisy, eps=EPS)
        rows.append({"pairs per plan": n, "relative error of M": f.relative_error(M_true),
                     "divergence explained": f.explained, "iterations": f.n_iter})
    pd.DataFrame(rows).set_index("pairs per plan")
    """),
    md(r"""
    ## 5. A cost of your own

    `inverse_ot_loss(C, plan, eps=...)` is the objective for one plan as a torch function of the
    cost matrix, with the envelope-theorem gradient. Any cost computed with torch from parameters
    can be learned with it. Here the plans come from $c(x, y) = 2\,\|x - y\|$ (a Euclidean,
    W1-like cost), and we fit $c_{s,p}(x, y) = s\,\|x - y\|^p$ starting from the squared Euclidean
    cost ($s = 1$, $p = 2$) with Adam.
    """),
    code(r"""
    rng = np.random.default_rng(2)
    dist = [torch.cdist(torch.as_tensor(rng.normal(size=(25, 2))), torch.as_tensor(rng.normal(size=(25, 2))))
            for _ in range(3)]
    observed = [solve(2.0 * D.numpy(), eps=0.3).plan for D in dist]

    log_s = torch.zeros((), dtype=torch.float64, requires_grad=True)
    p = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([log_s, p], lr=0.05)
    for step in range(150):
        opt.zero_grad()
        loss = sum(inverse_ot_loss(log_s.exp() * D.clamp_min(1e-12) ** p, P, eps=0.3)
                   for D, P in zip(dist, observed)) / len(dist)
        loss.backward()
        opt.step()
    print(f"learned s = {log_s.exp().item():.4f} (true 2), p = {p.item():.4f} (true 1); "
          f"final KL {loss.item():.1e} nats")
    """),
    md(r"""
    ## 6. Which cost explains a matching between two networks?

    Every alignment of neurons starts from a chosen cost (squared Euclidean on standardised
    responses by default in otviz). Inverse OT asks the reverse question: given a matching the
    networks themselves express, which cost makes it optimal?

    * **The networks**: the shipped teacher `cnn-digits` and `cnn-digits-0to4`, the same
      architecture trained on the digits 0-4 only, on a probe batch of 256 test digits. Both were
      trained from seed 0, hence from the same initial weights (`info["seed"]` of each checkpoint).
    * **The observed matching**, the *readout coupling*: each student channel is regressed on the
      teacher channels of the same layer (ridge regression on standardised responses), and the
      absolute weights, scaled to uniform marginals by the library's Sinkhorn, say which teacher
      neurons each student neuron is made of. No transport cost enters it.
    * **The candidates**, `neuron_costs`: a neuron seen through its whole response maps
      (*pixels*, squared Euclidean or correlation), its mean response per image (*images*), or its
      mean response per class (*classes*), each with the correlation cost.

    `explain_matching` rescales every candidate to unit spread, fits each alone (its best scale)
    and all together (non-negative weights), and reports the share of the matching's divergence
    from independence each explains.
    """),
    code(r"""
    from otviz.data import load_split
    from otviz.teachers import load_teacher

    teacher, _ = load_teacher("cnn-digits")
    student, _ = load_teacher("cnn-digits-0to4")
    _, _, X_test, y_test = load_split("digits")
    probe, labels = torch.from_numpy(X_test[:256]), y_test[:256]
    LAYERS = ["features.conv1", "features.conv2", "features.conv3"]
    acts_t, acts_s = otviz.capture(teacher, probe, LAYERS), otviz.capture(student, probe, LAYERS)

    explanations, rows = {}, []
    for layer in LAYERS:
        costs = neuron_costs(acts_t[layer], acts_s[layer], labels=labels)
        plan = readout_coupling(otviz.neurons(acts_t[layer]).numpy(), otviz.neurons(acts_s[layer]).numpy())
        ex = explain_matching(plan, costs)
        explanations[layer] = (plan, ex)
        rows += [{"layer": layer, "candidate": name, **row} for name, row in ex.table.iterrows()]
        rows.append({"layer": layer, "candidate": "all four (joint fit)", "explained alone": ex.mix.explained})
    table = pd.DataFrame(rows).set_index(["layer", "candidate"])
    table[["explained alone", "weight alone", "weight in mix"]].round(3)
    """),
    code(r"""
    figs.explanation_bars(explanations["features.conv1"][1], title="features.conv1: which cost explains the readout?")
    """),
    md(r"""
    **Reading.** In the first layer the readout coupling is nearly diagonal (draw it with
    `figs.plan_pair`): both networks started from the same weights and their first-layer channels
    still correspond one to one. That matching follows pixel-level response similarity: the
    correlation of whole response maps explains about three quarters of it, well ahead of what
    images or classes excite a neuron (under half). Deeper, every candidate explains much less
    (about 40 % in `conv2`, 10 % in `conv3`): the student's channels have drifted into linear
    mixtures of many teacher channels, a correspondence no neuron-to-neuron cost reproduces. Two
    caveats the numbers carry with them:

    * the candidates' double-centred matrices (the only part a plan responds to) can be strongly
      correlated; when they are, close scores mean the plan cannot tell the costs apart, and the
      joint fit's weights are poorly determined:
    """),
    code(r"""
    explanations["features.conv1"][1].collinearity.round(3)
    """),
    md(r"""
    * a fit is only as good as the model: the check below plants a matching, the entropic plan of
      the *classes* cost at weight 3, and the fit must find that cost and that weight.
    """),
    code(r"""
    layer = "features.conv2"
    costs = neuron_costs(acts_t[layer], acts_s[layer], labels=labels)
    C = costs["classes: correlation"]
    centred = C - C.mean(0) - C.mean(1)[:, None] + C.mean()
    planted = solve(3.0 * C / centred.std(), eps=1.0).plan
    check = explain_matching(planted, costs)
    print("best single cost:", check.best)
    check.table.round(4)
    """),
    md(r"""
    ## How this connects to aligning neurons

    The OT regulariser of otviz needs a cost between neurons, and the choice is usually made by
    habit. Inverse OT makes it a question the data can answer: given a matching that the networks
    express (which teacher neurons a student neuron is built from, or the plan a distillation run
    settled on), fit the cost that makes it optimal and measure how much of the matching any cost
    explains. A cost that explains the matching well is a principled choice for the regulariser; a
    matching that no response-similarity cost explains says the correspondence between the two
    networks is not neuron-to-neuron, and a plan between single neurons is the wrong tool there.

    **Reference.** Shaojun Ma, Haodong Sun, Xiaojing Ye, Hongyuan Zha and Haomin Zhou. *Learning
    Cost Functions for Optimal Transport.* arXiv:2002.09650, 2020.
    """),
]
