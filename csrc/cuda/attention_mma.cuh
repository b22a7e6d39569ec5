// Which lane of a warp holds which element of an mma.sync fragment, as the PTX ISA's "Matrix Fragments for
// mma.m16n8k16 with floating point type" (f16/bf16 inputs) and "for mma.m16n8k8" (.tf32 inputs) define them,
// f32 accumulators in both, and the one conversion the attention kernels make between fragments: an
// accumulator (C) tile of scores reused, in registers, as the A operand of the next product (FlashAttention-2's
// P V without shared memory).
//
// Also which lane passes which address to ldmatrix, and the per-warp tile products of the kernels, written
// against an `ops` object (ldmatrix, mma, rounding floats into registers of the element type) so that they
// compile for the host too. No CUDA in this header: the kernels in attention.cu pass the PTX instructions, and
// tests/test_cuda_fragment_emulation.py compiles this header with the host compiler and runs the same
// functions lane by lane with ldmatrix and mma emulated from the PTX ISA's tables, so an indexing or layout
// error shows up on a CPU before any GPU runs the kernels.
//
// The two element formats share one structure because their fragments have the same registers: a k-step
// covers 32 bytes of a row (16 elements of 16 bits, 8 of 32 bits), A is 4 registers, B 2, C 4 floats, and
// ldmatrix moves 16-byte rows whatever the element. A 32-bit tile is read by ldmatrix as pairs of 16-bit
// halves, which puts one whole 32-bit element in each register: exactly the tf32 A fragment of a row-major
// [m][k] tile and the B fragment of an [n][k] tile. What differs: B from a [k][n] tile (ldmatrix .trans moves
// 16-bit elements, so 32-bit B elements are loaded one by one), and the score-to-A conversion.
//
// Notation: lane in [0, 32); group = lane / 4 and quad = lane % 4 ("groupID" and "threadID_in_group" in
// the PTX ISA). 16-bit: A is 16 x 16 (row-major, [m][k]): 4 registers of 2 elements each; B is 16 x 8 ([k][n]):
// 2 registers of 2 elements; "half" is the element's place (0 low, 1 high 16 bits) in its 32-bit register.
// tf32: A is 16 x 8, B 8 x 8, one element a register. C/D is 16 x 8: 4 floats.
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

constexpr int kM = 16, kN = 8;
// Elements of a k-step (the MMA's K) and of a 16-byte ldmatrix row, for element storage E (uint16_t for fp16
// and bf16, uint32_t for fp32 as tf32).
template <typename E>
constexpr int kStep = 32 / int(sizeof(E));
template <typename E>
constexpr int kUnit = 16 / int(sizeof(E));

GANOPS_HOST_DEVICE constexpr int group_of(int lane) { return lane >> 2; }
GANOPS_HOST_DEVICE constexpr int quad_of(int lane) { return lane & 3; }

// A[row][col] held by `lane` in register `reg` (0..3), element `half` (0..1; tf32: 0).
GANOPS_HOST_DEVICE constexpr int a_row(int lane, int reg) { return group_of(lane) + 8 * (reg & 1); }
GANOPS_HOST_DEVICE constexpr int a_col(int lane, int reg, int half) {
  return 2 * quad_of(lane) + half + 8 * (reg >> 1);
}
GANOPS_HOST_DEVICE constexpr int tf32_a_col(int lane, int reg) { return quad_of(lane) + 4 * (reg >> 1); }

// B[row][col] (row is the reduction index k) held by `lane` in register `reg` (0..1), element `half`.
GANOPS_HOST_DEVICE constexpr int b_row(int lane, int reg, int half) { return 2 * quad_of(lane) + half + 8 * reg; }
GANOPS_HOST_DEVICE constexpr int tf32_b_row(int lane, int reg) { return quad_of(lane) + 4 * reg; }
GANOPS_HOST_DEVICE constexpr int b_col(int lane) { return group_of(lane); }

// C[row][col] held by `lane` in accumulator `index` (0..3).
GANOPS_HOST_DEVICE constexpr int c_row(int lane, int index) { return group_of(lane) + 8 * (index >> 1); }
GANOPS_HOST_DEVICE constexpr int c_col(int lane, int index) { return 2 * quad_of(lane) + (index & 1); }

