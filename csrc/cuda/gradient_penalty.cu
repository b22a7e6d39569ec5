// CUDA kernels of the fused gradient penalty and the interpolation; math and notation of
// ganops/reference/gradient_penalty.py.
//
// 1. partial_sums_kernel: one block per (row n, slice), summing g^2 (and g * gg) over the slice into a partial.
// 2. row_coefficients_kernel: one thread per row adds its partials in slice order and computes k_n, m_n d_n and
//    k_n d_n (backward passes), or the value kernel does the same per row and reduces h(s_n) over the batch.
// 3. An elementwise grid-stride kernel writes grad_g from the per-row coefficients.
// Every reduction has a fixed order and shape, so results are deterministic. Sums over a row, and over the rows,
// the per-slice partials and the per-row coefficients are carried in wide_sum_t (double, csrc/common.h), so their
// error does not grow with D and, as in the CPU kernels, nothing overflows for float32 |g| up to its range: k_n
// (about c / s_n, beyond float32 for a subnormal g_n) and m_n d_n (about c / s_n^2) multiply g wide. A sample with
// a NaN or infinite element is NaN throughout (nan_unless_finite, the reference docstring's rule).
#include "gradient_penalty.h"

#include <algorithm>

#include "device_utils.cuh"

namespace ganops {
namespace gradient_penalty_cuda {
namespace {

// Every block of this file has exactly this many threads, as block_sum<kThreads> requires.
constexpr int kThreads = 256;
// Elements one block of the partial-sum kernel covers at least; rows are cut into slices of this size or more.
constexpr int64_t kSliceMin = 4096;
// Blocks the partial-sum kernel aims at: several waves on current GPUs.
constexpr int64_t kTargetBlocks = 1024;
constexpr int64_t kMaxBlocks = int64_t(1) << 16;

struct Slices {
  int64_t splits, span;
};

Slices slices_of(int64_t N, int64_t D) {
  const int64_t wanted = std::max<int64_t>(1, ceil_div(kTargetBlocks, N));
  const int64_t most = std::max<int64_t>(1, ceil_div(D, kSliceMin));
  int64_t splits = std::min(wanted, most);
  const int64_t span = ceil_div(D, splits);
  splits = ceil_div(D, span);
  return {splits, span};
}

// partial_squared[n * splits + s] = sum of g^2 over slice s of row n (and partial_dot of g * other).
template <typename T, bool WithDot>
__global__ void partial_sums_kernel(
    const T* __restrict__ g, const T* __restrict__ other, int64_t D, Slices slices,
    wide_sum_t* __restrict__ partial_squared, wide_sum_t* __restrict__ partial_dot) {
  const int64_t task = blockIdx.x;
  const int64_t n = task / slices.splits, s = task % slices.splits;
  const int64_t begin = s * slices.span;
  const int64_t end = begin + slices.span < D ? begin + slices.span : D;
  wide_sum_t squares = 0, products = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const wide_sum_t v = to_acc(g[n * D + i]);
    squares += v * v;
    if (WithDot) {
      products += v * to_acc(other[n * D + i]);
    }
  }
  squares = block_sum<kThreads>(squares);
  if (threadIdx.x == 0) {
    partial_squared[task] = squares;
  }
  if (WithDot) {
    products = block_sum<kThreads>(products);
    if (threadIdx.x == 0) {
      partial_dot[task] = products;
    }
  }
}

__device__ __forceinline__ wide_sum_t row_total(const wide_sum_t* partial, int64_t n, int64_t splits) {
  wide_sum_t total = 0;
  for (int64_t s = 0; s < splits; ++s) {
    total += partial[n * splits + s];
  }
  return total;
}

template <typename acc_t>
__device__ __forceinline__ void coefficients(
    acc_t squared, acc_t center, bool one_sided, int64_t N, acc_t& k, acc_t& m) {
  const acc_t norm = sqrt(nan_unless_finite(squared));
  const acc_t inverse = norm == acc_t(0) ? acc_t(0) : acc_t(1) / norm;
  const acc_t two_over_n = acc_t(2) / static_cast<acc_t>(N);
  if (one_sided && norm <= center) {  // false for NaN: a NaN sample stays NaN
    k = m = acc_t(0);
    return;
  }
  k = two_over_n * (acc_t(1) - center * inverse);
  m = two_over_n * center * inverse * inverse * inverse;
}

// out = mean_n h(s_n); one block.
template <typename T>
__global__ void penalty_value_kernel(
    const wide_sum_t* __restrict__ partial_squared, int64_t N, int64_t splits, double center, bool one_sided,
    T* __restrict__ out) {
  using acc_t = acc_type<T>;
  wide_sum_t total = 0;
  for (int64_t n = threadIdx.x; n < N; n += kThreads) {
    const wide_sum_t squared = nan_unless_finite(row_total(partial_squared, n, splits));
    wide_sum_t distance = sqrt(squared) - center;
    if (one_sided && distance < 0) {  // NaN stays NaN
      distance = 0;
    }
    // centre 0: q itself, h(s) = s^2 exactly without the square root.
    total += center == 0 ? squared : distance * distance;
  }
  total = block_sum<kThreads>(total);
  if (threadIdx.x == 0) {
    out[0] = from_acc<T>(static_cast<acc_t>(total / static_cast<wide_sum_t>(N)));
  }
}

// Per row: along_gg[n] = k_n, along_g[n] = m_n d_n, weighted_dot[n] = k_n d_n (the last two only with a dot).
template <typename T>
__global__ void row_coefficients_kernel(
    const wide_sum_t* __restrict__ partial_squared, const wide_sum_t* __restrict__ partial_dot, int64_t N,
    int64_t splits, double center, bool one_sided, wide_sum_t* __restrict__ along_gg,
    wide_sum_t* __restrict__ along_g, wide_sum_t* __restrict__ weighted_dot) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) {
    return;
  }
  wide_sum_t k, m;
  coefficients(row_total(partial_squared, n, splits), center, one_sided, N, k, m);
  along_gg[n] = k;
  if (partial_dot != nullptr) {
    const wide_sum_t dot = row_total(partial_dot, n, splits);
    along_g[n] = m * dot;
    weighted_dot[n] = k * dot;
  }
}

