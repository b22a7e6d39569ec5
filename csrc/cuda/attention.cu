// CUDA kernels of the fused attention ops, FlashAttention-2 style on plain CUDA cores:
//
// * forward: one block per (batch, tile of queries); the scaled query tile stays in shared memory while
//   the key and value tiles stream through it; a running max and sum per query (online softmax) keep
//   logits of any magnitude exact, and the unnormalised output tile accumulates in shared memory.
// * backward: Delta_i = grad_out_i . out_i (one warp per row); then one block per (batch, tile of keys)
//   accumulates grad_k and grad_v over all query tiles, and one block per (batch, tile of queries)
//   accumulates grad_q over all key tiles. Both recompute P = exp(scale q k^T - lse) tile by tile from
//   the saved lse, so no Nq x Nk matrix exists and no two blocks write the same row (no atomics).
//
// Tiles are square, T x T with T the largest of 64, 32, 16, 8 whose buffers fit in the shared memory of
// the GPU (head dims up to 256 fit with T >= 16 in float32 on sm_80). Any Nq, Nk, Dqk, Dv: rows past
// the end are masked. Tile rows read across threads are padded to an odd stride so that a warp reading
// one element from each of 32 rows hits 32 different banks. Summation orders are fixed, so results are
// deterministic.
#include "attention.h"

