"""Data sets served through tensorflow-datasets (array_record, random access, no TensorFlow)."""
from ictl.data.source import (DATASETS, IMAGES, MNIST_FAMILY, SKLEARN, DataNotPrepared, Split, can_prepare, data_source,
                              default_data_dir, is_prepared, load_split, prepare, prepare_hint, writable)

__all__ = ["DATASETS", "IMAGES", "MNIST_FAMILY", "SKLEARN", "DataNotPrepared", "Split", "can_prepare", "data_source",
           "default_data_dir", "is_prepared", "load_split", "prepare", "prepare_hint", "writable"]