// out = sum_n values[n]; one block.
template <typename T>
__global__ void sum_kernel(const wide_sum_t* __restrict__ values, int64_t N, T* __restrict__ out) {
  wide_sum_t total = 0;
  for (int64_t n = threadIdx.x; n < N; n += kThreads) {
    total += values[n];
  }
  total = block_sum<kThreads>(total);
  if (threadIdx.x == 0) {
    out[0] = from_acc<T>(static_cast<acc_type<T>>(total));
  }
}

// grad_g = go * (along_gg[n] * gg + along_g[n] * g); gg == nullptr means the backward (gg := g, no along_g).
template <typename T>
__global__ void scale_rows_kernel(
    const T* __restrict__ grad_out, const T* __restrict__ g, const T* __restrict__ gg,
    const wide_sum_t* __restrict__ along_gg, const wide_sum_t* __restrict__ along_g, int64_t N, int64_t D,
    T* __restrict__ grad_g) {
  using acc_t = acc_type<T>;
  const wide_sum_t go = to_acc(grad_out[0]);
  const int64_t total = N * D;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t n = i / D;
    const wide_sum_t value = to_acc(g[i]);
    const wide_sum_t result =
        gg == nullptr ? along_gg[n] * value : along_gg[n] * wide_sum_t(to_acc(gg[i])) + along_g[n] * value;
    grad_g[i] = from_acc<T>(static_cast<acc_t>(go * result));
  }
}

template <typename T>
__global__ void interpolate_kernel(
    const T* __restrict__ real, const T* __restrict__ fake, const acc_type<T>* __restrict__ eps, int64_t N,
    int64_t D, T* __restrict__ out) {
  using acc_t = acc_type<T>;
  const int64_t total = N * D;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const acc_t weight = eps[i / D];
    out[i] = from_acc<T>(weight * to_acc(real[i]) + (acc_t(1) - weight) * to_acc(fake[i]));
  }
}

unsigned elementwise_blocks(int64_t total) {
  return static_cast<unsigned>(std::min<int64_t>(kMaxBlocks, std::max<int64_t>(1, ceil_div(total, kThreads))));
}

unsigned row_blocks(int64_t N) {
  return static_cast<unsigned>(ceil_div(N, kThreads));
}

// Workspace layout: partial_squared [N * splits], partial_dot [N * splits], along_gg [N], along_g [N],
// weighted_dot [N].
struct Workspace {
  wide_sum_t *partial_squared, *partial_dot, *along_gg, *along_g, *weighted_dot;
};

Workspace split_workspace(wide_sum_t* base, int64_t N, const Slices& slices) {
  const int64_t partials = N * slices.splits;
  return {base, base + partials, base + 2 * partials, base + 2 * partials + N, base + 2 * partials + 2 * N};
}

}  // namespace

