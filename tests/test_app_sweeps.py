"""The Compare page's Sweeps section, on sweeps written straight into a temporary store
(tests/_sweep_fixtures.py: no Ray, no Optuna, no training)."""

from __future__ import annotations


import pytest

pytest.importorskip("streamlit")
pytest.importorskip("plotly")
from streamlit.testing.v1 import AppTest  # noqa: E402

from _apptest import ENTRY, TIMEOUT, figures_of  # noqa: E402

from _sweep_fixtures import sweep_spec, write_fake_sweep  # noqa: E402
from otviz.runs import RunStore  # noqa: E402
from otviz.sweep import comparisons, sweep_tables  # noqa: E402

SECTION = "Sweeps: tuned on validation, paired seeds"


@pytest.fixture
def store_path(tmp_path, monkeypatch):
    path = tmp_path / "runs.db"
    monkeypatch.setenv("OTVIZ_STORE", str(path))
    return path


def open_compare(tmp_path, monkeypatch) -> AppTest:
    """The Compare page with no benchmark result files (only the store's sweeps are drawn)."""
    at = AppTest.from_file(ENTRY, default_timeout=TIMEOUT)
    at.run()
    at.switch_page("views/compare.py").run()
    import dashkit  # imported by the page

    empty = tmp_path / "no-results"
    empty.mkdir(exist_ok=True)
    monkeypatch.setattr(dashkit, "BENCHMARK_RESULTS", empty)
    at.run()
    assert_ok(at)
    return at


def assert_ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def titles(at: AppTest) -> list[str]:
    return [fig["layout"]["title"]["text"] for fig in figures_of(at)]


def comparison_table(at: AppTest):
    found = [df.value for df in at.dataframe if "p_holm" in df.value.columns]
    assert len(found) == 1, [list(df.value.columns) for df in at.dataframe]
    return found[0]


def test_compare_page_shows_a_sweep_its_figures_and_comparisons(store_path, tmp_path, monkeypatch):
    store = RunStore(store_path)
    spec = write_fake_sweep(store, sweep_spec(settings=("transfer-small", "distill"), axis=True))
    at = open_compare(tmp_path, monkeypatch)
    assert SECTION in [h.value for h in at.subheader]
    shown = titles(at)
    assert "transfer-small: is each method's search still improving?" in shown
    assert "transfer-small: test accuracy (mean, 95 % CI over seeds)" in shown
    assert "transfer-small: ot minus each baseline, paired by seed" in shown
    assert "transfer-small: test accuracy against labels per class" in shown
    assert not any(t.startswith("distill") for t in shown)  # one setting at a time
    captions = " ".join(c.value for c in at.caption)
    assert "Runs finished: tuning 24 of at most 24, final 12 of 12, axes 12 of 12." in captions
    assert "scratch 2 complete, 1 pruned (of 3); ot 2 complete, 1 pruned (of 3)" in captions
    # the comparisons of the setting shown: as otviz.sweep.comparisons computes them, in points
    table = comparison_table(at)
    expected = comparisons(sweep_tables(store, spec.name))
    expected = expected[expected.setting == "transfer-small"]
    assert list(table["point"]) == ["own", "k=5"]
    assert list(table["comparison"]) == ["ot - best_baseline: ot - scratch"] * 2
    assert list(table["mean"]) == pytest.approx(list(100 * expected["mean"]))
    assert list(table["p_holm"]) == pytest.approx(list(expected["p_holm"]))
    low, high = 100 * expected["low"].iloc[0], 100 * expected["high"].iloc[0]
    assert table["ci"].iloc[0] == f"[{low:+.1f}, {high:+.1f}]"
    assert (table["mean"] > 2).all()  # the fixture's ot gains 4 points on scratch
    report = " ".join(m.value for m in at.markdown)
    assert "# Sweep `demo`" in report and "## Declared comparisons" in report
    # the other setting
    at.segmented_control(key="cmp_sweep_setting_demo").set_value("distill").run()
    assert_ok(at)
    shown = titles(at)
    assert "distill: is each method's search still improving?" in shown
    assert not any(t.startswith("transfer-small") for t in shown)
    assert set(comparison_table(at)["point"]) <= {"own", "k=5"}


