from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from _testing import kept_bytes

from esgp_sparse import tasks


def test_quick_run_end_to_end(tmp_path, capsys):
    out, image = tmp_path / "results.json", tmp_path / "curves.png"
    tasks.main(
        [
            "adding",
            "--quick",
            "--models",
            "esgp,esn,gru",
            "--epochs",
            "2",
            "--seed",
            "3",
            "--out",
            str(out),
            "--plot",
            str(image),
        ]
    )
    printed = capsys.readouterr()
    assert "| model | H | parameters | test MSE |" in printed.out and "| esn | 32 | 33 |" in printed.out
    assert "epoch 2/2" in printed.err  # a progress bar per epoch
    result = json.loads(out.read_text())
    assert result["task"] == "adding" and result["seed"] == 3 and result["quick"] is True
    assert {"torch", "numpy", "scipy", "esgp_sparse", "python"} <= set(result["versions"])
    assert result["machine"]["cpus"] >= 1
    assert list(result["models"]) == ["esgp", "esn", "gru"]
    hidden, inputs = 32, 2
    expected = {
        "esgp": inputs * hidden + hidden * hidden + hidden + hidden + 1,
        "esn": hidden + 1,
        "gru": 3 * (inputs * hidden + hidden * hidden + 2 * hidden) + hidden + 1,
    }
    for name, row in result["models"].items():
        assert row["parameters"] == expected[name]
        assert len(row["curve"]) == 2 and all(v >= 0 for v in row["curve"])
    assert image.stat().st_size > 10_000
    # the tables and curves again from the saved results, without training
    again = tasks.main(["--results", str(out), "--plot", str(tmp_path / "again.png")])
    printed = capsys.readouterr().out
    assert again == [result] and "| esn | 32 | 33 |" in printed
    # and one summary row per task, each score beside the original's, the best in bold
    scores = {name: f"{row['curve'][-1]:.4g}" for name, row in result["models"].items()}
    best = min(result["models"], key=lambda name: result["models"][name]["curve"][-1])
    row = next(line for line in printed.splitlines() if line.startswith("| adding |"))
    assert f"**{scores[best]}** ({tasks.TASKS['adding'].reference[best]})" in row
    assert f"| {scores['esn']} (0.17) |" in row or best == "esn"
    assert "lstm" not in printed.splitlines()[printed.splitlines().index(row) - 2]  # not run, no column


def test_train_size_takes_the_same_subset_for_every_model(monkeypatch):
    seen = {}

    def record(model, task, data, epochs, seed, label, *options):
        seen[label] = data
        return dict(curve=[0.0], train_loss=[0.0], seconds=0.0)

    monkeypatch.setattr(tasks, "train", record)
    result = tasks.run("delayed_response", ["esn", "esgp", "gru"], 1, 16, True, 0, None, train_size=100)
    assert result["train_shape"][0] == 100 and result["train_size"] == 100
    full = tasks.TASKS["delayed_response"].data(True, 0, None)
    x = seen["esn"][0]
    assert x.shape[0] == 100 and len({tuple(map(float, row[:, 0])) for row in x}) == 100  # 100 distinct sequences
    for label in ("esgp", "gru"):
        for a, b in zip(seen[label], seen["esn"], strict=True):
            assert torch.equal(a, b)  # the same subset, and the same test set, for every model
    assert torch.equal(seen["esn"][2], full[2])
    # each chosen sequence is one of the full training set's
    chosen = {tuple(map(float, row[:, 0])) for row in x}
    assert chosen <= {tuple(map(float, row[:, 0])) for row in full[0]}


@pytest.mark.parametrize("task", ["adding", "mackey_glass"])
def test_quick_training_beats_the_trivial_baseline(task):
    """``--quick`` (10 epochs, H=32) learns: the ESGP's final test score ends well below that of
    predicting the training mean (adding, seed 0: MSE 0.078 against 0.159 when this was written)."""
    result = tasks.run(task, ["esgp"], 10, 32, True, 0, None)
    curve = result["models"]["esgp"]["curve"]
    assert result["baseline"] > 0
    assert curve[-1] < 0.6 * result["baseline"], (curve, result["baseline"])
    assert curve[-1] < curve[0]


