"""What a sweep reads: images in memory (digits, MNIST) or an image folder streamed from disk,
behind one interface, so the engine and the commands do not care which."""
from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from curvext.data.datasets import Dataset
from curvext.data.image_folder import ImageFileDataset, Manifest, Preprocessing
from curvext.utils.cache_keys import tensor_digest
from curvext.utils.reprs import ShortRepr


@dataclass(frozen=True, repr=False)
class Batch(ShortRepr):
    """indices: ``(b,)`` manifest rows; images: ``(b, C, H, W)`` on the sweep's device; errors:
    ``b`` strings, ``""`` where the image was read."""

    indices: list[int]
    images: torch.Tensor
    errors: list[str]


class TensorSource:
    """Images already in memory (a :class:`curvext.data.Dataset`); rows are named by index."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def sample_numel(self) -> int:
        """Elements of one image (d)."""
        return int(self.dataset.images[0].numel())

    def name(self, index: int) -> str:
        names = self.dataset.names
        return names[index] if names else str(index)

    def label(self, index: int) -> int | None:
        value = int(self.dataset.labels[index])
        return None if value < 0 else value

    def identity(self) -> dict:
        return {"images": tensor_digest(self.dataset.images), "labels": tensor_digest(self.dataset.labels)}

    def batches(self, items: Sequence[int], batch_size: int, device) -> Iterator[Batch]:
        items = list(items)
        for start in range(0, len(items), batch_size):
            rows = items[start : start + batch_size]
            yield Batch(rows, self.dataset.images[rows].to(device), [""] * len(rows))


class FolderSource:
    """An image folder (ImageFolder layout or flat) decoded in ``workers`` DataLoader processes,
    with pinned host memory when the device is a GPU."""

    def __init__(self, manifest: Manifest, preprocessing: Preprocessing, workers: int = 2):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an int >= 0, got {workers!r}")
        self.manifest = manifest
        self.preprocessing = preprocessing
        self.workers = workers

    def __len__(self) -> int:
        return len(self.manifest)

    def sample_numel(self) -> int:
        """Elements of one image (d)."""
        return self.preprocessing.channels * self.preprocessing.image_size ** 2

    def name(self, index: int) -> str:
        return self.manifest.paths[index]

    def label(self, index: int) -> int | None:
        return None if self.manifest.labels is None else self.manifest.labels[index]

    def identity(self) -> dict:
        listing = "\n".join(self.manifest.paths) + f"\n{self.manifest.labels}\n{self.manifest.classes}"
        digest = hashlib.sha256(listing.encode()).hexdigest()[:16]
        return {"files": digest, "count": len(self.manifest), "preprocessing": self.preprocessing.to_dict()}

    def batches(self, items: Sequence[int], batch_size: int, device) -> Iterator[Batch]:
        device = torch.device(device)
        loader = torch.utils.data.DataLoader(
            ImageFileDataset(self.manifest, self.preprocessing, items), batch_size=batch_size,
            num_workers=self.workers, pin_memory=device.type == "cuda", shuffle=False)
        for indices, images, errors in loader:
            yield Batch([int(i) for i in indices], images.to(device, non_blocking=True), list(errors))
