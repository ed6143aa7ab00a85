"""Datasets (sklearn digits, MNIST IDX files, image folders), the model zoo (``zoo``) and input
normalisation (``normalization``)."""
from curvext.data.datasets import Dataset, load_digits, load_image_folder, load_mnist

__all__ = ["Dataset", "load_digits", "load_image_folder", "load_mnist"]
