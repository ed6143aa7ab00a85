"""Output helper shared by the benchmark scripts."""
from __future__ import annotations


def emit(lines: list[str], out: str | None) -> None:
    """Print the Markdown lines and, with ``out``, also write them to that file."""
    text = "\n".join(lines)
    print(text)
    if out:
        with open(out, "w") as fh:
            fh.write(text + "\n")


def add_malloc_option(parser) -> None:
    """``--default-malloc``: leave glibc's allocator as it is (by default the scripts tune it)."""
    parser.add_argument("--default-malloc", action="store_true",
                        help="do not call curvext.tune_cpu_allocator() (it applies to both sides of every "
                             "comparison; see curvext/utils/cpu_allocator.py)")


def configure_malloc(args) -> str:
    """Tune the C allocator unless ``--default-malloc``; a few words for the table's header."""
    if getattr(args, "default_malloc", False):
        return "malloc: C library default"
    from curvext.utils.cpu_allocator import tune_cpu_allocator

    return "malloc: tuned (curvext.tune_cpu_allocator)" if tune_cpu_allocator() else "malloc: default (not glibc)"
