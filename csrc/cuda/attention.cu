// CUDA kernels of the fused attention ops, FlashAttention-2 style, in two families:
//
// * Tensor cores (fp16 and bf16 on sm_80 and later, and fp32 as TF32 where the op's allow_tf32 says so: it
//   follows torch's float32 matmul setting unless the caller passes it; Dqk <= 64 and Dv <= 128; the `tc`
//   namespace below): mma.sync.m16n8k16 (fp16, bf16) or m16n8k8 (tf32) with fp32 accumulators, cp.async
//   double buffering, scores kept in registers between the two products of a step. Written as plain CUDA
//   with inline PTX rather than on CuTe/CUTLASS: the kernels need a few fragment maps (attention_mma.cuh) and
//   a handful of PTX instructions, which a CPU test can check lane by lane, where CuTe's layouts would add a
//   pinned header-only dependency whose layout algebra no test here can run. wgmma (sm_90) is not used:
//   mma.sync runs on sm_90 too, at a lower peak. The double backward has tensor-core kernels of the same
//   structure for Dqk <= 16, Dv <= 64 (SAGAN's and BigGAN-128's heads); elsewhere, and in the CUDA-core cases,
//   the binding computes it as a blockwise composite of torch ops.
// * CUDA cores (fp32 without TF32, fp64, and the others on older GPUs or larger head dims), exact FFMA in
//   acc_type:
//   - forward: one block per (batch, tile of queries); the scaled query tile stays in shared memory while
//     the key and value tiles stream through it; a running max and sum per query (online softmax) keep
//     logits of any magnitude exact, and the unnormalised output tile accumulates in shared memory.
//   - backward: Delta_i = grad_out_i . out_i (one warp per row); then one block per (batch, tile of keys)
//     accumulates grad_k and grad_v over all query tiles, and one block per (batch, tile of queries)
//     accumulates grad_q over all key tiles. Both recompute P = exp(scale q k^T - lse) tile by tile from
//     the saved lse, so no Nq x Nk matrix exists and no two blocks write the same row (no atomics).
//   Tiles are square, T x T with T the largest of 64, 32, 16, 8 whose buffers fit in the shared memory of
//   the GPU (head dims up to 256 fit with T >= 16 in float32 on sm_80). Tile rows read across threads are
//   padded to an odd stride so that a warp reading one element from each of 32 rows hits 32 different banks.
//
// Both families take any Nq, Nk, Dqk, Dv (rows past the end are masked), use no atomics and fix their
// summation orders, so results are deterministic. The tensor-core backward is FlashAttention-2's dK/dV pass
// plus a separate dQ pass (7 tile products per tile pair instead of 5 with atomics on dQ): deterministic,
// and no fp32 dQ workspace.
#include "attention.h"

#include <math.h>

#include <algorithm>

#include <mutex>
#include <set>
#include <type_traits>
#include <utility>

#include "attention_mma.cuh"
#include "device_utils.cuh"

