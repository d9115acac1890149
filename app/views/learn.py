"""Learn: optimal transport on two point clouds, and why neurons can be treated the same way."""

import numpy as np
import streamlit as st

import dashkit as dk
from otviz import figures
from otviz.transport import align

st.title("Learn")
st.caption("An interactive introduction: optimal transport between two point clouds, then the same "
           "idea applied to the neurons of two networks.")

st.header("1. Transport between two point clouds")
st.markdown(
    "Two clouds of points, $x_1, \\dots, x_m$ (blue) and $y_1, \\dots, y_k$ (orange), each point "
    "carrying mass $1/m$ or $1/k$. A **transport plan** $P$ says how much mass goes from each "
    "$x_i$ to each $y_j$; every point must send (receive) exactly its mass. Optimal transport picks "
    "the cheapest plan:")
st.latex(r"\mathrm{OT}(\mu, \nu) = \min_{P \ge 0,\; P\mathbf{1} = a,\; P^\top \mathbf{1} = b}"
         r"\ \sum_{ij} P_{ij}\, \|x_i - y_j\|^2")
st.markdown(
    "The **exact** solution (EMD, left) is sparse: each point sends its mass to one or two partners. "
    "**Sinkhorn** (right) adds an entropy term $\\varepsilon\\,\\mathrm{KL}(P \\,|\\, ab^\\top)$: the "
    "plan is blurred over neighbours, smoother and much faster to compute on large problems. Move "
    "$\\varepsilon$ and watch the lines spread out; as $\\varepsilon \\to 0$ Sinkhorn approaches "
    "the exact plan. The lines show the strongest entries of the plan (95% of the mass), their "
    "opacity the mass they carry.")

CLOUDS = {
    "Two Gaussians": "a round cloud and a shifted, stretched one",
    "Circle and blob": "points on a ring against a compact blob",
    "Two moons": "the two interleaved half-circles",
}


