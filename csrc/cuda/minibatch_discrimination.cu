// CUDA kernels of the minibatch-discrimination ops; math and notation of ganops/reference/minibatch_discrimination.py.
//
// One thread per (kernel b, sample i); a block holds kThreads consecutive samples of one kernel, so the reads of
// x[b, c, j] are the same address for the whole warp (a broadcast) and the reads and writes of sample i are
// coalesced. Each thread sweeps j in tiles of kTile, keeping the tile's weights in registers, and sums in a fixed
// order: deterministic, no atomics, and nothing of size N x N is ever stored.
#include "minibatch_discrimination.h"

#include "../common.h"
#include "device_utils.cuh"

namespace ganops {
namespace minibatch_discrimination_kernels {
namespace {

constexpr int kThreads = 128;
constexpr int kTile = 16;

__device__ __forceinline__ float exp_of(float v) { return expf(v); }
__device__ __forceinline__ double exp_of(double v) { return exp(v); }
__device__ __forceinline__ float abs_of(float v) { return fabsf(v); }
__device__ __forceinline__ double abs_of(double v) { return fabs(v); }

template <typename acc_t>
__device__ __forceinline__ acc_t sign_of(acc_t v) {
  return static_cast<acc_t>((v > acc_t(0)) - (v < acc_t(0)));
}

struct Task {
  int64_t b, i;
  bool active;
};

// Blocks are laid out as B * ceil(N / kThreads) on grid axis 0 (axis 1 stops at 65535).
__device__ __forceinline__ Task task_of(int64_t N) {
  const int64_t row_tiles = ceil_div(N, kThreads);
  const int64_t b = blockIdx.x / row_tiles;
  const int64_t i = (blockIdx.x % row_tiles) * kThreads + threadIdx.x;
  return {b, i, i < N};
}

// distance[t] = sum_c |x_b[c, i] - x_b[c, j0 + t]| for t < len.
template <typename acc_t>
__device__ __forceinline__ void tile_distances(
    const acc_t* x_b, int64_t N, int64_t C, int64_t i, int64_t j0, int len, acc_t (&distance)[kTile]) {
#pragma unroll
  for (int t = 0; t < kTile; ++t) {
    distance[t] = acc_t(0);
  }
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* row = x_b + c * N;
    const acc_t x_i = row[i];
#pragma unroll
    for (int t = 0; t < kTile; ++t) {
      if (t < len) {
        distance[t] += abs_of(x_i - row[j0 + t]);
      }
    }
  }
}

// grad_b[c, i] += sum_t weight[t] * sign(x_b[c, i] - x_b[c, j0 + t]) for every c.
template <typename acc_t>
__device__ __forceinline__ void add_signed_sums(
    const acc_t* x_b, int64_t N, int64_t C, int64_t i, int64_t j0, int len, const acc_t (&weight)[kTile],
    acc_t* grad_b) {
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* row = x_b + c * N;
    const acc_t x_i = row[i];
    acc_t sum(0);
#pragma unroll
    for (int t = 0; t < kTile; ++t) {
      if (t < len) {
        sum += weight[t] * sign_of(x_i - row[j0 + t]);
      }
    }
    grad_b[c * N + i] += sum;
  }
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const acc_t* __restrict__ x, int64_t N, int64_t C, bool exclude_self, acc_t* __restrict__ o) {
  const Task task = task_of(N);
  if (!task.active) {
    return;
  }
  const acc_t* x_b = x + task.b * C * N;
  acc_t distance[kTile];
  acc_t total(0);
  for (int64_t j0 = 0; j0 < N; j0 += kTile) {
    const int len = static_cast<int>(N - j0 < kTile ? N - j0 : kTile);
    tile_distances(x_b, N, C, task.i, j0, len, distance);
#pragma unroll
    for (int t = 0; t < kTile; ++t) {
      // Leaving the j = i term out, rather than subtracting exp(0) = 1 later, keeps small sums exact; kept, it is
      // the constant 1 even for a non-finite row (reference docstring), not exp(-|NaN - NaN|).
      if (t < len && !(exclude_self && j0 + t == task.i)) {
        total += j0 + t == task.i ? acc_t(1) : exp_of(-distance[t]);
      }
    }
  }
  o[task.b * N + task.i] = total;
}

// grad_m starts at zero (the binding allocates it so).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads) backward_kernel(
    const acc_t* __restrict__ grad_o, const acc_t* __restrict__ x, int64_t N, int64_t C, acc_t* __restrict__ grad_m) {
  const Task task = task_of(N);
  if (!task.active) {
    return;
  }
  const acc_t* x_b = x + task.b * C * N;
  const acc_t* g_b = grad_o + task.b * N;
  const acc_t g_i = g_b[task.i];
  acc_t weight[kTile];
  for (int64_t j0 = 0; j0 < N; j0 += kTile) {
    const int len = static_cast<int>(N - j0 < kTile ? N - j0 : kTile);
    tile_distances(x_b, N, C, task.i, j0, len, weight);
#pragma unroll
    for (int t = 0; t < kTile; ++t) {
      // S_ii = 0: the j = i term adds nothing, even for a non-finite row.
      weight[t] = t < len && j0 + t != task.i ? -(g_i + g_b[j0 + t]) * exp_of(-weight[t]) : acc_t(0);
    }
    add_signed_sums(x_b, N, C, task.i, j0, len, weight, grad_m + task.b * C * N);
  }
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads) double_backward_kernel(
    const acc_t* __restrict__ grad_grad_m, const acc_t* __restrict__ grad_o, const acc_t* __restrict__ x, int64_t N,
    int64_t C, acc_t* __restrict__ grad_grad_o, acc_t* __restrict__ grad_m) {
  const Task task = task_of(N);
  if (!task.active) {
    return;
  }
  const acc_t* x_b = x + task.b * C * N;
  const acc_t* gg_b = grad_grad_m + task.b * C * N;
  const acc_t* g_b = grad_o + task.b * N;
  const acc_t g_i = g_b[task.i];
  acc_t weight[kTile], q[kTile];
  acc_t grad_g_i(0);
  for (int64_t j0 = 0; j0 < N; j0 += kTile) {
    const int len = static_cast<int>(N - j0 < kTile ? N - j0 : kTile);
    tile_distances(x_b, N, C, task.i, j0, len, weight);
#pragma unroll
    for (int t = 0; t < kTile; ++t) {
      q[t] = acc_t(0);
    }
    for (int64_t c = 0; c < C; ++c) {
      const acc_t* row = x_b + c * N;
      const acc_t* gg_row = gg_b + c * N;
      const acc_t x_i = row[task.i], gg_i = gg_row[task.i];
#pragma unroll
      for (int t = 0; t < kTile; ++t) {
        if (t < len) {
          q[t] += (gg_i - gg_row[j0 + t]) * sign_of(x_i - row[j0 + t]);
        }
      }
    }
#pragma unroll
    for (int t = 0; t < kTile; ++t) {
      const acc_t eq = t < len && j0 + t != task.i ? exp_of(-weight[t]) * q[t] : acc_t(0);  // S_ii = 0
      grad_g_i -= eq;
      weight[t] = t < len ? (g_i + g_b[j0 + t]) * eq : acc_t(0);
    }
    add_signed_sums(x_b, N, C, task.i, j0, len, weight, grad_m + task.b * C * N);
  }
  grad_grad_o[task.b * N + task.i] = grad_g_i;
}