namespace ganops {
namespace cuda_kernels {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kTileSizes[] = {64, 32, 16, 8};

__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }

template <typename acc_t>
__device__ __forceinline__ acc_t negative_infinity() {
  return -static_cast<acc_t>(INFINITY);
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_max(acc_t v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = fmax(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// Row stride of a shared tile read across rows by neighbouring threads: odd, so conflict-free.
__host__ __device__ __forceinline__ int64_t padded(int64_t width) {
  return width | 1;
}

// tile[r * stride + c] = factor * src[(row0 + r) * width + c] for r < rows (the rows that exist), 0 for
// rows <= r < T: the masked rows of a partial tile hold zeros, never garbage.
template <typename T, typename acc_t>
__device__ void load_tile(
    acc_t* tile, int64_t stride, const T* __restrict__ src, int64_t row0, int64_t rows, int tile_rows,
    int64_t width, acc_t factor) {
  // Tile elements fit in shared memory, far below 2^31: 32-bit indices, whose division is a few instructions
  // where a 64-bit one is a call.
  const int columns = static_cast<int>(width);
  for (int e = threadIdx.x; e < tile_rows * columns; e += kThreads) {
    const int r = e / columns, c = e % columns;
    tile[r * stride + c] = r < rows ? factor * to_acc(src[(row0 + r) * width + c]) : acc_t(0);
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t dot(const acc_t* a, const acc_t* b, int64_t n) {
  acc_t sum(0);
  for (int64_t d = 0; d < n; ++d) {
    sum += a[d] * b[d];
  }
  return sum;
}

// Carves the dynamic shared memory into consecutive arrays of acc_t.
template <typename acc_t>
struct SharedArena {
  acc_t* next;
  __device__ acc_t* take(int64_t count) {
    acc_t* taken = next;
    next += count;
    return taken;
  }
};

template <typename acc_t>
__device__ SharedArena<acc_t> shared_arena() {
  // Bytes, not acc_t: one dynamic shared array serves kernels of every element type.
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  return {reinterpret_cast<acc_t*>(shared_bytes)};
}

// Shared-memory elements of each kernel for T x T tiles; the kernels take their arrays in this order.
__host__ __device__ int64_t forward_shared_elements(int64_t t, const AttentionShape& s) {
  return 2 * t * padded(s.qk_dim) + 2 * t * s.v_dim + t * (t + 1) + 3 * t;
}
__host__ __device__ int64_t grad_q_shared_elements(int64_t t, const AttentionShape& s) {
  return 2 * t * padded(s.qk_dim) + 2 * t * padded(s.v_dim) + t * (t + 1) + t * s.qk_dim + 2 * t;
}
__host__ __device__ int64_t grad_kv_shared_elements(int64_t t, const AttentionShape& s) {
  return 2 * t * padded(s.qk_dim) + 2 * t * padded(s.v_dim) + 2 * t * (t + 1) + t * s.qk_dim + t * s.v_dim + 2 * t;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) forward_kernel(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ out,
    acc_type<T>* __restrict__ lse, AttentionShape s, int tile, acc_type<T> scale) {
  using acc_t = acc_type<T>;
  const int64_t tiles = ceil_div(s.queries, tile);
  const int64_t b = blockIdx.x / static_cast<unsigned>(tiles);
  const int64_t row0 = int64_t(blockIdx.x % static_cast<unsigned>(tiles)) * tile;
  const int64_t rows = min(int64_t(tile), s.queries - row0);
  const int64_t qk_stride = padded(s.qk_dim);
  const int64_t score_stride = tile + 1;

  SharedArena<acc_t> arena = shared_arena<acc_t>();
  acc_t* q_tile = arena.take(tile * qk_stride);
  acc_t* k_tile = arena.take(tile * qk_stride);
  acc_t* v_tile = arena.take(tile * s.v_dim);
  acc_t* scores = arena.take(tile * score_stride);
  acc_t* out_tile = arena.take(tile * s.v_dim);
  acc_t* row_max = arena.take(tile);
  acc_t* row_sum = arena.take(tile);
  acc_t* rescale = arena.take(tile);

  const T* q_b = q + b * s.queries * s.qk_dim;
  const T* k_b = k + b * s.keys * s.qk_dim;
  const T* v_b = v + b * s.keys * s.v_dim;
  // The scale is folded into the query tile: scores are (scale q) . k.
  load_tile(q_tile, qk_stride, q_b, row0, rows, tile, s.qk_dim, scale);
  for (int64_t e = threadIdx.x; e < tile * s.v_dim; e += kThreads) {
    out_tile[e] = acc_t(0);
  }
  for (int i = threadIdx.x; i < tile; i += kThreads) {
    row_max[i] = negative_infinity<acc_t>();
    row_sum[i] = acc_t(0);
  }

  for (int64_t col0 = 0; col0 < s.keys; col0 += tile) {
    const int64_t cols = min(int64_t(tile), s.keys - col0);
    // The previous step's readers of k_tile, v_tile and scores are done.
    __syncthreads();
    load_tile(k_tile, qk_stride, k_b, col0, cols, tile, s.qk_dim, acc_t(1));
    load_tile(v_tile, s.v_dim, v_b, col0, cols, tile, s.v_dim, acc_t(1));
    __syncthreads();
    for (int e = threadIdx.x; e < tile * tile; e += kThreads) {
      const int i = e / tile, j = e % tile;
      scores[i * score_stride + j] =
          j < cols ? dot(q_tile + i * qk_stride, k_tile + j * qk_stride, s.qk_dim) : negative_infinity<acc_t>();
    }
    __syncthreads();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int i = warp; i < tile; i += kWarps) {
      acc_t* row = scores + i * score_stride;
      acc_t chunk_max = negative_infinity<acc_t>();
      for (int j = lane; j < cols; j += 32) {
        chunk_max = fmax(chunk_max, row[j]);
      }
      // Read before the shuffles below; lane 0 writes row_max[i] only after every lane has joined them.
      const acc_t old_max = row_max[i];
      // cols >= 1, so new_max is finite; exp(-inf - new_max) = 0 on the first tile and for masked keys.
      const acc_t new_max = fmax(old_max, warp_max(chunk_max));
      acc_t chunk_sum(0);
      for (int j = lane; j < tile; j += 32) {
        const acc_t p = exp_acc(row[j] - new_max);
        row[j] = p;
        chunk_sum += p;
      }
      chunk_sum = warp_sum(chunk_sum);
      if (lane == 0) {
        const acc_t factor = exp_acc(old_max - new_max);
        rescale[i] = factor;
        row_sum[i] = row_sum[i] * factor + chunk_sum;
        row_max[i] = new_max;
      }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < tile * static_cast<int>(s.v_dim); e += kThreads) {
      const int i = e / static_cast<int>(s.v_dim), d = e % static_cast<int>(s.v_dim);
      const acc_t* p = scores + i * score_stride;
      acc_t acc = out_tile[e] * rescale[i];
      for (int64_t j = 0; j < cols; ++j) {
        acc += p[j] * v_tile[j * s.v_dim + d];
      }
      out_tile[e] = acc;
    }
  }
  __syncthreads();
  T* out_b = out + (b * s.queries + row0) * s.v_dim;
  for (int e = threadIdx.x; e < rows * static_cast<int>(s.v_dim); e += kThreads) {
    const int i = e / static_cast<int>(s.v_dim);
    // Without keys the softmax is over an empty set: out is 0 (an empty sum) and lse is -inf.
    const acc_t inverse = row_sum[i] > acc_t(0) ? acc_t(1) / row_sum[i] : acc_t(0);
    out_b[e] = from_acc<T>(out_tile[e] * inverse);
  }
  for (int64_t i = threadIdx.x; i < rows; i += kThreads) {
    lse[b * s.queries + row0 + i] = row_max[i] + log_acc(row_sum[i]);
  }
}

// delta[row] = grad_out[row] . out[row], one warp per row.
template <typename T>
__global__ void __launch_bounds__(kThreads) delta_kernel(
    const T* __restrict__ grad_out, const T* __restrict__ out, acc_type<T>* __restrict__ delta, int64_t rows,
    int64_t width) {
  using acc_t = acc_type<T>;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) {
    return;
  }
  acc_t sum(0);
  for (int64_t d = lane; d < width; d += 32) {
    sum += to_acc(grad_out[row * width + d]) * to_acc(out[row * width + d]);
  }
  sum = warp_sum(sum);
  if (lane == 0) {
    delta[row] = sum;
  }
}

// grad_q for one (batch, query tile): grad_q_i = scale * sum_j dS_ij k_j.
template <typename T>
__global__ void __launch_bounds__(kThreads) grad_q_kernel(
    const T* __restrict__ grad_out, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const acc_type<T>* __restrict__ lse, const acc_type<T>* __restrict__ delta, T* __restrict__ grad_q,
    AttentionShape s, int tile, acc_type<T> scale) {
  using acc_t = acc_type<T>;
  const int64_t tiles = ceil_div(s.queries, tile);
  const int64_t b = blockIdx.x / static_cast<unsigned>(tiles);
  const int64_t row0 = int64_t(blockIdx.x % static_cast<unsigned>(tiles)) * tile;
  const int64_t rows = min(int64_t(tile), s.queries - row0);
  const int64_t qk_stride = padded(s.qk_dim), v_stride = padded(s.v_dim);
  const int64_t score_stride = tile + 1;

  SharedArena<acc_t> arena = shared_arena<acc_t>();
  acc_t* q_tile = arena.take(tile * qk_stride);
  acc_t* k_tile = arena.take(tile * qk_stride);
  acc_t* go_tile = arena.take(tile * v_stride);
  acc_t* v_tile = arena.take(tile * v_stride);
  acc_t* score_grads = arena.take(tile * score_stride);
  acc_t* gq_tile = arena.take(tile * s.qk_dim);
  acc_t* lse_tile = arena.take(tile);
  acc_t* delta_tile = arena.take(tile);

  const int64_t first = b * s.queries + row0;
  load_tile(q_tile, qk_stride, q + b * s.queries * s.qk_dim, row0, rows, tile, s.qk_dim, scale);
  load_tile(go_tile, v_stride, grad_out + b * s.queries * s.v_dim, row0, rows, tile, s.v_dim, acc_t(1));
  for (int i = threadIdx.x; i < tile; i += kThreads) {
    lse_tile[i] = i < rows ? lse[first + i] : acc_t(0);
    delta_tile[i] = i < rows ? delta[first + i] : acc_t(0);
  }
  for (int64_t e = threadIdx.x; e < tile * s.qk_dim; e += kThreads) {
    gq_tile[e] = acc_t(0);
  }
  const T* k_b = k + b * s.keys * s.qk_dim;
  const T* v_b = v + b * s.keys * s.v_dim;

  for (int64_t col0 = 0; col0 < s.keys; col0 += tile) {
    const int64_t cols = min(int64_t(tile), s.keys - col0);
    __syncthreads();
    load_tile(k_tile, qk_stride, k_b, col0, cols, tile, s.qk_dim, acc_t(1));
    load_tile(v_tile, v_stride, v_b, col0, cols, tile, s.v_dim, acc_t(1));
    __syncthreads();
    for (int e = threadIdx.x; e < tile * tile; e += kThreads) {
      const int i = e / tile, j = e % tile;
      acc_t ds(0);
      if (i < rows && j < cols) {
        const acc_t p = exp_acc(dot(q_tile + i * qk_stride, k_tile + j * qk_stride, s.qk_dim) - lse_tile[i]);
        ds = p * (dot(go_tile + i * v_stride, v_tile + j * v_stride, s.v_dim) - delta_tile[i]);
      }
      score_grads[i * score_stride + j] = ds;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < tile * static_cast<int>(s.qk_dim); e += kThreads) {
      const int i = e / static_cast<int>(s.qk_dim), d = e % static_cast<int>(s.qk_dim);
      const acc_t* ds = score_grads + i * score_stride;
      acc_t acc = gq_tile[e];
      for (int64_t j = 0; j < cols; ++j) {
        acc += ds[j] * k_tile[j * qk_stride + d];
      }
      gq_tile[e] = acc;
    }
  }
  __syncthreads();
  T* gq_b = grad_q + first * s.qk_dim;
  for (int64_t e = threadIdx.x; e < rows * s.qk_dim; e += kThreads) {
    gq_b[e] = from_acc<T>(scale * gq_tile[e]);
  }
}

// grad_k and grad_v for one (batch, key tile): grad_v_j = sum_i P_ij grad_out_i and
// grad_k_j = sum_i dS_ij (scale q_i). The tiles of P and dS are stored transposed, [key][query].
template <typename T>
__global__ void __launch_bounds__(kThreads) grad_kv_kernel(
    const T* __restrict__ grad_out, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const acc_type<T>* __restrict__ lse, const acc_type<T>* __restrict__ delta, T* __restrict__ grad_k,
    T* __restrict__ grad_v, AttentionShape s, int tile, acc_type<T> scale) {
  using acc_t = acc_type<T>;
  const int64_t tiles = ceil_div(s.keys, tile);
  const int64_t b = blockIdx.x / static_cast<unsigned>(tiles);
  const int64_t row0 = int64_t(blockIdx.x % static_cast<unsigned>(tiles)) * tile;
  const int64_t rows = min(int64_t(tile), s.keys - row0);
  const int64_t qk_stride = padded(s.qk_dim), v_stride = padded(s.v_dim);
  const int64_t score_stride = tile + 1;

  SharedArena<acc_t> arena = shared_arena<acc_t>();
  acc_t* k_tile = arena.take(tile * qk_stride);
  acc_t* q_tile = arena.take(tile * qk_stride);
  acc_t* v_tile = arena.take(tile * v_stride);
  acc_t* go_tile = arena.take(tile * v_stride);
  acc_t* probabilities = arena.take(tile * score_stride);
  acc_t* score_grads = arena.take(tile * score_stride);
  acc_t* gk_tile = arena.take(tile * s.qk_dim);
  acc_t* gv_tile = arena.take(tile * s.v_dim);
  acc_t* lse_tile = arena.take(tile);
  acc_t* delta_tile = arena.take(tile);

  load_tile(k_tile, qk_stride, k + b * s.keys * s.qk_dim, row0, rows, tile, s.qk_dim, acc_t(1));
  load_tile(v_tile, v_stride, v + b * s.keys * s.v_dim, row0, rows, tile, s.v_dim, acc_t(1));
  for (int64_t e = threadIdx.x; e < tile * s.qk_dim; e += kThreads) {
    gk_tile[e] = acc_t(0);
  }
  for (int64_t e = threadIdx.x; e < tile * s.v_dim; e += kThreads) {
    gv_tile[e] = acc_t(0);
  }
  const T* q_b = q + b * s.queries * s.qk_dim;
  const T* go_b = grad_out + b * s.queries * s.v_dim;

  for (int64_t col0 = 0; col0 < s.queries; col0 += tile) {
    const int64_t cols = min(int64_t(tile), s.queries - col0);
    __syncthreads();
    load_tile(q_tile, qk_stride, q_b, col0, cols, tile, s.qk_dim, scale);
    load_tile(go_tile, v_stride, go_b, col0, cols, tile, s.v_dim, acc_t(1));
    for (int i = threadIdx.x; i < tile; i += kThreads) {
      lse_tile[i] = i < cols ? lse[b * s.queries + col0 + i] : acc_t(0);
      delta_tile[i] = i < cols ? delta[b * s.queries + col0 + i] : acc_t(0);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < tile * tile; e += kThreads) {
      const int j = e / tile, i = e % tile;
      acc_t p(0), ds(0);
      if (j < rows && i < cols) {
        p = exp_acc(dot(q_tile + i * qk_stride, k_tile + j * qk_stride, s.qk_dim) - lse_tile[i]);
        ds = p * (dot(go_tile + i * v_stride, v_tile + j * v_stride, s.v_dim) - delta_tile[i]);
      }
      probabilities[j * score_stride + i] = p;
      score_grads[j * score_stride + i] = ds;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < tile * static_cast<int>(s.v_dim); e += kThreads) {
      const int j = e / static_cast<int>(s.v_dim), d = e % static_cast<int>(s.v_dim);
      const acc_t* p = probabilities + j * score_stride;
      acc_t acc = gv_tile[e];
      for (int64_t i = 0; i < cols; ++i) {
        acc += p[i] * go_tile[i * v_stride + d];
      }
      gv_tile[e] = acc;
    }
    for (int e = threadIdx.x; e < tile * static_cast<int>(s.qk_dim); e += kThreads) {
      const int j = e / static_cast<int>(s.qk_dim), d = e % static_cast<int>(s.qk_dim);
      const acc_t* ds = score_grads + j * score_stride;
      acc_t acc = gk_tile[e];
      for (int64_t i = 0; i < cols; ++i) {
        acc += ds[i] * q_tile[i * qk_stride + d];
      }
      gk_tile[e] = acc;
    }
  }
  __syncthreads();
  const int64_t first = b * s.keys + row0;
  for (int64_t e = threadIdx.x; e < rows * s.qk_dim; e += kThreads) {
    grad_k[first * s.qk_dim + e] = from_acc<T>(gk_tile[e]);
  }
  for (int64_t e = threadIdx.x; e < rows * s.v_dim; e += kThreads) {
    grad_v[first * s.v_dim + e] = from_acc<T>(gv_tile[e]);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Tensor-core kernels (fp16 and bf16, and fp32 as TF32, on sm_80 and later): FlashAttention-2 on mma.sync with
// fp32 accumulators. Each CTA owns kTileRows = 64 rows (queries, or keys in the dK/dV pass), 16 per warp (the MMA's
// M), and streams the other side through shared memory kTileCols = 64 rows at a time; the score tile of a step
// stays in registers and feeds the next product as its A operand (mma_layout::c_tile_for_a).
//
// Shared tiles are row-major with a row stride of the head dim rounded up to a k-step (32 bytes), plus 16 bytes
// (16-byte aligned rows for ldmatrix; an odd number of 16-byte units so that ldmatrix's 8 rows hit 8 different
// bank groups, and so that the tf32 B loads of 8 columns from rows 2 quad and 2 quad + 1 hit 32 different
// banks). The columns past the head dim are zeroed once per kernel and the rows past the tensor's end are
// zero-filled by the copy, so the products run over whole k-steps with no predicate: the head dims pad to the
// MMA shape inside shared memory, and no padded copy exists in global memory. Copies are cp.async in the
// widest chunk (16, 8 or 4 bytes) that the head dim and the tensor's alignment allow, double-buffered so that
// the next step's copy runs under this step's math; 16-bit elements of odd head dims fall back to element
// copies. Elements travel as bit patterns (E: uint16_t, or uint32_t for fp32); only the MMA's type suffix
// distinguishes fp16 from bf16. fp32 elements are rounded to tf32 (cvt.rna) as they enter the MMA's registers,
// so shared memory holds the exact inputs, as in cuBLAS's TF32 GEMMs.
namespace tc {

namespace layout = mma_layout;

constexpr int kWarpRows = layout::kM;
constexpr int kTileRows = kWarps * kWarpRows;
static_assert(kTileRows == layout::kTileCols, "every shared tile has 64 rows");
using layout::kColTiles;
using layout::kTileCols;
using layout::Tile;
// The head dims (Dqk, Dv) the tensor-core kernels are instantiated for, as upper bounds: the first pair
// that holds the shape is chosen at launch, and steps past the actual dims are skipped at run time, so a
// pair only sets the register arrays' sizes. (16, 64) is SAGAN's Dqk = C / 8, Dv = C / 2 for C <= 128
// (BigGAN-128's 12 and 48), (64, 128) the same up to C = 256 and square heads up to 64. Beyond, the CUDA-core
// kernels run: (128, 128) would need 192 accumulator registers a thread in the dK/dV pass and spills.
struct HeadBounds {
  int qk, v;
};
constexpr HeadBounds kHeadBounds[] = {{16, 64}, {64, 64}, {64, 128}};
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// How a tensor-core kernel stores elements of T in shared memory: their bit patterns.
template <typename T>
using Storage = std::conditional_t<sizeof(T) == 4, uint32_t, uint16_t>;

// Row stride (elements) of a shared tile of head dim `width`.
template <typename E>
__host__ __device__ constexpr int64_t tile_stride(int64_t width) {
  return ceil_div(width, layout::kStep<E>) * layout::kStep<E> + layout::kUnit<E>;
}
template <typename E>
__host__ __device__ constexpr int64_t tile_elements(int64_t width) {
  return kTileRows * tile_stride<E>(width);
}

// Shared bytes of each kernel; the kernels carve their buffers in this order.
template <typename E>
__host__ __device__ constexpr int64_t forward_shared_bytes(int64_t qk_dim, int64_t v_dim) {
  return int64_t(sizeof(E)) * (3 * tile_elements<E>(qk_dim) + 2 * tile_elements<E>(v_dim));
}
// grad_q and grad_kv: the owned rows' two tiles, two buffers of each streamed tile, and (grad_kv only) two
// buffers of lse and Delta per streamed row in float.
template <typename E>
__host__ __device__ constexpr int64_t grad_q_shared_bytes(int64_t qk_dim, int64_t v_dim) {
  return forward_shared_bytes<E>(qk_dim, v_dim) + int64_t(sizeof(E)) * 2 * tile_elements<E>(v_dim);
}
template <typename E>
__host__ __device__ constexpr int64_t grad_kv_shared_bytes(int64_t qk_dim, int64_t v_dim) {
  return grad_q_shared_bytes<E>(qk_dim, v_dim) + 4 * kTileCols * int64_t(sizeof(float));
}

template <typename T>
__device__ __forceinline__ uint32_t pack(float low, float high);
template <>
__device__ __forceinline__ uint32_t pack<__half>(float low, float high) {
  const __half2 packed = __floats2half2_rn(low, high);
  return *reinterpret_cast<const uint32_t*>(&packed);
}
template <>
__device__ __forceinline__ uint32_t pack<__nv_bfloat16>(float low, float high) {
  const __nv_bfloat162 packed = __floats2bfloat162_rn(low, high);
  return *reinterpret_cast<const uint32_t*>(&packed);
}

// c += a b on the tensor cores, f32 accumulators.
template <typename T>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma<__nv_bfloat16>(
    float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma<float>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// An fp32 value rounded to tf32 (nearest, ties away from zero), in the register layout the MMA reads.
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t rounded;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(rounded) : "f"(x));
  return rounded;
}

__device__ __forceinline__ unsigned shared_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4_b16(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(p)));
}

// The `ops` of the tile functions in attention_mma.cuh.
template <typename T>
struct TensorCoreOps {
  __device__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) const { ldmatrix_x4_b16(r, p); }
  __device__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) const {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(p)));
  }
  __device__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) const {
    tc::mma<T>(c, a, b0, b1);
  }
  __device__ uint32_t pack(float low, float high) const { return tc::pack<T>(low, high); }
};
template <>
struct TensorCoreOps<float> {
  __device__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) const {
    ldmatrix_x4_b16(r, p);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      r[i] = to_tf32(__uint_as_float(r[i]));
    }
  }
  __device__ uint32_t load_b(const uint32_t* p) const { return to_tf32(__uint_as_float(*p)); }
  __device__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) const {
    tc::mma<float>(c, a, b0, b1);
  }
  __device__ uint32_t round(float x) const { return to_tf32(x); }
};

