"""otviz: representation transfer by optimal transport, made visible.

Layers are compared as sets of neurons. A neuron is seen through its responses
to a probe batch of inputs (the *functional view*), a layer is the uniform
distribution over its neurons, and two layers are compared by the optimal
transport (OT) distance between these distributions.
"""

__version__ = "0.1.0"

from otviz.transport import Alignment, align, cost_matrix, ot_distance  # noqa: E402

__all__ = ["Alignment", "align", "cost_matrix", "ot_distance"]
from otviz.capture import capture, hooked, layer_names, neurons  # noqa: E402
from otviz.align import cka, layer_distances  # noqa: E402

__all__ += ["capture", "hooked", "layer_names", "neurons", "cka", "layer_distances"]
