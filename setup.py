"""Build of the compiled extension ganops._C (metadata: pyproject.toml).

Environment variables:
  GANOPS_BUILD_CUDA     1: also build the CUDA kernels, 0: CPU kernels only; unset: CUDA kernels when
                        torch is a CUDA build and a CUDA toolkit is found (CUDA_HOME / nvcc).
  TORCH_CUDA_ARCH_LIST  GPU architectures of the CUDA kernels, default "8.0;9.0".
  MAX_JOBS              parallel compile jobs (read by torch's BuildExtension).
"""

import glob
import os
import sys
import sysconfig
from pathlib import Path

import torch
from setuptools import find_packages, setup
from torch.utils import cpp_extension

HERE = Path(__file__).parent.resolve()


def build_cuda() -> bool:
    flag = os.environ.get("GANOPS_BUILD_CUDA", "")
    if flag not in ("", "0", "1"):
        raise ValueError(f"GANOPS_BUILD_CUDA must be 0 or 1, got {flag!r}")
    if flag == "0":
        return False
    found = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if flag == "1" and not found:
        raise RuntimeError(
            "GANOPS_BUILD_CUDA=1 needs a CUDA build of torch and a CUDA toolkit; "
            f"torch.version.cuda={torch.version.cuda}, CUDA_HOME={cpp_extension.CUDA_HOME}"
        )
    return found


def sources(*patterns: str) -> list[str]:
    # setuptools wants source paths relative to the project root.
    return sorted(str(Path(p).relative_to(HERE)) for pattern in patterns for p in glob.glob(str(HERE / pattern)))


def pip_cuda_include_flags() -> list[str]:
    # CUDA wheels of torch take cuBLAS, cuSPARSE, ... headers from pip's nvidia packages, and a bare CUDA
    # toolkit may lack them. -isystem makes them a fallback searched after the toolkit's -I directory, so
    # the toolkit's own runtime headers still match its nvcc.
    site_packages = Path(torch.__file__).resolve().parent.parent
    dirs = sorted(p for p in site_packages.glob("nvidia/cu[0-9]*/include") if p.is_dir())
    return [flag for d in dirs for flag in ("-isystem", str(d))]


class BuildExtension(cpp_extension.BuildExtension):
    """torch's BuildExtension, keeping its objects in one folder of the project, build/objects.<platform>.

    An editable install (scripts/setup.sh) otherwise compiles in a temporary folder it then deletes, so running
    setup.sh again, or building the wheel after it (scripts/wheel_smoke.sh), compiled every source again; ninja,
    which torch drives, now recompiles only the sources whose command or inputs (headers included) changed.
    A build_temp given explicitly (setup.py build_ext --build-temp DIR) is kept.
    """

    def finalize_options(self):
        inherited = self.build_temp is None
        super().finalize_options()
        if inherited:
            self.build_temp = str(HERE / "build" / f"objects.{sysconfig.get_platform()}-{sys.implementation.cache_tag}")


def extension():
    # Sources, one stem per op: csrc/<op>.cpp (schemas) and csrc/ganops.cpp (the library and module),
    # csrc/cpu/<op>.cpp (CPU kernels), csrc/cuda/<op>.cu (CUDA kernels) and csrc/cuda/<op>_binding.cpp
    # (their torch glue); headers shared by an op's CPU and CUDA code are csrc/<op>.h, and the rules every
    # op shares are csrc/common.h (plain C++, also read by nvcc) and csrc/common_torch.h.
    # The sources are C++17; the -std flag is left to torch, which adds the standard its own headers need
    # (C++17 for older releases, C++20 for recent ones such as 2.13) whenever none is given.
    flags = ["-O3"]
    if not build_cuda():
        return cpp_extension.CppExtension(
            "ganops._C",
            sources("csrc/*.cpp", "csrc/cpu/*.cpp"),
            extra_compile_args={"cxx": flags},
        )
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    return cpp_extension.CUDAExtension(
        "ganops._C",
        sources("csrc/*.cpp", "csrc/cpu/*.cpp", "csrc/cuda/*.cpp", "csrc/cuda/*.cu"),
        define_macros=[("GANOPS_WITH_CUDA", None)],
        extra_compile_args={"cxx": flags + pip_cuda_include_flags(), "nvcc": flags + pip_cuda_include_flags()},
    )


setup(
    packages=find_packages(include=["ganops", "ganops.*"]) + ["ganops.triton_kernels"],
    package_dir={"ganops.triton_kernels": "triton_kernels"},
    package_data={"ganops": ["*.json"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
)