// cp.async of `Bytes` bytes, or of zeros when `present` is false (src-size 0: nothing is read).
template <int Bytes>
__device__ __forceinline__ void cp_async(void* shared_dst, const void* global_src, bool present) {
  const unsigned dst = shared_address(shared_dst);
  const int src_bytes = present ? Bytes : 0;
  if constexpr (Bytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(global_src), "r"(src_bytes));
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(dst), "l"(global_src), "n"(Bytes),
                 "r"(src_bytes));
  }
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most `Pending` of this thread's committed copy groups are still in flight.
template <int Pending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending));
}

// How a [*, width] tensor of E is copied into tiles: the widest cp.async chunk (bytes) that divides the row and
// the tensor's alignment, or 0 for element copies (16-bit elements only).
template <typename E>
__device__ int chunk_bytes(const E* tensor, int width) {
  const auto address = reinterpret_cast<uintptr_t>(tensor);
  for (int bytes = 16; bytes >= 4; bytes /= 2) {
    if ((width * int(sizeof(E))) % bytes == 0 && address % bytes == 0) {
      return bytes;
    }
  }
  return 0;
}

// A tile buffer and how to fill it from one [*, width] tensor.
template <typename E>
struct TileSource {
  const E* tensor;  // row 0 of the batch
  int width, stride, chunk;
};

// The source of rows first_row.. of a [*, width] tensor; the chunk follows from the tensor's own alignment (a
// kernel argument), which holds for every row when the chunk divides the row.
template <typename E>
__device__ TileSource<E> tile_source(const E* tensor, int64_t first_row, int width) {
  return {tensor + first_row * width, width, static_cast<int>(tile_stride<E>(width)), chunk_bytes(tensor, width)};
}

template <int Bytes, typename E>
__device__ __forceinline__ void copy_rows_in_chunks(E* tile, const TileSource<E>& source, int64_t row0, int rows) {
  constexpr int kElements = Bytes / int(sizeof(E));
  const int per_row = source.width / kElements;
  for (int e = threadIdx.x; e < kTileRows * per_row; e += kThreads) {
    const int r = e / per_row, c = (e - r * per_row) * kElements;
    const bool present = r < rows;
    cp_async<Bytes>(
        tile + r * source.stride + c, source.tensor + (present ? (row0 + r) * source.width + c : 0), present);
  }
}

// Starts filling `tile` with rows row0 .. row0 + rows - 1 of the source and zeros in the tile's other rows
// (columns < width; the columns past it are zero from zero_padding). All threads take part; the tile is
// complete for the block after cp_async_wait and __syncthreads.
template <typename E>
__device__ void fill_tile_async(E* tile, const TileSource<E>& source, int64_t row0, int rows) {
  switch (source.chunk) {
    case 16:
      copy_rows_in_chunks<16>(tile, source, row0, rows);
      break;
    case 8:
      copy_rows_in_chunks<8>(tile, source, row0, rows);
      break;
    case 4:
      copy_rows_in_chunks<4>(tile, source, row0, rows);
      break;
    default:
      for (int e = threadIdx.x; e < kTileRows * source.width; e += kThreads) {
        const int r = e / source.width, c = e - r * source.width;
        tile[r * source.stride + c] = r < rows ? source.tensor[(row0 + r) * source.width + c] : E(0);
      }
  }
}

// Zeros columns width .. stride - 1 of every row of `count` consecutive tiles of this width.
template <typename E>
__device__ void zero_padding(E* first_tile, int count, int width, int stride) {
  const int pad = stride - width;
  for (int e = threadIdx.x; e < count * kTileRows * pad; e += kThreads) {
    const int row = e / pad;
    first_tile[row * stride + width + (e - row * pad)] = 0;
  }
}

// 2^x with one MUFU.EX2 (exp2f adds a denormal range fix-up around it): the probabilities it feeds are
// rounded to fp16/bf16/tf32, far coarser than the approximation's 2 ulp; 2^-inf = 0.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

template <typename T>
__device__ __forceinline__ const Storage<T>* bits(const T* p) {
  return reinterpret_cast<const Storage<T>*>(p);
}

template <typename E>
__device__ E* shared_buffer() {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  return reinterpret_cast<E*>(shared_bytes);
}

// Two consecutive shared buffers, picked by a runtime index without a local array (which would live in
// local memory).
template <typename E>
struct BufferPair {
  E* first;
  int64_t capacity;
  __device__ E* operator[](int index) const { return first + index * capacity; }
  __device__ E* end() const { return first + 2 * capacity; }
};

// Writes the warp's 16 x (8 * kMaxTiles) accumulator tile to rows warp_row0.. of a [*, width] tensor (rows <
// rows and columns < width only), the thread's upper row (group) times `upper`, its lower one (group + 8)
// times `lower`.
template <typename T, int kMaxTiles>
__device__ __forceinline__ void store_tile(
    T* dst, int width, int warp_row0, int rows, const float (&acc)[kMaxTiles][4], float upper, float lower,
    int lane) {
#pragma unroll
  for (int dt = 0; dt < kMaxTiles; ++dt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = warp_row0 + layout::c_row(lane, i), col = dt * layout::kN + layout::c_col(lane, i);
      if (row < rows && col < width) {
        dst[row * width + col] = from_acc<T>(acc[dt][i] * (i < 2 ? upper : lower));
      }
    }
  }
}

