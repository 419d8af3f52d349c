"""The benchmark tasks of the original ESGP table, defined here because the original never published
its definitions: explicit sizes, a ``seed``, float32 tensors.

Every generator returns ``(x, y)`` with ``x`` of shape (N, T, I), batch first:

============================  ===========  ============  ============================================
task                          x            y             loss and score
============================  ===========  ============  ============================================
:func:`mackey_glass_task`     (N, W+T, 1)  (N, T, 1)     one-step-ahead prediction after W warm-up
                                                         steps; MSE to train, MAE to report
:func:`adding_problem`        (N, T, 2)    (N, 1)        the sum of two marked values; MSE
                                                         (predicting the mean scores 1/6)
:func:`copy_task`             (N, 2L+D, 2) (N, L, 1)     recall L symbols after a delay D; MSE on
                                                         the recall steps (the mean scores 5.25)
:func:`delayed_response`      (N, T, 1)    (N, T-d, 1)   reproduce the input d steps later; MSE
                                                         (the mean scores 1/12)
:func:`sequential_images`     (N, 784, 1)  (N,)          classify a 28x28 image fed one pixel per
                                                         step; cross-entropy, accuracy
============================  ===========  ============  ============================================

Sequential images come from real MNIST (:func:`load_mnist`, the IDX files in a local folder) or from
:func:`synthetic_digits`, an offline stand-in that needs no download.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ._checks import check_int


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0 if seed is None else seed)


def _check_ints(owner: str, minimum: int = 1, **values: object) -> None:
    for name, value in values.items():
        check_int(owner, name, value, minimum)


def adding_problem(
    n: int, length: int, *, seed: int | None = None, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """The adding problem (Hochreiter & Schmidhuber, 1997).

    Each sequence has ``length`` steps of two features: a value drawn from U(0, 1) and a marker that
    is 1 at exactly two steps, one in the first half and one in the second, and 0 elsewhere. The
    target is the sum of the two marked values; predicting the mean (1.0) scores an MSE of 1/6.

    Args:
        n: number of sequences.
        length: T, at least 2.
        seed: seeds a fresh generator (ignored when ``generator`` is given).
        generator: draw from this generator instead, e.g. to stream fresh batches.

    Returns:
        ``(x, y)``: x (n, T, 2), y (n, 1).
    """
    _check_ints("adding_problem", n=n, length=length)
    if length < 2:
        raise ValueError(f"adding_problem: expected length >= 2, got length={length}")
    generator = _generator(seed, generator)
    values = torch.rand(n, length, generator=generator)
    half = length // 2
    first = torch.randint(0, half, (n,), generator=generator)
    second = torch.randint(half, length, (n,), generator=generator)
    markers = torch.zeros(n, length)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    target = (values[rows, first] + values[rows, second]).unsqueeze(1)
    return torch.stack((values, markers), dim=2), target


def copy_task(
    n: int,
    length: int = 10,
    delay: int = 20,
    symbols: int = 8,
    *,
    seed: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Recall a sequence of symbols after a delay.

    Each sequence lasts ``2 * length + delay`` steps with two input features. Feature 0 carries
    ``length`` symbols drawn uniformly from {1, ..., symbols} during the first ``length`` steps and 0
    afterwards; feature 1 is a cue, 1 during the last ``length`` steps (the recall phase) and 0
    before. The target is the symbols, in order, during the recall phase, as numbers: trained with
    the MSE, so predicting the mean scores the variance of the symbols, (symbols^2 - 1) / 12 (5.25 for
    8 symbols), and a perfect recall scores 0.

    Returns:
        ``(x, y)``: x (n, 2 * length + delay, 2), y (n, length, 1); the model's outputs at the last
        ``length`` steps are compared with y.
    """
    _check_ints("copy_task", n=n, length=length, symbols=symbols)
    _check_ints("copy_task", 0, delay=delay)
    generator = _generator(seed, None)
    values = torch.randint(1, symbols + 1, (n, length), generator=generator).float()
    x = torch.zeros(n, 2 * length + delay, 2)
    x[:, :length, 0] = values
    x[:, length + delay :, 1] = 1.0
    return x, values.unsqueeze(2)


