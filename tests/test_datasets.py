from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from esgp_sparse import datasets


def test_adding_problem_target_is_the_sum_of_the_marked_values():
    x, y = datasets.adding_problem(64, 30, seed=3)
    assert x.shape == (64, 30, 2) and y.shape == (64, 1)
    markers = x[..., 1]
    assert torch.equal(markers.sum(1), torch.full((64,), 2.0))
    assert bool((markers[:, :15].sum(1) == 1).all() and (markers[:, 15:].sum(1) == 1).all())
    torch.testing.assert_close(y[:, 0], (x[..., 0] * markers).sum(1))
    again = datasets.adding_problem(64, 30, seed=3)
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])
    assert not torch.equal(x, datasets.adding_problem(64, 30, seed=4)[0])
    with pytest.raises(ValueError, match=r"adding_problem: expected length >= 2, got length=1"):
        datasets.adding_problem(4, 1)


def test_copy_task_targets_are_the_first_symbols():
    x, y = datasets.copy_task(32, length=6, delay=4, symbols=8, seed=1)
    assert x.shape == (32, 16, 2) and y.shape == (32, 6, 1)
    torch.testing.assert_close(x[:, :6, 0], y[..., 0])
    assert not x[:, 6:, 0].any() and not x[:, :10, 1].any() and bool((x[:, 10:, 1] == 1).all())
    assert set(y.unique().tolist()) <= set(range(1, 9))
    assert torch.equal(x, datasets.copy_task(32, 6, 4, seed=1)[0])
    # predicting the mean scores the variance of a uniform symbol, (8^2 - 1) / 12
    _, big = datasets.copy_task(20_000, seed=0)
    assert float(((big - big.mean()) ** 2).mean()) == pytest.approx(63 / 12, rel=0.02)


def test_delayed_response_is_the_input_shifted():
    x, y = datasets.delayed_response(8, length=50, delay=7, seed=2)
    assert x.shape == (8, 50, 1) and y.shape == (8, 43, 1)
    torch.testing.assert_close(y, x[:, :43])
    assert torch.equal(x, datasets.delayed_response(8, 50, 7, seed=2)[0])
    with pytest.raises(ValueError, match=r"expected delay in \[0, length=50\), got delay=50"):
        datasets.delayed_response(8, 50, 50)


def test_mackey_glass_series_and_windows():
    series = datasets.mackey_glass(2000, seed=0)
    assert series.shape == (2000,) and 0.2 < series.min() and series.max() < 1.5
    assert np.array_equal(series, datasets.mackey_glass(2000, seed=0))
    assert not np.array_equal(series, datasets.mackey_glass(2000, seed=1))
    # chaotic, not periodic: no lag up to 200 repeats the series
    assert min(np.abs(series[lag:] - series[:-lag]).mean() for lag in range(1, 200)) > 1e-3
    x, y, x_test, y_test = datasets.mackey_glass_task(6, 2, 25, warmup=5, seed=0)
    assert x.shape == (6, 30, 1) and y.shape == (6, 25, 1) and x_test.shape == (2, 30, 1)
    torch.testing.assert_close(y[:, :-1], x[:, 6:])  # one step ahead, scored after the warm-up
    torch.testing.assert_close(y[:-1, -1], x[1:, 0])  # consecutive windows
    torch.testing.assert_close(x_test[0, 0], y[-1, -1])  # the test windows come later in time
    expected = torch.from_numpy(np.tanh(datasets.mackey_glass(8 * 30 + 1, seed=0) - 1)).float()
    torch.testing.assert_close(x.flatten(), expected[:180])


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") if compress else open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("layout, sep, compress", [("", "-", False), ("MNIST/raw", ".", True), ("raw", "-", True)])
def test_load_mnist_reads_a_tiny_idx_fixture(tmp_path, layout, sep, compress):
    rng = np.random.default_rng(0)
    folder = tmp_path / layout
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for split, n in (("train", 5), ("t10k", 3)):
        images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        write_idx(folder / f"{split}-images{sep}idx3-ubyte{suffix}", images, compress)
        write_idx(folder / f"{split}-labels{sep}idx1-ubyte{suffix}", labels, compress)
        got_images, got_labels = datasets.load_mnist(tmp_path, "train" if split == "train" else "test")
        assert got_images.dtype == torch.uint8 and torch.equal(got_images, torch.from_numpy(images.astype(np.uint8)))
        assert got_labels.dtype == torch.int64 and torch.equal(got_labels, torch.from_numpy(labels))
    x, y = datasets.sequential_images(got_images, got_labels)
    assert x.shape == (3, 784, 1) and float(x.max()) <= 1.0 and torch.equal(y, got_labels)
    torch.testing.assert_close(x[1, 28 * 2 + 5, 0], got_images[1, 2, 5].float() / 255)


def test_load_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no train-images-idx3-ubyte\[.gz\] in .*synthetic_digits"):
        datasets.load_mnist(tmp_path)
    with pytest.raises(ValueError, match=r"expected split 'train' or 'test', got split='val'"):
        datasets.load_mnist(tmp_path, "val")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03junk")
    with pytest.raises(ValueError, match=r"is not an IDX file of unsigned bytes"):
        datasets.read_idx(tmp_path / "train-images-idx3-ubyte")


def test_synthetic_digits():
    images, labels = datasets.synthetic_digits(500, seed=0)
    assert images.shape == (500, 28, 28) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert set(labels.tolist()) == set(range(10))
    again = datasets.synthetic_digits(500, seed=0)
    assert torch.equal(images, again[0]) and torch.equal(labels, again[1])
    # ink where the segments are: an "8" lights more pixels than a "1"
    ink = (images > 128).float().sum((1, 2))
    assert ink[labels == 8].mean() > 2 * ink[labels == 1].mean()
    assert datasets.synthetic_digits(3, seed=0, size=14)[0].shape == (3, 14, 14)
