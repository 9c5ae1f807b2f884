"""oodlab's data layer: image sets, the real data sets, synthetic OOD sets, splits and user arrays."""

from __future__ import annotations

from oodlab.data.arrays import load_image_array
from oodlab.data.datasets import dataset_info, list_datasets, load_dataset
from oodlab.data.imageset import ImageSet
from oodlab.data.sources import cache_dir, data_root
from oodlab.data.splits import holdout_classes, permuted_split, train_val_split
from oodlab.data.synthetic import gaussian_noise, synthetic_ood_validation, uniform_noise

__all__ = [
    "ImageSet",
    "cache_dir",
    "data_root",
    "dataset_info",
    "gaussian_noise",
    "holdout_classes",
    "list_datasets",
    "load_dataset",
    "load_image_array",
    "permuted_split",
    "synthetic_ood_validation",
    "train_val_split",
    "uniform_noise",
]
