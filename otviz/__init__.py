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
your own like a built-in one, ``otviz.sentences`` is a small text task
generated offline, and ``otviz.stats`` gives confidence intervals and paired
comparisons of runs over seeds.
"""

__version__ = "0.1.0"

# The public functions are imported on first use (PEP 562): ``import otviz`` is
# then instant, and torch, POT, pandas, ... load only when a function that needs
# them is first touched (``otviz.align``, ``from otviz import capture``, ...).
import importlib as _importlib
import sys as _sys
import types as _types

#: public name -> the submodule that defines it
_LAZY = {
    "Alignment": "otviz.transport",
    "align": "otviz.transport",
    "cost_matrix": "otviz.transport",
    "ot_distance": "otviz.transport",
    "capture": "otviz.capture",
    "hooked": "otviz.capture",
    "layer_names": "otviz.capture",
    "neurons": "otviz.capture",
    "cka": "otviz.layers",
    "layer_distances": "otviz.layers",
}

__all__ = ["Alignment", "align", "cost_matrix", "ot_distance", "capture", "hooked", "layer_names",
           "neurons", "cka", "layer_distances"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'otviz' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(_types.ModuleType):
    """The ``otviz`` module: ``otviz.capture`` stays the function once ``otviz.capture``
    (the submodule) is imported; the import system would otherwise bind the module
    over the name."""

    def __setattr__(self, name: str, value: object) -> None:
        if (isinstance(value, _types.ModuleType) and _LAZY.get(name) == value.__name__
                and hasattr(value, name)):
            value = getattr(value, name)
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