def test_synthetic_digits_are_labelled_and_not_set_beside_mnist(monkeypatch, capsys):
    monkeypatch.setattr(tasks, "train", lambda *args: dict(curve=[12.5], train_loss=[2.0], seconds=1.0))
    result = tasks.run("smnist", ["esgp"], 1, 16, True, 0, None)
    assert result["data"] == "synthetic digits" and "not comparable" in capsys.readouterr().out
    assert 0 < result["baseline"] < 50  # the most frequent of 10 classes
    table, row = tasks.markdown(result), tasks.summary([result])
    assert "smnist (synthetic digits)" in table and "smnist (synthetic digits)" in row
    assert "75.94" not in table and "75.94" not in row  # the original's MNIST number
    mnist = dict(result, data="MNIST")
    assert "(75.94)" in tasks.summary([mnist])


def test_esn_is_the_classic_echo_state_network():
    model = tasks.build_model("esn", tasks.TASKS["adding"], 20, seed=0)
    cell = model.core.cells[0]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    x = torch.randn(3, 7, 2)
    h = torch.zeros(3, 20)
    w = cell.recurrent_weight().to_dense()
    for t in range(7):  # the gate fixed open: h_t = tanh(W_in x_t + W h_{t-1})
        h = torch.tanh(x[:, t] @ cell.Win.weight.T + h @ w.T)
    torch.testing.assert_close(model.core(x)[0][:, -1], h)


def test_every_task_has_data_of_the_declared_sizes():
    for task in tasks.TASKS.values():
        x, y, x_test, y_test = task.data(True, 0, None)
        assert x.dim() == 3 and x.shape[2] == task.input_size and x_test.shape[1:] == x.shape[1:]
        model = tasks.build_model("esgp", task, 16, seed=0)
        prediction = model(x[:4], task.outputs(y))
        if task.loss == "cross_entropy":
            assert prediction.shape == (4, task.output_size) and y.dtype == torch.int64
        else:
            assert prediction.shape == y[:4].shape


def test_bad_model_and_task_names(capsys):
    with pytest.raises(SystemExit):
        tasks.main(["adding", "--quick", "--models", "esgp,transformer"])
    assert (
        "--models: expected names from esgp,esgp-sparse,esgp-diagonal,esgp-lowrank,gru,lstm,esn, got 'esgp,transformer'"
        in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        tasks.main(["addition", "--quick"])
    assert "expected one or more tasks from" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"tasks: expected a model in \('esgp', 'esgp-sparse', .*\), got 'rnn'"):
        tasks.build_model("rnn", tasks.TASKS["adding"], 8, 0)


