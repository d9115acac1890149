"""The `otviz` command line: the demo, the help texts, bad option values."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from otviz.cli import build_parser, main

NUMBER = r"[-+]?\d+(?:\.\d*)?(?:e[-+]?\d+)?"


def _subcommands() -> list[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return sorted(action.choices)
    return []


def test_align_demo_prints_alignments_and_distance_tables(capsys):
    assert main(["align", "--demo"]) == 0
    out = capsys.readouterr().out
    # the explanation, the accuracies, one block per layer pair for emd and sinkhorn
    assert "optimal transport" in out
    accs = re.findall(r"teacher (\d+\.\d)%, student (\d+\.\d)%", out)
    assert accs, out
    teacher_acc, student_acc = map(float, accs[0])
    assert teacher_acc > 80 and student_acc > 80, out  # trained, not random (10%)
    for layer, (m, k) in {"fc1": (128, 32), "fc2": (64, 16), "head": (10, 10)}.items():
        assert f"teacher {layer} ({m} neurons) <-> student {layer} ({k} neurons)" in out
    lines = re.findall(rf"\[(emd|sinkhorn)\] OT score = ({NUMBER}) .*; raw distance = ({NUMBER})", out)
    assert [d[0] for d in lines] == ["emd", "sinkhorn"] * 3, out
    # the score first, on its scale (0 = same layer, ~1 = unrelated), then the raw cost
    assert all(0 <= float(d[1]) < 1 and float(d[2]) >= 0 for d in lines)
    # Sinkhorn's raw transport cost is never below the exact optimum
    for i in range(0, 6, 2):
        assert float(lines[i + 1][2]) >= float(lines[i][2]) * (1 - 1e-6)
    assert "Layer x layer tables" in out
    assert "OT score (emd" in out and "Linear CKA" in out
    assert "Raw OT cost" not in out  # one argument away: --raw


def test_align_demo_is_reproducible_and_takes_options(capsys):
    argv = ["align", "--demo", "--method", "sinkhorn", "--cost", "cosine",
            "--normalize", "standardize", "--eps", "0.05", "--seed", "3", "--epochs", "3"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "[emd]" not in first and "[sinkhorn] OT score" in first
    assert "cost=cosine, normalize=standardize, eps=0.05" in first
    assert main(argv) == 0
    second = capsys.readouterr().out
    strip_time = lambda s: re.sub(r"done in .* s", "", s)  # noqa: E731
    assert strip_time(first) == strip_time(second)


def test_top_level_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in _subcommands():
        assert name in out


def test_no_subcommand_prints_help(capsys):
    assert main([]) == 0
    assert "usage: otviz" in capsys.readouterr().out


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: otviz {command}")
    # every option of the subcommand is explained
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"otviz {command} {action.option_strings[0]} has no help text"


def test_align_help_explains_the_ot_options(capsys):
    with pytest.raises(SystemExit):
        main(["align", "--help"])
    out = capsys.readouterr().out
    for word in ("--demo", "--method", "--cost", "--normalize", "--eps", "--seed", "sinkhorn", "RELATIVE"):
        assert word in out


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["align", "--demo", "--method", "foo"], ["invalid choice: 'foo'", "emd", "sinkhorn", "unbalanced"]),
        (["align", "--demo", "--cost", "manhattan"], ["invalid choice", "sqeuclidean", "cosine"]),
        (["align", "--demo", "--normalize", "zscore"], ["invalid choice", "standardize", "unit"]),
        (["align", "--demo", "--eps", "0"], ["--eps", "positive"]),
        (["align", "--demo", "--eps", "abc"], ["--eps", "positive number"]),
        (["align", "--demo", "--seed", "-1"], ["--seed", ">= 0"]),
        (["nosuchcommand"], ["invalid choice", "align"]),
    ],
)
def test_bad_option_values_exit_with_a_clear_message(argv, expected, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: otviz" in err
    for text in expected:
        assert text in err, err


def test_align_two_shipped_checkpoints(capsys):
    from otviz.teachers import teacher_names

    names = teacher_names()
    if not {"mlp-digits", "cnn-digits"} <= set(names):
        pytest.skip(f"shipped teachers not built: {names}")
    assert main(["align", "cnn-digits", "cnn-digits-0to4", "--method", "emd", "--probe", "120"]) == 0
    out = capsys.readouterr().out
    assert "same 120 held-out images" in out
    assert out.count("[emd] OT score =") == 3
    assert "features.conv3" in out and "Linear CKA" in out
    # two different architectures, explicit layers: pairs by depth, full table
    assert main(["align", "cnn-digits", "mlp-digits", "--method", "sinkhorn", "--eps", "0.05", "--raw",
                 "--teacher-layers", "features.conv2,features.conv3", "--probe", "80"]) == 0
    out = capsys.readouterr().out
    assert out.count("[sinkhorn] OT score =") == 2
    assert "features.fc1" in out and "features.fc2" in out
    assert "Raw OT cost (sinkhorn" in out and "OT score (sinkhorn" in out


def test_align_unknown_teacher_lists_the_shipped_ones(capsys):
    assert main(["align", "no-such-teacher", "mlp-digits"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("otviz align: error:") and "no-such-teacher" in err


def test_align_demo_and_checkpoints_are_exclusive(capsys):
    assert main(["align", "--demo", "mlp-digits", "mlp-digits"]) == 2
    assert "not both" in capsys.readouterr().err


def test_align_without_inputs_says_what_to_pass(capsys):
    assert main(["align"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("otviz align: error:") and "--demo" in err


def test_python_dash_m_otviz_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "otviz", "align", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: otviz align")