// One block per (kernel b, kThreads samples), or cudaErrorInvalidConfiguration beyond grid axis 0.
cudaError_t blocks_of(int64_t N, int64_t B, unsigned int& blocks) {
  const int64_t count = B * ceil_div(N, kThreads);
  if (count > kMaxGridX) {
    return cudaErrorInvalidConfiguration;
  }
  blocks = static_cast<unsigned int>(count);
  return cudaSuccess;
}

}  // namespace

template <typename acc_t>
cudaError_t forward(const acc_t* x, int64_t N, int64_t B, int64_t C, bool exclude_self, acc_t* o, cudaStream_t stream) {
  unsigned int blocks = 0;
  if (const cudaError_t error = blocks_of(N, B, blocks); error != cudaSuccess) {
    return error;
  }
  forward_kernel<acc_t><<<blocks, kThreads, 0, stream>>>(x, N, C, exclude_self, o);
  return cudaGetLastError();
}

template <typename acc_t>
cudaError_t backward(
    const acc_t* grad_o, const acc_t* x, int64_t N, int64_t B, int64_t C, acc_t* grad_m, cudaStream_t stream) {
  unsigned int blocks = 0;
  if (const cudaError_t error = blocks_of(N, B, blocks); error != cudaSuccess) {
    return error;
  }
  backward_kernel<acc_t><<<blocks, kThreads, 0, stream>>>(grad_o, x, N, C, grad_m);
  return cudaGetLastError();
}

template <typename acc_t>
cudaError_t double_backward(
    const acc_t* grad_grad_m, const acc_t* grad_o, const acc_t* x, int64_t N, int64_t B, int64_t C,
    acc_t* grad_grad_o, acc_t* grad_m, cudaStream_t stream) {
  unsigned int blocks = 0;
  if (const cudaError_t error = blocks_of(N, B, blocks); error != cudaSuccess) {
    return error;
  }
  double_backward_kernel<acc_t><<<blocks, kThreads, 0, stream>>>(grad_grad_m, grad_o, x, N, C, grad_grad_o, grad_m);
  return cudaGetLastError();
}

#define GANOPS_INSTANTIATE(acc_t)                                                                                   \
  template cudaError_t forward<acc_t>(const acc_t*, int64_t, int64_t, int64_t, bool, acc_t*, cudaStream_t);         \
  template cudaError_t backward<acc_t>(const acc_t*, const acc_t*, int64_t, int64_t, int64_t, acc_t*, cudaStream_t); \
  template cudaError_t double_backward<acc_t>(                                                                      \
      const acc_t*, const acc_t*, const acc_t*, int64_t, int64_t, int64_t, acc_t*, acc_t*, cudaStream_t);
GANOPS_INSTANTIATE(float)
GANOPS_INSTANTIATE(double)
#undef GANOPS_INSTANTIATE

}  // namespace minibatch_discrimination_kernels
}  // namespace ganops