def test_sweep_over_gates_and_sizes(tmp_path, monkeypatch, capsys):
    """--models with the scalable gates and --hidden as a list: a row per model and size with its
    own parameter count, reservoirs of --per-unit connections per unit, a table and a size plot."""
    built = []
    build = tasks.build_model

    def record_build(name, task, hidden, seed, per_unit=None, *knobs):
        model = build(name, task, hidden, seed, per_unit, *knobs)
        built.append((name, hidden, model.core.cells[0].nnz))
        return model

    monkeypatch.setattr(tasks, "build_model", record_build)
    monkeypatch.setattr(tasks, "train", lambda model, *args: dict(curve=[0.5], train_loss=[1.0], seconds=1.0))
    image, out = tmp_path / "sizes.png", tmp_path / "sweep.json"
    argv = ["adding", "--quick", "--models", "esgp-sparse,esgp-diagonal", "--hidden", "64,256"]
    (result,) = tasks.main(argv + ["--per-unit", "4", "--plot-sizes", str(image), "--out", str(out)])
    assert list(result["models"]) == [
        "esgp-sparse H=64",
        "esgp-diagonal H=64",
        "esgp-sparse H=256",
        "esgp-diagonal H=256",
    ]
    rows = result["models"]
    assert rows["esgp-sparse H=256"]["parameters"] > rows["esgp-sparse H=64"]["parameters"]
    assert rows["esgp-diagonal H=64"]["parameters"] < rows["esgp-sparse H=64"]["parameters"]
    for name, hidden, nnz in built:  # 4 connections per unit on average
        assert 3 * hidden < nnz < 5 * hidden, (name, hidden, nnz)
    assert image.stat().st_size > 0
    table = capsys.readouterr().out
    assert "| esgp-diagonal | 256 |" in table
    again = tasks.main(["--results", str(out), "--plot-sizes", str(tmp_path / "again.png")])
    assert again[0]["models"].keys() == rows.keys()
    # a line per model and setting: the same model at another learning rate is not joined to it
    other = json.loads(json.dumps(result)) | dict(lr=0.01)
    lines = tasks.size_lines([result, other])
    assert list(lines) == ["esgp-sparse", "esgp-diagonal", "esgp-sparse, lr 0.01", "esgp-diagonal, lr 0.01"]
    assert lines["esgp-sparse"] == [(h, 0.5, rows[f"esgp-sparse H={h}"]["parameters"]) for h in (64, 256)]
    with pytest.raises(SystemExit):
        tasks.main(["adding", "--quick", "--hidden", "64,big"])
    assert "--hidden: expected a positive integer or a comma-separated list" in capsys.readouterr().err


def test_size_plot_draws_a_line_per_model_and_setting():
    def result(model, hidden, score, rows=None, **setting):
        row = dict(model=model, hidden=hidden, parameters=10 * hidden, curve=[0.9, score], seconds=1.0, **(rows or {}))
        run = dict(task="smnist", hidden=hidden, epochs=10, per_unit=10.0, seed=0, models={f"{model} H={hidden}": row})
        return run | setting

    runs = [
        result("esgp-lowrank", 64, 0.5, gate_rank=4),  # an older result: the rank kept per run only
        result("esgp-lowrank", 128, 0.6, rows=dict(gate_rank=4)),
        result("esgp-lowrank", 256, 0.7, rows=dict(gate_rank=4), seed=1),  # another seed: the same line
        result("esgp-lowrank", 64, 0.4, rows=dict(gate_rank=8)),
        result("esgp-diagonal", 128, 0.3, gate_rank=4),  # a run-level rank names no other gate's line
        result("esgp-diagonal", 64, 0.2, readout="mean", input_scaling=0.1, gate_bias_init=3.0, lr=0.01),
        result("esgp-diagonal", 64, 0.25, lr=0.01, spectral_radius=0.99, schedule="cosine"),
        result("esgp-diagonal", 256, 0.15, spectral_radius=0.9, schedule="constant"),  # the defaults, written out
    ]
    lines = tasks.size_lines(runs)
    assert lines == {
        "esgp-lowrank, rank 4": [(64, 0.5, 640), (128, 0.6, 1280), (256, 0.7, 2560)],
        "esgp-lowrank, rank 8": [(64, 0.4, 640)],
        "esgp-diagonal": [(128, 0.3, 1280), (256, 0.15, 2560)],
        "esgp-diagonal, lr 0.01, mean state, input x0.1, gate bias 3": [(64, 0.2, 640)],
        "esgp-diagonal, lr 0.01, radius 0.99, cosine lr": [(64, 0.25, 640)],
    }
    header = tasks.markdown(runs[6] | dict(metric="accuracy", baseline=10.0, quick=True))
    assert "Adam lr 0.01, spectral radius 0.99 (ESGP, ESN), cosine learning rate" in header
    # connections per unit and epochs name the lines only where the runs differ in them
    other = result("esgp-diagonal", 256, 0.1, per_unit=None, epochs=20)
    assert set(tasks.size_lines(runs[4:5] + [other])) == {
        "esgp-diagonal, 10 per unit, 10 epochs",
        "esgp-diagonal, sparsity 0.1, 20 epochs",
    }


