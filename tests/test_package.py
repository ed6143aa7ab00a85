"""The public API: every exported name resolves; the extension reports how it was built."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import curvext


@pytest.mark.parametrize("name", curvext.__all__)
def test_exported_names_resolve(name):
    assert getattr(curvext, name) is not None


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        curvext.nope  # noqa: B018


def test_import_is_light():
    # Importing curvext must not pull in the evaluation stack (matplotlib, pandas, sklearn).
    code = "import sys, curvext; print(any(m in sys.modules for m in ('matplotlib', 'pandas', 'sklearn')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cpu_kernels_run_in_parallel():
    """The extension must be compiled with torch's parallel backend (OpenMP in the pip wheels):
    otherwise at::parallel_for silently runs every CPU kernel on one thread."""
    import curvext._ops  # noqa: F401  (loads the extension)

    threads = torch.get_num_threads()
    if threads < 2:
        pytest.skip("torch runs on one thread here")
    assert torch.ops.curvext.parallel_threads(64) == threads


def test_an_unbuilt_checkout_that_shadows_the_installed_package_says_so(tmp_path):
    """A copy of the package without its extension, found first (the working directory), while a
    built copy sits further down sys.path. Run without site processing (-S), so that an editable
    install's import hook does not fill the gap with its own extension."""
    import shutil
    import sysconfig

    import curvext as installed

    checkout = tmp_path / "checkout"
    shutil.copytree(Path(installed.__file__).parent, checkout / "curvext",
                    ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    code = ("import sys; sys.path += sys.argv[1:]\n"
            "try:\n    import curvext\nexcept ImportError as err:\n    print(err)\n")
    run = subprocess.run([sys.executable, "-S", "-c", code, sysconfig.get_paths()["purelib"],
                          str(Path(installed.__file__).parent.parent)], cwd=checkout, capture_output=True, text=True)
    assert "shadows the installed one" in run.stdout and str(checkout / "curvext") in run.stdout, run.stderr[-500:]


def test_dir_lists_the_lazy_names():
    assert {"CurvatureDetector", "DetectorConfig", "lanczos", "train_model"} <= set(dir(curvext))


def test_source_distribution_holds_every_file_the_build_compiles(tmp_path):
    """``pip install curvext-X.tar.gz`` compiles from the sdist alone: every tracked file under
    csrc/ (the headers included), the docs, the tests' CUDA emulation and the recorded benchmark
    results must be in it. Built from a copy of the tracked files, so the checkout is not touched."""
    import shutil
    import tarfile

    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("needs the git checkout (the list of tracked files)")
    tracked = subprocess.run(["git", "ls-files"], cwd=root, check=True, capture_output=True, text=True).stdout.split()
    copy = tmp_path / "copy"
    for name in tracked:
        if (root / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, copy / name)
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=copy, check=True,
                   capture_output=True)
    with tarfile.open(next((tmp_path / "dist").glob("curvext-*.tar.gz"))) as tar:
        shipped = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    wanted = {n for n in tracked if n.startswith(("csrc/", "docs/", "tests/cuda_emulation/", "benchmarks/results/"))}
    assert wanted and wanted <= shipped, sorted(wanted - shipped)