template <typename T, int kMaxQk, int kMaxV>
__global__ void __launch_bounds__(kThreads) forward_kernel(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ out,
    float* __restrict__ lse, AttentionShape s, float scale_log2) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using E = Storage<T>;
  constexpr int kMaxQkSteps = kMaxQk / layout::kStep<E>, kMaxVTiles = kMaxV / layout::kN;
  TensorCoreOps<T> ops;
  const int lane = threadIdx.x % 32, warp_row0 = (threadIdx.x / 32) * kWarpRows;
  const int qk_dim = static_cast<int>(s.qk_dim), v_dim = static_cast<int>(s.v_dim);
  const int qk_steps = static_cast<int>(ceil_div(qk_dim, layout::kStep<E>));
  const int v_tiles = static_cast<int>(ceil_div(v_dim, layout::kN));
  const int qk_stride = static_cast<int>(tile_stride<E>(qk_dim)), v_stride = static_cast<int>(tile_stride<E>(v_dim));
  const int64_t tiles = ceil_div(s.queries, kTileRows);
  const int64_t b = blockIdx.x / tiles, row0 = (blockIdx.x % tiles) * kTileRows;
  const int rows = static_cast<int>(min(int64_t(kTileRows), s.queries - row0));

  E* q_buffer = shared_buffer<E>();
  const BufferPair<E> k_buffers{q_buffer + tile_elements<E>(qk_dim), tile_elements<E>(qk_dim)};
  const BufferPair<E> v_buffers{k_buffers.end(), tile_elements<E>(v_dim)};
  zero_padding(q_buffer, 3, qk_dim, qk_stride);
  zero_padding(v_buffers[0], 2, v_dim, v_stride);

  const TileSource<E> q_source = tile_source(bits(q), b * s.queries, qk_dim);
  const TileSource<E> k_source = tile_source(bits(k), b * s.keys, qk_dim);
  const TileSource<E> v_source = tile_source(bits(v), b * s.keys, v_dim);
  fill_tile_async(q_buffer, q_source, row0, rows);
  int cols = static_cast<int>(min(int64_t(kTileCols), s.keys));
  fill_tile_async(k_buffers[0], k_source, 0, cols);
  fill_tile_async(v_buffers[0], v_source, 0, cols);
  cp_async_commit();

  const Tile<E> q_tile{q_buffer, qk_stride};
  float o[kMaxVTiles][4] = {};
  // Per row of the thread (group and group + 8): running max of the log2-scaled scores, and this thread's
  // part of the running sum (the quad's four parts are added at the end; all share the max).
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
  int buffer = 0;
  for (int64_t col0 = 0; col0 < s.keys; col0 += kTileCols) {
    const int64_t next0 = col0 + kTileCols;
    int next_cols = 0;
    if (next0 < s.keys) {
      next_cols = static_cast<int>(min(int64_t(kTileCols), s.keys - next0));
      fill_tile_async(k_buffers[buffer ^ 1], k_source, next0, next_cols);
      fill_tile_async(v_buffers[buffer ^ 1], v_source, next0, next_cols);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();

    float p[kColTiles][4];
    layout::scores<kMaxQkSteps>(p, q_tile, warp_row0, Tile<E>{k_buffers[buffer], qk_stride}, qk_steps, lane, ops);
    float step_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < kColTiles; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        p[nt][i] = nt * layout::kN + layout::c_col(lane, i) < cols ? p[nt][i] * scale_log2 : -INFINITY;
        step_max[i >> 1] = fmaxf(step_max[i >> 1], p[nt][i]);
      }
    }
    float correction[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      // cols >= 1, so the new max is finite and exp2(-inf - max) = 0 for masked keys and the first step.
      const float new_max = fmaxf(row_max[h], quad_max(step_max[h]));
      correction[h] = fast_exp2(row_max[h] - new_max);
      row_max[h] = new_max;
      row_sum[h] *= correction[h];
    }
#pragma unroll
    for (int nt = 0; nt < kColTiles; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        p[nt][i] = fast_exp2(p[nt][i] - row_max[i >> 1]);
        row_sum[i >> 1] += p[nt][i];
      }
    }
#pragma unroll
    for (int dt = 0; dt < kMaxVTiles; ++dt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        o[dt][i] *= correction[i >> 1];
      }
    }
    layout::accumulate_product<kMaxVTiles>(o, p, Tile<E>{v_buffers[buffer], v_stride}, v_tiles, lane, ops);
    // Every warp is done with this step's buffers before the next step's copy overwrites them.
    __syncthreads();
    cols = next_cols;
    buffer ^= 1;
  }

  float inverse[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    row_sum[h] = quad_sum(row_sum[h]);
    inverse[h] = 1.0f / row_sum[h];
  }
  store_tile<T, kMaxVTiles>(
      out + (b * s.queries + row0) * v_dim, v_dim, warp_row0, rows, o, inverse[0], inverse[1], lane);
  if (layout::quad_of(lane) == 0) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = warp_row0 + layout::c_row(lane, 2 * h);
      if (row < rows) {
        lse[b * s.queries + row0 + row] = (row_max[h] + log2f(row_sum[h])) * kLn2;
      }
    }
  }
#endif
}

// grad_q for one (batch, tile of 64 queries): dS = P * (dO V^T - Delta), grad_q = scale dS K, over all key
// tiles; P is recomputed from the saved lse.
template <typename T, int kMaxQk, int kMaxV>
__global__ void __launch_bounds__(kThreads) grad_q_kernel(
    const T* __restrict__ grad_out, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const float* __restrict__ lse, const float* __restrict__ delta, T* __restrict__ grad_q, AttentionShape s,
    float scale, float scale_log2) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using E = Storage<T>;
  constexpr int kMaxQkSteps = kMaxQk / layout::kStep<E>, kMaxQkTiles = kMaxQk / layout::kN;
  constexpr int kMaxVSteps = kMaxV / layout::kStep<E>;
  TensorCoreOps<T> ops;
  const int lane = threadIdx.x % 32, warp_row0 = (threadIdx.x / 32) * kWarpRows;
  const int qk_dim = static_cast<int>(s.qk_dim), v_dim = static_cast<int>(s.v_dim);
  const int qk_steps = static_cast<int>(ceil_div(qk_dim, layout::kStep<E>));
  const int v_steps = static_cast<int>(ceil_div(v_dim, layout::kStep<E>));
  const int qk_tiles = static_cast<int>(ceil_div(qk_dim, layout::kN));
  const int qk_stride = static_cast<int>(tile_stride<E>(qk_dim)), v_stride = static_cast<int>(tile_stride<E>(v_dim));
  const int64_t tiles = ceil_div(s.queries, kTileRows);
  const int64_t b = blockIdx.x / tiles, row0 = (blockIdx.x % tiles) * kTileRows;
  const int rows = static_cast<int>(min(int64_t(kTileRows), s.queries - row0));

  E* q_buffer = shared_buffer<E>();
  const BufferPair<E> k_buffers{q_buffer + tile_elements<E>(qk_dim), tile_elements<E>(qk_dim)};
  const BufferPair<E> v_buffers{k_buffers.end(), tile_elements<E>(v_dim)};
  E* go_buffer = v_buffers.end();
  zero_padding(q_buffer, 3, qk_dim, qk_stride);
  zero_padding(v_buffers[0], 3, v_dim, v_stride);

  const int64_t first = b * s.queries + row0;
  const TileSource<E> q_source = tile_source(bits(q), b * s.queries, qk_dim);
  const TileSource<E> go_source = tile_source(bits(grad_out), b * s.queries, v_dim);
  const TileSource<E> k_source = tile_source(bits(k), b * s.keys, qk_dim);
  const TileSource<E> v_source = tile_source(bits(v), b * s.keys, v_dim);
  fill_tile_async(q_buffer, q_source, row0, rows);
  fill_tile_async(go_buffer, go_source, row0, rows);
  int cols = static_cast<int>(min(int64_t(kTileCols), s.keys));
  fill_tile_async(k_buffers[0], k_source, 0, cols);
  fill_tile_async(v_buffers[0], v_source, 0, cols);
  cp_async_commit();

  float row_lse[2], row_delta[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = warp_row0 + layout::c_row(lane, 2 * h);
    row_lse[h] = row < rows ? lse[first + row] * kLog2e : 0.0f;
    row_delta[h] = row < rows ? delta[first + row] : 0.0f;
  }
  const Tile<E> q_tile{q_buffer, qk_stride}, go_tile{go_buffer, v_stride};
  float dq[kMaxQkTiles][4] = {};
  int buffer = 0;
  for (int64_t col0 = 0; col0 < s.keys; col0 += kTileCols) {
    const int64_t next0 = col0 + kTileCols;
    int next_cols = 0;
    if (next0 < s.keys) {
      next_cols = static_cast<int>(min(int64_t(kTileCols), s.keys - next0));
      fill_tile_async(k_buffers[buffer ^ 1], k_source, next0, next_cols);
      fill_tile_async(v_buffers[buffer ^ 1], v_source, next0, next_cols);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();

    const Tile<E> k_tile{k_buffers[buffer], qk_stride};
    float p[kColTiles][4], dp[kColTiles][4];
    layout::scores<kMaxQkSteps>(p, q_tile, warp_row0, k_tile, qk_steps, lane, ops);
    layout::scores<kMaxVSteps>(dp, go_tile, warp_row0, Tile<E>{v_buffers[buffer], v_stride}, v_steps, lane, ops);
#pragma unroll
    for (int nt = 0; nt < kColTiles; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const bool key = nt * layout::kN + layout::c_col(lane, i) < cols;
        const float prob = key ? fast_exp2(p[nt][i] * scale_log2 - row_lse[i >> 1]) : 0.0f;
        dp[nt][i] = prob * (dp[nt][i] - row_delta[i >> 1]);
      }
    }
    layout::accumulate_product<kMaxQkTiles>(dq, dp, k_tile, qk_tiles, lane, ops);
    __syncthreads();
    cols = next_cols;
    buffer ^= 1;
  }
  store_tile<T, kMaxQkTiles>(grad_q + first * qk_dim, qk_dim, warp_row0, rows, dq, scale, scale, lane);
#endif
}

