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
    # the default eps converges on every pair, the head's (nearly a permutation) included
    assert "NOT CONVERGED" not in out and "converge" not in out.replace("converged       True", ""), out


def test_align_demo_says_once_and_calmly_why_a_small_eps_did_not_converge(capsys):
    # at eps 0.02 the head pair's plan is nearly a permutation and Sinkhorn stops at its cap
    assert main(["align", "--demo", "--method", "sinkhorn", "--eps", "0.02"]) == 0
    out = capsys.readouterr().out
    head = out[out.index("== teacher head"):out.index("Layer x layer tables")]
    assert head.count("note: Sinkhorn stopped at its iteration cap after 10000 iterations") == 1, head
    assert "nearly a permutation" in head and "--method emd" in head
    assert "OT did not converge" not in out and "score's sinkhorn solves" not in out, out
    assert "[sinkhorn] OT score = 0.1" in head and "(approximate:" in head


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


# ----------------------------------------------------------------------------- otviz train: the recipe
@pytest.fixture
def captured_train(monkeypatch):
    """Replace the training by a recorder of the config it would run."""
    import otviz.train as T

    seen = []

    def fake_train(cfg, **kw):
        seen.append(cfg)
        return T.TrainResult(run_id=7, test_accuracy=0.5, train_accuracy=0.5)

    monkeypatch.setattr(T, "train", fake_train)
    return seen


@pytest.mark.parametrize("setting,method", [("transfer-small", "ot"), ("distill", "kd"), ("transfer", "ot"),
                                            ("distill", "kd+ot"), ("transfer", "l2sp"),
                                            ("transfer-small", "nst"), ("distill", "sp")])
def test_train_without_options_runs_the_recipe(setting, method, captured_train, capsys, tmp_path):
    from otviz.train import TrainConfig, recipe

    assert main(["train", "--setting", setting, "--method", method, "--store", str(tmp_path / "x.db")]) == 0
    cfg = captured_train[0]
    assert {k: getattr(cfg, k) for k in recipe(setting, method)} == recipe(setting, method)
    assert cfg == TrainConfig.from_recipe(setting, method)
    out, err = capsys.readouterr()
    assert f"lr {recipe(setting, method)['lr']}" in out and "recipe" in out and not err


def test_train_options_given_win_over_the_recipe(captured_train, capsys, tmp_path):
    assert main(["train", "--setting", "transfer-small", "--method", "ot", "--lr", "0.05", "--epochs", "2",
                 "--steps-per-epoch", "0", "--pairs", "all", "--normalize", "none", "--lam", "0.3",
                 "--ot-method", "sinkhorn", "--eps", "0.02", "--store", str(tmp_path / "x.db")]) == 0
    cfg = captured_train[0]
    assert (cfg.lr, cfg.epochs, cfg.steps_per_epoch, cfg.pairs, cfg.normalize, cfg.lam, cfg.eps) == \
        (0.05, 2, None, None, None, 0.3, 0.02)
    assert cfg.batch_size == 64 and cfg.cost == "sqeuclidean"  # not given: the recipe's
    out = capsys.readouterr().out
    assert "lr 0.05*" in out and "batch-size 64," in out  # given options are marked


@pytest.mark.parametrize("argv,warning,field", [
    (["--setting", "distill", "--method", "kd", "--lam", "2"], "lam=2.0 is ignored: method 'kd' has no OT term", "lam"),
    (["--setting", "transfer", "--method", "ot", "--eps", "0.1"], "eps=0.1 is ignored: ot_method 'emd'", "eps"),
    (["--setting", "distill", "--method", "ot", "--kd-weight", "2"], "no KD term", "kd_weight"),
    (["--setting", "distill", "--method", "ot", "--temperature", "2"], "no KD term", "temperature"),
    (["--setting", "transfer", "--method", "finetune", "--at-weight", "5"], "no attention-transfer term", "at_weight"),
    (["--setting", "transfer", "--method", "sp", "--nst-weight", "5"], "no NST term", "nst_weight"),
    (["--setting", "distill", "--method", "nst", "--sp-weight", "5"], "no SP term", "sp_weight"),
])
def test_train_options_that_do_not_apply_are_ignored_with_a_warning(argv, warning, field, captured_train,
                                                                     capsys, tmp_path):
    assert main(["train", *argv, "--store", str(tmp_path / "x.db")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("otviz train: warning: ") and warning in err, err
    assert getattr(captured_train[0], field) is None


def test_train_k_in_distill_is_applied_with_a_warning(captured_train, capsys, tmp_path):
    argv = ["train", "--setting", "distill", "--method", "kd", "--k", "50", "--store", str(tmp_path / "x.db")]
    assert main(argv) == 0
    assert "'distill' trains on the full training split" in capsys.readouterr().err
    assert captured_train[0].k == 50


def test_train_help_shows_the_recipe(capsys):
    from otviz.train import recipe_table

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "comes from the benchmark's recipe" in out.replace("\n", " ")
    for line in recipe_table().splitlines()[:5]:
        assert line in out
    assert re.search(r"--lr LR\s+Adam learning rate \(recipe: 0.001 in transfer", out)


def test_readme_shows_the_recipe():
    from pathlib import Path

    from otviz.train import recipe_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert recipe_table(markdown=True) in readme
    assert "otviz train --setting transfer-small --method ot" in readme


# ----------------------------------------------------------------------------- errors: one line, exit code 2
def _otviz(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os
    from pathlib import Path

    full_env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), **(env or {}))
    full_env.pop("OTVIZ_STORE", None)
    full_env.pop("OTVIZ_DEBUG", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "otviz", *argv], capture_output=True, text=True,
                          env=full_env, timeout=120)