@pytest.fixture
def built(monkeypatch) -> dict:
    """The models the runner builds, by name, with training replaced by a fixed result."""
    models: dict = {}
    build = tasks.build_model

    def record_build(*args):
        models[args[0]] = model = build(*args)
        return model

    monkeypatch.setattr(tasks, "build_model", record_build)
    monkeypatch.setattr(tasks, "train", lambda model, *args: dict(curve=[0.5], train_loss=[1.0], seconds=1.0))
    return models


def test_initialisation_knobs_reach_the_models_and_the_results(built, capsys):
    argv = ["adding", "--quick", "--models", "esgp-diagonal,esn,gru", "--input-scaling", "0.1", "--gate-bias-init", "3"]
    (result,) = tasks.main(argv)
    assert (result["input_scaling"], result["gate_bias_init"]) == (0.1, 3.0)
    cell = built["esgp-diagonal"].core.cells[0]
    assert cell.input_scaling == 0.1 and bool((cell.gate.bias == 3.0).all())
    esn = built["esn"].core.cells[0]
    assert esn.input_scaling == 0.1 and bool((esn.gate.bias == 40.0).all())  # the ESN's gate stays fixed open
    assert "input scaling 0.1, gate bias 3 at first" in capsys.readouterr().out
    for flag, value, message in (
        ("--input-scaling", "0", "--input-scaling: expected a positive number, got 0.0"),
        ("--gate-bias-init", "nan", "--gate-bias-init: expected a finite number, got nan"),
        ("--per-unit", "0.5", "--per-unit: expected at least 1 connection per unit, got 0.5"),
        ("--hidden", "9", "--hidden: sparsity 0.1 (no --per-unit) needs 10 units or more"),
    ):
        with pytest.raises(SystemExit):
            tasks.main(["adding", "--quick", flag, value])
        assert message in capsys.readouterr().err


def test_help_is_plain_text(capsys):
    with pytest.raises(SystemExit):
        tasks.main(["--help"])
    shown = capsys.readouterr().out
    assert "esgp_sparse.datasets for their definitions" in shown and re.search(
        r"--seed SEED\s+seeds the generated", shown
    )
    assert "``" not in shown and ":mod:" not in shown and ":class:" not in shown


def test_gate_rank_reaches_the_low_rank_models_alone(built, capsys):
    (result,) = tasks.main(["adding", "--quick", "--models", "esgp-lowrank,esgp-diagonal", "--gate-rank", "3"])
    assert result["gate_rank"] == 3 and result["models"]["esgp-lowrank"]["parameters"] == (
        2 * 32 + 32 * (2 * 3 + 1) + 32 + 32 + 1  # W_in, the packed gate weight, its bias, the head
    )
    assert built["esgp-lowrank"].core.cells[0].gate.rank == result["models"]["esgp-lowrank"]["gate_rank"] == 3
    assert "gate_rank" not in result["models"]["esgp-diagonal"]
    assert built["esgp-diagonal"].core.cells[0].gate_rank is None
    assert "low-rank gate of rank 3" in capsys.readouterr().out
    for argv, message in (
        (["--models", "esgp-lowrank", "--gate-rank", "33"], "--gate-rank: expected an integer from 1 to the smallest"),
        (["--models", "esgp-diagonal", "--gate-rank", "2"], "--gate-rank: applies to the esgp-lowrank model"),
    ):
        with pytest.raises(SystemExit):
            tasks.main(["adding", "--quick", *argv])
        assert message in capsys.readouterr().err


def _command_line_rejects(flag: str, message: str, values: tuple[str, ...], capsys) -> None:
    for value in values:
        with pytest.raises(SystemExit):
            tasks.main(["adding", "--quick", f"{flag}={value}"])
        assert f"{flag}: {message}, got {float(value)}" in capsys.readouterr().err