// A k-step of 16 columns of a score tile spans two 8-column C tiles, 2 * step and 2 * step + 1. A register
// `reg`, element `half` of the A fragment of that step is accumulator c_index_for_a(reg, half) of C tile
// 2 * step + c_tile_for_a(reg): the same lane holds both, so the conversion is a register move.
GANOPS_HOST_DEVICE constexpr int c_tile_for_a(int reg) { return reg >> 1; }
GANOPS_HOST_DEVICE constexpr int c_index_for_a(int reg, int half) { return 2 * (reg & 1) + half; }
// tf32: a k-step of 8 columns is one C tile, whose lane holds columns 2 quad and 2 quad + 1 where the A
// fragment wants quad and quad + 4. The products permute k within each step instead of moving data: logical
// column j of the step is column tf32_k_column(j) of the tile (2 (j % 4) + j / 4), so register `reg` of A is
// accumulator tf32_c_index_for_a(reg), and B is read from the same permuted rows (tf32_b_k_row).
GANOPS_HOST_DEVICE constexpr int tf32_k_column(int j) { return 2 * (j & 3) + (j >> 2); }
GANOPS_HOST_DEVICE constexpr int tf32_c_index_for_a(int reg) { return 2 * (reg & 1) + (reg >> 1); }
GANOPS_HOST_DEVICE constexpr int tf32_b_k_row(int lane, int reg) { return tf32_k_column(tf32_b_row(lane, reg)); }

// ldmatrix.sync.aligned.m8n8.x4.shared.b16 loads four 8 x 8 matrices of 16-bit elements (8 rows of 16 bytes):
// lane l passes the address of row l % 8 of matrix l / 8, and receives in register m the elements (l / 4,
// 2 (l % 4)) and (l / 4, 2 (l % 4) + 1) of matrix m, or with .trans the elements (2 (l % 4), l / 4) and
// (2 (l % 4) + 1, l / 4). The offsets below are the (row, 16-byte unit) of a block of 16 rows x 32 bytes whose
// address each lane passes, for the three ways the kernels use it:
// * the A fragment of one k-step of a row-major [m][k] tile (registers a0..a3 in order);
GANOPS_HOST_DEVICE constexpr int a_ldmatrix_row(int lane) { return (lane & 7) + 8 * ((lane >> 3) & 1); }
GANOPS_HOST_DEVICE constexpr int a_ldmatrix_unit(int lane) { return lane >> 4; }
// * the B fragments of two 8-column tiles (registers b0, b1 of the first, then of the second) from a tile that
//   holds B transposed, [n][k]: row offset is in n, units in k;
GANOPS_HOST_DEVICE constexpr int bt_ldmatrix_row(int lane) { return (lane & 7) + 8 * (lane >> 4); }
GANOPS_HOST_DEVICE constexpr int bt_ldmatrix_unit(int lane) { return (lane >> 3) & 1; }
// * the same from a 16-bit tile that holds B as [k][n], with .trans: row offset in k, units in n.
GANOPS_HOST_DEVICE constexpr int b_ldmatrix_row(int lane) { return (lane & 7) + 8 * ((lane >> 3) & 1); }
GANOPS_HOST_DEVICE constexpr int b_ldmatrix_unit(int lane) { return lane >> 4; }

// Scores (and the other Nq x Nk products) are computed kTileCols columns at a time: 8 C tiles.
constexpr int kTileCols = 64;
constexpr int kColTiles = kTileCols / kN;

// A row-major tile in shared memory, elements stored as E: `stride` elements a row, a multiple of 16 bytes
// (as ldmatrix needs) and at least the head dim rounded up to a k-step, with zeros past the head dim and in
// rows past the tensor's end, so that every block the products touch reads zeros outside the data.
template <typename E>
struct Tile {
  const E* data;
  int stride;

  GANOPS_HOST_DEVICE const E* at(int row, int col) const { return data + row * stride + col; }
};

// The tile functions take `ops` with ldmatrix_x4(uint32_t (&)[4], const void*) and mma(float (&)[4],
// const uint32_t (&)[4], uint32_t, uint32_t); for 16-bit elements ldmatrix_x4_trans(uint32_t (&)[4], const
// void*) and pack(float, float) -> uint32_t (two accumulators rounded to one register of the element type);
// for tf32 load_b(const uint32_t*) -> uint32_t (one shared element as a tf32 operand) and round(float) ->
// uint32_t. The tf32 ops round what ldmatrix loads to tf32 themselves.

