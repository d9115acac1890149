"""otviz: representation transfer by optimal transport, made visible.

Layers are compared as sets of neurons. A neuron is seen through its responses
to a probe batch of inputs (the *functional view*), a layer is the uniform
distribution over its neurons, and two layers are compared by the optimal
transport (OT) distance between these distributions.

The public API::

    capture(model, inputs, layers)        # forward hooks -> {layer: activation}
    neurons(activation, spatial="flatten")  # activation -> (neurons, responses)
    align(teacher, student, ...)          # -> Alignment (plan, distance, matching, ...)
    ot_distance(teacher, student, ...)    # differentiable OT distance (torch scalar)
    cka(X, Y)                             # linear CKA, the usual reference similarity
    layer_distances(teacher_model, student_model, inputs, ...)  # layer x layer table

Trainings, the run store, datasets, models and figures live in the submodules
``otviz.train``, ``otviz.runs``, ``otviz.data``, ``otviz.models``,
``otviz.teachers``, ``otviz.losses`` and ``otviz.figures``; models from outside
otviz (Hugging Face directories, torch.export programs, state dicts) and probe
inputs for them in ``otviz.external``; ``otviz.loop`` logs a training loop of
your own like a built-in one, and ``otviz.sentences`` is a small text task
generated offline.
"""

__version__ = "0.1.0"

# otviz.layers is imported before the transport functions so that nothing
# named ``align`` can shadow the function ``otviz.align``.
from otviz.capture import capture, hooked, layer_names, neurons  # noqa: E402
from otviz.layers import cka, layer_distances  # noqa: E402
from otviz.transport import Alignment, align, cost_matrix, ot_distance  # noqa: E402

__all__ = ["Alignment", "align", "cost_matrix", "ot_distance", "capture", "hooked", "layer_names",
           "neurons", "cka", "layer_distances"]
