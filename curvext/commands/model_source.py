"""The arguments every command shares for its model and its images: ``--checkpoint``,
``--module-path`` and ``--normalize`` for a user's model; ``--dataset``, ``--data-dir``,
``--image-size`` and ``--channels`` for the images."""
from __future__ import annotations

import argparse
import json
import re

from curvext import data
from curvext.commands.arg_types import existing_file, existing_folder, normalization, positive_int
from curvext.data import zoo
from curvext.data.normalization import Normalized
from curvext.data.torchvision_models import load_torchvision

DATASETS = ("digits", "mnist", "folder")  # built in; any other name is an IDX dataset in --data-dir
IMAGE_SIZE = 224  # --image-size for --dataset folder, the same in every command


def dataset_name(text: str) -> str:
    """``--dataset``: digits, folder, mnist, or the name of another IDX dataset (fashion-mnist, ...)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text):
        raise argparse.ArgumentTypeError(f"expected digits, folder, mnist or an IDX dataset's name (letters, digits, "
                                         f"'.', '_', '-'), got {text!r}")
    return text


def is_idx(dataset: str) -> bool:
    """Whether ``--dataset`` names IDX files in ``--data-dir`` (MNIST, Fashion-MNIST, ...)."""
    return dataset not in ("digits", "folder")


def load_test_images(args, count: int | None, seed: int = 0) -> data.Dataset:
    """The first ``count`` (None: all) test images of ``--dataset``: digits' seeded test split, the
    sorted files of an image folder, or an IDX dataset's test split."""
    if args.dataset == "digits":
        return data.load_digits("test", seed=seed).subset(count)
    if not args.data_dir:
        raise ValueError(f"--dataset {args.dataset} needs --data-dir (a folder of "
                         f"{'images' if args.dataset == 'folder' else 'IDX files'})")
    if args.dataset == "folder":
        return data.load_image_folder(args.data_dir, size=args.image_size, channels=args.channels, limit=count)
    return data.load_idx(args.data_dir, "test", limit=count)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--checkpoint``, ``--module-path`` and ``--normalize``: a user's model instead of the zoo."""
    group = p.add_argument_group("a model of your own instead of the zoo")
    group.add_argument("--checkpoint", type=existing_file, default=None,
                       help="a torch.export .pt2, TorchScript or state-dict file instead of the zoo")
    group.add_argument("--module-path", default=None, metavar="PACKAGE.MODULE:CLASS",
                       help="the model's class or constructor for a state-dict --checkpoint "
                            "(e.g. torchvision.models:resnet50)")
    group.add_argument("--model-kwargs", type=model_kwargs, default=None, metavar="JSON",
                       help='keyword arguments of the constructor (--module-path or --model torchvision:NAME), '
                            'as JSON, e.g. \'{"num_classes": 10}\'')
    group.add_argument("--weights", type=existing_file, default=None, metavar="FILE",
                       help="state dict for --model torchvision:NAME (nothing is downloaded)")
    group.add_argument("--normalize", type=normalization, default=None, metavar="none|imagenet|M,../S,..",
                       help="per-channel (x - mean) / std put in front of a --checkpoint model that expects "
                            "normalised inputs (torchvision's ImageNet models: imagenet); images stay in [0, 1]. "
                            "A negative first mean needs the = form: --normalize=-0.5/2")


def add_data_arguments(p: argparse.ArgumentParser, default: str = "digits") -> None:
    """``--dataset``, ``--data-dir``, and ``--image-size``/``--channels`` for ``--dataset folder``."""
    group = p.add_argument_group("images")
    group.add_argument("--dataset", type=dataset_name, default=default, metavar="digits|mnist|folder|NAME",
                       help="digits ships with scikit-learn; mnist, or any other NAME (e.g. fashion-mnist), reads the "
                            "four IDX files in --data-dir and is reported and cached under that name; folder: every "
                            f"image file in --data-dir (default: {default})")
    group.add_argument("--data-dir", type=existing_folder, default=None,
                       help="folder of the four IDX files named as MNIST's (--dataset mnist or NAME) or of images "
                            "(--dataset folder)")
    group.add_argument("--image-size", type=positive_int, default=IMAGE_SIZE,
                       help=f"--dataset folder: images resized to this square size (default {IMAGE_SIZE})")
    group.add_argument("--channels", type=int, choices=(1, 3), default=3,
                       help="--dataset folder: 1 (grey) or 3 (RGB) (default 3)")