def test_a_running_sweep_shows_what_is_done_and_its_new_results_on_rerun(store_path, tmp_path, monkeypatch):
    store = RunStore(store_path)
    spec = write_fake_sweep(store, running=True)  # ot's last trial running, its final runs to come
    at = open_compare(tmp_path, monkeypatch)
    captions = " ".join(c.value for c in at.caption)
    assert "2 running" in captions and "ot 1 complete, 1 pruned, 1 running (of 3)" in captions
    assert "final 3 of 6" in captions
    assert "None yet: a comparison needs" in captions
    assert "The paired gains of ot appear once" in captions
    assert "No finished final run yet: ot." in captions
    assert "transfer-small: is each method's search still improving?" in titles(at)
    assert not [df for df in at.dataframe if "p_holm" in df.value.columns]
    write_fake_sweep(store, spec)  # the sweep goes on: every run written again, finished
    at.run()
    assert_ok(at)
    assert "final 6 of 6" in " ".join(c.value for c in at.caption)
    assert "transfer-small: ot minus each baseline, paired by seed" in titles(at)
    assert list(comparison_table(at)["comparison"]) == ["ot - best_baseline: ot - scratch"]


def test_several_sweeps_are_chosen_with_a_select_box(store_path, tmp_path, monkeypatch):
    store = RunStore(store_path)
    write_fake_sweep(store, sweep_spec("first"))
    write_fake_sweep(store, sweep_spec("second", settings=("distill",)))
    at = open_compare(tmp_path, monkeypatch)
    box = at.selectbox(key="cmp_sweep")
    assert box.options == ["first", "second"] and box.value == "second"  # the newest
    assert "distill: is each method's search still improving?" in titles(at)
    box.set_value("first").run()
    assert_ok(at)
    assert "transfer-small: is each method's search still improving?" in titles(at)


def test_a_store_without_sweeps_shows_no_sweep_section(store_path, tmp_path, monkeypatch):
    store = RunStore(store_path)
    rid = store.create_run({"setting": "transfer", "method": "ot", "epochs": 1})
    store.log_metrics(rid, {"test/accuracy": 0.5}, step=1, epoch=1)
    store.finish(rid, "completed")
    at = open_compare(tmp_path, monkeypatch)
    assert SECTION not in [h.value for h in at.subheader]
    assert not [t for t in titles(at) if "search still improving" in t]


def test_a_sweep_that_cannot_be_read_is_reported(store_path, tmp_path, monkeypatch):
    store = RunStore(store_path)
    store.save_sweep("broken", {"name": "broken", "seeds": [0, 1]})  # no trials, no settings
    at = AppTest.from_file(ENTRY, default_timeout=TIMEOUT)
    at.run()
    at.switch_page("views/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Could not read the sweep broken" in e.value and "is missing" in e.value for e in at.error), \
        [e.value for e in at.error]


def test_sweep_figures_are_kept_until_the_sweeps_runs_change(store_path, tmp_path, monkeypatch):
    """A second visit (another session) draws the sweep without building its figures again;
    a new result of the sweep builds them again."""
    import otviz.figures

    built = []
    real = otviz.figures.search_progress

    def counted(best, setting, **kw):
        built.append(setting)
        return real(best, setting, **kw)

    monkeypatch.setattr(otviz.figures, "search_progress", counted)
    store = RunStore(store_path)
    spec = write_fake_sweep(store, running=True)
    at = open_compare(tmp_path, monkeypatch)
    assert "transfer-small: is each method's search still improving?" in titles(at)
    n = len(built)
    assert n >= 1
    again = open_compare(tmp_path, monkeypatch)
    assert "transfer-small: is each method's search still improving?" in titles(again)
    assert len(built) == n  # taken from the server's cache
    write_fake_sweep(store, spec)  # the running trial and the final runs finish
    again.run()
    assert_ok(again)
    assert len(built) == n + 1