// s += R C^T for the warp's 16 rows row0.. of `rows_tile` and the kTileCols rows of `cols_tile` (both [*, dim],
// `steps` = ceil(dim / kStep<E>) <= kMaxSteps): s[nt] is the C tile of columns 8 nt ...
GANOPS_EXEC_CHECK_DISABLE
template <int kMaxSteps, typename E, typename Ops>
GANOPS_HOST_DEVICE void accumulate_scores(
    float (&s)[kColTiles][4], const Tile<E>& rows_tile, int row0, const Tile<E>& cols_tile, int steps, int lane,
    Ops& ops) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int kk = 0; kk < kMaxSteps; ++kk) {
    if (kk < steps) {
      uint32_t a[4];
      ops.ldmatrix_x4(a, rows_tile.at(row0 + a_ldmatrix_row(lane), kk * kStep<E> + kUnit<E> * a_ldmatrix_unit(lane)));
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
      for (int pair = 0; pair < kColTiles / 2; ++pair) {
        uint32_t b[4];
        ops.ldmatrix_x4(
            b, cols_tile.at(pair * 2 * kN + bt_ldmatrix_row(lane), kk * kStep<E> + kUnit<E> * bt_ldmatrix_unit(lane)));
        ops.mma(s[2 * pair], a, b[0], b[1]);
        ops.mma(s[2 * pair + 1], a, b[2], b[3]);
      }
    }
  }
}

// s = R C^T (accumulate_scores into zeros).
GANOPS_EXEC_CHECK_DISABLE
template <int kMaxSteps, typename E, typename Ops>
GANOPS_HOST_DEVICE void scores(
    float (&s)[kColTiles][4], const Tile<E>& rows_tile, int row0, const Tile<E>& cols_tile, int steps, int lane,
    Ops& ops) {
  for (int nt = 0; nt < kColTiles; ++nt) {
    for (int i = 0; i < 4; ++i) {
      s[nt][i] = 0.0f;
    }
  }
  accumulate_scores<kMaxSteps>(s, rows_tile, row0, cols_tile, steps, lane, ops);
}

// The A fragment of k-step `step` of a 16 x kTileCols accumulator tile, rounded to the element type (16-bit:
// two accumulators a register; tf32: one, in the permuted k order of tf32_k_column).
GANOPS_EXEC_CHECK_DISABLE
template <typename E, typename Ops>
GANOPS_HOST_DEVICE void accumulators_to_a(uint32_t (&a)[4], const float (&c)[kColTiles][4], int step, Ops& ops) {
  for (int reg = 0; reg < 4; ++reg) {
    if constexpr (sizeof(E) == 2) {
      const float(&tile)[4] = c[2 * step + c_tile_for_a(reg)];
      a[reg] = ops.pack(tile[c_index_for_a(reg, 0)], tile[c_index_for_a(reg, 1)]);
    } else {
      a[reg] = ops.round(c[step][tf32_c_index_for_a(reg)]);
    }
  }
}

// acc[dt] += A B for output tiles dt < tiles (8 columns each, kMaxTiles even): A the rounded 16 x kTileCols
// accumulator tile `c`, B the [kTileCols, width] tile `b_tile` (16-bit: read two output tiles at a time with
// ldmatrix .trans; tf32: element by element, at the permuted k rows).
GANOPS_EXEC_CHECK_DISABLE
template <int kMaxTiles, typename E, typename Ops>
GANOPS_HOST_DEVICE void accumulate_product(
    float (&acc)[kMaxTiles][4], const float (&c)[kColTiles][4], const Tile<E>& b_tile, int tiles, int lane,
    Ops& ops) {
  static_assert(kMaxTiles % 2 == 0, "output tiles are read in pairs");
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int kk = 0; kk < kTileCols / kStep<E>; ++kk) {
    uint32_t a[4];
    accumulators_to_a<E>(a, c, kk, ops);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int pair = 0; pair < kMaxTiles / 2; ++pair) {
      if (2 * pair < tiles) {
        uint32_t b[4];
        if constexpr (sizeof(E) == 2) {
          ops.ldmatrix_x4_trans(
              b, b_tile.at(kk * kStep<E> + b_ldmatrix_row(lane), pair * 2 * kN + kUnit<E> * b_ldmatrix_unit(lane)));
        } else {
          for (int r = 0; r < 4; ++r) {
            const int k_row = kk * kStep<E> + tf32_b_k_row(lane, r & 1);
            b[r] = ops.load_b(b_tile.at(k_row, (2 * pair + (r >> 1)) * kN + b_col(lane)));
          }
        }
        ops.mma(acc[2 * pair], a, b[0], b[1]);
        ops.mma(acc[2 * pair + 1], a, b[2], b[3]);
      }
    }
  }
}

}  // namespace mma_layout
}  // namespace ganops
