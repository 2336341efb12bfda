"""Build of fastops and its C++/CUDA extension ``fastops._C``.

Knobs (environment variables), printed at every build:

* ``FORCE_CUDA=1``   compile the CUDA kernels even where no GPU is visible (CI does).
* ``TORCH_CUDA_ARCH_LIST``  architectures to compile for, e.g. ``"8.0;9.0"``; set it
  explicitly on machines without a GPU.
* ``DEBUG=1``        ``-O0 -g`` (and ``-G`` for device code) instead of optimised code.
* ``MAX_JOBS``       parallel compile jobs (ninja).
* ``FASTOPS_NO_EXTENSION=1``  install without compiling ``fastops._C`` (only the
  ``reference`` and ``triton`` backends then); the Makefile uses it for the
  editable install and builds the extension in place afterwards, incrementally.

The CPU kernels are always built. The CUDA kernels are built when ``FORCE_CUDA=1``,
or when ``torch.cuda.is_available()`` and a CUDA toolkit is found.
"""

import glob
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _set_cuda_home() -> None:
    """torch finds the CUDA toolkit from the nvcc on PATH, which misleads it when
    that nvcc is a wrapper script (here /usr/local/bin/nvcc gives CUDA_HOME=/usr/local,
    which has no CUDA headers). Prefer a toolkit that has its headers."""
    if os.getenv("CUDA_HOME") or os.getenv("CUDA_PATH"):
        return
    for candidate in ("/usr/local/cuda", "/opt/cuda"):
        if (Path(candidate) / "include" / "cuda_runtime.h").is_file():
            os.environ["CUDA_HOME"] = candidate
            return


_set_cuda_home()

import torch  # noqa: E402
from setuptools import find_packages, setup  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _flag(name: str) -> bool:
    return os.getenv(name, "0") not in ("", "0", "false", "False")


def _pip_cuda_include_dirs() -> list[str]:
    """Headers of the pip-installed CUDA libraries (cusparse.h, cublas_v2.h, ...).

    ``ATen/cuda/CUDAContext.h`` includes them; a CUDA toolkit without the math
    libraries (as here) does not ship them, but the CUDA build of torch depends on
    wheels that do.
    """
    dirs = []
    for site in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cu12/include"):
            candidate = Path(site) / sub
            if candidate.is_dir():
                dirs.append(str(candidate))
    return sorted(set(dirs))


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(str(ROOT / pattern)))


FORCE_CUDA = _flag("FORCE_CUDA")
DEBUG = _flag("DEBUG")
NO_EXTENSION = _flag("FASTOPS_NO_EXTENSION")
USE_CUDA = FORCE_CUDA or (torch.cuda.is_available() and CUDA_HOME is not None)

print(
    "fastops build: "
    f"FORCE_CUDA={int(FORCE_CUDA)} USE_CUDA={int(USE_CUDA)} DEBUG={int(DEBUG)} "
    f"FASTOPS_NO_EXTENSION={int(NO_EXTENSION)} "
    f"TORCH_CUDA_ARCH_LIST={os.getenv('TORCH_CUDA_ARCH_LIST', '<unset: visible GPUs>')} "
    f"MAX_JOBS={os.getenv('MAX_JOBS', '<unset: all cores>')} "
    f"CUDA_HOME={CUDA_HOME} torch={torch.__version__}",
    flush=True,
)

sources = (
    _sources("csrc/*.cpp")
    + _sources("csrc/common/*.cpp")
    + _sources("csrc/ops/*.cpp")
    + _sources("csrc/cpu/*.cpp")
)
include_dirs = [str(ROOT / "csrc")]
define_macros = []
opt = ["-O0", "-g"] if DEBUG else ["-O3", "-g0"]
# -fopenmp: at::parallel_for runs serially unless the caller is compiled with OpenMP;
# the resulting libgomp.so.1 dependency resolves to the copy torch has already loaded.
# -ffp-contract=off: no fused multiply-adds, so CPU arithmetic rounds as the CUDA
# kernels (which use non-fusable intrinsics) do; see csrc/ops/box_iou_math.h.
# -fno-trapping-math: floating-point exceptions are never unmasked, so the
# compiler may evaluate both sides of a select and vectorise it (the loss
# kernels' sigmoid and sign); results are unchanged (no reassociation).
extra_compile_args = {"cxx": [*opt, "-fopenmp", "-Wall", "-ffp-contract=off", "-fno-trapping-math"]}
extra_link_args = ["-fopenmp"]

if USE_CUDA:
    if CUDA_HOME is None:
        sys.exit("fastops build: FORCE_CUDA=1 but no CUDA toolkit was found (set CUDA_HOME)")
    sources += _sources("csrc/cuda/*.cu")
    include_dirs += _pip_cuda_include_dirs()
    define_macros.append(("WITH_CUDA", None))
    extra_compile_args["nvcc"] = [
        *(["-O0", "-g", "-G"] if DEBUG else ["-O3", "-lineinfo"]),
        "--expt-relaxed-constexpr",
        # torch's CUDAEvent.h trips GCC's -Winterference-size in every .cu file.
        "-Xcompiler",
        "-Wno-interference-size",
    ]
    extension_class = CUDAExtension
else:
    extension_class = CppExtension

ext_modules = (
    []
    if NO_EXTENSION
    else [
        extension_class(
            "fastops._C",
            sources=sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]
)

packages = [*find_packages(include=["fastops", "fastops.*"]), "fastops.triton_kernels"]

setup(
    packages=packages,
    package_dir={"fastops.triton_kernels": "triton_kernels"},
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)},
)
