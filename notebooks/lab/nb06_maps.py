"""Notebook 06: the Monge map learned by a generator against a critic (Leygonie et al. 2019), against
the closed form between Gaussians and the exact discrete plan."""

from cells import code, md

NAME = "06_lab_adversarial_maps.ipynb"
PREFIX = "maps"

CELLS = [
    md(r"""
    # Adversarial OT maps: a generator against a critic

    A transport **plan** says how much mass goes from each point of one sample to each point of
    another. A transport **map** says where *any* point goes. For the squared Euclidean cost the
    best map between two distributions $\mu$ and $\nu$, the **Monge map**, is

    $$T = \operatorname*{argmin}_{S:\ S_\#\mu = \nu}\ \mathbb{E}_{x\sim\mu}\|x - S(x)\|^2,
      \qquad \mathbb{E}_{x\sim\mu}\|x - T(x)\|^2 = W_2^2(\mu, \nu),$$

    and by Brenier's theorem it is the gradient of a convex function. Leygonie, She, Almahairi,
    Rajeswar and Courville (*Adversarial Computation of Optimal Transport Maps*, arXiv:1906.09691,
    2019) learn it like a GAN: a **generator** $G$ moves the points of $\mu$, a **critic** measures
    how far $G_\#\mu$ still is from $\nu$, and the critic is the *Kantorovich potential* of
    $W_2$, so its gradient tells each generated point where to go.

    What we do, in 2-D where everything can be seen:

    1. the closed-form Monge map between two Gaussians, our reference;
    2. the exact discrete plan between two samples and the map it gives (its barycentric
       projection);
    3. the adversarially learned map, its training and its error to the closed form;
    4. the weight $\lambda$ of the critic against the transport cost: where the learned map stops;
    5. pairs with no closed form, where the learned map succeeds and where it cannot.

    `OTVIZ_FAST=1` (the tests set it) trains for fewer steps.
    """),
    code("""
    import os

    FAST = os.environ.get("OTVIZ_FAST") == "1"
    STEPS = 300 if FAST else 1000          # generator steps of the main fit
    SWEEP_STEPS = 150 if FAST else 600     # and of each fit of the lambda sweep

    import numpy as np

    from otviz.figures.lab_maps import lambda_sweep, map_comparison, training_curves
    from otviz.lab import maps
    from otviz.lab import barycentric_map, evaluate_map, fit_adversarial_map, gaussian_map

    print("pairs:", list(maps.PAIRS))
    """),
    md(r"""
    ## 1. The closed form between two Gaussians

    Between $\mathcal N(m_a, \Sigma_a)$ and $\mathcal N(m_b, \Sigma_b)$ the Monge map is affine,

    $$T(x) = m_b + A\,(x - m_a), \qquad
      A = \Sigma_a^{-1/2}\big(\Sigma_a^{1/2}\Sigma_b\Sigma_a^{1/2}\big)^{1/2}\Sigma_a^{-1/2},$$

    with $A$ symmetric positive definite (the gradient of a convex quadratic) and
    $A\Sigma_a A = \Sigma_b$ (it does push $\mu$ onto $\nu$). Its cost is the Bures-Wasserstein
    distance, $W_2^2 = \|m_a - m_b\|^2 + \mathrm{tr}\big(\Sigma_a + \Sigma_b -
    2(\Sigma_a^{1/2}\Sigma_b\Sigma_a^{1/2})^{1/2}\big)$.
    """),
    code("""
    pair = maps.PAIRS["Two Gaussians"]
    src, tgt = pair.source, pair.target
    T = gaussian_map(src.mean, src.cov, tgt.mean, tgt.cov)
    print("A =\\n", T.A.round(4))
    print("eigenvalues of A:", np.linalg.eigvalsh(T.A).round(4), "(positive: a convex potential)")
    print("max |A S_a A - S_b| =", f"{np.abs(T.A @ np.asarray(src.cov) @ T.A - np.asarray(tgt.cov)).max():.1e}")
    print(f"W2(mu, nu) = {T.w2:.4f}, W2^2 = {T.w2 ** 2:.3f}  (squared units of the plane)")
    """),
    md(r"""
    ## 2. The exact discrete plan and its map

    Draw $n$ points of each distribution and solve the exact OT problem between them (POT's
    network simplex, through the lab's `solve`). With as many points on both sides and uniform
    weights the plan is a permutation; its **barycentric projection**
    $\hat T(x_i) = \sum_j P_{ij}\, y_j / a_i$ sends each $x_i$ to its partner. It is a map on the
    sample only, and it carries the samples' noise: it converges to $T$ as $n$ grows, slowly.
    We measure every map by its mean squared distance to the closed form, *relative* to the
    closed form's own displacement $\mathbb{E}\|T(x) - x\|^2 = W_2^2$ (0 = the closed form).
    """),
    code("""
    X, Y = maps.sample_pair("Two Gaussians", 500, seed=0)
    bary = barycentric_map(X, Y)

    def rel_error(images, X):
        TX = T(X)
        return ((images - TX) ** 2).sum(1).mean() / ((TX - X) ** 2).sum(1).mean()

    print(f"exact plan on 500 + 500 points: W2 = {bary.w2:.4f} (closed form {T.w2:.4f})")
    print(f"its barycentric map's error to the closed form: {100 * rel_error(bary.images, X):.2f} % of W2^2")
    """),
    md(r"""
    ## 3. The learned map

    **The critic.** For the generated distribution $\rho = G_\#\mu$,

    $$\tfrac12 W_2^2(\rho, \nu) = \max_g\ \mathbb{E}_{z\sim\rho}\, g(z) + \mathbb{E}_{y\sim\nu}\, g^c(y),
      \qquad g^c(y) = \min_z \tfrac12\|z - y\|^2 - g(z),$$

    and at the optimum $\nabla g(z) = z - T_{\rho\to\nu}(z)$. The critic $g$ is a small network
    trained on this objective with the $\min$ taken over the batch's generated points. Its
    gradient is exactly the direction in which to move a generated point to lower $W_2$: that
    is why the paper chooses a $W_2$ critic. A $W_1$ critic (WGAN) has gradients of norm 1
    wherever the distributions differ, so its pull does not fade as a point arrives and says
    nothing of which target is the cheapest.

    **The generator** $G(x) = x + f_\theta(x)$ starts as the identity and minimises the
    transport cost plus $\lambda$ times the critic's estimate:

    $$\min_G\ \mathbb{E}\,\tfrac12\|x - G(x)\|^2 + \lambda\ \tfrac12 W_2^2(G_\#\mu, \nu).$$

    Each step: 5 critic updates, then one generator update, on batches of 256 fresh points. The
    map returned is an average of the last iterates (it damps the game's oscillation).
    """),
    code("""
    fitted = fit_adversarial_map(src, tgt, steps=STEPS, lam=20.0, seed=0, reference=T)
    ev = evaluate_map(fitted, src, tgt, reference=T, n=500, seed=0)   # the 500-point samples above
    print(f"{STEPS} steps in {fitted.seconds:.1f} s")
    print(f"error to the closed form: E|G(x) - T(x)|^2 = {ev.reference_mse:.4f} "
          f"= {100 * ev.relative_error:.2f} % of W2^2 = {ev.reference_cost:.2f}")
    print(f"W2(G#mu, nu) on 500-point samples: {ev.w2_to_target:.3f}; the closed form scores "
          f"{ev.w2_reference_to_target:.3f}; two samples of nu: {ev.w2_noise_floor:.3f}")
    training_curves(fitted, reference_w2sq=T.w2 ** 2, title="Training",
                    subtitle="the cost climbs to W2^2 while the critic's estimate falls")
    """),
    md(r"""
    The transport cost (green) climbs from 0 to about $W_2^2$ as the points travel, the critic's
    estimate of the remaining $W_2^2$ (orange) falls to the level two finite batches of the
    same distribution score anyway, and the distance to the closed form (right) keeps falling
    long after the critic has nothing left to say about the distribution as a whole: the last
    steps straighten the map, not the cloud. The three maps side by side:
    """),
    code("""
    map_comparison(X, Y, {"learned G (adversarial)": fitted(X), "closed form T": T(X),
                          "discrete plan (barycentric)": bary.images},
                   title="Three maps of the same 500 points", n_arrows=120,
                   subtitle=f"learned: {100 * ev.relative_error:.2f} %, discrete plan: "
                            f"{100 * rel_error(bary.images, X):.2f} % of W2^2 from the closed form")
    """),
    md(r"""
    ## 4. What $\lambda$ does: a point on the geodesic

    The generator's objective has a known minimiser. For any $G$,
    $\mathbb{E}\|x - G(x)\|^2 \ge W_2^2(\mu, G_\#\mu)$, and $W_2$ is a metric, so the best $G$
    sits on the $W_2$ geodesic from $\mu$ to $\nu$: $G^\star = \mathrm{id} + t\,(T - \mathrm{id})$
    with $t = \lambda / (1 + \lambda)$. Every arrow is shortened by the factor $t$, an error of
    $(1 - t)^2 = 1/(1 + \lambda)^2$ of $W_2^2$. Small $\lambda$ stops half way; large $\lambda$
    reaches $T$, but the transport cost then weighs little, and it is what picks the cheapest
    of the many maps that push $\mu$ onto $\nu$ (without it, `lam=None`, the paper's pure
    generator, we measured 15 %, 16 % and 3 % for three seeds after 1,000 steps).
    """),
    code("""
    lams = [1.0, 3.0, 20.0] if FAST else [1.0, 3.0, 10.0, 20.0, 100.0]
    errors = []
    for lam in lams:
        f = fit_adversarial_map(src, tgt, steps=SWEEP_STEPS, lam=lam, seed=0)
        errors.append(evaluate_map(f, src, tgt, reference=T, n=500, seed=0).relative_error)
        print(f"lambda = {lam:5g}: error {100 * errors[-1]:6.2f} %  (objective's bias {100 / (1 + lam) ** 2:6.2f} %)")
    lambda_sweep(lams, errors, title="Where the learned map stops",
                 subtitle=f"{SWEEP_STEPS} steps each; dashed: the exact minimiser")
    """),
    md(r"""
    ## 5. Without a closed form

    The learned map needs no Gaussians. On a ring pulled onto the blob at its centre it learns a
    radial map; the check is then $W_2(G_\#\mu, \nu)$ on samples, read against the noise floor
    (two samples of $\nu$ are not at distance 0 either), and the map's cost against the exact
    plan's. On one blob split into two the Monge map tears the source along a line; a smooth
    network cannot tear, and leaves a trail of points between the two targets.
    """),
    code("""
    for name in ["Ring to blob", "One blob to two"]:
        p = maps.PAIRS[name]
        Xp, Yp = maps.sample_pair(name, 500, seed=0)
        fp = fit_adversarial_map(p.source, p.target, steps=STEPS, seed=0)
        e = evaluate_map(fp, p.source, p.target, n=500, seed=0)
        bp = barycentric_map(Xp, Yp)
        print(f"{name}: W2(G#mu, nu) = {e.w2_to_target:.3f} (noise floor {e.w2_noise_floor:.3f}); "
              f"cost {e.transport_cost:.3f} vs the exact plan's {bp.w2 ** 2:.3f}")
        map_comparison(Xp, Yp, {"learned G": fp(Xp), "discrete plan": bp.images}, title=name,
                       n_arrows=120).show()
    """),
    md(r"""
    ## How this connects to aligning neurons

    otviz matches the neurons of a teacher and a student with a discrete plan, solved on every
    batch, and its OT term pulls each student neuron toward the barycentre of the teacher
    neurons it is matched with, the barycentric projection of section 2; by the envelope
    theorem that pull is the gradient of the OT cost, the same force as the critic's
    $\nabla g$ here. A learned map is a function instead of a pairing: fitted between the
    neurons of two layers it would place neurons it has never seen, and the $\lambda$ of
    section 4 is the same trade-off as the OT regulariser's weight against the task loss.

    *Reference.* Jacob Leygonie, Jennifer She, Amjad Almahairi, Sai Rajeswar, Aaron Courville.
    Adversarial Computation of Optimal Transport Maps. arXiv:1906.09691, 2019.
    """),
]
