"""TFDS dataset builders for scikit-learn's bundled data sets (offline, no TensorFlow).

scikit-learn's wheel ships small real data sets: the 8×8 handwritten digits (1797 images,
10 classes, pixels 0..16) and the tabular iris (150 × 4, 3 classes), wine (178 × 13, 3) and
breast cancer (569 × 30, 2). `SklearnDataset` turns each into a TFDS data set named
``ictl_sklearn/<config>`` whose features need no TensorFlow:

    x      Tensor(shape=(n_features,), float32)   the inputs (digits: the 64 pixels, row-major)
    label  ClassLabel(num_classes=C)
    index  Tensor((), int64)                      the row in scikit-learn's array (TFDS shuffles)

Split rule (deterministic, documented so a test can rebuild it): row i goes to ``test`` when
i % 5 == 4, else to ``train`` (digits: 1438 train / 359 test).

Prepare with ``builder.download_and_prepare()`` after constructing the builder with
``file_format="array_record"`` (nothing is downloaded: the generator reads the arrays from the
installed scikit-learn). Read back with `tfds.builder_from_directory(...).as_data_source()` or
`tfds.data_source("ictl_sklearn/digits", data_dir=..., download=False)`; `ictl.data.source`
wraps both. Hand-written because TFDS's catalog has no builders for these offline copies.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

NAME = "ictl_sklearn"
TEST_EVERY = 5            # row i → test when i % TEST_EVERY == TEST_EVERY − 1
_LOADERS = {"digits": "load_digits", "iris": "load_iris", "wine": "load_wine", "breast_cancer": "load_breast_cancer"}
SIZES = {"digits": (64, 10), "iris": (4, 3), "wine": (13, 3), "breast_cancer": (30, 2)}  # (n_features, C)


def sklearn_arrays(config: str) -> tuple[np.ndarray, np.ndarray]:
    """(x [P, n_features] float64, y [P] int64) exactly as scikit-learn returns them."""
    if config not in _LOADERS:
        raise ValueError(f"config: got {config!r}; allowed {tuple(_LOADERS)}")
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, _LOADERS[config])()
    return np.asarray(bunch.data, np.float64), np.asarray(bunch.target, np.int64)


def split_indices(n_rows: int, split: str) -> np.ndarray:
    """Rows of scikit-learn's array in ``split`` ('train' | 'test'), ascending."""
    i = np.arange(n_rows)
    test = i % TEST_EVERY == TEST_EVERY - 1
    if split not in ("train", "test"):
        raise ValueError(f"split: got {split!r}; allowed 'train', 'test'")
    return i[test] if split == "test" else i[~test]


class SklearnDataset(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's bundled classification sets as TFDS data sets (array_record, no TF)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "digits, iris, wine, breast_cancer from the installed scikit-learn."}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n, description=f"sklearn.datasets.{f}()")
                       for n, f in _LOADERS.items()]
    name = NAME
    # TFDS looks for a checksums file beside the builder's module through `code_path`, whose lookup
    # imports `importlib_resources` (not in the lock) for any packaged module; there is nothing to
    # download, so there are no checksums: say so directly.
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        n_features, n_classes = SIZES[self.builder_config.name]
        features = tfds.features.FeaturesDict({
            "x": tfds.features.Tensor(shape=(n_features,), dtype=np.float32),
            "label": tfds.features.ClassLabel(num_classes=n_classes),
            "index": tfds.features.Tensor(shape=(), dtype=np.int64),
        })
        return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=("x", "label"),
                                     homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
                                     description=f"scikit-learn's bundled {self.builder_config.name} data set; "
                                     f"row i is test when i % {TEST_EVERY} == {TEST_EVERY - 1}.")

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the arrays come with scikit-learn
        x, y = sklearn_arrays(self.builder_config.name)
        return {s: self._generate_examples(x, y, split_indices(len(y), s)) for s in ("train", "test")}

    def _generate_examples(self, x, y, rows):
        for i in rows:
            yield int(i), {"x": x[i].astype(np.float32), "label": int(y[i]), "index": int(i)}
