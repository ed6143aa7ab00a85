"""Build the curvext._C extension (torch custom ops) with ninja.

Environment:
  CURVEXT_CUDA=0|1        force the CPU-only build (0) or the CUDA build (1). Default: CUDA when
                          nvcc is found (CUDA_HOME / PATH) and torch is a CUDA build.
  TORCH_CUDA_ARCH_LIST    CUDA archs to compile for; default "8.0;9.0".
  CURVEXT_DEBUG=1         -O0 -g, no fast paths.
  MAX_JOBS                parallel compile jobs (ninja).
"""
import glob
import os
import site
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _guess_cuda_home() -> None:
    """Point CUDA_HOME at a full toolkit when only a wrapper nvcc sits on PATH.

    torch guesses CUDA_HOME from nvcc's folder; an nvcc in /usr/local/bin would make it
    /usr/local, which has no lib64/libcudart.so. Must run before torch.utils.cpp_extension loads.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    for candidate in ("/usr/local/cuda",):
        if os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            os.environ["CUDA_HOME"] = candidate
            return


_guess_cuda_home()

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda() -> bool:
    forced = os.environ.get("CURVEXT_CUDA")
    if forced is not None and forced.strip() != "":
        if forced.strip() not in ("0", "1"):
            sys.exit(f"CURVEXT_CUDA must be 0 or 1, got {forced!r}")
        if forced.strip() == "1" and (CUDA_HOME is None or torch.version.cuda is None):
            sys.exit("CURVEXT_CUDA=1 but nvcc (CUDA_HOME) or a CUDA build of torch is missing")
        return forced.strip() == "1"
    return CUDA_HOME is not None and torch.version.cuda is not None


def _nvidia_wheel_includes() -> list:
    """Headers of cuBLAS/cuSPARSE/cuSOLVER shipped in the `nvidia-*` wheels torch depends on.

    torch's CUDA headers include them, but the CUDA toolkit's own include folder may lack them.
    """
    roots = list(site.getsitepackages()) + [site.getusersitepackages()]
    roots += [os.path.dirname(os.path.dirname(torch.__file__))]
    found = []
    for root in roots:
        for pattern in ("nvidia/cu*/include", "nvidia/*/include"):
            for path in sorted(glob.glob(os.path.join(root, pattern))):
                if path not in found and os.path.isdir(path):
                    found.append(path)
    return found


def _extension():
    with_cuda = _want_cuda()
    debug = os.environ.get("CURVEXT_DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # -fopenmp: at::parallel_for in ATen's headers is an OpenMP region when torch's parallel
    # backend is OpenMP (the pip wheels); without the flag it silently runs on one thread.
    # libgomp.so.1 is the runtime torch already loads, so no second OpenMP runtime appears.
    cxx_flags = opt + ["-fopenmp"]
    link_flags = ["-fopenmp"]
    sources = ["csrc/module.cpp", "csrc/curvext.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [os.path.join(HERE, "csrc", "include")]
    define_macros = []
    if not with_cuda:
        return CppExtension(
            "curvext._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags,
            define_macros=define_macros,
        )
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    include_dirs += _nvidia_wheel_includes()
    define_macros.append(("CURVEXT_WITH_CUDA", None))
    nvcc_flags = opt + ["--expt-relaxed-constexpr", "-lineinfo"]
    return CUDAExtension(
        "curvext._C", sources, include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags}, extra_link_args=link_flags,
        define_macros=define_macros,
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