def delayed_response(n: int, length: int = 100, delay: int = 10, *, seed: int | None = None) -> tuple[Tensor, Tensor]:
    """Reproduce the input ``delay`` steps later.

    The input is i.i.d. U(0, 1) noise; the target at step t >= delay is the input at t - delay.
    Predicting the mean scores an MSE of 1/12 (0.0833).

    Returns:
        ``(x, y)``: x (n, length, 1), y (n, length - delay, 1); the model's outputs at steps
        ``delay, ..., length - 1`` are compared with y.
    """
    _check_ints("delayed_response", n=n, length=length)
    _check_ints("delayed_response", 0, delay=delay)
    if delay >= length:
        raise ValueError(f"delayed_response: expected delay in [0, length={length}), got delay={delay!r}")
    x = torch.rand(n, length, 1, generator=_generator(seed, None))
    return x, x[:, : length - delay].clone()


def mackey_glass(
    length: int,
    *,
    tau: float = 17.0,
    beta: float = 0.2,
    gamma: float = 0.1,
    exponent: float = 10.0,
    step: float = 1.0,
    substeps: int = 10,
    washout: int = 1000,
    seed: int | None = None,
) -> np.ndarray:
    """A Mackey-Glass series: dx/dt = beta x(t - tau) / (1 + x(t - tau)^exponent) - gamma x(t).

    The usual chaotic setting (tau=17, beta=0.2, gamma=0.1, exponent=10), integrated with Euler
    steps of ``step / substeps`` (0.1) from a constant history of 1.2 plus U(-0.05, 0.05) noise drawn
    from ``seed``, sampled every ``step`` (1.0) after ``washout`` samples.

    Returns:
        float64 array of ``length`` samples, values in about [0.2, 1.4].
    """
    _check_ints("mackey_glass", length=length, substeps=substeps)
    h = step / substeps
    lag = int(round(tau / h))
    rng = np.random.default_rng(0 if seed is None else seed)
    total = (washout + length) * substeps
    x = np.empty(lag + total + 1)
    x[: lag + 1] = 1.2 + rng.uniform(-0.05, 0.05, lag + 1)
    for i in range(lag, lag + total):
        delayed = x[i - lag]
        x[i + 1] = x[i] + h * (beta * delayed / (1.0 + delayed**exponent) - gamma * x[i])
    return x[lag + washout * substeps + substeps :: substeps][:length]


def mackey_glass_task(
    n_train: int,
    n_test: int,
    length: int = 100,
    warmup: int = 20,
    *,
    seed: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One-step-ahead prediction of a Mackey-Glass series (tau=17), cut into windows.

    One series of ``(n_train + n_test) * (warmup + length) + 1`` samples is squashed by ``tanh(x - 1)``
    (the usual echo-state normalisation, into about [-0.7, 0.4]) and cut into consecutive windows of
    ``warmup + length`` steps: the first ``n_train`` windows train, the rest test (later in time, never
    overlapping). In a window the input at step t is the sample s_t; the target, from step ``warmup``
    on (the model's state needs a few steps to settle from zero), is s_{t+1}.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: x (N, warmup + length, 1), y (N, length, 1).
    """
    _check_ints("mackey_glass_task", n_train=n_train, n_test=n_test, length=length)
    _check_ints("mackey_glass_task", 0, warmup=warmup)
    n, window = n_train + n_test, warmup + length
    series = torch.from_numpy(np.tanh(mackey_glass(n * window + 1, seed=seed) - 1.0)).float()
    x = series[:-1].reshape(n, window, 1)
    y = series[1:].reshape(n, window, 1)[:, warmup:]
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


# --------------------------------------------------------------------------------- sequential images
def sequential_images(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Images (N, 28, 28) uint8 -> pixel sequences (N, 784, 1) float in [0, 1], row by row."""
    if images.dim() != 3:
        raise ValueError(f"sequential_images: expected images of shape (N, H, W), got {tuple(images.shape)}")
    return (images.reshape(images.shape[0], -1, 1).float() / 255.0), labels.long()


_MNIST_FILES = {
    ("train", "images"): "train-images",
    ("train", "labels"): "train-labels",
    ("test", "images"): "t10k-images",
    ("test", "labels"): "t10k-labels",
}


def _find_idx(root: Path, stem: str, dims: int) -> Path | None:
    for folder in (root, root / "raw", root / "MNIST" / "raw"):
        for sep in ("-", "."):
            for suffix in ("", ".gz"):
                path = folder / f"{stem}{sep}idx{dims}-ubyte{suffix}"
                if path.is_file():
                    return path
    return None


def read_idx(path: str | Path) -> Tensor:
    """Read an IDX file (the MNIST format; gzip-compressed when it ends in .gz) as a uint8 tensor."""
    path = Path(path)
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"read_idx: {path} is not an IDX file of unsigned bytes (magic {data[:4].hex()!r})")
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    body = data[4 + 4 * dims :]
    if len(body) != math.prod(shape):
        raise ValueError(
            f"read_idx: {path} holds {len(body)} bytes after its header, expected {math.prod(shape)} for shape {shape}"
        )
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)