// grad_k and grad_v for one (batch, tile of 64 keys), over all query tiles, with the score tiles transposed
// ([key][query]): grad_v = P^T dO, grad_k = scale dS^T Q.
template <typename T, int kMaxQk, int kMaxV>
__global__ void __launch_bounds__(kThreads) grad_kv_kernel(
    const T* __restrict__ grad_out, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const float* __restrict__ lse, const float* __restrict__ delta, T* __restrict__ grad_k, T* __restrict__ grad_v,
    AttentionShape s, float scale, float scale_log2) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using E = Storage<T>;
  constexpr int kMaxQkSteps = kMaxQk / layout::kStep<E>, kMaxQkTiles = kMaxQk / layout::kN;
  constexpr int kMaxVSteps = kMaxV / layout::kStep<E>, kMaxVTiles = kMaxV / layout::kN;
  TensorCoreOps<T> ops;
  const int lane = threadIdx.x % 32, warp_row0 = (threadIdx.x / 32) * kWarpRows;
  const int qk_dim = static_cast<int>(s.qk_dim), v_dim = static_cast<int>(s.v_dim);
  const int qk_steps = static_cast<int>(ceil_div(qk_dim, layout::kStep<E>));
  const int v_steps = static_cast<int>(ceil_div(v_dim, layout::kStep<E>));
  const int qk_tiles = static_cast<int>(ceil_div(qk_dim, layout::kN));
  const int v_tiles = static_cast<int>(ceil_div(v_dim, layout::kN));
  const int qk_stride = static_cast<int>(tile_stride<E>(qk_dim)), v_stride = static_cast<int>(tile_stride<E>(v_dim));
  const int64_t tiles = ceil_div(s.keys, kTileRows);
  const int64_t b = blockIdx.x / tiles, row0 = (blockIdx.x % tiles) * kTileRows;
  const int rows = static_cast<int>(min(int64_t(kTileRows), s.keys - row0));

  // The same carving as grad_q with the roles of queries and keys swapped, then the per-query statistics.
  E* k_buffer = shared_buffer<E>();
  const BufferPair<E> q_buffers{k_buffer + tile_elements<E>(qk_dim), tile_elements<E>(qk_dim)};
  const BufferPair<E> go_buffers{q_buffers.end(), tile_elements<E>(v_dim)};
  E* v_buffer = go_buffers.end();
  const BufferPair<float> lse_buffers{reinterpret_cast<float*>(v_buffer + tile_elements<E>(v_dim)), kTileCols};
  const BufferPair<float> delta_buffers{lse_buffers.end(), kTileCols};
  zero_padding(k_buffer, 3, qk_dim, qk_stride);
  zero_padding(go_buffers[0], 3, v_dim, v_stride);

  const int64_t first = b * s.keys + row0;
  const int64_t q_first = b * s.queries;
  const TileSource<E> k_source = tile_source(bits(k), b * s.keys, qk_dim);
  const TileSource<E> v_source = tile_source(bits(v), b * s.keys, v_dim);
  const TileSource<E> q_source = tile_source(bits(q), q_first, qk_dim);
  const TileSource<E> go_source = tile_source(bits(grad_out), q_first, v_dim);
  fill_tile_async(k_buffer, k_source, row0, rows);
  fill_tile_async(v_buffer, v_source, row0, rows);
  // Query statistics are few (2 floats a query): plain loads into shared memory, visible after the barrier.
  const auto copy_stats = [&](int64_t query0, int count, int buffer) {
    for (int i = threadIdx.x; i < kTileCols; i += kThreads) {
      lse_buffers[buffer][i] = i < count ? lse[q_first + query0 + i] * kLog2e : 0.0f;
      delta_buffers[buffer][i] = i < count ? delta[q_first + query0 + i] : 0.0f;
    }
  };
  int cols = static_cast<int>(min(int64_t(kTileCols), s.queries));
  fill_tile_async(q_buffers[0], q_source, 0, cols);
  fill_tile_async(go_buffers[0], go_source, 0, cols);
  copy_stats(0, cols, 0);
  cp_async_commit();

  const Tile<E> k_tile{k_buffer, qk_stride}, v_tile{v_buffer, v_stride};
  float dk[kMaxQkTiles][4] = {}, dv[kMaxVTiles][4] = {};
  int buffer = 0;
  for (int64_t col0 = 0; col0 < s.queries; col0 += kTileCols) {
    const int64_t next0 = col0 + kTileCols;
    int next_cols = 0;
    if (next0 < s.queries) {
      next_cols = static_cast<int>(min(int64_t(kTileCols), s.queries - next0));
      fill_tile_async(q_buffers[buffer ^ 1], q_source, next0, next_cols);
      fill_tile_async(go_buffers[buffer ^ 1], go_source, next0, next_cols);
      copy_stats(next0, next_cols, buffer ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();

    const Tile<E> q_tile{q_buffers[buffer], qk_stride}, go_tile{go_buffers[buffer], v_stride};
    const float* col_lse = lse_buffers[buffer];
    const float* col_delta = delta_buffers[buffer];
    float p[kColTiles][4], dp[kColTiles][4];
    layout::scores<kMaxQkSteps>(p, k_tile, warp_row0, q_tile, qk_steps, lane, ops);
#pragma unroll
    for (int nt = 0; nt < kColTiles; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int col = nt * layout::kN + layout::c_col(lane, i);
        p[nt][i] = col < cols ? fast_exp2(p[nt][i] * scale_log2 - col_lse[col]) : 0.0f;
      }
    }
    layout::accumulate_product<kMaxVTiles>(dv, p, go_tile, v_tiles, lane, ops);
    layout::scores<kMaxVSteps>(dp, v_tile, warp_row0, go_tile, v_steps, lane, ops);
#pragma unroll
    for (int nt = 0; nt < kColTiles; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int col = nt * layout::kN + layout::c_col(lane, i);
        dp[nt][i] = p[nt][i] * (dp[nt][i] - col_delta[col]);
      }
    }
    layout::accumulate_product<kMaxQkTiles>(dk, dp, q_tile, qk_tiles, lane, ops);
    __syncthreads();
    cols = next_cols;
    buffer ^= 1;
  }
  store_tile<T, kMaxQkTiles>(grad_k + first * qk_dim, qk_dim, warp_row0, rows, dk, scale, scale, lane);
  store_tile<T, kMaxVTiles>(grad_v + first * v_dim, v_dim, warp_row0, rows, dv, 1.0f, 1.0f, lane);
#endif
}

// ---------------------------------------------------------------------------------------------------------
// Double backward on the tensor cores: the gradients of the backward (grad_q, grad_k, grad_v) with respect to
// (grad_out, q, k, v), contracted with their incoming gradients Uq, Uk, Uv (grad_grad_q, _k, _v). Per query i and
// key j, with P = softmax(scale q k^T), dP = dO V^T, R = scale (Uq K^T + Q Uk^T), W = dO Uv^T and the row
// statistics Delta = sum_j P dP, rho = sum_j P R, gamma = sum_j P (R dP + W) - 2 rho Delta (the formulas of
// ganops/reference/attention.py):
//   grad dO = (P * (R - rho)) V + P Uv,  grad q = scale (dS Uk + dS2 K),
//   grad k = scale (dS^T Uq + dS2^T Q),  grad v = (P * (R - rho))^T dO,
// with dS = P (dP - Delta) and dS2 = P (R (dP - Delta) - rho dP + W - gamma). As in triton_kernels/attention.py,
// two kernels and no atomics: the query side makes two passes over the keys (the statistics, then grad dO and
// grad q) and stores the statistics; the key side then makes one pass over the queries with the score tiles
// transposed ([key][query]). The statistics are computed from P and dP in float rather than from the rounded
// output, and P's rows are divided by their computed sum (lse corrected by its log), so that they sum to 1 up to
// rounding: the double backward multiplies a row sum's defect by |R| |q|.
//
// A step holds three 16 x 64 score tiles a warp at a time (P, R and one product operand, into which dP and then W
// are computed). The kernels are instantiated for the first head bounds only, (16, 64) (see
// tensor_core_double_backward): with (64, 128) the accumulators and score tiles would not fit the registers.

// The value of a shared element of T, stored as its bit pattern.
template <typename T>
__device__ __forceinline__ float stored_value(Storage<T> bits_value);
template <>
__device__ __forceinline__ float stored_value<__half>(uint16_t bits_value) {
  return __half2float(__ushort_as_half(bits_value));
}
template <>
__device__ __forceinline__ float stored_value<__nv_bfloat16>(uint16_t bits_value) {
  return __bfloat162float(__ushort_as_bfloat16(bits_value));
}
template <>
__device__ __forceinline__ float stored_value<float>(uint32_t bits_value) {
  return __uint_as_float(bits_value);
}

// The per-query statistics the query side hands to the key side, in a float workspace of 4 B Nq: lse of the
// normalised P in log2 units, then Delta, rho and gamma.
constexpr int kDoubleBackwardStats = 4;

// Query side: the owned q, uq (Dqk) and dO (Dv) tiles and two buffers each of the streamed k, uk (Dqk) and v, uv
// (Dv), carved with the Dqk tiles first. Key side: the owned k, uk, v, uv tiles, two buffers each of the streamed
// q, uq and dO, and two buffers of the four statistics per streamed query.
template <typename E>
__host__ __device__ constexpr int64_t double_backward_query_shared_bytes(int64_t qk_dim, int64_t v_dim) {
  return int64_t(sizeof(E)) * (6 * tile_elements<E>(qk_dim) + 5 * tile_elements<E>(v_dim));
}
template <typename E>
__host__ __device__ constexpr int64_t double_backward_key_shared_bytes(int64_t qk_dim, int64_t v_dim) {
  return int64_t(sizeof(E)) * (6 * tile_elements<E>(qk_dim) + 4 * tile_elements<E>(v_dim)) +
      2 * kDoubleBackwardStats * kTileCols * int64_t(sizeof(float));
}

// Runs body(buffer, count) for each tile of 64 streamed rows of `total`, with the next tile's copy (fill(buffer,
// row0, count), committed here) running under this tile's math. The first tile's copy must be committed into
// buffer 0 before the call; every warp is done with a tile's buffers before they are refilled.
template <typename Fill, typename Body>
__device__ __forceinline__ void stream_tiles(int64_t total, const Fill& fill, const Body& body) {
  int buffer = 0;
  int count = static_cast<int>(min(int64_t(kTileCols), total));
  for (int64_t row0 = 0; row0 < total; row0 += kTileCols) {
    const int64_t next0 = row0 + kTileCols;
    int next_count = 0;
    if (next0 < total) {
      next_count = static_cast<int>(min(int64_t(kTileCols), total - next0));
      fill(buffer ^ 1, next0, next_count);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    body(buffer, count);
    __syncthreads();
    count = next_count;
    buffer ^= 1;
  }
}

// What a tensor-core kernel derives from the shape: its lane and first warp row, the head dims with their MMA
// k-steps, 8-column output tiles and shared row strides, and the batch, first row and row count of the 64 rows
// (among rows_per_batch) that its CTA owns.
template <typename E>
struct TileGeometry {
  int lane, warp_row0, qk_dim, v_dim, qk_steps, v_steps, qk_tiles, v_tiles, qk_stride, v_stride;
  int64_t batch, row0;
  int rows;

  __device__ TileGeometry(const AttentionShape& s, int64_t rows_per_batch)
      : lane(threadIdx.x % 32),
        warp_row0((threadIdx.x / 32) * kWarpRows),
        qk_dim(static_cast<int>(s.qk_dim)),
        v_dim(static_cast<int>(s.v_dim)),
        qk_steps(static_cast<int>(ceil_div(s.qk_dim, layout::kStep<E>))),
        v_steps(static_cast<int>(ceil_div(s.v_dim, layout::kStep<E>))),
        qk_tiles(static_cast<int>(ceil_div(s.qk_dim, layout::kN))),
        v_tiles(static_cast<int>(ceil_div(s.v_dim, layout::kN))),
        qk_stride(static_cast<int>(tile_stride<E>(s.qk_dim))),
        v_stride(static_cast<int>(tile_stride<E>(s.v_dim))),
        batch(blockIdx.x / ceil_div(rows_per_batch, kTileRows)),
        row0((blockIdx.x % ceil_div(rows_per_batch, kTileRows)) * kTileRows),
        rows(static_cast<int>(min(int64_t(kTileRows), rows_per_batch - row0))) {}
};

// A query's statistics as a step reads them: lse of the normalised P (log2 units), Delta, rho and gamma.
struct QueryStats {
  float lse, delta, rho, gamma;
};

// The elementwise parts of a step, shared by the two kernels, on a 16 x 64 score tile whose columns < cols exist;
// stats(h, col) gives the QueryStats of the elements of row half h (the thread's row group or group + 8) in column
// col: per row on the query side, per column on the key side (transposed tiles).
// In: p the scores S, r the unscaled R. Out: p = P (0 in missing columns), r = R, x = P (R - rho).
template <typename Stats>
__device__ __forceinline__ void step_probabilities(
    float (&p)[kColTiles][4], float (&r)[kColTiles][4], float (&x)[kColTiles][4], int cols, float scale,
    float scale_log2, int lane, const Stats& stats) {
#pragma unroll
  for (int nt = 0; nt < kColTiles; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int col = nt * layout::kN + layout::c_col(lane, i);
      const QueryStats stat = stats(i >> 1, col);
      p[nt][i] = col < cols ? fast_exp2(p[nt][i] * scale_log2 - stat.lse) : 0.0f;
      r[nt][i] *= scale;
      x[nt][i] = p[nt][i] * (r[nt][i] - stat.rho);
    }
  }
}
// In: x = dP. Out: x = dS = P (dP - Delta), r = R (dP - Delta) - rho dP - gamma (dS2 / P without its W term).
template <typename Stats>
__device__ __forceinline__ void step_gradients(
    const float (&p)[kColTiles][4], float (&r)[kColTiles][4], float (&x)[kColTiles][4], int lane,
    const Stats& stats) {
#pragma unroll
  for (int nt = 0; nt < kColTiles; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const QueryStats stat = stats(i >> 1, nt * layout::kN + layout::c_col(lane, i));
      const float dp = x[nt][i], shifted = dp - stat.delta;
      r[nt][i] = r[nt][i] * shifted - stat.rho * dp - stat.gamma;
      x[nt][i] = p[nt][i] * shifted;
    }
  }
}
// In: x = W. Out: x = dS2 = P (r + W).
__device__ __forceinline__ void step_second_gradient(
    const float (&p)[kColTiles][4], const float (&r)[kColTiles][4], float (&x)[kColTiles][4]) {
#pragma unroll
  for (int nt = 0; nt < kColTiles; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      x[nt][i] = p[nt][i] * (r[nt][i] + x[nt][i]);
    }
  }
}