def test_the_learning_rate_reaches_adam_and_the_results(monkeypatch, capsys):
    rates = []

    class Recorded(torch.optim.Adam):
        def __init__(self, params, lr):
            rates.append(lr)
            super().__init__(params, lr=lr)

    monkeypatch.setattr(tasks.torch.optim, "Adam", Recorded)
    (result,) = tasks.main(["adding", "--quick", "--models", "esn,gru", "--epochs", "1", "--lr", "0.02"])
    assert rates == [0.02, 0.02] and result["lr"] == 0.02
    assert "Adam lr 0.02" in capsys.readouterr().out
    (result,) = tasks.main(["adding", "--quick", "--models", "esn", "--epochs", "1"])
    assert rates[-1] == result["lr"] == tasks.DEFAULT_LR == 1e-3
    assert "Adam lr" not in capsys.readouterr().out
    _command_line_rejects("--lr", "expected a positive learning rate", ("0", "-1e-3", "inf"), capsys)
    with pytest.raises(ValueError, match=r"expected a positive, finite learning rate lr, got 0"):
        tasks.run("adding", ["esn"], 1, 8, True, 0, None, lr=0)
    with pytest.raises(TypeError, match=r"expected a number for the learning rate lr, got str"):
        tasks.run("adding", ["esn"], 1, 8, True, 0, None, lr="1e-3")


def test_the_spectral_radius_reaches_the_reservoirs_and_the_results(monkeypatch, capsys):
    task = tasks.TASKS["copy"]
    for name in ("esgp-lowrank", "esn"):
        model = tasks.build_model(name, task, 48, seed=0, per_unit=6, spectral_radius=0.99)
        weight = model.core.cells[0].recurrent_weight().to_dense().double().numpy()
        assert np.abs(np.linalg.eigvals(weight)).max() == pytest.approx(0.99, rel=1e-6)
    default = tasks.build_model("esgp", task, 48, seed=0).core.cells[0].recurrent_weight().to_dense().double()
    assert np.abs(np.linalg.eigvals(default.numpy())).max() == pytest.approx(tasks.DEFAULT_RADIUS, rel=1e-6)

    def train(model, *args):
        assert model.core.cells[0].radius == pytest.approx(0.5, rel=1e-6)  # the command line's reaches the model
        return dict(curve=[1.0], train_loss=[1.0], seconds=1.0)

    monkeypatch.setattr(tasks, "train", train)
    (result,) = tasks.main(["adding", "--quick", "--models", "esgp-sparse,esn", "--spectral-radius", "0.5"])
    assert result["spectral_radius"] == 0.5
    assert "spectral radius 0.5" in capsys.readouterr().out
    _command_line_rejects("--spectral-radius", "expected a positive number", ("0", "-0.9", "nan"), capsys)
    with pytest.raises(ValueError, match=r"expected a positive, finite spectral_radius, got 0"):
        tasks.run("adding", ["esn"], 1, 8, True, 0, None, spectral_radius=0)
    for wrong in ("0.9", True):
        with pytest.raises(TypeError, match=r"expected a number for spectral_radius, got (str|bool)"):
            tasks.run("adding", ["esn"], 1, 8, True, 0, None, spectral_radius=wrong)


def test_the_cosine_schedule_lowers_the_rate_to_zero_over_every_batch(monkeypatch, capsys):
    rates: list[list[float]] = []

    class Recorded(torch.optim.Adam):
        def step(self, closure=None):
            rates[-1].append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(tasks.torch.optim, "Adam", Recorded)
    task = tasks.TASKS["adding"]
    data = tasks.subset(task.data(True, 0, None), 300, 0)  # 5 batches of 64 (the last one short)
    for schedule in tasks.SCHEDULES:
        rates.append([])
        model = tasks.build_model("esn", task, 16, seed=0)
        tasks.train(model, task, data, 2, 0, schedule, lr=0.02, schedule=schedule)
    constant, cosine = rates
    assert constant == [0.02] * 10
    expected = [0.01 * (1 + math.cos(math.pi * i / 10)) for i in range(10)]  # from lr, down to 0 after the last
    assert cosine == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"expected schedule in \('constant', 'cosine'\), got 'linear'"):
        tasks.train(model, task, data, 1, 0, "x", schedule="linear")
    with pytest.raises(ValueError, match=r"expected schedule in \('constant', 'cosine'\), got 'step'"):
        tasks.run("adding", ["esn"], 1, 16, True, 0, None, schedule="step")
    (result,) = tasks.main(["adding", "--quick", "--models", "esn", "--epochs", "1", "--schedule", "cosine"])
    assert result["schedule"] == "cosine" and "cosine learning rate" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tasks.main(["adding", "--quick", "--schedule", "linear"])
    assert "argument --schedule: invalid choice: 'linear'" in capsys.readouterr().err


