"""OT lab: five more uses of optimal transport, small enough to run on a laptop's CPU.

Beside representation transfer, optimal transport answers other questions a
student of the field meets. Each piece here is a small, tested implementation of
one published method, built on the same solvers as :func:`otviz.align`
(:mod:`otviz.lab._ot`), with a section on the dashboard's *OT lab* page and a
notebook (``notebooks/05_...`` to ``09_...``):

- :mod:`otviz.lab.documents`: document distances, Word Mover's Distance
  (Kusner et al. 2015) and hierarchical OT over topics (HOTT, Yurochkin et al. 2019);
- :mod:`otviz.lab.maps`: an OT map learned adversarially, a generator against a
  critic (Leygonie et al. 2019), against the exact plan and the Gaussian closed form;
- :mod:`otviz.lab.inverse`: learning the cost from observed matchings (inverse OT,
  Ma et al. 2020);
- :mod:`otviz.lab.topk`: a differentiable top-k by entropic OT (Xie et al. 2020);
- :mod:`otviz.lab.latent`: OT in the latent space of a small VAE (Liu et al. 2018).

Names are imported on first use, so ``import otviz.lab`` is instant.
"""

from __future__ import annotations

from otviz._lazy import lazy_attributes

#: public name -> the submodule that defines it
_LAZY: dict[str, str] = {
    "solve": "otviz.lab._ot",
    "entropic_plan": "otviz.lab._ot",
    # inverse OT: learn the cost from observed matchings (Ma et al. 2020)
    "explain_matching": "otviz.lab.inverse",
    "fit_cost": "otviz.lab.inverse",
    "fit_cost_mix": "otviz.lab.inverse",
    "generate_plans": "otviz.lab.inverse",
    "inverse_ot_loss": "otviz.lab.inverse",
    "mahalanobis_cost": "otviz.lab.inverse",
    "neuron_costs": "otviz.lab.inverse",
    "readout_coupling": "otviz.lab.inverse",
    # latent transport (Liu et al. 2018)
    "ClassTransport": "otviz.lab.latent",
    "DigitsVAE": "otviz.lab.latent",
    "PriorTransport": "otviz.lab.latent",
    "class_transport": "otviz.lab.latent",
    "code_distance": "otviz.lab.latent",
    "displacement_interpolation": "otviz.lab.latent",
    "distance_to_data": "otviz.lab.latent",
    "push_prior": "otviz.lab.latent",
    "train_vae": "otviz.lab.latent",
    "soft_topk": "otviz.lab.topk",
    "hard_topk": "otviz.lab.topk",
    "topk_transport": "otviz.lab.topk",
    "select_neurons": "otviz.lab.topk",
    "gaussian_map": "otviz.lab.maps",
    "bures_wasserstein": "otviz.lab.maps",
    "fit_adversarial_map": "otviz.lab.maps",
    "barycentric_map": "otviz.lab.maps",
    "evaluate_map": "otviz.lab.maps",
    # documents: Word Mover's Distance and HOTT
    "word_movers_distance": "otviz.lab.documents",
    "word_movers_plan": "otviz.lab.documents",
    "hott": "otviz.lab.documents",
    "hott_plan": "otviz.lab.documents",
    "hott_matrix": "otviz.lab.documents",
    "HOTT": "otviz.lab.documents",
    "WordVectors": "otviz.lab.documents",
    "minilm_word_vectors": "otviz.lab.documents",
    "ppmi_word_vectors": "otviz.lab.documents",
    "word_vectors": "otviz.lab.documents",
    "document_corpus": "otviz.lab.documents",
    "knn_comparison": "otviz.lab.documents",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