int64_t partial_splits(int64_t N, int64_t D) {
  return slices_of(N, D).splits;
}

int64_t workspace_elements(int64_t N, int64_t D) {
  return 2 * N * partial_splits(N, D) + 3 * N;
}

template <typename T>
cudaError_t penalty_forward(
    const T* g, int64_t N, int64_t D, double center, bool one_sided, wide_sum_t* workspace, T* out,
    cudaStream_t stream) {
  const Slices slices = slices_of(N, D);
  const auto ws = split_workspace(workspace, N, slices);
  partial_sums_kernel<T, false><<<static_cast<unsigned>(N * slices.splits), kThreads, 0, stream>>>(
      g, nullptr, D, slices, ws.partial_squared, nullptr);
  penalty_value_kernel<T><<<1, kThreads, 0, stream>>>(
      ws.partial_squared, N, slices.splits, center, one_sided, out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t penalty_backward(
    const T* grad_out, const T* g, int64_t N, int64_t D, double center, bool one_sided, wide_sum_t* workspace,
    T* grad_g, cudaStream_t stream) {
  const Slices slices = slices_of(N, D);
  const auto ws = split_workspace(workspace, N, slices);
  partial_sums_kernel<T, false><<<static_cast<unsigned>(N * slices.splits), kThreads, 0, stream>>>(
      g, nullptr, D, slices, ws.partial_squared, nullptr);
  row_coefficients_kernel<T><<<row_blocks(N), kThreads, 0, stream>>>(
      ws.partial_squared, nullptr, N, slices.splits, center, one_sided, ws.along_gg, nullptr,
      nullptr);
  scale_rows_kernel<T><<<elementwise_blocks(N * D), kThreads, 0, stream>>>(
      grad_out, g, nullptr, ws.along_gg, nullptr, N, D, grad_g);
  return cudaGetLastError();
}

template <typename T>
cudaError_t penalty_double_backward(
    const T* gg, const T* grad_out, const T* g, int64_t N, int64_t D, double center, bool one_sided,
    wide_sum_t* workspace, T* grad_grad_out, T* grad_g, cudaStream_t stream) {
  const Slices slices = slices_of(N, D);
  const auto ws = split_workspace(workspace, N, slices);
  partial_sums_kernel<T, true><<<static_cast<unsigned>(N * slices.splits), kThreads, 0, stream>>>(
      g, gg, D, slices, ws.partial_squared, ws.partial_dot);
  row_coefficients_kernel<T><<<row_blocks(N), kThreads, 0, stream>>>(
      ws.partial_squared, ws.partial_dot, N, slices.splits, center, one_sided, ws.along_gg,
      ws.along_g, ws.weighted_dot);
  sum_kernel<T><<<1, kThreads, 0, stream>>>(ws.weighted_dot, N, grad_grad_out);
  scale_rows_kernel<T><<<elementwise_blocks(N * D), kThreads, 0, stream>>>(
      grad_out, g, gg, ws.along_gg, ws.along_g, N, D, grad_g);
  return cudaGetLastError();
}

template <typename T>
cudaError_t interpolate(
    const T* real, const T* fake, const acc_type<T>* eps, int64_t N, int64_t D, T* out, cudaStream_t stream) {
  interpolate_kernel<T><<<elementwise_blocks(N * D), kThreads, 0, stream>>>(real, fake, eps, N, D, out);
  return cudaGetLastError();
}

#define GANOPS_INSTANTIATE_GRADIENT_PENALTY(T)                                                                    \
  template cudaError_t penalty_forward<T>(const T*, int64_t, int64_t, double, bool, wide_sum_t*, T*, cudaStream_t);  \
  template cudaError_t penalty_backward<T>(                                                                      \
      const T*, const T*, int64_t, int64_t, double, bool, wide_sum_t*, T*, cudaStream_t);                        \
  template cudaError_t penalty_double_backward<T>(                                                               \
      const T*, const T*, const T*, int64_t, int64_t, double, bool, wide_sum_t*, T*, T*, cudaStream_t);          \
  template cudaError_t interpolate<T>(const T*, const T*, const acc_type<T>*, int64_t, int64_t, T*, cudaStream_t);

GANOPS_INSTANTIATE_GRADIENT_PENALTY(double)
GANOPS_INSTANTIATE_GRADIENT_PENALTY(float)
GANOPS_INSTANTIATE_GRADIENT_PENALTY(__half)
GANOPS_INSTANTIATE_GRADIENT_PENALTY(__nv_bfloat16)

}  // namespace gradient_penalty_cuda
}  // namespace ganops
