"""OT lab: five more uses of optimal transport, each small enough to run here, each tied back to
aligning neurons."""

import importlib

import streamlit as st

#: section title -> (module under app/labviews, one line on what it shows)
SECTIONS = {
    "Document distances": ("labviews.documents",
                           "Word Mover's Distance and hierarchical OT over topics (HOTT)"),
    "Adversarial OT maps": ("labviews.maps", "a generator against a critic learns the Monge map"),
    "Inverse OT": ("labviews.inverse", "which cost explains an observed matching?"),
    "Soft top-k": ("labviews.topk", "a differentiable top-k by entropic OT"),
    "Latent transport": ("labviews.latent", "OT between the latent codes of a small VAE"),
}

st.title("OT lab")
st.caption("Optimal transport beyond aligning layers: five published methods, each small enough to "
           "run here in seconds, with the same solvers as the rest of otviz. Each section says how its "
           "idea connects to matching the neurons of two networks.")
choice = st.segmented_control("Method", list(SECTIONS), default=list(SECTIONS)[0], key="lab_section",
                              help="; ".join(f"{k}: {v[1]}" for k, v in SECTIONS.items()))
if choice is None:  # a click on the selected button clears it
    choice = list(SECTIONS)[0]
module, _ = SECTIONS[choice]
importlib.import_module(module).render()
