"""The user's model and image folder for the commands: ``--checkpoint``/``--module-path``,
``--normalize``, and ``--image-size``/``--channels`` for ``--dataset folder``."""
from __future__ import annotations

import argparse

from curvext.commands.arg_types import normalization, positive_int


def add_normalize_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--normalize", type=normalization, default=None, metavar="none|imagenet|M,../S,..",
                   help="per-channel (x - mean) / std put in front of a --checkpoint model that expects normalised "
                        "inputs (torchvision's ImageNet models: imagenet); images stay in [0, 1]. A negative first "
                        "mean needs the = form: --normalize=-0.5/2")


def add_folder_arguments(p: argparse.ArgumentParser, image_size: int = 224) -> None:
    p.add_argument("--image-size", type=positive_int, default=image_size,
                   help=f"--dataset folder: images resized to this square size (default {image_size})")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="--dataset folder: 1 (grey) or 3 (RGB)")


def load_user_model(args, device=None):
    """The ``--checkpoint`` model on ``device``, in eval mode, behind ``--normalize`` when given.

    Modes are set as flags, not by ``eval()``, which a ``torch.export`` module refuses."""
    from curvext import zoo
    from curvext.normalization import Normalized

    model = zoo.load_checkpoint(args.checkpoint, args.module_path, device=device)  # in eval mode
    if args.normalize is not None:
        model = Normalized(model, *args.normalize).to(device or "cpu")
        model.training = False  # the wrapper's own flag; the wrapped model's are already off
    return model


def refuse_normalize_without_checkpoint(args, command: str) -> None:
    """The zoo's models normalise their inputs themselves: ``--normalize`` is for checkpoints."""
    if args.normalize is not None and not args.checkpoint:
        raise SystemExit(f"curvext {command}: --normalize applies to a --checkpoint model (the zoo's models "
                         "normalise their inputs themselves)")
