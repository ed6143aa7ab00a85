"""Output helper shared by the benchmark scripts."""
from __future__ import annotations


def emit(lines: list[str], out: str | None) -> None:
    """Print the Markdown lines and, with ``out``, also write them to that file."""
    text = "\n".join(lines)
    print(text)
    if out:
        with open(out, "w") as fh:
            fh.write(text + "\n")
