// Which lane of a warp holds which element of an mma.sync.m16n8k16 fragment (f16/bf16 inputs, f32
// accumulators), as the PTX ISA's "Matrix Fragments for mma.m16n8k16 with floating point type" defines it,
// and the one conversion the attention kernels make between fragments: an accumulator (C) tile of scores
// reused, in registers, as the A operand of the next product (FlashAttention-2's P V without shared memory).
//
// Also the per-warp tile products of the kernels, written against an `mma` callable and a `pack` callable
// (rounding two floats into one register) so that they compile for the host too. No CUDA in this header:
// the kernels in attention.cu pass the mma.sync instruction, and tests/test_cuda_fragment_emulation.py
// compiles this header with the host compiler and runs the same functions lane by lane with an emulated
// MMA written from the PTX tables, so an indexing or layout error shows up on a CPU before any GPU runs
// the kernels.
//
// Notation: lane in [0, 32); group = lane / 4 and quad = lane % 4 ("groupID" and "threadID_in_group" in
// the PTX ISA). A is 16 x 16 (row-major, [m][k]): 4 registers of 2 elements each. B is 16 x 8 ([k][n]):
// 2 registers of 2 elements. C/D is 16 x 8: 4 floats. "half" is the element's place (0 low, 1 high 16 bits)
// in its 32-bit register.
#pragma once

#include <cstdint>

#include "../common.h"

// The tile functions below call the kernels' device-only mma and pack from host-and-device templates.
#if defined(__CUDACC__)
#define GANOPS_EXEC_CHECK_DISABLE _Pragma("nv_exec_check_disable")
#else
#define GANOPS_EXEC_CHECK_DISABLE
#endif

namespace ganops {
namespace mma_layout {

constexpr int kM = 16, kN = 8, kK = 16;

GANOPS_HOST_DEVICE constexpr int group_of(int lane) { return lane >> 2; }
GANOPS_HOST_DEVICE constexpr int quad_of(int lane) { return lane & 3; }

// A[row][col] held by `lane` in register `reg` (0..3), element `half` (0..1).
GANOPS_HOST_DEVICE constexpr int a_row(int lane, int reg) { return group_of(lane) + 8 * (reg & 1); }
GANOPS_HOST_DEVICE constexpr int a_col(int lane, int reg, int half) {
  return 2 * quad_of(lane) + half + 8 * (reg >> 1);
}

// B[row][col] (row is the reduction index k) held by `lane` in register `reg` (0..1), element `half`.
GANOPS_HOST_DEVICE constexpr int b_row(int lane, int reg, int half) { return 2 * quad_of(lane) + half + 8 * reg; }
GANOPS_HOST_DEVICE constexpr int b_col(int lane) { return group_of(lane); }

// C[row][col] held by `lane` in accumulator `index` (0..3).
GANOPS_HOST_DEVICE constexpr int c_row(int lane, int index) { return group_of(lane) + 8 * (index >> 1); }
GANOPS_HOST_DEVICE constexpr int c_col(int lane, int index) { return 2 * quad_of(lane) + (index & 1); }

// A k-step of 16 columns of a score tile spans two 8-column C tiles, 2 * step and 2 * step + 1. A register
// `reg`, element `half` of the A fragment of that step is accumulator c_index_for_a(reg, half) of C tile
// 2 * step + c_tile_for_a(reg): the same lane holds both, so the conversion is a register move.
GANOPS_HOST_DEVICE constexpr int c_tile_for_a(int reg) { return reg >> 1; }
GANOPS_HOST_DEVICE constexpr int c_index_for_a(int reg, int half) { return 2 * (reg & 1) + half; }

// Scores (and the other Nq x Nk products) are computed kTileCols columns at a time: 8 C tiles, 4 k-steps.
constexpr int kTileCols = 64;
constexpr int kColTiles = kTileCols / kN;
constexpr int kColSteps = kTileCols / kK;

// A [rows, width] row-major block (in shared memory on the GPU) of 16-bit elements; elements outside it read
// as 0 (the bit pattern of +0 in fp16 and bf16), which is how head dims pad to the MMA shape and partial
// tiles mask their rows.
struct Span {
  const uint16_t* data;
  int rows, width;