// grad dO and grad q for one (batch, tile of 64 queries), and the statistics of these queries.
template <typename T, int kMaxQk, int kMaxV>
__global__ void __launch_bounds__(kThreads) double_backward_query_kernel(
    const T* __restrict__ grad_grad_q, const T* __restrict__ grad_grad_k, const T* __restrict__ grad_grad_v,
    const T* __restrict__ grad_out, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const float* __restrict__ lse, float* __restrict__ stats, T* __restrict__ grad_grad_out, T* __restrict__ grad_q,
    AttentionShape s, float scale, float scale_log2) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using E = Storage<T>;
  constexpr int kMaxQkSteps = kMaxQk / layout::kStep<E>, kMaxQkTiles = kMaxQk / layout::kN;
  constexpr int kMaxVSteps = kMaxV / layout::kStep<E>, kMaxVTiles = kMaxV / layout::kN;
  TensorCoreOps<T> ops;
  const TileGeometry<E> g(s, s.queries);

  E* q_buffer = shared_buffer<E>();
  E* uq_buffer = q_buffer + tile_elements<E>(g.qk_dim);
  const BufferPair<E> k_buffers{uq_buffer + tile_elements<E>(g.qk_dim), tile_elements<E>(g.qk_dim)};
  const BufferPair<E> uk_buffers{k_buffers.end(), tile_elements<E>(g.qk_dim)};
  E* go_buffer = uk_buffers.end();
  const BufferPair<E> v_buffers{go_buffer + tile_elements<E>(g.v_dim), tile_elements<E>(g.v_dim)};
  const BufferPair<E> uv_buffers{v_buffers.end(), tile_elements<E>(g.v_dim)};
  zero_padding(q_buffer, 6, g.qk_dim, g.qk_stride);
  zero_padding(go_buffer, 5, g.v_dim, g.v_stride);

  const int64_t first = g.batch * s.queries + g.row0;
  const TileSource<E> q_source = tile_source(bits(q), g.batch * s.queries, g.qk_dim);
  const TileSource<E> uq_source = tile_source(bits(grad_grad_q), g.batch * s.queries, g.qk_dim);
  const TileSource<E> go_source = tile_source(bits(grad_out), g.batch * s.queries, g.v_dim);
  const TileSource<E> k_source = tile_source(bits(k), g.batch * s.keys, g.qk_dim);
  const TileSource<E> uk_source = tile_source(bits(grad_grad_k), g.batch * s.keys, g.qk_dim);
  const TileSource<E> v_source = tile_source(bits(v), g.batch * s.keys, g.v_dim);
  const TileSource<E> uv_source = tile_source(bits(grad_grad_v), g.batch * s.keys, g.v_dim);
  const auto fill_keys = [&](int buffer, int64_t key0, int count) {
    fill_tile_async(k_buffers[buffer], k_source, key0, count);
    fill_tile_async(uk_buffers[buffer], uk_source, key0, count);
    fill_tile_async(v_buffers[buffer], v_source, key0, count);
    fill_tile_async(uv_buffers[buffer], uv_source, key0, count);
  };
  fill_tile_async(q_buffer, q_source, g.row0, g.rows);
  fill_tile_async(uq_buffer, uq_source, g.row0, g.rows);
  fill_tile_async(go_buffer, go_source, g.row0, g.rows);
  fill_keys(0, 0, static_cast<int>(min(int64_t(kTileCols), s.keys)));
  cp_async_commit();

  // Per row of the thread (group and group + 8), in the log2 units of fast_exp2.
  float row_lse[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = g.warp_row0 + layout::c_row(g.lane, 2 * h);
    row_lse[h] = row < g.rows ? lse[first + row] * kLog2e : 0.0f;
  }
  const Tile<E> q_tile{q_buffer, g.qk_stride}, uq_tile{uq_buffer, g.qk_stride}, go_tile{go_buffer, g.v_stride};

  // Pass 1: the row sums of P, P dP, P R and P R dP (this thread's columns; the quad's are added after), and
  // P Uv, which is also grad dO's second term.
  float row_sum[2] = {}, delta[2] = {}, rho[2] = {}, weighted[2] = {};
  float grad_do[kMaxVTiles][4] = {};
  stream_tiles(s.keys, fill_keys, [&](int buffer, int cols) {
    const Tile<E> k_tile{k_buffers[buffer], g.qk_stride}, uk_tile{uk_buffers[buffer], g.qk_stride};
    float p[kColTiles][4], dp[kColTiles][4], r[kColTiles][4];
    layout::scores<kMaxQkSteps>(p, q_tile, g.warp_row0, k_tile, g.qk_steps, g.lane, ops);
    layout::scores<kMaxVSteps>(
        dp, go_tile, g.warp_row0, Tile<E>{v_buffers[buffer], g.v_stride}, g.v_steps, g.lane, ops);
    layout::scores<kMaxQkSteps>(r, uq_tile, g.warp_row0, k_tile, g.qk_steps, g.lane, ops);
    layout::accumulate_scores<kMaxQkSteps>(r, q_tile, g.warp_row0, uk_tile, g.qk_steps, g.lane, ops);
#pragma unroll
    for (int nt = 0; nt < kColTiles; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int h = i >> 1;
        const bool key = nt * layout::kN + layout::c_col(g.lane, i) < cols;
        const float prob = key ? fast_exp2(p[nt][i] * scale_log2 - row_lse[h]) : 0.0f;
        const float weight = prob * r[nt][i] * scale;
        row_sum[h] += prob;
        delta[h] += prob * dp[nt][i];
        rho[h] += weight;
        weighted[h] += weight * dp[nt][i];
        p[nt][i] = prob;
      }
    }
    layout::accumulate_product<kMaxVTiles>(grad_do, p, Tile<E>{uv_buffers[buffer], g.v_stride}, g.v_tiles, g.lane, ops);
  });
  // Pass 2 streams the keys again; its first copy runs under the statistics' arithmetic.
  fill_keys(0, 0, static_cast<int>(min(int64_t(kTileCols), s.keys)));
  cp_async_commit();

  float inverse[2], gamma[2], go_puv[2] = {};
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = g.warp_row0 + layout::c_row(g.lane, 2 * h);
    // Every lane takes part in the quad's shuffles (a full-mask shuffle skipped by some lanes is undefined); a
    // row past the tensor's end has no output, and its sum only must not be 0.
    const float quad_row_sum = quad_sum(row_sum[h]);
    const float sum = row < g.rows ? quad_row_sum : 1.0f;
    inverse[h] = 1.0f / sum;
    row_lse[h] += log2f(sum);
    delta[h] = quad_sum(delta[h]) * inverse[h];
    rho[h] = quad_sum(rho[h]) * inverse[h];
    weighted[h] = quad_sum(weighted[h]) * inverse[h];
  }
#pragma unroll
  for (int dt = 0; dt < kMaxVTiles; ++dt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int h = i >> 1, col = dt * layout::kN + layout::c_col(g.lane, i);
      grad_do[dt][i] *= inverse[h];
      if (col < g.v_dim) {
        go_puv[h] += stored_value<T>(*go_tile.at(g.warp_row0 + layout::c_row(g.lane, i), col)) * grad_do[dt][i];
      }
    }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    // sum_j P W = dO . (P Uv).
    gamma[h] = weighted[h] - 2.0f * rho[h] * delta[h] + quad_sum(go_puv[h]);
    const int row = g.warp_row0 + layout::c_row(g.lane, 2 * h);
    if (layout::quad_of(g.lane) == 0 && row < g.rows) {
      const int64_t count = s.batch * s.queries;
      const float values[kDoubleBackwardStats] = {row_lse[h], delta[h], rho[h], gamma[h]};
#pragma unroll
      for (int j = 0; j < kDoubleBackwardStats; ++j) {
        stats[j * count + first + row] = values[j];
      }
    }
  }

  // Pass 2: grad dO += (P * (R - rho)) V and grad q = scale (dS Uk + dS2 K).
  const auto row_stats = [&](int h, int) { return QueryStats{row_lse[h], delta[h], rho[h], gamma[h]}; };
  float grad_q_acc[kMaxQkTiles][4] = {};
  stream_tiles(s.keys, fill_keys, [&](int buffer, int cols) {
    const Tile<E> k_tile{k_buffers[buffer], g.qk_stride}, uk_tile{uk_buffers[buffer], g.qk_stride};
    // Three score tiles live at a time: dP is computed after the first product, into the operand's registers.
    float p[kColTiles][4], r[kColTiles][4], x[kColTiles][4];
    layout::scores<kMaxQkSteps>(p, q_tile, g.warp_row0, k_tile, g.qk_steps, g.lane, ops);
    layout::scores<kMaxQkSteps>(r, uq_tile, g.warp_row0, k_tile, g.qk_steps, g.lane, ops);
    layout::accumulate_scores<kMaxQkSteps>(r, q_tile, g.warp_row0, uk_tile, g.qk_steps, g.lane, ops);
    step_probabilities(p, r, x, cols, scale, scale_log2, g.lane, row_stats);
    layout::accumulate_product<kMaxVTiles>(grad_do, x, Tile<E>{v_buffers[buffer], g.v_stride}, g.v_tiles, g.lane, ops);
    layout::scores<kMaxVSteps>(x, go_tile, g.warp_row0, Tile<E>{v_buffers[buffer], g.v_stride}, g.v_steps, g.lane, ops);
    step_gradients(p, r, x, g.lane, row_stats);
    layout::accumulate_product<kMaxQkTiles>(grad_q_acc, x, uk_tile, g.qk_tiles, g.lane, ops);
    layout::scores<kMaxVSteps>(
        x, go_tile, g.warp_row0, Tile<E>{uv_buffers[buffer], g.v_stride}, g.v_steps, g.lane, ops);
    step_second_gradient(p, r, x);
    layout::accumulate_product<kMaxQkTiles>(grad_q_acc, x, k_tile, g.qk_tiles, g.lane, ops);
  });
  store_tile<T, kMaxVTiles>(grad_grad_out + first * g.v_dim, g.v_dim, g.warp_row0, g.rows, grad_do, 1.0f, 1.0f, g.lane);
  store_tile<T, kMaxQkTiles>(
      grad_q + first * g.qk_dim, g.qk_dim, g.warp_row0, g.rows, grad_q_acc, scale, scale, g.lane);
