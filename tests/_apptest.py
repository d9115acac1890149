"""What the dashboard's AppTest tests share: the entry script, the time limit, and small readers
of a rendered page (imported by tests/test_app*.py)."""

from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

ENTRY = str(Path(__file__).resolve().parents[1] / "app" / "otviz_app.py")
TIMEOUT = 180  # seconds for one script run; generous, never a speed check


def by_label(widgets, label: str):
    """The first of ``widgets`` labelled ``label`` (an assertion lists the labels there are)."""
    found = [w for w in widgets if w.label == label]
    assert found, f"no widget labelled {label!r}; have {[w.label for w in widgets]}"
    return found[0]


def errors(at: AppTest) -> list[str]:
    """The texts of the page's st.error boxes."""
    return [e.value for e in at.error]


def figures_of(at: AppTest) -> list[dict]:
    """The page's plotly figures, as their JSON specs."""
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
