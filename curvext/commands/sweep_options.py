"""Options shared by the sweep commands (``calibrate``, ``detect``): the image folder, its
preprocessing and the DataLoader workers."""
from __future__ import annotations

import argparse

from curvext.commands.arg_types import existing_folder, non_negative_int, output_folder, positive_int
from curvext.commands.model_source import IMAGE_SIZE
from curvext.data.image_folder import Preprocessing


def add_folder_arguments(p: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """``--data-dir`` (required), and ``--image-size``, ``--resize``, ``--channels``, ``--workers``.
    With ``defaults=False`` the preprocessing options default to None (``detect`` takes them
    from the calibration)."""
    p.add_argument("--data-dir", type=existing_folder, required=True,
                   help="image folder: one sub-folder per class (torchvision ImageFolder; labels from the sorted "
                        "sub-folder names) or image files directly inside it (no labels)")
    group = p.add_argument_group("preprocessing" + ("" if defaults else " (default: as at calibration)"))
    group.add_argument("--image-size", type=positive_int, default=IMAGE_SIZE if defaults else None,
                       help=f"centre crop, in pixels (default {IMAGE_SIZE})" if defaults else "centre crop, in pixels")
    group.add_argument("--resize", type=positive_int, default=None,
                       help="shorter side resized to this before the crop (ImageNet: --resize 256 --image-size 224; "
                            "default: the crop size)")
    group.add_argument("--channels", type=int, choices=(1, 3), default=3 if defaults else None,
                       help="1 (grey) or 3 (RGB)" + (" (default 3)" if defaults else ""))
    p.add_argument("--workers", type=non_negative_int, default=2,
                   help="DataLoader processes decoding images (default 2; 0 decodes in the main process)")


def add_table_output_arguments(p: argparse.ArgumentParser, out: str) -> None:
    """``--format``, ``--out`` (default ``out``), ``--cache`` (the zoo's) and ``--no-progress`` of
    the commands that write a table of parts (profile, paths)."""
    p.add_argument("--format", choices=("parquet", "csv"), default="parquet", help="table format")
    p.add_argument("--out", type=output_folder, default=out, help="output folder (table, plot, saved parts)")
    p.add_argument("--cache", default=None, help="zoo cache folder (default ~/.cache/curvext or $CURVEXT_CACHE)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def preprocessing_from(args, recorded: dict | None = None) -> Preprocessing:
    """The :class:`Preprocessing` of the options; options left out take ``recorded``'s values, and
    one that contradicts ``recorded`` is refused (a calibration holds for its preprocessing only)."""
    given = {"image_size": args.image_size, "resize": args.resize, "channels": args.channels}
    if recorded is None:  # nothing recorded (a calibration saved from Python): the options, or their defaults
        return Preprocessing(**{k: v for k, v in given.items() if v is not None})
    for name, value in given.items():
        if value is not None and value != recorded.get(name):
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} {value} differs from the calibration's {recorded.get(name)}: a calibration holds "
                             f"for the preprocessing it was made with (leave {flag} out, or calibrate again)")
    return Preprocessing(**recorded)