def model_kwargs(text: str) -> dict:
    """``--model-kwargs``: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"num_classes\": 10}}', got {text!r} "
                                         f"({err.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"num_classes\": 10}}', got {text!r}")
    return value


def is_torchvision_model(name: str | None) -> bool:
    return bool(name) and name.startswith("torchvision:")


def _expected_model() -> str:
    return f"{', '.join(zoo.ARCHITECTURES)} (the zoo) or torchvision:NAME"


def model_name(text: str) -> str:
    """``--model``: a zoo architecture or ``torchvision:NAME``."""
    name = text.strip()
    if name in zoo.ARCHITECTURES or (is_torchvision_model(name) and len(name) > len("torchvision:")):
        return name
    raise argparse.ArgumentTypeError(f"expected {_expected_model()}, got {text!r}")


def model_list(text: str) -> tuple[str, ...]:
    """``--model`` of ``evaluate``: zoo architectures, comma separated, or one ``torchvision:NAME``."""
    names = tuple(model_name(item) for item in text.split(",") if item.strip())
    if not names or (len(names) > 1 and any(is_torchvision_model(n) for n in names)):
        raise argparse.ArgumentTypeError(f"expected zoo architectures separated by commas "
                                         f"({', '.join(zoo.ARCHITECTURES)}) or one torchvision:NAME, got {text!r}")
    return names


def activation_list(text: str) -> tuple[str, ...]:
    """``--activation`` of ``evaluate``: relu, smooth, both, or a comma-separated list of them."""
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    if items == ("both",):
        return zoo.ACTIVATIONS
    if not items or any(item not in zoo.ACTIVATIONS for item in items):
        raise argparse.ArgumentTypeError(f"expected {', '.join(zoo.ACTIVATIONS)} or both, got {text!r}")
    return tuple(dict.fromkeys(items))


def load_command_model(args, device=None):
    """The model of a command with a zoo ``--model`` default (profile, paths): ``--checkpoint``,
    ``--model torchvision:NAME``, or the zoo architecture trained on ``--dataset`` (cached)."""
    if args.dataset != "digits" and not args.data_dir:  # before loading a model that may be large
        raise ValueError(f"--dataset {args.dataset} needs --data-dir (a folder of "
                         f"{'images' if args.dataset == 'folder' else 'IDX files'})")
    if args.checkpoint or is_torchvision_model(args.model):
        return load_user_model(args, device)
    if args.dataset == "folder":
        raise ValueError("--dataset folder needs --checkpoint or --model torchvision:NAME (the zoo trains on digits "
                         "and IDX datasets only)")
    refuse_normalize_without_checkpoint(args, args.command)
    return zoo.train(args.model, args.activation, args.dataset, args.data_dir if is_idx(args.dataset) else None,
                     cache=args.cache).model.to(device or "cpu")


def load_user_model(args, device=None):
    """The ``--checkpoint`` (or ``--model torchvision:NAME --weights FILE``) model on ``device``,
    in eval mode, behind ``--normalize`` when given.

    Modes are set as flags, not by ``eval()``, which a ``torch.export`` module refuses."""
    kwargs = getattr(args, "model_kwargs", None)
    if args.checkpoint:
        model = zoo.load_checkpoint(args.checkpoint, args.module_path, model_kwargs=kwargs, device=device)
    else:
        name = args.model[0] if isinstance(args.model, tuple) else args.model  # evaluate's --model is a list
        model = load_torchvision(name.split(":", 1)[1], getattr(args, "weights", None), model_kwargs=kwargs,
                                 device=device)
    if args.normalize is not None:
        model = Normalized(model, *args.normalize).to(device or "cpu")
        model.training = False  # the wrapper's own flag; the wrapped model's are already off
    return model


def refuse_normalize_without_checkpoint(args, command: str) -> None:
    """The zoo's models normalise their inputs themselves: ``--normalize`` is for checkpoints."""
    model = getattr(args, "model", None)
    if args.normalize is not None and not args.checkpoint and not any(
            is_torchvision_model(name) for name in (model if isinstance(model, tuple) else (model,))):
        raise ValueError("--normalize applies to a --checkpoint model (the zoo's models "
                         "normalise their inputs themselves)")


def add_zoo_model_arguments(p: argparse.ArgumentParser, activation: str) -> None:
    """``--model`` (a zoo architecture, default lenet, or ``torchvision:NAME``) and ``--activation``
    (default ``activation``) of the commands that train a zoo model on their dataset (profile,
    paths), and the options of :func:`add_model_arguments`."""
    p.add_argument("--model", type=model_name, default="lenet", metavar="lenet|nin|torchvision:NAME",
                   help="zoo architecture, or a torchvision architecture with --weights")
    p.add_argument("--activation", default=activation, choices=zoo.ACTIVATIONS)
    add_model_arguments(p)


def add_single_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--model`` (a zoo architecture or ``torchvision:NAME``), ``--activation`` and ``--cache``
    for the zoo, and the options of :func:`add_model_arguments`."""
    p.add_argument("--model", type=model_name, default=None, metavar="lenet|nin|torchvision:NAME",
                   help="a zoo architecture (trained on sklearn digits on first use, then cached) or a torchvision "
                        "architecture with --weights; or give --checkpoint instead")
    p.add_argument("--activation", choices=("relu", "smooth"), default="relu",
                   help="activation of a zoo --model (default relu)")
    p.add_argument("--cache", default=None, help="zoo cache folder (default ~/.cache/curvext or $CURVEXT_CACHE)")
    add_model_arguments(p)


def load_model(args, device=None):
    """The model of :func:`add_single_model_arguments`' options, in eval mode on ``device``."""
    if args.checkpoint or is_torchvision_model(args.model):
        if args.checkpoint and args.model:
            raise ValueError("give either --checkpoint or --model, not both")
        return load_user_model(args, device)
    if not args.model:
        raise ValueError("which model? give --checkpoint FILE, --model torchvision:NAME --weights FILE, or "
                         "--model lenet|nin (the zoo)")
    if args.model not in zoo.ARCHITECTURES:
        raise ValueError(f"--model: expected {', '.join(zoo.ARCHITECTURES)} or torchvision:NAME, got {args.model!r}")
    refuse_normalize_without_checkpoint(args, args.command)
    return zoo.train(args.model, args.activation, "digits", cache=args.cache).model.to(device or "cpu")
