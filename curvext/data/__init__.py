"""Datasets (sklearn digits, MNIST and other IDX datasets, image folders), the model zoo (``zoo``)
and input normalisation (``normalization``)."""
from curvext.data.datasets import Dataset, load_digits, load_idx, load_image_folder, load_mnist

__all__ = ["Dataset", "load_digits", "load_idx", "load_image_folder", "load_mnist"]
