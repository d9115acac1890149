r"""Plotly figures for transport plans, neuron maps, distance tables and training curves.

Every builder validates its input, returns a :class:`plotly.graph_objects.Figure`
and never imports Streamlit, so the same figures serve the dashboard
(``st.plotly_chart(fig)``) and the notebooks (``fig.show()``).

Plans
    :func:`plan_heatmap` draws a transport plan :math:`P` (teacher neurons as
    rows, student neurons as columns) with its marginals; :func:`plan_order`
    gives the row and column order that makes the matching read as a block
    diagonal; :func:`plan_snapshots` animates the epoch snapshots of a run's
    plan in one fixed order.
Neurons
    :func:`embed_neurons` embeds the teacher and student neurons together in
    2-D (PCA or UMAP); :func:`neuron_map` draws them with the strongest plan
    entries as lines; :func:`point_cloud_transport` does the same for two
    small 2-D point clouds, for teaching.
Tables and curves
    :func:`distance_matrix` / :func:`distance_matrices` draw the
    teacher-layer x student-layer tables of :func:`otviz.layers.layer_distances`;
    :func:`training_curves` and :func:`accuracy_curves` plot long-format
    metrics from :meth:`otviz.runs.RunStore.metrics`, a panel per tag family
    (:func:`metric_family`), accuracies in percent with the chance level
    (:func:`chance_level`); :func:`distance_bars`
    compares a few alignments.

Benchmarks
    :func:`method_intervals`, :func:`paired_gains` and :func:`axis_curves`
    draw the tables of ``benchmarks/bench_paired.py``: each method's test
    accuracy with its 95 % interval over seeds, the paired difference of OT to
    each baseline, accuracy against labels per class or student width, and
    :func:`budget_curves`, the scratch baseline's validation curve per setting;
    :func:`search_progress` draws a sweep's search, the best validation
    accuracy so far against the number of trials per method.

Conventions: one template (:data:`TEMPLATE`), teacher in blue and student in
orange (:data:`TEACHER_COLOR`, :data:`STUDENT_COLOR`), plans on a perceptually
uniform light-to-dark scale (:data:`PLAN_COLORSCALE`) with an optional log
colour (``log_color=True``) that shows masses several decades below the
largest. Neurons keep their original indices in tick labels and hover text
whatever the display order.
"""

from otviz.figures._common import (
    PLAN_COLORSCALE,
    STUDENT_COLOR,
    TEACHER_COLOR,
    TEMPLATE,
)
from otviz.figures.benchmark import axis_curves, budget_curves, method_intervals, paired_gains, search_progress
from otviz.figures.curves import (
    accuracy_curves,
    chance_level,
    metric_family,
    metric_panels,
    training_curves,
)
from otviz.figures.evolution import compare_runs, reallocation_chart
from otviz.figures.matching import alignment_panel, match_quality, matched_cost_distribution
from otviz.figures.neurons import embed_neurons, neuron_map, point_cloud_transport
from otviz.figures.plans import plan_heatmap, plan_order, plan_snapshots
from otviz.figures.tables import distance_bars, distance_matrices, distance_matrix

__all__ = [
    "PLAN_COLORSCALE",
    "STUDENT_COLOR",
    "TEACHER_COLOR",
    "TEMPLATE",
    "accuracy_curves",
    "alignment_panel",
    "axis_curves",
    "budget_curves",
    "chance_level",
    "compare_runs",
    "distance_bars",
    "distance_matrices",
    "distance_matrix",
    "embed_neurons",
    "match_quality",
    "matched_cost_distribution",
    "metric_family",
    "method_intervals",
    "metric_panels",
    "neuron_map",
    "paired_gains",
    "plan_heatmap",
    "plan_order",
    "plan_snapshots",
    "point_cloud_transport",
    "reallocation_chart",
    "search_progress",
    "training_curves",
]
