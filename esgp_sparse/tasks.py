"""The original ESGP benchmark table, reproducible: ``python -m esgp_sparse.tasks``.

    python -m esgp_sparse.tasks TASK --models esgp,gru,lstm,esn --epochs N [--hidden H] [--quick]
                                     [--out results.json] [--plot curves.png] [--data-dir DIR]
    python -m esgp_sparse.tasks TASK --models esgp-sparse,esgp-diagonal --hidden 256,1024,4096
                                     --per-unit 10 --plot-sizes sizes.png   # a sweep over H

TASK is one of ``mackey_glass``, ``adding``, ``copy``, ``delayed_response``, ``smnist`` (see
:mod:`esgp_sparse.datasets` for their definitions). Every model gets the same data, the same
linear head (on the scored steps' states; ``--readout mean``: on the mean state over time, for the
tasks scored once per sequence), the same optimiser (Adam, lr 1e-3 unless ``--lr`` says otherwise,
kept constant unless ``--schedule cosine``, gradient norm clipped to 1), the same reservoir radius
(0.9 unless ``--spectral-radius`` says otherwise) and the same epochs; each prints its parameter
count beside its score, and a markdown table closes the run.

Models: ``esgp`` (:class:`esgp_sparse.ESGP`, the published dense gate, sparsity 0.1), ``esgp-sparse``,
``esgp-diagonal`` and ``esgp-lowrank`` (the same with the gates that scale; ``--gate-rank`` sets
the low-rank gate's rank; ``--checkpoint`` keeps only their states for the backward), ``gru`` and
``lstm`` (``torch.nn``), and ``esn``, the classic echo state network built from the same layer: the
gate fixed open (so h_t = tanh(W_in x_t + W h_{t-1})), the random input weights frozen, only the
linear readout trained.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import scipy
import torch
from torch import Tensor, nn
from tqdm import tqdm

from . import ESGP, __version__, datasets
from .cell import GateType
from .gates import DiagonalGate

Data = tuple[Tensor, Tensor, Tensor, Tensor]
SYNTHETIC = "synthetic digits"
DEFAULT_LR = 1e-3  # Adam's learning rate for every model unless --lr says otherwise
SCHEDULES = ("constant", "cosine")
DEFAULT_RADIUS = 0.9  # the reservoirs' spectral radius (the original's) unless --spectral-radius says otherwise
_REDRAW = 0.5 if sys.stderr.isatty() else 30.0  # seconds between progress-bar redraws


@dataclass(frozen=True)
class Task:
    """A benchmark task: its data, what the model predicts, and how it is scored."""

    name: str
    summary: str
    input_size: int
    output_size: int
    outputs: Callable[[Tensor], int]  # how many final steps are scored, from y (0: the last only)
    loss: str  # "mse" or "cross_entropy"
    metric: str  # "MAE", "MSE" or "accuracy"
    reference: dict  # the original's published number per model (30 epochs, H=128)
    batch_size: int
    data: Callable[[bool, int, Path | None], Data]


def _split(make: Callable[[int, int], tuple[Tensor, Tensor]], n_train: int, n_test: int, seed: int) -> Data:
    x, y = make(n_train, seed)
    x_test, y_test = make(n_test, seed + 10_000)
    return x, y, x_test, y_test


def _mnist(quick: bool, seed: int, data_dir: Path | None) -> Data:
    if quick or data_dir is None:
        n_train, n_test, size = (1024, 256, 14) if quick else (10_000, 2_000, 28)
        train = datasets.synthetic_digits(n_train, seed=seed, size=size)
        test = datasets.synthetic_digits(n_test, seed=seed + 10_000, size=size)
    else:
        train, test = datasets.load_mnist(data_dir, "train"), datasets.load_mnist(data_dir, "test")
    return (*datasets.sequential_images(*train), *datasets.sequential_images(*test))


TASKS = {
    "mackey_glass": Task(
        "mackey_glass",
        "Mackey-Glass (tau=17) one-step-ahead prediction, 100 steps scored after 20 (quick: 50)",
        1,
        1,
        lambda y: y.shape[1],
        "mse",
        "MAE",
        {"lstm": 0.00141, "gru": 0.000549, "esn": 0.001378, "esgp": 0.000363},
        16,
        lambda quick, seed, _: datasets.mackey_glass_task(*((100, 20, 50) if quick else (4000, 500, 100)), seed=seed),
    ),
    "adding": Task(
        "adding",
        "adding problem, T=100 (quick: 30)",
        2,
        1,
        lambda y: 0,
        "mse",
        "MSE",
        {"lstm": 0.17, "gru": 0.14, "esn": 0.17, "esgp": 0.05},
        64,
        lambda quick, seed, _: _split(
            lambda n, s: datasets.adding_problem(n, 30 if quick else 100, seed=s),
            *((2048, 512) if quick else (10_000, 1_000)),
            seed,
        ),
    ),
    "copy": Task(
        "copy",
        "copy task: 10 symbols of 8, recalled after 20 blank steps (quick: 5 after 5)",
        2,
        1,
        lambda y: y.shape[1],
        "mse",
        "MSE",
        {"lstm": 5.26, "gru": 0.01, "esn": 4.99, "esgp": 3.13},
        64,
        lambda quick, seed, _: _split(
            lambda n, s: datasets.copy_task(n, *((5, 5) if quick else (10, 20)), seed=s),
            *((2048, 512) if quick else (10_000, 1_000)),
            seed,
        ),
    ),
    "delayed_response": Task(
        "delayed_response",
        "delayed response: U(0, 1) input reproduced 10 steps later, T=100 (quick: 5, 30)",
        1,
        1,
        lambda y: y.shape[1],
        "mse",
        "MSE",
        {"lstm": 0.082, "gru": 0.082, "esn": 0.082, "esgp": 0.081},
        64,
        lambda quick, seed, _: _split(
            lambda n, s: datasets.delayed_response(n, *((30, 5) if quick else (100, 10)), seed=s),
            *((2048, 512) if quick else (5_000, 500)),
            seed,
        ),
    ),
    "smnist": Task(
        "smnist",
        "sequential images, one pixel a step: MNIST from --data-dir, else synthetic digits",
        1,
        10,
        lambda y: 0,
        "cross_entropy",
        "accuracy",
        {"lstm": 18.86, "gru": 62.65, "esn": 12.14, "esgp": 75.94},
        128,
        _mnist,
    ),
}
MODELS = ("esgp", "esgp-sparse", "esgp-diagonal", "esgp-lowrank", "gru", "lstm", "esn")
#: The models without a reservoir: torch's own recurrent layers.
TORCH_MODELS: dict[str, Callable[..., Any]] = {"gru": nn.GRU, "lstm": nn.LSTM}
GATE: dict[str, GateType] = {
    "esgp": "dense",
    "esgp-sparse": "sparse",
    "esgp-diagonal": "diagonal",
    "esgp-lowrank": "lowrank",
}


READOUTS = ("last", "mean")


def scores_one_output(task: Task) -> bool:
    """Whether ``task`` scores one output per sequence (its last step), rather than several steps."""
    return task.outputs(torch.zeros(1, 2, 1)) == 0


class SequenceModel(nn.Module):
    """A recurrent core and a linear head on the scored steps (the last one, or the last ``k``).

    ``readout="mean"``: where one output per sequence is scored, the head reads the mean of the
    states over every step instead of the last state."""

    def __init__(self, core: nn.Module, hidden_size: int, output_size: int, readout: str = "last") -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"tasks: expected readout in {READOUTS}, got {readout!r}")
        self.core = core
        self.head = nn.Linear(hidden_size, output_size)
        self.readout = readout

    def forward(self, x: Tensor, scored: int) -> Tensor:
        states = self.core(x)[0]
        if scored == 0:
            return self.head(states[:, -1] if self.readout == "last" else states.mean(1))
        if self.readout != "last":
            raise ValueError(f"tasks: readout={self.readout!r} reads one output per sequence, not {scored} steps")
        return self.head(states[:, -scored:])


def build_model(
    name: str,
    task: Task,
    hidden: int,
    seed: int,
    per_unit: float | None = None,
    input_scaling: float = 1.0,
    gate_bias_init: float | None = None,
    readout: str = "last",
    gate_rank: int | None = None,
    spectral_radius: float = DEFAULT_RADIUS,
    checkpoint: bool = False,
) -> SequenceModel:
    """``name`` with ``hidden`` units; the reservoirs keep 10 % of their connections (the original's
    sparsity), or ``per_unit`` connections per unit when given (what large reservoirs need).
    ``input_scaling`` and ``gate_bias_init`` (see :class:`~esgp_sparse.ESGPCell`) apply to the ESGP
    models; the ESN takes ``input_scaling`` (its gate is fixed open). ``readout``: see
    :class:`SequenceModel`. ``gate_rank``: the low-rank gate's (``esgp-lowrank``; None: the default).
    ``spectral_radius``: the reservoir's (ESGP models and ESN; the original's 0.9 by default).
    ``checkpoint``: the ESGP models keep only their states for the backward
    (:class:`~esgp_sparse.ESGP`'s ``checkpoint``): a third of the layer's activation memory, the same
    gradients up to rounding (the ESN, frozen, has no backward through its layer)."""
    torch.manual_seed(seed)
    i = task.input_size
    sparsity = 0.1 if per_unit is None else min(1.0, per_unit / hidden)
    knobs: dict[str, Any] = dict(
        sparsity=sparsity,
        spectral_radius=spectral_radius,
        seed=seed,
        input_scaling=input_scaling,
        checkpoint=checkpoint,
    )
    if name in GATE:
        rank = gate_rank if GATE[name] == "lowrank" else None
        core = ESGP(i, hidden, gate=GATE[name], gate_rank=rank, gate_bias_init=gate_bias_init, **knobs)
    elif name == "esn":
        core = ESGP(i, hidden, gate="diagonal", **knobs)
        gate = cast(DiagonalGate, core.cells[0].gate)
        with torch.no_grad():  # the gate fixed open: sigmoid(0 * h~ + 40) is exactly 1.0 in float32
            gate.weight.zero_()
            gate.bias.fill_(40.0)
        core.requires_grad_(False)  # input weights and gate frozen: only the readout learns
    elif name in TORCH_MODELS:
        core = TORCH_MODELS[name](i, hidden, batch_first=True)
    else:
        raise ValueError(f"tasks: expected a model in {MODELS}, got {name!r}")
    return SequenceModel(core, hidden, task.output_size, readout)


def _loss(task: Task, prediction: Tensor, target: Tensor) -> Tensor:
    if task.loss == "cross_entropy":
        return nn.functional.cross_entropy(prediction, target)
    return nn.functional.mse_loss(prediction, target)


@torch.no_grad()
def evaluate(model: SequenceModel, task: Task, x: Tensor, y: Tensor, batch_size: int) -> float:
    """The task's metric on (x, y): MAE or MSE over every scored value, or accuracy in %."""
    model.eval()
    total, count = 0.0, 0
    scored = task.outputs(y)
    for start in range(0, x.shape[0], batch_size):
        prediction, target = model(x[start : start + batch_size], scored), y[start : start + batch_size]
        if task.metric == "accuracy":
            total += float((prediction.argmax(1) == target).sum())
            count += target.shape[0]
        else:
            error = prediction - target
            total += float(error.abs().sum() if task.metric == "MAE" else error.square().sum())
            count += target.numel()
    model.train()
    return 100.0 * total / count if task.metric == "accuracy" else total / count


def train(
    model: SequenceModel,
    task: Task,
    data: Data,
    epochs: int,
    seed: int,
    label: str,
    lr: float = DEFAULT_LR,
    schedule: str = "constant",
) -> dict:
    """Adam (learning rate ``lr``) with the gradient norm clipped to 1; the metric on the test set after
    each epoch. ``schedule="cosine"`` lowers the rate from ``lr`` to 0 along a half cosine over every
    batch of every epoch (``torch.optim.lr_scheduler.CosineAnnealingLR``); ``"constant"`` keeps it."""
    x, y, x_test, y_test = data
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    scored = task.outputs(y)
    batches = math.ceil(x.shape[0] / task.batch_size)
    if schedule not in SCHEDULES:
        raise ValueError(f"tasks: expected schedule in {SCHEDULES}, got {schedule!r}")
    annealing = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * batches) if schedule == "cosine" else None
    )
    curve, losses = [], []
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        # One line per epoch; on a terminal it is redrawn in place, in a log it is written every 30 s.
        bar = tqdm(total=batches, unit="batch", desc=f"{label} epoch {epoch + 1}/{epochs}", mininterval=_REDRAW)
        running = float("nan")
        for i in range(batches):
            index = order[i * task.batch_size : (i + 1) * task.batch_size]
            loss = _loss(task, model(x[index], scored), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            if annealing is not None:
                annealing.step()
            running = loss.item() if i == 0 else 0.9 * running + 0.1 * loss.item()
            bar.set_postfix_str(f"loss {running:.4g}", refresh=False)
            bar.update()
        curve.append(evaluate(model, task, x_test, y_test, 4 * task.batch_size))
        losses.append(running)
        bar.set_postfix_str(f"loss {running:.4g}, test {task.metric} {curve[-1]:.4g}")
        bar.close()
    return dict(curve=curve, train_loss=losses, seconds=time.perf_counter() - start)


def environment() -> dict:
    return dict(
        versions=dict(
            esgp_sparse=__version__,
            torch=torch.__version__,
            numpy=np.__version__,
            scipy=scipy.__version__,
            python=platform.python_version(),
        ),
        machine=dict(
            platform=platform.platform(),
            processor=platform.processor() or platform.machine(),
            cpus=os.cpu_count(),
            torch_threads=torch.get_num_threads(),
        ),
    )


def comparable(results: dict) -> bool:
    """Whether the original's published numbers apply: not to a run on synthetic digits."""
    return bool(results.get("data") != SYNTHETIC)


def task_label(results: dict) -> str:
    return results["task"] + ("" if comparable(results) else " (synthetic digits)")


def baseline_score(task: Task, y_train: Tensor, y_test: Tensor) -> float:
    """The trivial baseline's test score: the training targets' mean (MSE, MAE) or most frequent
    class (accuracy), predicted for every scored value."""
    if task.metric == "accuracy":
        return 100.0 * float((y_test == torch.mode(y_train).values).float().mean())
    scored = task.outputs(y_train)
    train = y_train[:, -1] if scored == 0 else y_train[:, -scored:]
    test = y_test[:, -1] if scored == 0 else y_test[:, -scored:]
    error = test - train.mean()
    return float(error.abs().mean() if task.metric == "MAE" else error.square().mean())


def _knobs(results: dict) -> str:
    scaling, bias = results.get("input_scaling", 1.0), results.get("gate_bias_init")
    radius = results.get("spectral_radius", DEFAULT_RADIUS)
    return (
        ("" if scaling == 1.0 else f"input scaling {scaling:g} (ESGP, ESN), ")
        + ("" if bias is None else f"gate bias {bias:g} at first (ESGP), ")
        + ("" if results.get("readout", "last") == "last" else "the head on the mean state over time, ")
        + ("" if results.get("gate_rank") is None else f"low-rank gate of rank {results['gate_rank']}, ")
        + ("" if results.get("lr", DEFAULT_LR) == DEFAULT_LR else f"Adam lr {results['lr']:g}, ")
        + ("" if radius == DEFAULT_RADIUS else f"spectral radius {radius:g} (ESGP, ESN), ")
        + ("" if results.get("schedule", "constant") == "constant" else f"{results['schedule']} learning rate, ")
        + ("checkpointed (ESGP), " if results.get("checkpoint") else "")
    )


def markdown(results: dict) -> str:
    task = TASKS[results["task"]]
    better = "higher" if task.metric == "accuracy" else "lower"
    baseline = results.get("baseline")
    lines = [
        f"{task_label(results)}: {task.summary}; {results['epochs']} epochs, H={results['hidden']}, "
        + ("" if results.get("per_unit") is None else f"{results['per_unit']:g} connections per unit, ")
        + _knobs(results)
        + f"seed {results['seed']} ({better} is better)"
        + ("" if baseline is None else f"; the trivial baseline scores {baseline:.4g}"),
        "",
        f"| model | H | parameters | test {task.metric} | original's published {task.metric} | train time |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in results["models"].items():
        model = row.get("model", name)
        published = task.reference.get(model) if comparable(results) else None
        lines.append(
            f"| {model} | {row.get('hidden', results['hidden'])} | {row['parameters']:,} | {row['curve'][-1]:.4g} | "
            f"{'-' if published is None else published} | {row['seconds']:.0f} s |"
        )
    return "\n".join(lines)


def summary(results: list[dict]) -> str:
    """One markdown row per task: each model's final test score, the original's published one in
    brackets, the best of this run in bold."""
    models = list(dict.fromkeys(m for r in results for m in r["models"]))  # every row, in order
    lines = [
        "| task | score | " + " | ".join(f"{m} (original's)" for m in models) + " | budget |",
        "|---|---|" + "---|" * len(models) + "---|",
    ]
    for result in results:
        task = TASKS[result["task"]]
        scores = {m: row["curve"][-1] for m, row in result["models"].items()}
        best = (max if task.metric == "accuracy" else min)(scores.values())
        cells = []
        for m in models:
            if m not in scores:
                cells.append("-")
                continue
            text = f"{scores[m]:.4g}" if task.metric != "accuracy" else f"{scores[m]:.2f} %"
            published = task.reference.get(result["models"][m].get("model", m)) if comparable(result) else None
            cells.append(
                ("**" + text + "**" if scores[m] == best else text)
                + (f" ({published})" if published is not None else "")
            )
        score = f"test {task.metric} ({'higher' if task.metric == 'accuracy' else 'lower'} is better)"
        budget = f"{result['epochs']} epochs, H={result['hidden']}, {result['train_shape'][0]:,} train"
        if result.get("per_unit") is not None:
            budget += f", {result['per_unit']:g} connections per unit"
        lines.append(f"| {task_label(result)} | {score} | " + " | ".join(cells) + f" | {budget} |")
    return "\n".join(lines)


def _pyplot(option: str) -> Any:
    """matplotlib's pyplot, drawing to files; a clear exit where matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # matplotlib comes with the bench extra
        raise SystemExit(f"tasks: {option} needs matplotlib (pip install matplotlib): {error}") from error
    return plt


def _finish(ax: Any, task: Task) -> None:
    if task.metric != "accuracy":
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


def plot(results: list[dict], path: str) -> None:
    plt = _pyplot("--plot")
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.4), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        task = TASKS[result["task"]]
        for name, row in result["models"].items():
            ax.plot(range(1, len(row["curve"]) + 1), row["curve"], marker=".", label=f"{name} ({row['parameters']:,})")
        ax.set(title=task_label(result), xlabel="epoch", ylabel=f"test {task.metric}")
        _finish(ax, task)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _per_unit(per_unit: float | None) -> str:
    return ", sparsity 0.1" if per_unit is None else f", {per_unit:g} per unit"


def size_lines(runs: list[dict]) -> dict[str, list[tuple[int, float, int]]]:
    """The points (H, final score, parameters) of each line of a size plot, sorted by H: one line per
    model and setting (rank, learning rate and schedule, spectral radius, readout, initialisation
    knobs, connections per unit, epochs), so that runs of the same model with different settings are
    not joined. Where every run has the same connections per unit and epochs, the labels leave those
    two out; runs that differ in the seed alone share a line."""
    lines: dict[str, list[tuple[int, float, int]]] = {}
    shared = {key: len({run_.get(key) for run_ in runs}) == 1 for key in ("per_unit", "epochs")}  # 10 == 10.0
    for run_ in runs:
        setting = (
            ("" if shared["per_unit"] else _per_unit(run_.get("per_unit")))
            + ("" if shared["epochs"] else f", {run_.get('epochs')} epochs")
            + ("" if run_.get("lr", DEFAULT_LR) == DEFAULT_LR else f", lr {run_['lr']:g}")
            + (
                ""
                if run_.get("spectral_radius", DEFAULT_RADIUS) == DEFAULT_RADIUS
                else f", radius {run_['spectral_radius']:g}"
            )
            + ("" if run_.get("schedule", "constant") == "constant" else f", {run_['schedule']} lr")
            + ("" if run_.get("readout", "last") == "last" else ", mean state")
            + ("" if run_.get("input_scaling", 1.0) == 1.0 else f", input x{run_['input_scaling']:g}")
            + ("" if run_.get("gate_bias_init") is None else f", gate bias {run_['gate_bias_init']:g}")
        )
        for name, row in run_["models"].items():
            rank = row.get("gate_rank", run_.get("gate_rank"))  # older results kept it per run only
            rank = "" if rank is None or GATE.get(row.get("model", name)) != "lowrank" else f", rank {rank}"
            point = (row.get("hidden", run_["hidden"]), row["curve"][-1], row["parameters"])
            lines.setdefault(row.get("model", name) + rank + setting, []).append(point)
    return {label: sorted(points) for label, points in lines.items()}


def plot_sizes(results: list[dict], path: str) -> None:
    """Each task's final test score against the hidden size, a line per model and setting
    (:func:`size_lines`; its parameter counts at the points); runs of the same task share a panel."""
    plt = _pyplot("--plot-sizes")
    by_task: dict[str, list[dict]] = {}
    for result in results:  # runs of one task (e.g. one per gate) share a panel
        by_task.setdefault(result["task"], []).append(result)
    fig, axes = plt.subplots(1, len(by_task), figsize=(5.0 * len(by_task), 5.2), squeeze=False)
    for ax, runs in zip(axes[0], by_task.values(), strict=True):
        result = runs[0]
        task = TASKS[result["task"]]
        lines = size_lines(runs)
        for label, points in lines.items():
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
            for h, score, parameters in points:
                ax.annotate(f"{parameters:,}", (h, score), fontsize=6, textcoords="offset points", xytext=(2, 3))
        if result.get("baseline") is not None:
            ax.axhline(result["baseline"], color="grey", linestyle=":", label="trivial baseline")
        ax.set(title=task_label(result), xlabel="hidden size H", ylabel=f"test {task.metric}")
        ax.set_xscale("log", base=2)
        sizes = sorted({p[0] for points in lines.values() for p in points})
        ax.set_xticks(sizes, [f"{h:,}" for h in sizes])
        ax.minorticks_off()
        _finish(ax, task)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))  # below the lines, not on them
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def subset(data: Data, train_size: int | None, seed: int) -> Data:
    """A random ``train_size`` of the training sequences (all of them if None), the same for every
    model of a run: it depends on ``seed`` alone."""
    if train_size is None or train_size >= data[0].shape[0]:
        return data
    keep = torch.randperm(data[0].shape[0], generator=torch.Generator().manual_seed(seed))[:train_size]
    return data[0][keep], data[1][keep], data[2], data[3]


def run(
    task_name: str,
    models: list[str],
    epochs: int,
    hidden: int | list[int],
    quick: bool,
    seed: int,
    data_dir: Path | None,
    train_size: int | None = None,
    per_unit: float | None = None,
    input_scaling: float = 1.0,
    gate_bias_init: float | None = None,
    readout: str = "last",
    gate_rank: int | None = None,
    lr: float = DEFAULT_LR,
    spectral_radius: float = DEFAULT_RADIUS,
    schedule: str = "constant",
    checkpoint: bool = False,
) -> dict:
    """Train every model at every hidden size (``hidden``: one or a list) on one task. With several
    sizes the rows are named "model H=size"; each row records its model and hidden size."""
    task = TASKS[task_name]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise TypeError(f"tasks: expected a number for the learning rate lr, got {type(lr).__name__}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"tasks: expected a positive, finite learning rate lr, got {lr!r}")
    if isinstance(spectral_radius, bool) or not isinstance(spectral_radius, (int, float)):
        raise TypeError(f"tasks: expected a number for spectral_radius, got {type(spectral_radius).__name__}")
    if not (math.isfinite(spectral_radius) and spectral_radius > 0):
        raise ValueError(f"tasks: expected a positive, finite spectral_radius, got {spectral_radius!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"tasks: expected schedule in {SCHEDULES}, got {schedule!r}")
    if readout != "last" and not scores_one_output(task):
        raise ValueError(
            f"tasks: readout={readout!r} needs a task scored once per sequence; {task_name} is scored at every step"
        )
    sizes = [hidden] if isinstance(hidden, int) else list(hidden)
    data = subset(task.data(quick, seed, data_dir), train_size, seed)
    print(
        f"{task.name}: {task.summary}; train {tuple(data[0].shape)}, test {tuple(data[2].shape)}; "
        f"H={hidden}, {epochs} epochs, seed {seed}"
        + ("" if per_unit is None else f", {per_unit:g} connections per unit")
        + ("" if input_scaling == 1.0 else f", input scaling {input_scaling:g}")
        + ("" if gate_bias_init is None else f", gate bias {gate_bias_init:g} at first")
        + ("" if readout == "last" else ", the head on the mean state over time")
        + ("" if gate_rank is None else f", low-rank gate of rank {gate_rank}")
        + ("" if lr == DEFAULT_LR else f", Adam lr {lr:g}")
        + ("" if spectral_radius == DEFAULT_RADIUS else f", spectral radius {spectral_radius:g} (ESGP, ESN)")
        + ("" if schedule == "constant" else f", {schedule} learning rate")
        + (", checkpointed (ESGP)" if checkpoint else "")
    )
    if task.name == "smnist" and (quick or data_dir is None):
        print("smnist: synthetic digits (no --data-dir, or --quick): not comparable with the original's MNIST numbers")
    results = dict(
        task=task.name,
        epochs=epochs,
        hidden=hidden,
        per_unit=per_unit,
        input_scaling=input_scaling,
        gate_bias_init=gate_bias_init,
        readout=readout,
        gate_rank=gate_rank,
        lr=lr,
        spectral_radius=spectral_radius,
        schedule=schedule,
        checkpoint=checkpoint,
        quick=quick,
        seed=seed,
        metric=task.metric,
        train_size=train_size,
        data=("MNIST" if data_dir and not quick else SYNTHETIC) if task.name == "smnist" else "generated",
        baseline=baseline_score(task, data[1], data[3]),
        train_shape=list(data[0].shape),
        test_shape=list(data[2].shape),
        **environment(),
        models={},
    )
    for size in sizes:
        for name in models:
            label = name if len(sizes) == 1 else f"{name} H={size}"
            model = build_model(
                name,
                task,
                size,
                seed,
                per_unit,
                input_scaling,
                gate_bias_init,
                readout,
                gate_rank,
                spectral_radius,
                checkpoint,
            )
            parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
            print(f"{label}: {parameters:,} trained parameters")
            row = train(model, task, data, epochs, seed, label, lr, schedule)
            results["models"][label] = dict(model=name, hidden=size, parameters=parameters, **row)
            if GATE.get(name) == "lowrank":  # the rank used (the default where --gate-rank was not given)
                results["models"][label]["gate_rank"] = cast(ESGP, model.core).gate_rank
    return results


def plain_text(doc: str) -> str:
    """A docstring as plain text for ``--help``: Sphinx roles and double backquotes dropped."""
    return re.sub(r":\w+:`~?([^`]*)`", r"\1", doc).replace("``", "")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        prog="python -m esgp_sparse.tasks",
        description=plain_text(__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("tasks", nargs="*", metavar="TASK", help=f"one or more of {sorted(TASKS)}")
    parser.add_argument(
        "--models",
        default="esgp,gru,lstm,esn",
        help=f"comma-separated, from {','.join(MODELS)} (default esgp,gru,lstm,esn)",
    )
    parser.add_argument("--epochs", type=int, help="training epochs (default 30, quick 10)")
    parser.add_argument(
        "--hidden", help="hidden units H, or a comma-separated list of sizes to sweep (default 128, quick 32)"
    )
    parser.add_argument(
        "--per-unit", type=float, help="reservoir connections per unit (default: sparsity 0.1, the original's)"
    )
    parser.add_argument(
        "--input-scaling", type=float, default=1.0, help="W_in's initialisation scaled by this (ESGP models, ESN)"
    )
    parser.add_argument(
        "--gate-bias-init", type=float, help="every unit's initial gate bias (ESGP models; default nn.Linear's)"
    )
    parser.add_argument(
        "--gate-rank", type=int, help="the low-rank gate's rank (esgp-lowrank; default 16, or H if smaller)"
    )
    parser.add_argument(
        "--lr", type=float, default=DEFAULT_LR, help=f"Adam's learning rate, for every model (default {DEFAULT_LR:g})"
    )
    parser.add_argument(
        "--spectral-radius",
        type=float,
        default=DEFAULT_RADIUS,
        help=f"the reservoirs' spectral radius (ESGP models, ESN; default {DEFAULT_RADIUS:g}, the original's)",
    )
    parser.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="constant",
        help="constant (the default), or cosine: the learning rate lowered to 0 along a half cosine over the training",
    )
    parser.add_argument(
        "--readout",
        choices=READOUTS,
        default="last",
        help="the head reads the last state, or the mean state over time (tasks scored once per sequence)",
    )
    parser.add_argument(
        "--checkpoint",
        action="store_true",
        help="the ESGP models keep only their states for the backward (a third of the layer's activation memory, "
        "for about one more forward pass): for hidden sizes whose activations do not fit",
    )
    parser.add_argument(
        "--plot-sizes", help="draw each task's score against H, a line per model and setting, to this image file"
    )
    parser.add_argument("--quick", action="store_true", help="small data and model: about a minute a task")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the generated data, the --train-size subset, the reservoirs, the initialisation and "
        "the batch order (default 0)",
    )
    parser.add_argument(
        "--data-dir", type=Path, help="folder with the MNIST IDX files (smnist); synthetic digits without it"
    )
    parser.add_argument("--train-size", type=int, help="train on a random subset of this many sequences")
    parser.add_argument("--out", type=Path, help="write the results (JSON) here")
    parser.add_argument("--plot", help="draw the learning curves to this image file (needs matplotlib)")
    parser.add_argument(
        "--results",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="train nothing: print the tables (and --plot) of earlier --out files",
    )
    args = parser.parse_args(argv)
    if args.results:
        results = []
        for path in args.results:
            loaded = json.loads(path.read_text())
            results.extend(loaded if isinstance(loaded, list) else [loaded])
        print("\n\n".join(markdown(result) for result in results))
        print()
        print(summary(results))
        if args.plot:
            plot(results, args.plot)
        if args.plot_sizes:
            plot_sizes(results, args.plot_sizes)
        return results
    unknown_tasks = sorted(set(args.tasks) - set(TASKS))
    if unknown_tasks or not args.tasks:
        parser.error(f"expected one or more tasks from {sorted(TASKS)}, got {args.tasks}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown or not models:
        parser.error(f"--models: expected names from {','.join(MODELS)}, got {args.models!r}")
    epochs = args.epochs if args.epochs is not None else (10 if args.quick else 30)
    try:
        sizes = [int(h) for h in args.hidden.split(",")] if args.hidden is not None else [32 if args.quick else 128]
    except ValueError:
        parser.error(f"--hidden: expected a positive integer or a comma-separated list of them, got {args.hidden!r}")
    hidden: int | list[int] = sizes[0] if len(sizes) == 1 else sizes
    if args.seed < 0:
        parser.error(f"--seed: expected a non-negative integer, got {args.seed}")
    if epochs < 1 or min(sizes) < 1 or (args.train_size is not None and args.train_size < 1):
        parser.error(f"--epochs, --hidden and --train-size must be >= 1, got {epochs}, {sizes} and {args.train_size}")
    reservoirs = any(m not in TORCH_MODELS for m in models)
    if args.per_unit is not None and not args.per_unit >= 1:
        parser.error(f"--per-unit: expected at least 1 connection per unit, got {args.per_unit}")
    if args.per_unit is None and reservoirs and 0.1 * min(sizes) < 1:
        parser.error(
            f"--hidden: sparsity 0.1 (no --per-unit) needs 10 units or more (1 connection per unit), got {min(sizes)}"
        )
    if not (math.isfinite(args.input_scaling) and args.input_scaling > 0):
        parser.error(f"--input-scaling: expected a positive number, got {args.input_scaling}")
    if args.gate_bias_init is not None and not math.isfinite(args.gate_bias_init):
        parser.error(f"--gate-bias-init: expected a finite number, got {args.gate_bias_init}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr: expected a positive learning rate, got {args.lr}")
    if not (math.isfinite(args.spectral_radius) and args.spectral_radius > 0):
        parser.error(f"--spectral-radius: expected a positive number, got {args.spectral_radius}")
    if args.gate_rank is not None and not 1 <= args.gate_rank <= min(sizes):
        parser.error(
            f"--gate-rank: expected an integer from 1 to the smallest --hidden ({min(sizes)}), got {args.gate_rank}"
        )
    if args.gate_rank is not None and "esgp-lowrank" not in models:
        parser.error("--gate-rank: applies to the esgp-lowrank model, which --models does not name")
    if args.readout != "last":
        stepwise = [t for t in args.tasks if not scores_one_output(TASKS[t])]
        if stepwise:
            parser.error(
                f"--readout {args.readout}: reads one output per sequence; scored at every step: {', '.join(stepwise)}"
            )
    knobs = (
        args.per_unit,
        args.input_scaling,
        args.gate_bias_init,
        args.readout,
        args.gate_rank,
        args.lr,
        args.spectral_radius,
        args.schedule,
        args.checkpoint,
    )
    results = [
        run(t, models, epochs, hidden, args.quick, args.seed, args.data_dir, args.train_size, *knobs)
        for t in args.tasks
    ]
    for result in results:
        print()
        print(markdown(result))
    if args.out:
        args.out.write_text(json.dumps(results if len(results) > 1 else results[0], indent=1))
    if args.plot:
        plot(results, args.plot)
    if args.plot_sizes:
        plot_sizes(results, args.plot_sizes)
    sys.stdout.flush()
    return results


if __name__ == "__main__":
    main()