def test_the_mean_readout_reads_the_mean_state_and_only_where_one_output_is_scored(monkeypatch, capsys):
    task = tasks.TASKS["smnist"]
    model = tasks.build_model("esgp-diagonal", task, 12, seed=0, readout="mean")
    x = torch.randn(3, 7, task.input_size)
    states = model.core(x)[0]
    torch.testing.assert_close(model(x, 0), model.head(states.mean(1)))
    assert not torch.allclose(model(x, 0), model.head(states[:, -1]))
    with pytest.raises(ValueError, match=r"readout='mean' reads one output per sequence, not 4 steps"):
        model(x, 4)
    with pytest.raises(ValueError, match=r"expected readout in \('last', 'mean'\), got 'max'"):
        tasks.build_model("esgp", task, 12, seed=0, readout="max")

    def train(model, *args):
        assert model.readout == "mean"  # what the command line asked for reaches the model
        return dict(curve=[50.0], train_loss=[1.0], seconds=1.0)

    monkeypatch.setattr(tasks, "train", train)
    (result,) = tasks.main(["adding", "--quick", "--models", "esgp-sparse", "--readout", "mean"])
    assert result["readout"] == "mean"
    assert "the head on the mean state over time" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tasks.main(["copy", "--quick", "--readout", "mean"])
    assert "--readout mean: reads one output per sequence; scored at every step: copy" in capsys.readouterr().err
    with pytest.raises(
        ValueError, match="needs a task scored once per sequence; delayed_response is scored at every step"
    ):
        tasks.run("delayed_response", ["esgp"], 1, 8, True, 0, None, readout="mean")


def test_checkpoint_reaches_the_reservoir_models_and_the_results(built, capsys):
    (result,) = tasks.main(["adding", "--quick", "--models", "esgp-lowrank,esn,gru", "--checkpoint"])
    assert result["checkpoint"] is True and "checkpointed (ESGP)" in capsys.readouterr().out
    assert "checkpointed (ESGP)" in tasks.markdown(result)
    assert built["esgp-lowrank"].core.checkpoint and built["esn"].core.checkpoint
    (result,) = tasks.main(["adding", "--quick", "--models", "esgp-lowrank"])
    assert result["checkpoint"] is False and not built["esgp-lowrank"].core.checkpoint
    assert "checkpointed" not in capsys.readouterr().out


def test_a_checkpointed_model_keeps_a_third_and_learns_as_the_plain_one():
    task, data = tasks.TASKS["copy"], tasks.TASKS["copy"].data(True, 0, None)
    data = tuple(part[:256] for part in data)
    models = [tasks.build_model("esgp-lowrank", task, 64, 0, per_unit=4, checkpoint=flag) for flag in (False, True)]
    assert [model.core.checkpoint for model in models] == [False, True]
    x = data[0][:8]
    kept = [kept_bytes(model.core, x) for model in models]
    assert kept[0] - kept[1] == 2 * x.shape[0] * x.shape[1] * 64 * 4  # the candidates and gates, float32
    curves = [tasks.train(model, task, data, 2, 0, "t") for model in models]
    assert curves[0]["curve"] == pytest.approx(curves[1]["curve"], rel=1e-4)
    assert curves[0]["train_loss"] == pytest.approx(curves[1]["train_loss"], rel=1e-4)