#include <math.h>

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
  for (int64_t e = threadIdx.x; e < tile_rows * width; e += kThreads) {
    const int64_t r = e / width, c = e % width;
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
  const int64_t b = blockIdx.x / tiles, row0 = (blockIdx.x % tiles) * tile;
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
    for (int64_t e = threadIdx.x; e < tile * s.v_dim; e += kThreads) {
      const int64_t i = e / s.v_dim, d = e % s.v_dim;
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
  for (int64_t e = threadIdx.x; e < rows * s.v_dim; e += kThreads) {
    const int64_t i = e / s.v_dim;
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
  const int64_t b = blockIdx.x / tiles, row0 = (blockIdx.x % tiles) * tile;
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
    for (int64_t e = threadIdx.x; e < tile * s.qk_dim; e += kThreads) {
      const int64_t i = e / s.qk_dim, d = e % s.qk_dim;
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
  const int64_t b = blockIdx.x / tiles, row0 = (blockIdx.x % tiles) * tile;
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
    for (int64_t e = threadIdx.x; e < tile * s.v_dim; e += kThreads) {
      const int64_t j = e / s.v_dim, d = e % s.v_dim;
      const acc_t* p = probabilities + j * score_stride;
      acc_t acc = gv_tile[e];
      for (int64_t i = 0; i < cols; ++i) {
        acc += p[i] * go_tile[i * v_stride + d];
      }
      gv_tile[e] = acc;
    }
    for (int64_t e = threadIdx.x; e < tile * s.qk_dim; e += kThreads) {
      const int64_t j = e / s.qk_dim, d = e % s.qk_dim;
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

// The largest tile size whose shared memory fits the current device, with its size in bytes; tile 0
// when none fits.
struct LaunchTile {
  int tile;
  size_t shared_bytes;
};

template <typename SharedElements>
cudaError_t choose_tile(const SharedElements& elements, size_t element_bytes, LaunchTile* chosen) {
  int device = 0, limit = 0;
  cudaError_t error = cudaGetDevice(&device);
  if (error == cudaSuccess) {
    error = cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  }
  if (error != cudaSuccess) {
    return error;
  }
  for (const int tile : kTileSizes) {
    const size_t bytes = static_cast<size_t>(elements(tile)) * element_bytes;
    if (bytes <= static_cast<size_t>(limit)) {
      *chosen = {tile, bytes};
      return cudaSuccess;
    }
  }
  return cudaErrorInvalidValue;
}

// Launches kernel<<<blocks, kThreads, shared bytes>>> after allowing it that much shared memory.
template <typename Kernel, typename... Args>
cudaError_t launch(Kernel kernel, int64_t blocks, const LaunchTile& tile, cudaStream_t stream, Args... args) {
  if (blocks == 0) {
    return cudaSuccess;
  }
  if (blocks > kMaxGridX) {
    return cudaErrorInvalidConfiguration;
  }
  const cudaError_t error =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(tile.shared_bytes));
  if (error != cudaSuccess) {
    return error;
  }
  kernel<<<static_cast<unsigned>(blocks), kThreads, tile.shared_bytes, stream>>>(args...);
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t attention_forward(
    const T* q, const T* k, const T* v, T* out, acc_type<T>* lse, const AttentionShape& shape, double scale,
    cudaStream_t stream) {
  using acc_t = acc_type<T>;
  if (shape.batch == 0 || shape.queries == 0) {
    return cudaSuccess;
  }
  LaunchTile tile{};
  const cudaError_t error =
      choose_tile([&](int t) { return forward_shared_elements(t, shape); }, sizeof(acc_t), &tile);
  if (error != cudaSuccess) {
    return error;
  }
  return launch(
      forward_kernel<T>, shape.batch * ceil_div(shape.queries, tile.tile), tile, stream, q, k, v, out, lse, shape,
      tile.tile, static_cast<acc_t>(scale));
}

template <typename T>
cudaError_t attention_backward(
    const T* grad_out, const T* q, const T* k, const T* v, const T* out, const acc_type<T>* lse,
    acc_type<T>* delta_workspace, T* grad_q, T* grad_k, T* grad_v, const AttentionShape& shape, double scale,
    cudaStream_t stream) {
  using acc_t = acc_type<T>;
  const acc_t acc_scale = static_cast<acc_t>(scale);
  const int64_t rows = shape.batch * shape.queries;
  if (rows > 0) {
    const int64_t blocks = ceil_div(rows, kWarps);
    if (blocks > kMaxGridX) {
      return cudaErrorInvalidConfiguration;
    }
    delta_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        grad_out, out, delta_workspace, rows, shape.v_dim);
    const cudaError_t error = cudaGetLastError();
    if (error != cudaSuccess) {
      return error;
    }
  }
  LaunchTile q_tile{}, kv_tile{};
  cudaError_t error = choose_tile([&](int t) { return grad_q_shared_elements(t, shape); }, sizeof(acc_t), &q_tile);
  if (error == cudaSuccess) {
    error = choose_tile([&](int t) { return grad_kv_shared_elements(t, shape); }, sizeof(acc_t), &kv_tile);
  }
  if (error == cudaSuccess) {
    error = launch(
        grad_q_kernel<T>, shape.batch * ceil_div(shape.queries, q_tile.tile), q_tile, stream, grad_out, q, k, v,
        lse, static_cast<const acc_t*>(delta_workspace), grad_q, shape, q_tile.tile, acc_scale);
  }
  if (error == cudaSuccess) {
    error = launch(
        grad_kv_kernel<T>, shape.batch * ceil_div(shape.keys, kv_tile.tile), kv_tile, stream, grad_out, q, k, v, lse,
        static_cast<const acc_t*>(delta_workspace), grad_k, grad_v, shape, kv_tile.tile, acc_scale);
  }
  return error;
}

#define GANOPS_INSTANTIATE_ATTENTION(T)                                                                            \
  template cudaError_t attention_forward<T>(                                                                       \
      const T*, const T*, const T*, T*, acc_type<T>*, const AttentionShape&, double, cudaStream_t);                \
  template cudaError_t attention_backward<T>(                                                                      \
      const T*, const T*, const T*, const T*, const T*, const acc_type<T>*, acc_type<T>*, T*, T*,                  \
      T*, const AttentionShape&, double, cudaStream_t);

GANOPS_INSTANTIATE_ATTENTION(double)
GANOPS_INSTANTIATE_ATTENTION(float)
GANOPS_INSTANTIATE_ATTENTION(__half)
GANOPS_INSTANTIATE_ATTENTION(__nv_bfloat16)

#undef GANOPS_INSTANTIATE_ATTENTION

}  // namespace cuda_kernels
}  // namespace ganops