def load_mnist(root: str | Path, split: str = "train") -> tuple[Tensor, Tensor]:
    """MNIST from a local folder: ``(images (N, 28, 28) uint8, labels (N,) int64)``.

    Looks in ``root``, ``root/raw`` and ``root/MNIST/raw`` (torchvision's layout) for the IDX files
    ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
    ``t10k-labels-idx1-ubyte`` (also with ``.idx`` for ``-idx`` and gzip-compressed as ``.gz``).
    Nothing is downloaded.

    Raises:
        ValueError: for a split other than "train" or "test".
        FileNotFoundError: when the files are not there (the message lists where it looked).
    """
    if split not in ("train", "test"):
        raise ValueError(f"load_mnist: expected split 'train' or 'test', got split={split!r}")
    root = Path(root).expanduser()
    found = {}
    for kind, dims in (("images", 3), ("labels", 1)):
        stem = _MNIST_FILES[(split, kind)]
        path = _find_idx(root, stem, dims)
        if path is None:
            raise FileNotFoundError(
                f"load_mnist: no {stem}-idx{dims}-ubyte[.gz] in {root}, {root / 'raw'} or {root / 'MNIST' / 'raw'}; "
                "put the four MNIST IDX files in one of them, or use synthetic_digits() (no download needed)"
            )
        found[kind] = read_idx(path)
    images, labels = found["images"], found["labels"].long()
    if images.dim() != 3 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"load_mnist: images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match")
    return images, labels


# Seven-segment layout on a unit box: (x0, y0, x1, y1) of each segment a..g.
_SEGMENTS = {
    "a": (0, 0, 1, 0),
    "b": (1, 0, 1, 0.5),
    "c": (1, 0.5, 1, 1),
    "d": (0, 1, 1, 1),
    "e": (0, 0.5, 0, 1),
    "f": (0, 0, 0, 0.5),
    "g": (0, 0.5, 1, 0.5),
}
_DIGITS = ["abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg"]


def synthetic_digits(n: int, *, seed: int | None = None, size: int = 28) -> tuple[Tensor, Tensor]:
    """An offline stand-in for MNIST: seven-segment digits drawn with random placement, scale, slant,
    stroke width and noise, as (N, size, size) uint8 images and (N,) int64 labels 0-9.

    Harder than it looks one pixel at a time (the digits differ by single strokes); needs no download.
    """
    _check_ints("synthetic_digits", n=n, size=size)
    g = _generator(seed, None)
    labels = torch.randint(0, 10, (n,), generator=g)
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    width, height = 0.35 + 0.2 * u(n), 0.5 + 0.2 * u(n)
    left, top = 0.15 + (0.85 - width - 0.15) * u(n), 0.12 + (0.88 - height - 0.12) * u(n)
    slant, stroke = (u(n) - 0.5) * 0.3, 0.04 + 0.04 * u(n)
    coords = (torch.arange(size) + 0.5) / size
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    images = torch.zeros(n, size, size)
    for digit in range(10):
        rows = (labels == digit).nonzero().flatten()
        if rows.numel() == 0:
            continue
        for segment in _DIGITS[digit]:
            x0, y0, x1, y1 = _SEGMENTS[segment]
            ax = left[rows] + width[rows] * x0 + slant[rows] * (0.5 - y0)
            ay = top[rows] + height[rows] * y0
            bx = left[rows] + width[rows] * x1 + slant[rows] * (0.5 - y1)
            by = top[rows] + height[rows] * y1
            # distance of every pixel to the segment
            dx, dy = (bx - ax)[:, None, None], (by - ay)[:, None, None]
            t = (((px - ax[:, None, None]) * dx + (py - ay[:, None, None]) * dy) / (dx * dx + dy * dy)).clamp(0, 1)
            dist = torch.hypot(px - ax[:, None, None] - t * dx, py - ay[:, None, None] - t * dy)
            ink = (1 - (dist / stroke[rows, None, None]).clamp(max=1.5) / 1.5).clamp(min=0)
            images[rows] = torch.maximum(images[rows], ink)
    images = (images + 0.15 * torch.rand(n, size, size, generator=g)).clamp(0, 1)
    return (images * 255).round().to(torch.uint8), labels
