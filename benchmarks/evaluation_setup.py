"""Options and images shared by the detector-evaluation benchmarks (benign_perturbations.py,
adaptive_gradients.py): MNIST from --data-dir (or $MNIST_DIR where a script allows it) or
sklearn digits, evaluated images and a disjoint calibration split after them."""
from __future__ import annotations

from curvext import data


def add_evaluation_arguments(p, images: int) -> None:
    p.add_argument("--model", default="lenet")
    p.add_argument("--images", type=int, default=images, help="evaluated test images (the first ones)")
    p.add_argument("--calibration-images", type=int, default=150, help="the next test images, to calibrate on")
    p.add_argument("--eps-l2", type=float, default=None, help="PGD budget (default 2.0 MNIST, 1.0 digits)")
    p.add_argument("--out", default=None)


def load_evaluation_images(args):
    """``(dataset, eps, test, cal)``: the dataset's name, the PGD l2 budget, the first
    ``images + calibration_images`` test images, and the calibration images among them."""
    dataset = "mnist" if args.data_dir else "digits"
    eps = args.eps_l2 or (2.0 if args.data_dir else 1.0)
    n = args.images + args.calibration_images
    test = data.load_mnist(args.data_dir, "test", limit=n) if args.data_dir else data.load_digits("test").subset(n)
    return dataset, eps, test, test.images[args.images :]
