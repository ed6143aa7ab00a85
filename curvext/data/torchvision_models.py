"""torchvision architectures with the user's own weights (curvext never downloads any)."""
from __future__ import annotations

import difflib
import os
from pathlib import Path

import torch
from torch import nn

from curvext.utils.optional import optional_import


def load_torchvision(name: str, weights: str | os.PathLike | None, *, model_kwargs: dict | None = None,
                     device=None) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None, **model_kwargs)`` with the state dict in
    the file ``weights`` (a plain state dict, or one under ``"state_dict"``/``"model_state_dict"``),
    in eval mode on ``device``. Raises ValueError for an unknown architecture (naming close ones)
    and for missing weights: random weights would measure nothing, and nothing is downloaded."""
    models = optional_import("torchvision.models")
    available = models.list_models()
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"torchvision has no model {name!r}{hint}")
    if weights is None:
        raise ValueError(f"torchvision:{name} needs a weights file (curvext never downloads weights): save "
                         f"model.state_dict() with torch.save and pass its path")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    model = models.get_model(name, weights=None, **(model_kwargs or {}))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise ValueError(f"the weights in {path} do not fit torchvision's {name}"
                         f"{'' if not model_kwargs else f' with {model_kwargs}'}: {first} (a model with "
                         "another number of classes needs model_kwargs such as {'num_classes': 10})") from err
    model = model.eval()
    return model if device is None else model.to(device)
