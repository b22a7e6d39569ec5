"""The tensor-core attention kernels' fragment indexing, checked on the CPU.

tests/cuda_fragment_emulation.cpp runs the warp-level tile functions of csrc/cuda/attention_mma.cuh (the ones
the CUDA kernels call) for each of the 32 lanes, with mma.sync emulated from an independent transcription of
the PTX ISA's fragment tables (m16n8k16 for fp16/bf16, m16n8k8 for tf32), and compares the products with plain
matrix products, for both element formats (16-bit tiles, and 32-bit tiles with the tf32 k permutation):
BigGAN's head dims (12, 48), odd dims, partial tiles and every warp's row offset. No GPU and no CUDA toolkit are needed.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "cuda_fragment_emulation.cpp"


def test_tile_math_matches_plain_matrix_products(tmp_path: Path) -> None:
    compiler = shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("needs a host C++ compiler")
    binary = tmp_path / "fragment_emulation"
    subprocess.run(
        [compiler, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{ROOT}", str(SOURCE), "-o", str(binary)],
        check=True,
        capture_output=True,
        text=True,
    )
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all fragment checks passed" in result.stdout
