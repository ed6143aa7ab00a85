"""Optional dependencies, imported where they are used, with an error that names the extra."""
from __future__ import annotations

import importlib
from types import ModuleType

#: the extra of ``pyproject.toml`` that installs each optional module
EXTRAS = {"pandas": "eval", "pyarrow": "eval", "matplotlib": "eval", "tqdm": "eval", "lightning": "lightning",
          "tensorboard": "eval"}


def optional_import(name: str) -> ModuleType:
    """``importlib.import_module(name)``; when it is missing, an ImportError that says which
    extra installs it (``pip install 'curvext[eval]'``)."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        top = name.split(".")[0]
        extra = EXTRAS.get(top)
        hint = f"pip install 'curvext[{extra}]'" if extra else f"pip install {top}"
        raise ImportError(f"{name} is needed here but not installed: {hint}") from err
