"""ictl.data: scikit-learn's sets through TFDS (array_record, no TensorFlow), the MNIST-family path."""
import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sklearn.datasets
import tensorflow_datasets as tfds

from ictl import data
from ictl.data import sklearn_builder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    data.prepare("digits", str(d))
    return str(d)


def test_fresh_process_reads_exactly_sklearns_digits(data_dir):
    """A new interpreter opens the prepared files with TFDS alone (builder_from_directory, no ictl
    builder class) and through ictl.data.load_split; both give scikit-learn's digits exactly."""
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import tensorflow_datasets as tfds
        from tensorflow_datasets.core.data_sources import array_record
        b = tfds.builder_from_directory({data_dir!r} + "/ictl_sklearn/digits/1.0.0")
        out = {{}}
        for split in ("train", "test"):
            src = b.as_data_source(split=split)
            assert isinstance(src, array_record.ArrayRecordDataSource), type(src)
            recs = [src[i] for i in range(len(src))]
            out[split] = {{"index": [int(r["index"]) for r in recs], "label": [int(r["label"]) for r in recs],
                          "x": np.stack([r["x"] for r in recs]).tolist()}}
        from ictl.data import load_split
        s = load_split("digits", "test", data_dir={data_dir!r})
        out["ictl_test"] = {{"x": s.x.tolist(), "y": s.y.tolist(), "n_classes": s.n_classes}}
        out["tensorflow_imported"] = "tensorflow" in sys.modules
        print(json.dumps(out))
    """)
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    digits = sklearn.datasets.load_digits()
    X, y = digits.data, digits.target
    assert X.shape == (1797, 64) and not out["tensorflow_imported"]
    # split rule: row i is test iff i % 5 == 4 → 359 test rows (i = 4, 9, ..., 1794), 1438 train
    test_rows = np.arange(4, 1797, 5)
    for split, rows in (("train", np.setdiff1d(np.arange(1797), test_rows)), ("test", test_rows)):
        got = out[split]
        order = np.argsort(got["index"])
        np.testing.assert_array_equal(np.asarray(got["index"])[order], rows)
        np.testing.assert_array_equal(np.asarray(got["x"])[order], X[rows])      # pixels 0..16: exact in float32
        np.testing.assert_array_equal(np.asarray(got["label"])[order], y[rows])
    assert len(out["train"]["index"]) == 1438 and len(out["test"]["index"]) == 359
    # ictl's loader returns the rows in scikit-learn's order
    np.testing.assert_array_equal(np.asarray(out["ictl_test"]["x"]), X[test_rows])
    np.testing.assert_array_equal(out["ictl_test"]["y"], y[test_rows])
    assert out["ictl_test"]["n_classes"] == 10


def test_tabular_sets_prepare_and_match(tmp_path):
    d = str(tmp_path)
    for name, loader, n_test in (("iris", sklearn.datasets.load_iris, 30), ("wine", sklearn.datasets.load_wine, 35)):
        s = data.load_split(name, "test", data_dir=d, download=True)
        ref = loader()
        rows = np.arange(4, len(ref.target), 5)
        assert len(rows) == n_test and s.x.shape == (n_test, ref.data.shape[1])
        np.testing.assert_allclose(s.x, ref.data[rows].astype(np.float32))   # float32 storage
        np.testing.assert_array_equal(s.y, ref.target[rows])
        assert s.n_classes == len(np.unique(ref.target))


def test_not_prepared_says_how_and_writes_nothing(tmp_path):
    d = tmp_path / "empty" / "tfds"
    assert not data.is_prepared("digits", str(d))
    with pytest.raises(data.DataNotPrepared, match=r"python -m ictl.data prepare digits --data_dir"):
        data.load_split("digits", "train", data_dir=str(d), download=False)
    with pytest.raises(data.DataNotPrepared, match=r"internet and TensorFlow.*tfds.data_source\('kmnist'"):
        data.load_split("kmnist", "train", data_dir=str(d), download=True)   # never downloaded from here
    assert not (tmp_path / "empty").exists()


def test_writable_and_names(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    assert data.writable(str(tmp_path / "new" / "dir"))
    assert not data.writable(str(f / "sub"))            # a regular file in the path: cannot be created
    with pytest.raises(ValueError, match="data_dir"):
        data.prepare("digits", str(f / "sub"))
    with pytest.raises(ValueError, match="allowed"):
        data.load_split("cifar10", "train", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="split"):
        data.load_split("digits", "validation", data_dir=str(tmp_path))


def test_mnist_path_with_tfds_mock_data(tmp_path):
    """The MNIST family goes through `tfds.data_source(name)`; tfds.testing.mock_data stands in for
    the prepared files (random 28×28×1 uint8 images, labels < 10)."""
    with tfds.testing.mock_data(num_examples=12):
        s = data.load_split("fashion_mnist", "train", data_dir=str(tmp_path))
    assert s.x.shape == (12, 784) and s.x.dtype == np.float32 and s.n_classes == 10
    assert s.y.min() >= 0 and s.y.max() < 10 and s.x.max() <= 255 and s.x.min() >= 0
    assert np.unique(s.x).size > 10                      # random pixels, not a constant


class _FakeMnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Writes a 6-image stand-in for prepared MNIST (same name, version, features) so the real
    `mnist` builder reads it back from disk and decodes its PNGs with PIL (no TensorFlow)."""

    name = "mnist"
    VERSION = tfds.core.Version("3.0.1")
    code_path = None

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1)), "label": tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(6), "test": self._generate_examples(2)}

    def _generate_examples(self, n):
        from PIL import Image

        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(buf, format="PNG")
            yield i, {"image": buf.getvalue(), "label": i}   # PNG bytes: no TF encoder needed


def test_mnist_path_reads_prepared_files(tmp_path):
    _FakeMnist(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    assert data.is_prepared("mnist", str(tmp_path))
    s = data.load_split("mnist", "train", data_dir=str(tmp_path))
    order = np.argsort(s.y)
    np.testing.assert_array_equal(s.y[order], np.arange(6))
    np.testing.assert_array_equal(s.x[order], np.repeat(40.0 * np.arange(6), 784).reshape(6, 784))
