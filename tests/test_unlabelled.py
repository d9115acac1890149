"""The semi-supervised variant: unlabelled images for the teacher-guided terms (TrainConfig.unlabelled)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from otviz.data import make_task
from otviz.losses import CrossEntropy, StepContext
from otviz.runs import RunStore
from otviz.train import OptionWarning, TrainConfig, train


def _keys(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x}


@pytest.mark.parametrize("setting", ["transfer", "transfer-small", "transfer-digits"])
def test_the_unlabelled_images_are_the_rest_of_the_training_split(setting):
    task = make_task(setting, seed=3, val_size=0.2)
    t = task.target
    lab, val, unl, test = _keys(t.X_train), _keys(t.X_val), _keys(t.X_unlabelled), _keys(t.X_test)
    assert len(unl) > 10 * len(lab)
    assert not unl & lab and not unl & val and not unl & test
    full = make_task(setting, seed=3, k=None, val_size=0.2).target  # every training image, labelled
    assert _keys(full.X_train) == lab | unl
    assert make_task("distill", seed=0).target.X_unlabelled is None  # full data: nothing unlabelled


class _Recorder:
    def __init__(self, monkeypatch):
        import otviz.losses

        self.seen: list[tuple[int, int, int | None, bytes]] = []
        original = otviz.losses.StepContext
        recorder = self

        class Recording(original):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                if self.targets.dtype != torch.int64:  # the probe's own contexts (OT scores), not a step
                    return
                recorder.seen.append((self.inputs.shape[0], self.targets.shape[0], self.labelled,
                                      self.targets.numpy().tobytes()))

        monkeypatch.setattr(otviz.losses, "StepContext", Recording)


def _train(tmp_path, method, unlabelled, **kw):
    cfg = dict(setting="transfer-small", method=method, epochs=1, steps_per_epoch=4, val_size=0.2, seed=1)
    cfg.update(kw)
    return train(TrainConfig(**cfg, unlabelled=unlabelled), store=RunStore(tmp_path / "r.db"), progress=False)


def test_the_guided_terms_see_the_unlabelled_images_and_the_cross_entropy_does_not(tmp_path, monkeypatch):
    rec = _Recorder(monkeypatch)
    res = _train(tmp_path, "ot", 32)
    assert [(n, t, lab) for n, t, lab, _ in rec.seen] == [(50 + 32, 50, 50)] * 4  # batch min(64, 50 labels)
    config = RunStore(tmp_path / "r.db").run(res.run_id)["config"]
    assert config["unlabelled"] == 32 and config["n_unlabelled"] == 1550
    labelled_batches = [b for *_, b in rec.seen]
    # paired: the labelled batches are the same without the unlabelled images
    rec.seen.clear()
    _train(tmp_path, "ot", None)
    assert [(n, t, lab) for n, t, lab, _ in rec.seen] == [(50, 50, None)] * 4
    assert [b for *_, b in rec.seen] == labelled_batches
    rec.seen.clear()
    _train(tmp_path, "nst", 1.0, k=5)  # a multiple of the labelled batch: 25 labels, 25 unlabelled
    assert {(n, t, lab) for n, t, lab, _ in rec.seen} == {(50, 25, 25)}


def test_methods_without_a_guided_term_ignore_it_with_a_warning(tmp_path, monkeypatch):
    rec = _Recorder(monkeypatch)
    with pytest.warns(OptionWarning, match="unlabelled=64 is ignored: method 'scratch' has no teacher-guided"):
        res = _train(tmp_path, "scratch", 64)
    assert {(n, t) for n, t, *_ in rec.seen} == {(50, 50)}
    assert RunStore(tmp_path / "r.db").run(res.run_id)["config"]["unlabelled"] is None


@pytest.mark.parametrize("kw, message", [
    (dict(setting="distill", method="kd", unlabelled=32), "needs unlabelled images, but setting 'distill'"),
    (dict(setting="transfer-small", method="ot", unlabelled=0), "unlabelled must be a positive number"),
    (dict(setting="transfer-small", method="ot", unlabelled=-1.0), "unlabelled must be a positive number"),
    (dict(setting="transfer-small", method="ot", unlabelled="64"), "unlabelled must be a positive number"),
])
def test_bad_unlabelled_values_are_refused_before_a_run_is_recorded(tmp_path, kw, message):
    store = RunStore(tmp_path / "r.db")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=message):
            train(TrainConfig(**kw, epochs=1, steps_per_epoch=1), store=store, progress=False)
    assert store.runs().empty


def test_cross_entropy_takes_the_labelled_inputs_only():
    torch.manual_seed(0)
    logits, targets = torch.randn(5, 3), torch.tensor([0, 2, 1])
    ctx = StepContext(inputs=torch.zeros(5, 1), targets=targets, student_logits=logits, teacher_logits=None,
                      labelled=3)
    assert torch.allclose(CrossEntropy()(ctx), F.cross_entropy(logits[:3], targets))
    with pytest.raises(ValueError, match="labelled=6 must be a count between 1 and the 5 inputs"):
        CrossEntropy()(StepContext(inputs=torch.zeros(5, 1), targets=targets, student_logits=logits,
                                   teacher_logits=None, labelled=6))
    with pytest.raises(ValueError, match="targets have shape"):  # without `labelled`, one target per input
        CrossEntropy()(StepContext(inputs=torch.zeros(5, 1), targets=targets, student_logits=logits,
                                   teacher_logits=None))


def test_the_command_line_passes_it_on(tmp_path, capsys):
    from otviz.cli import main

    db = tmp_path / "r.db"
    assert main(["train", "--setting", "transfer-small", "--method", "ot", "--epochs", "1", "--steps-per-epoch",
                 "1", "--unlabelled", "16", "--store", str(db)]) == 0
    runs = RunStore(db).runs()
    assert RunStore(db).run(int(runs.run_id.iloc[0]))["config"]["unlabelled"] == 16