  GANOPS_HOST_DEVICE uint32_t at(int row, int col) const {
    return row < rows && col < width ? uint32_t(data[row * width + col]) : 0u;
  }
  // The register of (row, col) and (row, col + 1): consecutive in k for A, and for B read from [n][k].
  GANOPS_HOST_DEVICE uint32_t pair_along_row(int row, int col) const {
    return at(row, col) | (at(row, col + 1) << 16);
  }
  // The register of (row, col) and (row + 1, col): consecutive in k for B read from [k][n].
  GANOPS_HOST_DEVICE uint32_t pair_along_col(int row, int col) const {
    return at(row, col) | (at(row + 1, col) << 16);
  }
};

// A fragment of the 16 x 16 block of `span` at (row0, col0).
GANOPS_HOST_DEVICE inline void load_a(uint32_t (&a)[4], const Span& span, int row0, int col0, int lane) {
  for (int reg = 0; reg < 4; ++reg) {
    a[reg] = span.pair_along_row(row0 + a_row(lane, reg), col0 + a_col(lane, reg, 0));
  }
}
// B fragment of the 16 x 8 block B[k0 + k][n0 + n] = span[n0 + n][k0 + k] (span holds B transposed).
GANOPS_HOST_DEVICE inline void load_b_transposed(uint32_t (&b)[2], const Span& span, int n0, int k0, int lane) {
  for (int reg = 0; reg < 2; ++reg) {
    b[reg] = span.pair_along_row(n0 + b_col(lane), k0 + b_row(lane, reg, 0));
  }
}
// B fragment of the 16 x 8 block B[k0 + k][n0 + n] = span[k0 + k][n0 + n].
GANOPS_HOST_DEVICE inline void load_b(uint32_t (&b)[2], const Span& span, int k0, int n0, int lane) {
  for (int reg = 0; reg < 2; ++reg) {
    b[reg] = span.pair_along_col(k0 + b_row(lane, reg, 0), n0 + b_col(lane));
  }
}

// The A fragment of k-step `step` of a 16 x kTileCols accumulator tile, each pair rounded by pack(low, high).
GANOPS_EXEC_CHECK_DISABLE
template <typename Pack>
GANOPS_HOST_DEVICE void accumulators_to_a(uint32_t (&a)[4], const float (&c)[kColTiles][4], int step, Pack pack) {
  for (int reg = 0; reg < 4; ++reg) {
    const float(&tile)[4] = c[2 * step + c_tile_for_a(reg)];
    a[reg] = pack(tile[c_index_for_a(reg, 0)], tile[c_index_for_a(reg, 1)]);
  }
}

// s = R C^T for the warp's 16 rows row0.. of `rows_span` and the kTileCols rows of `cols_span` (both
// [*, dim] with dim <= 16 * kMaxSteps, `steps` = ceil(dim / 16)): s[nt] is the C tile of columns 8 nt ...
GANOPS_EXEC_CHECK_DISABLE
template <int kMaxSteps, typename Mma>
GANOPS_HOST_DEVICE void scores(
    float (&s)[kColTiles][4], const Span& rows_span, int row0, const Span& cols_span, int steps, int lane, Mma mma) {
  for (int nt = 0; nt < kColTiles; ++nt) {
    for (int i = 0; i < 4; ++i) {
      s[nt][i] = 0.0f;
    }
  }
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int kk = 0; kk < kMaxSteps; ++kk) {
    if (kk < steps) {
      uint32_t a[4];
      load_a(a, rows_span, row0, kk * kK, lane);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
      for (int nt = 0; nt < kColTiles; ++nt) {
        uint32_t b[2];
        load_b_transposed(b, cols_span, nt * kN, kk * kK, lane);
        mma(s[nt], a, b);
      }
    }
  }
}

// acc[dt] += A B for output tiles dt < tiles (8 columns each): A the pack-rounded 16 x kTileCols accumulator
// tile `c`, B the [kTileCols, width] span.
GANOPS_EXEC_CHECK_DISABLE
template <int kMaxTiles, typename Pack, typename Mma>
GANOPS_HOST_DEVICE void accumulate_product(
    float (&acc)[kMaxTiles][4], const float (&c)[kColTiles][4], const Span& span, int tiles, int lane, Pack pack,
    Mma mma) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int kk = 0; kk < kColSteps; ++kk) {
    uint32_t a[4];
    accumulators_to_a(a, c, kk, pack);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int dt = 0; dt < kMaxTiles; ++dt) {
      if (dt < tiles) {
        uint32_t b[2];
        load_b(b, span, kk * kK, dt * kN, lane);
        mma(acc[dt], a, b);
      }
    }
  }
}

}  // namespace mma_layout
}  // namespace ganops
