"""Classification data sets served through tensorflow-datasets' random-access API (no TensorFlow).

Names (`DATASETS`):
  digits, iris, wine, breast_cancer   scikit-learn's bundled sets, TFDS builder `ictl_sklearn/<name>`
                                      (`ictl.data.sklearn_builder`), prepared offline on first use
  mnist, fashion_mnist, kmnist        TFDS's own catalog builders, read when a user has prepared them
                                      (preparing needs internet and TensorFlow: see `prepare_hint`)

Every set is read the same way: ``tfds.data_source(name, split=..., data_dir=..., download=...,
builder_kwargs={"file_format": "array_record"})`` returns an `ArrayRecordDataSource` (NumPy
records, PIL decodes MNIST's PNGs), and `load_split` stacks its records into arrays. Never
`tfds.load` (it needs TensorFlow). Data lives in ``data_dir`` (default `default_data_dir()`:
$ICTL_DATA_DIR, else $XDG_CACHE_HOME/ictl/tensorflow_datasets, else
~/.cache/ictl/tensorflow_datasets), in TFDS's layout ``<data_dir>/<name>/<config>/<version>/``.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
from typing import NamedTuple

import numpy as np

SKLEARN = ("digits", "iris", "wine", "breast_cancer")
MNIST_FAMILY = ("mnist", "fashion_mnist", "kmnist")
DATASETS = SKLEARN + MNIST_FAMILY
IMAGES = ("digits",) + MNIST_FAMILY     # pixels: normalised with one mean/std; the others per feature
SPLITS = ("train", "test")
FILE_FORMAT = "array_record"


class DataNotPrepared(ValueError):
    """The data set is not in data_dir and may not be prepared now; the message says how to."""


class Split(NamedTuple):
    x: np.ndarray          # [P, n_features] float32, images flattened row-major
    y: np.ndarray          # [P] int32 labels
    n_classes: int


def default_data_dir() -> str:
    """$ICTL_DATA_DIR, else <user cache>/ictl/tensorflow_datasets (user cache: $XDG_CACHE_HOME or ~/.cache)."""
    if os.environ.get("ICTL_DATA_DIR"):
        return os.environ["ICTL_DATA_DIR"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "ictl", "tensorflow_datasets")


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"name: got {name!r}; allowed {DATASETS}")


def tfds_name(name: str) -> str:
    """The name TFDS knows the set by: 'ictl_sklearn/digits', 'mnist', ..."""
    _check_name(name)
    if name in SKLEARN:
        from ictl.data import sklearn_builder  # registers ictl_sklearn with TFDS

        return f"{sklearn_builder.NAME}/{name}"
    return name


def _builder(name: str, data_dir: str):
    import tensorflow_datasets as tfds

    return tfds.builder(tfds_name(name), data_dir=data_dir, file_format=FILE_FORMAT)


def is_prepared(name: str, data_dir: str) -> bool:
    """Whether ``name`` is in ``data_dir`` in TFDS's layout (reads only; writes nothing)."""
    return bool(_builder(name, data_dir).is_prepared())


def can_prepare(name: str) -> bool:
    """scikit-learn's sets can be prepared offline here; the MNIST family needs internet and TensorFlow."""
    _check_name(name)
    return name in SKLEARN


def prepare_hint(name: str, data_dir: str) -> str:
    """One line telling the user how to prepare ``name`` into ``data_dir``."""
    if can_prepare(name):
        return (f"prepare it with `python -m ictl.data prepare {name} --data_dir {data_dir}` "
                f"or run with --config.download=true (offline, a few seconds)")
    return (f"prepare it on a machine with internet and TensorFlow: `python -c \"import tensorflow_datasets as tfds; "
            f"tfds.data_source('{name}', data_dir='{data_dir}', builder_kwargs={{'file_format': '{FILE_FORMAT}'}})\"` "
            f"and copy {data_dir}/{name} here")


def writable(path: str) -> bool:
    """Whether ``path`` is, or could be created as, a directory we can write to (nothing is created)."""
    p = pathlib.Path(path).expanduser().absolute()
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    return p.is_dir() and os.access(p, os.W_OK | os.X_OK)


@contextlib.contextmanager
def _quiet_tfds():
    """TFDS's own progress bars off while preparing (they would flood the run logs)."""
    from tensorflow_datasets.core.utils import tqdm_utils

    was = getattr(tqdm_utils, "_active", True)
    tqdm_utils.display_progress_bar(False)
    try:
        yield
    finally:
        tqdm_utils.display_progress_bar(was)


def prepare(name: str, data_dir: str | None = None) -> pathlib.Path:
    """Prepares a scikit-learn set into ``data_dir`` (array_record; no-op if already there); returns its dir."""
    data_dir = data_dir or default_data_dir()
    if not can_prepare(name):
        if is_prepared(name, data_dir):
            return pathlib.Path(_builder(name, data_dir).data_dir)
        raise DataNotPrepared(f"data set {name!r} is not prepared in {data_dir}; {prepare_hint(name, data_dir)}")
    if not writable(data_dir):
        raise ValueError(f"data_dir: got {data_dir!r}; allowed a directory that can be created and written")
    builder = _builder(name, data_dir)
    with _quiet_tfds():
        builder.download_and_prepare()
    return pathlib.Path(builder.data_dir)


def data_source(name: str, split: str, *, data_dir: str | None = None, download: bool = False):
    """TFDS's random-access source of one split (`tfds.data_source`); prepares scikit-learn sets if
    ``download`` (an MNIST-family set is never downloaded from here); raises DataNotPrepared."""
    import tensorflow_datasets as tfds

    if split not in SPLITS:
        raise ValueError(f"split: got {split!r}; allowed {SPLITS}")
    data_dir = data_dir or default_data_dir()
    if download and can_prepare(name):
        prepare(name, data_dir)
    try:
        return tfds.data_source(tfds_name(name), split=split, data_dir=data_dir, download=False,
                                builder_kwargs={"file_format": FILE_FORMAT})
    except (KeyError, FileNotFoundError) as e:  # TFDS: "`splits` is empty ... not generated yet"
        raise DataNotPrepared(f"data set {name!r} is not prepared in {data_dir}; "
                              f"{prepare_hint(name, data_dir)}") from e


def records_to_arrays(records, n_classes: int) -> Split:
    """TFDS records {x | image, label[, index]} → Split, in scikit-learn's row order when ``index`` is there."""
    if not records:
        raise ValueError("records: got none; allowed a non-empty split")
    key = "x" if "x" in records[0] else "image"
    x = np.stack([np.asarray(r[key], np.float32).reshape(-1) for r in records])
    y = np.asarray([int(r["label"]) for r in records], np.int32)
    if "index" in records[0]:   # TFDS shuffles on write: restore the source order
        order = np.argsort(np.asarray([int(r["index"]) for r in records]), kind="stable")
        x, y = x[order], y[order]
    return Split(x=x, y=y, n_classes=n_classes)


def load_split(name: str, split: str, *, data_dir: str | None = None, download: bool = False) -> Split:
    """Every record of ``split`` read through TFDS's data source, stacked: x [P, n_features] float32, y [P]."""
    src = data_source(name, split, data_dir=data_dir, download=download)
    records = [src[i] for i in range(len(src))]  # per item: tfds.testing.mock_data's __getitems__ is broken
    n_classes = int(src.dataset_info.features["label"].num_classes)
    return records_to_arrays(records, n_classes)
