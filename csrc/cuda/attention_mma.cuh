// Which lane of a warp holds which element of an mma.sync.m16n8k16 fragment (f16/bf16 inputs, f32
// accumulators), as the PTX ISA's "Matrix Fragments for mma.m16n8k16 with floating point type" defines it,
// and the one conversion the attention kernels make between fragments: an accumulator (C) tile of scores
// reused, in registers, as the A operand of the next product (FlashAttention-2's P V without shared memory).
//
// Also which lane passes which address to ldmatrix, and the per-warp tile products of the kernels, written
// against an `ops` object (ldmatrix, mma, and rounding two floats into one register) so that they compile for
// the host too. No CUDA in this header: the kernels in attention.cu pass the PTX instructions, and
// tests/test_cuda_fragment_emulation.py compiles this header with the host compiler and runs the same
// functions lane by lane with ldmatrix and mma emulated from the PTX ISA's tables, so an indexing or layout
// error shows up on a CPU before any GPU runs the kernels.
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

// ldmatrix.sync.aligned.m8n8.x4.shared.b16 loads four 8 x 8 matrices of 16-bit elements: lane l passes the
// address of row l % 8 of matrix l / 8, and receives in register m the elements (l / 4, 2 (l % 4)) and
// (l / 4, 2 (l % 4) + 1) of matrix m, or with .trans the elements (2 (l % 4), l / 4) and (2 (l % 4) + 1, l / 4).
// The offsets below are the element (row, col) of a 16 x 16 block whose address each lane passes, for the
// three ways the kernels use it:
// * the A fragment of a 16 x 16 block of a row-major [m][k] tile (registers a0..a3 in order);
GANOPS_HOST_DEVICE constexpr int a_ldmatrix_row(int lane) { return (lane & 7) + 8 * ((lane >> 3) & 1); }
GANOPS_HOST_DEVICE constexpr int a_ldmatrix_col(int lane) { return 8 * (lane >> 4); }
// * the B fragments of two 8-column tiles (registers b0, b1 of the first, then of the second) from a tile that
//   holds B transposed, [n][k]: row offset is in n, column offset in k;
GANOPS_HOST_DEVICE constexpr int bt_ldmatrix_row(int lane) { return (lane & 7) + 8 * (lane >> 4); }
GANOPS_HOST_DEVICE constexpr int bt_ldmatrix_col(int lane) { return 8 * ((lane >> 3) & 1); }
// * the same from a tile that holds B as [k][n], with .trans: row offset in k, column offset in n.
GANOPS_HOST_DEVICE constexpr int b_ldmatrix_row(int lane) { return (lane & 7) + 8 * ((lane >> 3) & 1); }
GANOPS_HOST_DEVICE constexpr int b_ldmatrix_col(int lane) { return 8 * (lane >> 4); }

// Scores (and the other Nq x Nk products) are computed kTileCols columns at a time: 8 C tiles, 4 k-steps.
constexpr int kTileCols = 64;
constexpr int kColTiles = kTileCols / kN;
constexpr int kColSteps = kTileCols / kK;

// A row-major tile of 16-bit elements in shared memory: `stride` elements a row, a multiple of 8 (16 bytes,
// as ldmatrix needs) and at least the head dim rounded up to 16, with zeros past the head dim and in rows past
// the tensor's end, so that every 16 x 16 block the products touch reads zeros outside the data.
struct Tile {
  const uint16_t* data;
  int stride;

  GANOPS_HOST_DEVICE const uint16_t* at(int row, int col) const { return data + row * stride + col; }
};

// The tile functions take `ops` with ldmatrix_x4(uint32_t (&)[4], const uint16_t*),
// ldmatrix_x4_trans(uint32_t (&)[4], const uint16_t*), mma(float (&)[4], const uint32_t (&)[4], uint32_t, uint32_t)
// and pack(float, float) -> uint32_t (two accumulators rounded to one register of the element type).

// s = R C^T for the warp's 16 rows row0.. of `rows_tile` and the kTileCols rows of `cols_tile` (both [*, dim],
// `steps` = ceil(dim / 16) <= kMaxSteps): s[nt] is the C tile of columns 8 nt ...
GANOPS_EXEC_CHECK_DISABLE
template <int kMaxSteps, typename Ops>
GANOPS_HOST_DEVICE void scores(
    float (&s)[kColTiles][4], const Tile& rows_tile, int row0, const Tile& cols_tile, int steps, int lane,
    Ops& ops) {
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
      ops.ldmatrix_x4(a, rows_tile.at(row0 + a_ldmatrix_row(lane), kk * kK + a_ldmatrix_col(lane)));
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
      for (int pair = 0; pair < kColTiles / 2; ++pair) {
        uint32_t b[4];
        ops.ldmatrix_x4(b, cols_tile.at(pair * 2 * kN + bt_ldmatrix_row(lane), kk * kK + bt_ldmatrix_col(lane)));
        ops.mma(s[2 * pair], a, b[0], b[1]);
        ops.mma(s[2 * pair + 1], a, b[2], b[3]);
      }
    }
  }
}

// The A fragment of k-step `step` of a 16 x kTileCols accumulator tile, each pair rounded by ops.pack.
GANOPS_EXEC_CHECK_DISABLE
template <typename Ops>
GANOPS_HOST_DEVICE void accumulators_to_a(uint32_t (&a)[4], const float (&c)[kColTiles][4], int step, Ops& ops) {
  for (int reg = 0; reg < 4; ++reg) {
    const float(&tile)[4] = c[2 * step + c_tile_for_a(reg)];
    a[reg] = ops.pack(tile[c_index_for_a(reg, 0)], tile[c_index_for_a(reg, 1)]);
  }
}

// acc[dt] += A B for output tiles dt < tiles (8 columns each, kMaxTiles even): A the rounded 16 x kTileCols
// accumulator tile `c`, B the [kTileCols, width] tile `b_tile`, read two output tiles at a time.
GANOPS_EXEC_CHECK_DISABLE
template <int kMaxTiles, typename Ops>
GANOPS_HOST_DEVICE void accumulate_product(
    float (&acc)[kMaxTiles][4], const float (&c)[kColTiles][4], const Tile& b_tile, int tiles, int lane, Ops& ops) {
  static_assert(kMaxTiles % 2 == 0, "output tiles are read in pairs");
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int kk = 0; kk < kColSteps; ++kk) {
    uint32_t a[4];
    accumulators_to_a(a, c, kk, ops);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int pair = 0; pair < kMaxTiles / 2; ++pair) {
      if (2 * pair < tiles) {
        uint32_t b[4];
        ops.ldmatrix_x4_trans(b, b_tile.at(kk * kK + b_ldmatrix_row(lane), pair * 2 * kN + b_ldmatrix_col(lane)));
        ops.mma(acc[2 * pair], a, b[0], b[1]);
        ops.mma(acc[2 * pair + 1], a, b[2], b[3]);
      }
    }
  }
}

}  // namespace mma_layout
}  // namespace ganops