def test_runs_on_a_missing_store_says_so_in_one_line_and_creates_nothing(tmp_path):
    missing = tmp_path / "no" / "such" / "runs.db"
    proc = _otviz("runs", "--store", str(missing))
    assert proc.returncode == 2 and not proc.stdout
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"otviz runs: error: no run store at {missing}")
    assert not (tmp_path / "no").exists()


def test_store_errors_print_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    from otviz.runs import RunStoreError

    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database\n" * 300)
    monkeypatch.delenv("OTVIZ_DEBUG", raising=False)
    assert main(["runs", "--store", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("otviz runs: error: ") and str(bad) in err
    assert "not a readable otviz run store" in err

    proc = _otviz("runs", "--store", str(bad))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr

    monkeypatch.setenv("OTVIZ_DEBUG", "1")
    with pytest.raises(RunStoreError, match="not a readable otviz run store"):
        main(["runs", "--store", str(bad)])
    proc = _otviz("runs", "--store", str(bad), env={"OTVIZ_DEBUG": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "RunStoreError" in proc.stderr


@pytest.mark.parametrize("error", [FileNotFoundError(2, "No such file or directory", "/x/y.pt"),
                                   PermissionError(13, "Permission denied", "/x"),
                                   TypeError("lam must be a number"), ValueError("bad\nvalue")])
def test_input_errors_print_one_line(error, capsys, monkeypatch):
    import otviz._cli_train as C

    def fail(args):
        raise error

    monkeypatch.delenv("OTVIZ_DEBUG", raising=False)
    monkeypatch.setattr(C, "_run_teachers", fail)
    assert main(["teachers"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("otviz teachers: error: ") and err.count("\n") == 1, err


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    import otviz._cli_train as C

    def fail(args):
        raise KeyError("an internal bug")

    monkeypatch.setattr(C, "_run_teachers", fail)
    with pytest.raises(KeyError):
        main(["teachers"])


def test_runs_lists_an_existing_store(tmp_path, capsys):
    from otviz.runs import RunStore

    store = RunStore(tmp_path / "runs.db")
    rid = store.create_run({"setting": "distill", "method": "kd"})
    store.finish(rid)
    assert main(["runs", "--store", str(tmp_path / "runs.db")]) == 0
    out = capsys.readouterr().out
    assert "distill" in out and "completed" in out


# ----------------------------------------------------------------------------- import speed (not timed)
_HEAVY = ("ot", "sklearn", "pandas", "plotly")


def _modules_after(code: str) -> set[str]:
    import os
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    probe = code + "\nimport sys; print(' '.join(sorted(m for m in sys.modules if '.' not in m)))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split("\n")[-2].split())


def test_import_otviz_imports_no_heavy_dependency():
    loaded = _modules_after("import otviz")
    assert not loaded & set(_HEAVY + ("torch", "ray", "optuna")), loaded & set(_HEAVY + ("torch",))
    loaded = _modules_after("import otviz.sweep")  # the spec reader; Optuna and Ray load when a sweep runs
    assert not loaded & {"ray", "optuna", "torch"}, loaded & {"ray", "optuna", "torch"}


def test_public_functions_import_without_pot_sklearn_pandas_plotly():
    loaded = _modules_after("from otviz import align, ot_distance, capture, neurons, cka, layer_distances")
    assert "torch" in loaded and not loaded & set(_HEAVY), loaded & set(_HEAVY)


def test_cli_help_and_store_errors_import_neither_torch_nor_pot():
    code = ("from otviz.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert main(['runs', '--store', '/nonexistent/otviz/runs.db']) == 2\n"
            "try:\n    main(['align', '--eps', '-1'])\nexcept SystemExit:\n    pass\n")
    loaded = _modules_after(code)
    assert not loaded & {"torch", "ot", "sklearn", "pandas"}, loaded & {"torch", "ot", "sklearn", "pandas"}


def test_lazy_public_names_stay_functions():
    import otviz
    import otviz.capture  # noqa: F401  (the submodule: must not shadow the function)
    import otviz.train  # noqa: F401

    assert callable(otviz.capture) and otviz.capture.__name__ == "capture"
    assert otviz.align.__module__ == "otviz.transport" and "align" in dir(otviz)
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        otviz.nonexistent  # noqa: B018


# ----------------------------------------------------------------------------- parsing before torch
_PARSE_ONLY = [
    ["train", "--help"],
    ["train", "--bogus"],
    ["train", "--method", "bogus"],
    ["train", "--method", "kd+kd"],
    ["train", "--setting", "nosuch"],
    ["train", "--epochs", "many"],
    ["train", "--device", "gpu"],
    ["train", "--config-json", "{not json"],
    ["train", "--ot-method", "exact"],
    ["train", "--epochs", "0"],
    ["train", "--kd-weight", "-1"],
    ["align", "--help"],
    ["align", "--bogus"],
    ["teachers", "--help"],
    ["runs", "--help"],
    ["dashboard", "--help"],
    ["align", "cnn-mnist5k", "/nonexistent/student.pt"],
    ["align", "cnn-mnist5k", __file__],  # a text file
    ["teachers"],
    ["sweep", "--help"],
    ["sweep", "run", "--help"],
    ["sweep", "report", "--help"],
    ["sweep", "run", "/nonexistent/spec.toml"],
    ["sweep", "run", "spec.toml", "--workers", "0"],
]


@pytest.mark.parametrize("argv", _PARSE_ONLY, ids=" ".join)
def test_help_and_argument_errors_import_no_heavy_module(argv):
    # a test of what is imported (not of time): parsing, help, every argument error, a TEACHER or
    # STUDENT that is not a model and the teachers listing answer before torch, POT, scikit-learn,
    # pandas or numpy load
    code = ("from otviz.cli import main\n"
            f"try:\n    code = main({argv!r})\nexcept SystemExit as exc:\n    code = exc.code\n"
            "assert code in (0, 2), code\n")
    loaded = _modules_after(code)
    heavy = {"torch", "ot", "sklearn", "pandas", "numpy", "scipy", "ray", "optuna"}
    assert not loaded & heavy, loaded & heavy


@pytest.mark.parametrize("argv, expected", [
    (["train", "--method", "bogus"], ["--method", "Unknown method 'bogus'", "kd+ot"]),
    (["train", "--method", "scratch+finetune"], ["--method", "contradictory"]),
    (["train", "--device", "gpu"], ["--device", "cpu, cuda or cuda:N"]),
    (["train", "--config-json", "{not json"], ["--config-json", "not valid JSON"]),
    (["train", "--config-json", "[1, 2]"], ["--config-json", "JSON object"]),
    (["train", "--setting", "nosuch"], ["invalid choice", "transfer-small"]),
    (["train", "--epochs", "0"], ["--epochs", "positive integer"]),
    (["train", "--lr", "-0.1"], ["--lr", "positive number"]),
    (["train", "--lam", "nan"], ["--lam", "non-negative number"]),
    (["train", "--seed", "-1"], ["--seed", "non-negative integer"]),
])
def test_train_option_errors_name_the_option_and_the_fix(argv, expected, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: otviz train" in err
    for text in expected:
        assert text in err, err


def test_train_parser_accepts_what_the_library_accepts():
    args = build_parser().parse_args(["train", "--method", "kd+ot", "--device", "cuda:1",
                                      "--config-json", '{"epochs": 2}'])
    assert (args.method, args.device, args.config_json) == ("kd+ot", "cuda:1", '{"epochs": 2}')


def test_train_parser_defaults_and_choices_match_the_library():
    # parsing needs no torch, so the few TrainConfig defaults and the choices the options offer are
    # listed in torch-free places: they must be the library's
    import dataclasses

    from otviz import _recipes, cli, transport
    from otviz._cli_train import CONFIG_DEFAULTS
    from otviz.data import SETTINGS
    from otviz.losses import parse_method
    from otviz.train import TrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert CONFIG_DEFAULTS == {k: defaults[k] for k in CONFIG_DEFAULTS}
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    actions = {a.dest: a for a in sub.choices["train"]._actions}
    assert list(actions["setting"].choices) == list(SETTINGS)
    assert list(actions["cost"].choices) == list(transport.COSTS)
    assert list(actions["ot_method"].choices) == list(transport.METHODS)
    assert set(actions["normalize"].choices) <= set(transport.NORMALIZATIONS)
    assert parse_method is _recipes.parse_method  # what --method checks is what training checks
    assert cli.COSTS == tuple(transport.COSTS) and cli.METHODS == tuple(transport.METHODS)
    assert {None if n == "none" else n for n in cli.NORMALIZATIONS} <= set(transport.NORMALIZATIONS)


# ----------------------------------------------------------------------------- align: odd TEACHER/STUDENT
def _odd_argument(kind: str, tmp_path) -> str:
    import os

    if kind == "text file":
        p = tmp_path / "passwd"
        p.write_text("root:x:0:0:root:/root:/bin/bash\n")
    elif kind == "directory":
        p = tmp_path / "a-model-dir"
        p.mkdir()
    elif kind == "empty file":
        p = tmp_path / "empty.pt"
        p.write_bytes(b"")
    elif kind == "binary file":
        p = tmp_path / "random.pt"
        p.write_bytes(bytes((i * 37 + 11) % 256 for i in range(4096)))  # begins with 0x0b, not a checkpoint
    elif kind == "damaged zip":
        p = tmp_path / "cut.pt"
        p.write_bytes(b"PK\x03\x04" + b"\0" * 60)
    elif kind == "fifo":
        p = tmp_path / "pipe.pt"
        os.mkfifo(p)
    elif kind == "missing path":
        p = tmp_path / "no-such-dir" / "student.pt"
    else:  # a word that is neither a shipped teacher nor a file
        return "cnn-mnist5k-typo"
    return str(p)


@pytest.mark.parametrize("kind, expected", [
    ("text file", ["is not an otviz checkpoint", "a text file", "`otviz teachers` lists them"]),
    ("directory", ["is a directory", "Alignments page"]),
    ("empty file", ["empty file (0 bytes)"]),
    ("binary file", ["is not an otviz checkpoint", "binary file of another kind"]),
    ("damaged zip", ["not a readable one", "save the checkpoint again"]),
    ("fifo", ["named pipe (FIFO)", "regular files"]),
    ("missing path", ["no file at"]),
    ("unknown name", ["neither a shipped teacher name nor a file", "shipped: ", "cnn-mnist5k"]),
])
def test_align_refuses_an_argument_that_is_not_a_model_and_says_what_it_is(kind, expected, tmp_path, capsys):
    bad = _odd_argument(kind, tmp_path)
    assert main(["align", "cnn-mnist5k", bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("otviz align: error: the student") and err.count("\n") == 1, err
    assert "Error" not in err and "list index" not in err, err  # no leaked exception name
    for text in expected:
        assert text in err, err


# ----------------------------------------------------------------------------- teachers: fits the terminal
@pytest.mark.parametrize("columns", [40, 60, 80, 100])
def test_teachers_listing_fits_the_terminal(columns, monkeypatch, capsys):
    from otviz.teachers import teacher_names

    monkeypatch.setenv("COLUMNS", str(columns))
    assert main(["teachers"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= columns, out
    for name in teacher_names():
        assert name in out


def test_teachers_listing_without_a_terminal_fits_100_columns():
    import os
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "OTVIZ_DEBUG")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-m", "otviz", "teachers"], capture_output=True, text=True,
                          env=env, timeout=120)  # stdout is a pipe: no terminal size to read
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) > 2 and max(len(line) for line in lines) <= 100, proc.stdout


# ----------------------------------------------------------------------------- README's install section
def test_readme_install_section_agrees_with_setup_sh():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    setup = (root / "scripts" / "setup.sh").read_text(encoding="utf-8")
    install = readme[readme.index("## Quick start"):readme.index("## The library")]
    # the torch spec setup.sh installs by default is the one the README names
    spec = re.search(r'TORCH_SPEC="\$\{OTVIZ_TORCH:-([^}]+)\}"', setup).group(1)
    assert f"It installs `{spec}` by default" in install
    # the commands name real addresses and options, no placeholder left
    assert "<" not in "".join(re.findall(r"```bash\n(.*?)```", install, flags=re.S))
    assert install.count("https://download.pytorch.org/whl/cpu") >= 2
    for word in ("OTVIZ_TORCH", "OTVIZ_FORCE", "OTVIZ_PYTHON", "--dev", "PIP_EXTRA_INDEX_URL"):
        assert word in install and word in setup, word
    assert "python3.11" in setup and "python3.11" in install