#endif
}

// grad k and grad v for one (batch, tile of 64 keys), over all query tiles, with the score tiles transposed
// ([key][query]) and the query side's statistics.
template <typename T, int kMaxQk, int kMaxV>
__global__ void __launch_bounds__(kThreads) double_backward_key_kernel(
    const T* __restrict__ grad_grad_q, const T* __restrict__ grad_grad_k, const T* __restrict__ grad_grad_v,
    const T* __restrict__ grad_out, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const float* __restrict__ stats, T* __restrict__ grad_k, T* __restrict__ grad_v, AttentionShape s, float scale,
    float scale_log2) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using E = Storage<T>;
  constexpr int kMaxQkSteps = kMaxQk / layout::kStep<E>, kMaxQkTiles = kMaxQk / layout::kN;
  constexpr int kMaxVSteps = kMaxV / layout::kStep<E>, kMaxVTiles = kMaxV / layout::kN;
  TensorCoreOps<T> ops;
  const TileGeometry<E> g(s, s.keys);

  E* k_buffer = shared_buffer<E>();
  E* uk_buffer = k_buffer + tile_elements<E>(g.qk_dim);
  const BufferPair<E> q_buffers{uk_buffer + tile_elements<E>(g.qk_dim), tile_elements<E>(g.qk_dim)};
  const BufferPair<E> uq_buffers{q_buffers.end(), tile_elements<E>(g.qk_dim)};
  E* v_buffer = uq_buffers.end();
  E* uv_buffer = v_buffer + tile_elements<E>(g.v_dim);
  const BufferPair<E> go_buffers{uv_buffer + tile_elements<E>(g.v_dim), tile_elements<E>(g.v_dim)};
  const BufferPair<float> stat_buffers{
      reinterpret_cast<float*>(go_buffers.end()), kDoubleBackwardStats * kTileCols};
  zero_padding(k_buffer, 6, g.qk_dim, g.qk_stride);
  zero_padding(v_buffer, 4, g.v_dim, g.v_stride);

  const int64_t first = g.batch * s.keys + g.row0;
  const int64_t q_first = g.batch * s.queries, stat_count = s.batch * s.queries;
  const TileSource<E> k_source = tile_source(bits(k), g.batch * s.keys, g.qk_dim);
  const TileSource<E> uk_source = tile_source(bits(grad_grad_k), g.batch * s.keys, g.qk_dim);
  const TileSource<E> v_source = tile_source(bits(v), g.batch * s.keys, g.v_dim);
  const TileSource<E> uv_source = tile_source(bits(grad_grad_v), g.batch * s.keys, g.v_dim);
  const TileSource<E> q_source = tile_source(bits(q), q_first, g.qk_dim);
  const TileSource<E> uq_source = tile_source(bits(grad_grad_q), q_first, g.qk_dim);
  const TileSource<E> go_source = tile_source(bits(grad_out), q_first, g.v_dim);
  // The statistics are few (4 floats a query): plain loads into shared memory, visible after the barrier.
  const auto fill_queries = [&](int buffer, int64_t query0, int count) {
    fill_tile_async(q_buffers[buffer], q_source, query0, count);
    fill_tile_async(uq_buffers[buffer], uq_source, query0, count);
    fill_tile_async(go_buffers[buffer], go_source, query0, count);
    for (int e = threadIdx.x; e < kDoubleBackwardStats * kTileCols; e += kThreads) {
      const int j = e / kTileCols, i = e - j * kTileCols;
      stat_buffers[buffer][e] = i < count ? stats[j * stat_count + q_first + query0 + i] : 0.0f;
    }
  };
  fill_tile_async(k_buffer, k_source, g.row0, g.rows);
  fill_tile_async(uk_buffer, uk_source, g.row0, g.rows);
  fill_tile_async(v_buffer, v_source, g.row0, g.rows);
  fill_tile_async(uv_buffer, uv_source, g.row0, g.rows);
  fill_queries(0, 0, static_cast<int>(min(int64_t(kTileCols), s.queries)));
  cp_async_commit();

  const Tile<E> k_tile{k_buffer, g.qk_stride}, uk_tile{uk_buffer, g.qk_stride};
  const Tile<E> v_tile{v_buffer, g.v_stride}, uv_tile{uv_buffer, g.v_stride};
  float grad_k_acc[kMaxQkTiles][4] = {}, grad_v_acc[kMaxVTiles][4] = {};
  stream_tiles(s.queries, fill_queries, [&](int buffer, int cols) {
    const Tile<E> q_tile{q_buffers[buffer], g.qk_stride}, uq_tile{uq_buffers[buffer], g.qk_stride};
    const Tile<E> go_tile{go_buffers[buffer], g.v_stride};
    const float* col_stats = stat_buffers[buffer];
    const auto column_stats = [&](int, int col) {
      return QueryStats{col_stats[col], col_stats[kTileCols + col], col_stats[2 * kTileCols + col],
                        col_stats[3 * kTileCols + col]};
    };
    float p[kColTiles][4], r[kColTiles][4], x[kColTiles][4];
    layout::scores<kMaxQkSteps>(p, k_tile, g.warp_row0, q_tile, g.qk_steps, g.lane, ops);
    layout::scores<kMaxQkSteps>(r, k_tile, g.warp_row0, uq_tile, g.qk_steps, g.lane, ops);
    layout::accumulate_scores<kMaxQkSteps>(r, uk_tile, g.warp_row0, q_tile, g.qk_steps, g.lane, ops);
    step_probabilities(p, r, x, cols, scale, scale_log2, g.lane, column_stats);
    layout::accumulate_product<kMaxVTiles>(grad_v_acc, x, go_tile, g.v_tiles, g.lane, ops);
    layout::scores<kMaxVSteps>(x, v_tile, g.warp_row0, go_tile, g.v_steps, g.lane, ops);
    step_gradients(p, r, x, g.lane, column_stats);
    layout::accumulate_product<kMaxQkTiles>(grad_k_acc, x, uq_tile, g.qk_tiles, g.lane, ops);
    layout::scores<kMaxVSteps>(x, uv_tile, g.warp_row0, go_tile, g.v_steps, g.lane, ops);
    step_second_gradient(p, r, x);
    layout::accumulate_product<kMaxQkTiles>(grad_k_acc, x, q_tile, g.qk_tiles, g.lane, ops);
  });
  store_tile<T, kMaxQkTiles>(
      grad_k + first * g.qk_dim, g.qk_dim, g.warp_row0, g.rows, grad_k_acc, scale, scale, g.lane);
  store_tile<T, kMaxVTiles>(grad_v + first * g.v_dim, g.v_dim, g.warp_row0, g.rows, grad_v_acc, 1.0f, 1.0f, g.lane);
#endif
}

}  // namespace tc

// ---------------------------------------------------------------------------------------------------------
// Launching.

// Lets `kernel` use the device's whole opt-in shared memory, once per (kernel, device) and from any host
// thread: the attribute is per device and does not change with the launch, so setting it on every launch
// would only add a driver call and a race between threads. A failure is returned (and tried again by the
// next launch), never remembered as done.
template <typename Kernel>
cudaError_t allow_optin_shared_memory(Kernel kernel, const DeviceInfo& info) {
  static std::mutex mutex;
  static std::set<std::pair<const void*, int>> done;
  const std::pair<const void*, int> key{reinterpret_cast<const void*>(kernel), info.device};
  const std::lock_guard<std::mutex> lock(mutex);
  if (done.count(key) != 0) {
    return cudaSuccess;
  }
  cudaFuncAttributes attributes{};
  cudaError_t error = cudaFuncGetAttributes(&attributes, kernel);
  if (error == cudaSuccess) {
    error = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
        info.shared_optin - static_cast<int>(attributes.sharedSizeBytes));
  }
  if (error == cudaSuccess) {
    done.insert(key);
  }
  return error;
}

// Launches kernel<<<blocks, kThreads, shared_bytes, stream>>>; the caller has checked that shared_bytes fits.
template <typename Kernel, typename... Args>
cudaError_t launch(
    Kernel kernel, const DeviceInfo& info, int64_t blocks, size_t shared_bytes, cudaStream_t stream, Args... args) {
  if (blocks == 0) {
    return cudaSuccess;
  }
  if (blocks > kMaxGridX) {
    return cudaErrorInvalidConfiguration;
  }
  const cudaError_t error = allow_optin_shared_memory(kernel, info);
  if (error != cudaSuccess) {
    return error;
  }
  kernel<<<static_cast<unsigned>(blocks), kThreads, shared_bytes, stream>>>(args...);
  return cudaGetLastError();
}

// The CUDA-core kernels' largest square tile whose shared memory fits the device; tile 0 when none does.
struct LaunchTile {
  int tile = 0;
  size_t shared_bytes = 0;
};

template <typename SharedElements>
LaunchTile choose_tile(const SharedElements& elements, size_t element_bytes, const DeviceInfo& info) {
  for (const int tile : kTileSizes) {
    const size_t bytes = static_cast<size_t>(elements(tile)) * element_bytes;
    if (bytes <= static_cast<size_t>(info.shared_optin)) {
      return {tile, bytes};
    }
  }
  return {};
}

template <typename T>
constexpr bool kHalfPrecision = std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value;

// Whether the tensor-core kernels may run for T: fp16 and bf16 always, fp32 as TF32 where the caller allows it.
template <typename T>
bool tensor_cores_allowed(bool allow_tf32) {
  return kHalfPrecision<T> || (std::is_same<T, float>::value && allow_tf32);
}

// The tensor-core instantiation for the shape: the index into tc::kHeadBounds of the first bounds that hold
// (Dqk, Dv); -1 when the device predates sm_80, the head dims exceed every bound or the buffers exceed the
// shared memory.
int tensor_core_bounds(const AttentionShape& s, const DeviceInfo& info, int64_t shared_bytes) {
  if (info.major < 8 || shared_bytes > info.shared_optin) {
    return -1;
  }
  int index = 0;
  for (const tc::HeadBounds bounds : tc::kHeadBounds) {
    if (s.qk_dim <= bounds.qk && s.v_dim <= bounds.v) {
      return index;
    }
    ++index;
  }
  return -1;
}

// The instantiation of a tensor-core kernel template for tc::kHeadBounds[index].
#define GANOPS_TC_KERNEL(kernel, T, index)                                                         \
  ((index) == 0 ? kernel<T, tc::kHeadBounds[0].qk, tc::kHeadBounds[0].v>                           \
   : (index) == 1 ? kernel<T, tc::kHeadBounds[1].qk, tc::kHeadBounds[1].v>                         \
                  : kernel<T, tc::kHeadBounds[2].qk, tc::kHeadBounds[2].v>)
static_assert(sizeof(tc::kHeadBounds) / sizeof(tc::kHeadBounds[0]) == 3, "GANOPS_TC_KERNEL names every bound");