@st.cache_data(show_spinner=False)
def clouds(shape: str, m: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if shape == "Two Gaussians":
        X = rng.normal(size=(m, 2))
        Y = rng.normal(size=(k, 2)) @ np.array([[1.6, 0.4], [0.0, 0.5]]) + np.array([4.0, 1.0])
    elif shape == "Circle and blob":
        t = rng.uniform(0, 2 * np.pi, m)
        X = np.c_[np.cos(t), np.sin(t)] * 2.5 + rng.normal(scale=0.1, size=(m, 2))
        Y = rng.normal(scale=0.6, size=(k, 2)) + np.array([5.0, 0.0])
    else:
        from sklearn.datasets import make_moons

        X = make_moons(n_samples=(m, 0), noise=0.06, random_state=seed)[0] * 2
        Y = make_moons(n_samples=(0, k), noise=0.06, random_state=seed + 1)[0] * 2 + np.array([0.5, 0.0])
    return X, Y


c = dk.cells(5, "learn_controls", min_width=dk.CONTROL_MIN_WIDTH, gap="small")
shape = c[0].selectbox("Clouds", list(CLOUDS), key="learn_shape", help="; ".join(
    f"{k}: {v}" for k, v in CLOUDS.items()))
m = c[1].slider("Blue points", 3, 80, 30, key="learn_m")
k = c[2].slider("Orange points", 3, 80, 20, key="learn_k")
eps = c[3].select_slider("Sinkhorn eps", [0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0],
                         value=0.01, key="learn_eps",
                         help="Entropic regularisation, relative to the typical (median) cost: reg = eps * median(C).")
seed = c[4].number_input("Seed", 0, 10_000, 0, key="learn_seed")

X, Y = clouds(shape, int(m), int(k), int(seed))
try:
    exact = align(X, Y, method="emd")
    entropic = align(X, Y, method="sinkhorn", eps=float(eps))
except ValueError as exc:
    dk.show_error(exc, "Could not solve")
    st.stop()

left, right = dk.cells(2, "learn_clouds")
for col, al, name in ((left, exact, "Exact OT (EMD)"), (right, entropic, f"Sinkhorn, eps = {eps:g}")):
    with col:
        dk.chart(figures.point_cloud_transport(X, Y, al, top=0.95, title=name, height=430,
                                                      x_label="blue", y_label="orange"),
                 key=f"learn_cloud_{name[:5]}", legend_below=True)
        n_links = int((al.plan > 1e-3 * al.plan.max()).sum())
        s = dk.cells(3, f"learn_metrics_{name[:5]}", min_width=dk.METRIC_MIN_WIDTH, gap="small")
        s[0].metric("Transport cost", f"{al.distance:.3f}")
        s[1].metric("Plan entries in use", f"{n_links} / {al.plan.size}",
                    help="Entries above 1/1000 of the largest one.")
        s[2].metric("Iterations", "-" if al.n_iter is None else f"{al.n_iter}")
with st.expander("The two plans as matrices"):
    a, b = dk.cells(2, "learn_plans")
    with a:
        dk.chart(figures.plan_heatmap(exact, title="Exact plan", height=420,
                                      teacher_label="blue points", student_label="orange points"),
                 key="learn_plan_exact")
    with b:
        dk.chart(figures.plan_heatmap(entropic, title="Sinkhorn plan", height=420,
                                         teacher_label="blue points", student_label="orange points"),
                 key="learn_plan_sinkhorn")

st.header("2. Neurons are points too")
st.markdown(
    "Feed a network a **probe batch** of $n$ images. A neuron (a unit of a dense layer, a channel of "
    "a convolution) is the function it computes; seen through its responses to these $n$ images it "
    "is a vector $t_i \\in \\mathbb{R}^n$ (or $\\mathbb{R}^{n h w}$ with every position of a feature "
    "map). This is the **functional view**: two neurons are close when they respond alike to the same "
    "inputs, whatever network they live in.\n\n"
    "Feed the teacher and the student the *same* images and their neurons live in the same space. A "
    "layer is then a cloud of points, $\\mu_T = \\sum_i a_i \\delta_{t_i}$ for the teacher and "
    "$\\mu_S = \\sum_j b_j \\delta_{s_j}$ for the student, and the picture above applies unchanged: "
    "the plan matches teacher neurons with student neurons, and its cost is a distance between the "
    "two layers. It does not care how the neurons are ordered (a permuted layer computes the same "
    "thing) and it needs no adapter between widths: 64 teacher channels against 16 student channels "
    "simply means each student neuron receives the mass of about four teacher neurons.")
st.page_link("views/alignments.py", label="See it on real networks: the Alignments page",
             icon=":material/grid_on:")

st.header("3. What the regulariser adds to the loss")
st.markdown("To transfer what a teacher knows, the student is trained on its task loss plus the "
            "transport cost between its layers and the teacher's:")
st.latex(r"\mathcal{L}(\theta_S) = \mathrm{CE}\big(f_S(x), y\big) + \lambda \sum_{(l, l')} "
         r"\mathrm{OT}\big(\mu_T^{l}, \mu_S^{l'}\big)")
st.markdown(
    "computed on every minibatch. The plan is solved with the current neurons and then held fixed: by "
    "the envelope theorem the gradient of the OT value is the gradient of $\\sum_{ij} P_{ij} "
    "c(t_i, s_j)$ with $P$ constant, so nothing is backpropagated through the solver. The term pulls "
    "each student neuron toward the teacher neurons it is matched with, while leaving the student "
    "free to order its neurons as it likes and to have fewer of them. $\\lambda$ sets the balance "
    "between fitting the new labels and staying close to the teacher's representation.")
st.page_link("views/train.py", label="Try it: train with and without the OT term on the Train page",
             icon=":material/model_training:")

st.header("4. Beyond layers: the OT lab")
st.markdown(
    "The same solvers answer other questions: how far apart two documents are (Word Mover's Distance, "
    "hierarchical OT over topics), which map moves one distribution onto another (learned against a "
    "critic), which cost explains an observed matching (inverse OT), how to pick the top $k$ items "
    "differentiably (soft top-k), and how to travel through a generative model's latent space. Each "
    "runs in seconds on the OT lab page, and each says how it connects to matching neurons.")
st.page_link("views/lab.py", label="Open the OT lab", icon=":material/science:")

st.header("5. Notebooks")
books = dk.notebooks()
if books:
    st.markdown("Walkthroughs that use the same functions and figures as this dashboard:\n\n" + "\n".join(
        f"- `{dk.shown_path(p)}`" + (f": {title}" if title else "") for p, title in books))
else:
    st.markdown("The walkthroughs live in `notebooks/` in the repository.")
st.markdown("Open them in Jupyter from the repository root: `.venv/bin/jupyter lab notebooks/` "
            "(Jupyter is in `requirements.txt`, so `bash scripts/setup.sh` installs it).")