template <typename T>
AttentionLaunch tensor_core_forward(
    const T* q, const T* k, const T* v, T* out, float* lse, const AttentionShape& shape, double scale,
    const DeviceInfo& info, int bounds, cudaStream_t stream) {
  const int64_t blocks = shape.batch * ceil_div(shape.queries, tc::kTileRows);
  const size_t bytes = static_cast<size_t>(tc::forward_shared_bytes<tc::Storage<T>>(shape.qk_dim, shape.v_dim));
  const float scale_log2 = static_cast<float>(scale) * tc::kLog2e;
  return {launch(
      GANOPS_TC_KERNEL(tc::forward_kernel, T, bounds), info, blocks, bytes, stream, q, k, v, out, lse, shape,
      scale_log2)};
}

template <typename T>
AttentionLaunch tensor_core_backward(
    const T* grad_out, const T* q, const T* k, const T* v, const float* lse, const float* delta, T* grad_q,
    T* grad_k, T* grad_v, const AttentionShape& shape, double scale, const DeviceInfo& info, int bounds,
    cudaStream_t stream) {
  const float acc_scale = static_cast<float>(scale);
  const float scale_log2 = acc_scale * tc::kLog2e;
  cudaError_t error = launch(
      GANOPS_TC_KERNEL(tc::grad_q_kernel, T, bounds), info, shape.batch * ceil_div(shape.queries, tc::kTileRows),
      static_cast<size_t>(tc::grad_q_shared_bytes<tc::Storage<T>>(shape.qk_dim, shape.v_dim)), stream, grad_out, q,
      k, v, lse, delta, grad_q, shape, acc_scale, scale_log2);
  if (error == cudaSuccess) {
    error = launch(
        GANOPS_TC_KERNEL(tc::grad_kv_kernel, T, bounds), info, shape.batch * ceil_div(shape.keys, tc::kTileRows),
        static_cast<size_t>(tc::grad_kv_shared_bytes<tc::Storage<T>>(shape.qk_dim, shape.v_dim)), stream, grad_out,
        q, k, v, lse, delta, grad_k, grad_v, shape, acc_scale, scale_log2);
  }
  return {error};
}

// The double backward has one instantiation, for the first head bounds, (16, 64), which hold SAGAN's and
// BigGAN-128's heads (see tc::HeadBounds): (64, 64) as well would add as many kernels again to CI's CUDA compile,
// for shapes no GAN of the benchmarks has, and its TF32 query kernel spilled 124-192 B.
template <typename T>
cudaError_t tensor_core_double_backward(
    const T* grad_grad_q, const T* grad_grad_k, const T* grad_grad_v, const T* grad_out, const T* q, const T* k,
    const T* v, const float* lse, float* stats, T* grad_grad_out, T* grad_q, T* grad_k, T* grad_v,
    const AttentionShape& shape, double scale, const DeviceInfo& info, cudaStream_t stream) {
  using E = tc::Storage<T>;
  const float acc_scale = static_cast<float>(scale);
  const float scale_log2 = acc_scale * tc::kLog2e;
  constexpr int kQk = tc::kHeadBounds[0].qk, kV = tc::kHeadBounds[0].v;
  cudaError_t error = launch(
      tc::double_backward_query_kernel<T, kQk, kV>, info,
      shape.batch * ceil_div(shape.queries, tc::kTileRows),
      static_cast<size_t>(tc::double_backward_query_shared_bytes<E>(shape.qk_dim, shape.v_dim)), stream, grad_grad_q,
      grad_grad_k, grad_grad_v, grad_out, q, k, v, lse, stats, grad_grad_out, grad_q, shape, acc_scale, scale_log2);
  if (error == cudaSuccess) {
    error = launch(
        tc::double_backward_key_kernel<T, kQk, kV>, info,
        shape.batch * ceil_div(shape.keys, tc::kTileRows),
        static_cast<size_t>(tc::double_backward_key_shared_bytes<E>(shape.qk_dim, shape.v_dim)), stream,
        grad_grad_q, grad_grad_k, grad_grad_v, grad_out, q, k, v, static_cast<const float*>(stats), grad_k, grad_v,
        shape, acc_scale, scale_log2);
  }
  return error;
}

#undef GANOPS_TC_KERNEL

}  // namespace

template <typename T>
AttentionLaunch attention_forward(
    const T* q, const T* k, const T* v, T* out, acc_type<T>* lse, const AttentionShape& shape, double scale,
    bool allow_tf32, cudaStream_t stream) {
  using acc_t = acc_type<T>;
  if (shape.batch == 0 || shape.queries == 0) {
    return {};
  }
  DeviceInfo info;
  const cudaError_t error = current_device_info(&info);
  if (error != cudaSuccess) {
    return {error};
  }
  if constexpr (kHalfPrecision<T> || std::is_same<T, float>::value) {
    const int bounds = tensor_cores_allowed<T>(allow_tf32)
        ? tensor_core_bounds(shape, info, tc::forward_shared_bytes<tc::Storage<T>>(shape.qk_dim, shape.v_dim))
        : -1;
    if (bounds >= 0) {
      return tensor_core_forward(q, k, v, out, lse, shape, scale, info, bounds, stream);
    }
  }
  const LaunchTile tile = choose_tile([&](int t) { return forward_shared_elements(t, shape); }, sizeof(acc_t), info);
  if (tile.tile == 0) {
    return {cudaSuccess, false};
  }
  return {launch(
      forward_kernel<T>, info, shape.batch * ceil_div(shape.queries, tile.tile), tile.shared_bytes, stream, q, k, v,
      out, lse, shape, tile.tile, static_cast<acc_t>(scale))};
}

template <typename T>
AttentionLaunch attention_backward(
    const T* grad_out, const T* q, const T* k, const T* v, const T* out, const acc_type<T>* lse,
    acc_type<T>* delta_workspace, T* grad_q, T* grad_k, T* grad_v, const AttentionShape& shape, double scale,
    bool allow_tf32, cudaStream_t stream) {
  using acc_t = acc_type<T>;
  const acc_t acc_scale = static_cast<acc_t>(scale);
  DeviceInfo info;
  cudaError_t error = current_device_info(&info);
  if (error != cudaSuccess) {
    return {error};
  }
  // Pick the kernels before launching anything, so that a shape no kernel fits launches nothing.
  int bounds = -1;
  if constexpr (kHalfPrecision<T> || std::is_same<T, float>::value) {
    if (tensor_cores_allowed<T>(allow_tf32)) {
      bounds = tensor_core_bounds(shape, info, tc::grad_kv_shared_bytes<tc::Storage<T>>(shape.qk_dim, shape.v_dim));
    }
  }
  const LaunchTile q_tile =
      choose_tile([&](int t) { return grad_q_shared_elements(t, shape); }, sizeof(acc_t), info);
  const LaunchTile kv_tile =
      choose_tile([&](int t) { return grad_kv_shared_elements(t, shape); }, sizeof(acc_t), info);
  if (bounds < 0 && (q_tile.tile == 0 || kv_tile.tile == 0)) {
    return {cudaSuccess, false};
  }
  const int64_t rows = shape.batch * shape.queries;
  if (rows > 0) {
    const int64_t blocks = ceil_div(rows, kWarps);
    if (blocks > kMaxGridX) {
      return {cudaErrorInvalidConfiguration};
    }
    delta_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        grad_out, out, delta_workspace, rows, shape.v_dim);
    error = cudaGetLastError();
    if (error != cudaSuccess) {
      return {error};
    }
  }
  if constexpr (kHalfPrecision<T> || std::is_same<T, float>::value) {
    if (bounds >= 0) {
      return tensor_core_backward(
          grad_out, q, k, v, lse, delta_workspace, grad_q, grad_k, grad_v, shape, scale, info, bounds, stream);
    }
  }
  error = launch(
      grad_q_kernel<T>, info, shape.batch * ceil_div(shape.queries, q_tile.tile), q_tile.shared_bytes, stream,
      grad_out, q, k, v, lse, static_cast<const acc_t*>(delta_workspace), grad_q, shape, q_tile.tile, acc_scale);
  if (error == cudaSuccess) {
    error = launch(
        grad_kv_kernel<T>, info, shape.batch * ceil_div(shape.keys, kv_tile.tile), kv_tile.shared_bytes, stream,
        grad_out, q, k, v, lse, static_cast<const acc_t*>(delta_workspace), grad_k, grad_v, shape, kv_tile.tile,
        acc_scale);
  }
  return {error};
}

template <typename T>
DoubleBackwardLaunch attention_double_backward(
    const T* grad_grad_q, const T* grad_grad_k, const T* grad_grad_v, const T* grad_out, const T* q, const T* k,
    const T* v, const acc_type<T>* lse, float* stats_workspace, T* grad_grad_out, T* grad_q, T* grad_k, T* grad_v,
    const AttentionShape& shape, double scale, bool allow_tf32, cudaStream_t stream) {
  if constexpr (kHalfPrecision<T> || std::is_same<T, float>::value) {
    if (!tensor_cores_allowed<T>(allow_tf32)) {
      return {};
    }
    DeviceInfo info;
    const cudaError_t error = current_device_info(&info);
    if (error != cudaSuccess) {
      return {error, false};
    }
    using E = tc::Storage<T>;
    const int64_t shared_bytes = std::max(
        tc::double_backward_query_shared_bytes<E>(shape.qk_dim, shape.v_dim),
        tc::double_backward_key_shared_bytes<E>(shape.qk_dim, shape.v_dim));
    if (tensor_core_bounds(shape, info, shared_bytes) != 0) {
      return {};
    }
    return {
        tensor_core_double_backward(
            grad_grad_q, grad_grad_k, grad_grad_v, grad_out, q, k, v, lse, stats_workspace, grad_grad_out, grad_q,
            grad_k, grad_v, shape, scale, info, stream),
        true};
  } else {
    return {};
  }
}

#define GANOPS_INSTANTIATE_ATTENTION(T)                                                                            \
  template AttentionLaunch attention_forward<T>(                                                                   \
      const T*, const T*, const T*, T*, acc_type<T>*, const AttentionShape&, double, bool, cudaStream_t);          \
  template AttentionLaunch attention_backward<T>(                                                                  \
      const T*, const T*, const T*, const T*, const T*, const acc_type<T>*, acc_type<T>*, T*, T*,                  \
      T*, const AttentionShape&, double, bool, cudaStream_t);                                                   \
  template DoubleBackwardLaunch attention_double_backward<T>(                                                      \
      const T*, const T*, const T*, const T*, const T*, const T*, const T*, const acc_type<T>*, float*, T*, T*, T*, \
      T*, const AttentionShape&, double, bool, cudaStream_t);

GANOPS_INSTANTIATE_ATTENTION(double)
GANOPS_INSTANTIATE_ATTENTION(float)
GANOPS_INSTANTIATE_ATTENTION(__half)
GANOPS_INSTANTIATE_ATTENTION(__nv_bfloat16)

#undef GANOPS_INSTANTIATE_ATTENTION

}  // namespace cuda_kernels
}  // namespace ganops
