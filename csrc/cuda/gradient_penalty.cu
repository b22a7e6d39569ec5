// CUDA kernels of the fused gradient penalty and the interpolation; math and notation of
// ganops/reference/gradient_penalty.py.
//
// The kernels run over (row n, slice s) blocks: rows are cut into slices so that a small batch of large samples
// still fills the GPU (about kTargetBlocks blocks where the rows are long enough).
// 1. partial_sums_kernel: each block sums g^2 (and g * gg) over its slice into one partial per block.
// 2. The forward's penalty_value_kernel (one block) adds each row's partials in slice order, writes s_n (the
//    norms the backward takes) and reduces h(s_n) over the batch. scale_rows_kernel: each block finds its row's
//    k_n (and m_n d_n) itself, from the forward's s_n in the backward (which is this one launch: g is read once)
//    or from its row's partials in the double backward, and writes grad_g over its slice; block 0 of the double
//    backward also reduces sum_n k_n d_n into grad_grad_out. (One launch fewer per pass than a separate
//    coefficients kernel.)
// Rows whose start is 16-byte aligned and whose length is a multiple of the pack width are read and written in
// 16-byte packs (8 halves, 4 floats, 2 doubles); slices start at multiples of 8 elements, so a slice of such a row
// is aligned too. The slicing depends on (N, D) only, so the order of every sum is fixed (deterministic results).
// Sums over a row, and over the rows, the per-slice partials and the per-row coefficients are carried in
// wide_sum_t (double, csrc/common.h), so their error does not grow with D and, as in the CPU kernels, nothing
// overflows for float32 |g| up to its range: k_n (about c / s_n, beyond float32 for a subnormal g_n) and m_n d_n
// (about c / s_n^2) multiply g wide. A sample with a NaN or infinite element is NaN throughout
// (nan_unless_finite, the reference docstring's rule).
#include "gradient_penalty.h"

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "device_utils.cuh"

namespace ganops {
namespace gradient_penalty_cuda {
namespace {

// Every block of this file has exactly this many threads, as block_sum<kThreads> requires.
constexpr int kThreads = 256;
// Elements one block covers at least; rows are cut into slices of this size or more.
constexpr int64_t kSliceMin = 1024;
// Blocks the sliced kernels aim at: several waves on current GPUs.
constexpr int64_t kTargetBlocks = 1024;
constexpr int64_t kMaxBlocks = int64_t(1) << 16;
// Slices start at multiples of this many elements: a whole number of 16-byte packs of every element type.
constexpr int64_t kSliceAlignment = 8;

struct Slices {
  int64_t splits, span;
};

Slices slices_of(int64_t N, int64_t D) {
  const int64_t wanted = std::max<int64_t>(1, ceil_div(kTargetBlocks, N));
  const int64_t most = std::max<int64_t>(1, ceil_div(D, kSliceMin));
  const int64_t splits = std::min(wanted, most);
  const int64_t span = ceil_div(ceil_div(D, splits), kSliceAlignment) * kSliceAlignment;
  return {std::max<int64_t>(1, ceil_div(D, span)), span};
}

// Elements of T in one 16-byte pack.
template <typename T>
constexpr int kPack = static_cast<int>(16 / sizeof(T));

template <typename T, int Width>
struct alignas(sizeof(T) * Width) Pack {
  T value[Width];
};

// The slice of row n that block `task` covers: [begin, end) in elements of the row.
struct SliceBounds {
  int64_t n, begin, end;
};

__device__ __forceinline__ SliceBounds slice_bounds(int64_t task, int64_t D, const Slices& slices) {
  const int64_t n = task / slices.splits;
  const int64_t begin = (task % slices.splits) * slices.span;
  return {n, begin, begin + slices.span < D ? begin + slices.span : D};
}

// partial_squared[n * splits + s] = sum of g^2 over slice s of row n (and partial_dot of g * other). Width > 1:
// the rows are read in packs of Width elements (the launcher checked alignment and D % Width == 0).
template <typename T, bool WithDot, int Width>
__global__ void __launch_bounds__(kThreads) partial_sums_kernel(
    const T* __restrict__ g, const T* __restrict__ other, int64_t D, Slices slices,
    wide_sum_t* __restrict__ partial_squared, wide_sum_t* __restrict__ partial_dot) {
  const SliceBounds slice = slice_bounds(blockIdx.x, D, slices);
  const T* g_row = g + slice.n * D;
  const T* other_row = WithDot ? other + slice.n * D : nullptr;
  wide_sum_t squares = 0, products = 0;
  for (int64_t i = slice.begin + int64_t(threadIdx.x) * Width; i < slice.end; i += int64_t(kThreads) * Width) {
    const Pack<T, Width> values = *reinterpret_cast<const Pack<T, Width>*>(g_row + i);
    Pack<T, Width> others;
    if (WithDot) {
      others = *reinterpret_cast<const Pack<T, Width>*>(other_row + i);
    }
#pragma unroll
    for (int j = 0; j < Width; ++j) {
      const wide_sum_t v = to_acc(values.value[j]);
      squares += v * v;
      if (WithDot) {
        products += v * to_acc(others.value[j]);
      }
    }
  }
  squares = block_sum<kThreads>(squares);
  if (threadIdx.x == 0) {
    partial_squared[blockIdx.x] = squares;
  }
  if (WithDot) {
    products = block_sum<kThreads>(products);
    if (threadIdx.x == 0) {
      partial_dot[blockIdx.x] = products;
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

// s_n from q_n; NaN for a sample with a non-finite element.
__device__ __forceinline__ wide_sum_t norm_of(wide_sum_t squared) {
  return sqrt(nan_unless_finite(squared));
}

template <typename acc_t>
__device__ __forceinline__ void coefficients(acc_t norm, acc_t center, bool one_sided, int64_t N, acc_t& k, acc_t& m) {
  const acc_t inverse = norm == acc_t(0) ? acc_t(0) : acc_t(1) / norm;
  const acc_t two_over_n = acc_t(2) / static_cast<acc_t>(N);
  if (one_sided && norm <= center) {  // false for NaN: a NaN sample stays NaN
    k = m = acc_t(0);
    return;
  }
  k = two_over_n * (acc_t(1) - center * inverse);
  m = two_over_n * center * inverse * inverse * inverse;
}

// out = mean_n h(s_n) and norms[n] = s_n; one block.
template <typename T>
__global__ void __launch_bounds__(kThreads) penalty_value_kernel(
    const wide_sum_t* __restrict__ partial_squared, int64_t N, int64_t splits, double center, bool one_sided,
    T* __restrict__ out, double* __restrict__ norms) {
  using acc_t = acc_type<T>;
  wide_sum_t total = 0;
  for (int64_t n = threadIdx.x; n < N; n += kThreads) {
    const wide_sum_t squared = nan_unless_finite(row_total(partial_squared, n, splits));
    const wide_sum_t norm = sqrt(squared);
    norms[n] = norm;
    wide_sum_t distance = norm - center;
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

// The sum of row n's partials, computed by the whole block (every thread gets it).
__device__ __forceinline__ wide_sum_t block_row_total(const wide_sum_t* partial, int64_t n, int64_t splits) {
  wide_sum_t total = 0;
  for (int64_t s = threadIdx.x; s < splits; s += kThreads) {
    total += partial[n * splits + s];
  }
  return block_sum<kThreads>(total);
}

// grad_grad_out = sum_n k_n d_n, by the whole block. Not inlined: its square roots and divisions are calls whose
// saved registers would otherwise spill in the caller.
template <typename T>
__device__ __noinline__ void write_weighted_dot_total(
    const wide_sum_t* __restrict__ partial_squared, const wide_sum_t* __restrict__ partial_dot, int64_t N,
    int64_t splits, double center, bool one_sided, T* __restrict__ grad_grad_out) {
  wide_sum_t total = 0;
  for (int64_t n = threadIdx.x; n < N; n += kThreads) {
    wide_sum_t k, m;
    coefficients(norm_of(row_total(partial_squared, n, splits)), wide_sum_t(center), one_sided, N, k, m);
    total += k * row_total(partial_dot, n, splits);
  }
  total = block_sum<kThreads>(total);
  if (threadIdx.x == 0) {
    grad_grad_out[0] = from_acc<T>(static_cast<acc_type<T>>(total));
  }
}

// Row n's k_n and m_n d_n (0 without partial_dot), computed by the whole block and returned to every thread; s_n
// from norms where given (the backward), else from the row's partials.
__device__ __noinline__ void block_row_coefficients(
    const double* __restrict__ norms, const wide_sum_t* __restrict__ partial_squared,
    const wide_sum_t* __restrict__ partial_dot, int64_t n, int64_t N, int64_t splits, double center, bool one_sided,
    wide_sum_t* k, wide_sum_t* along_g) {
  const wide_sum_t norm = norms != nullptr ? norms[n] : norm_of(block_row_total(partial_squared, n, splits));
  const wide_sum_t dot = partial_dot != nullptr ? block_row_total(partial_dot, n, splits) : wide_sum_t(0);
  wide_sum_t m;
  coefficients(norm, wide_sum_t(center), one_sided, N, *k, m);
  *along_g = m * dot;
}

// grad_g = go * (k_n * gg + m_n d_n * g) over the block's slice. gg == nullptr means the backward (gg := g, no
// m_n term, s_n from norms); else the double backward (norms == nullptr; s_n and d_n = <g_n, gg_n> from the row's
// partials), whose block 0 also writes grad_grad_out = sum_n k_n d_n.
template <typename T, int Width>
__global__ void __launch_bounds__(kThreads) scale_rows_kernel(
    const T* __restrict__ grad_out, const T* __restrict__ g, const T* __restrict__ gg, const double* __restrict__ norms,
    const wide_sum_t* __restrict__ partial_squared, const wide_sum_t* __restrict__ partial_dot, int64_t N, int64_t D,
    Slices slices, double center, bool one_sided, T* __restrict__ grad_g, T* __restrict__ grad_grad_out) {
  using acc_t = acc_type<T>;
  const bool with_dot = gg != nullptr;
  if (with_dot && blockIdx.x == 0) {
    write_weighted_dot_total(partial_squared, partial_dot, N, slices.splits, center, one_sided, grad_grad_out);
  }
  const SliceBounds slice = slice_bounds(blockIdx.x, D, slices);
  wide_sum_t k, along_g;
  block_row_coefficients(
      norms, partial_squared, with_dot ? partial_dot : nullptr, slice.n, N, slices.splits, center, one_sided, &k,
      &along_g);
  const wide_sum_t go = to_acc(grad_out[0]);
  const T* g_row = g + slice.n * D;
  const T* gg_row = with_dot ? gg + slice.n * D : nullptr;
  T* out_row = grad_g + slice.n * D;
  for (int64_t i = slice.begin + int64_t(threadIdx.x) * Width; i < slice.end; i += int64_t(kThreads) * Width) {
    const Pack<T, Width> values = *reinterpret_cast<const Pack<T, Width>*>(g_row + i);
    Pack<T, Width> others, results;
    if (with_dot) {
      others = *reinterpret_cast<const Pack<T, Width>*>(gg_row + i);
    }
#pragma unroll
    for (int j = 0; j < Width; ++j) {
      const wide_sum_t value = to_acc(values.value[j]);
      const wide_sum_t result = with_dot ? k * wide_sum_t(to_acc(others.value[j])) + along_g * value : k * value;
      results.value[j] = from_acc<T>(static_cast<acc_t>(go * result));
    }
    *reinterpret_cast<Pack<T, Width>*>(out_row + i) = results;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) interpolate_kernel(
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

// Whether rows of D elements starting at each of `pointers` can be read in 16-byte packs of T.
template <typename T>
bool rows_fit_packs(int64_t D, std::initializer_list<const void*> pointers) {
  if (D % kPack<T> != 0) {
    return false;
  }
  for (const void* pointer : pointers) {
    if (pointer != nullptr && reinterpret_cast<std::uintptr_t>(pointer) % 16 != 0) {
      return false;
    }
  }
  return true;
}

// Workspace layout: partial_squared [N * splits], partial_dot [N * splits].
struct Workspace {
  wide_sum_t *partial_squared, *partial_dot;
};

Workspace split_workspace(wide_sum_t* base, int64_t N, const Slices& slices) {
  return {base, base + N * slices.splits};
}

template <typename T, bool WithDot>
void launch_partial_sums(const T* g, const T* other, int64_t N, int64_t D, const Slices& slices, const Workspace& ws,
                         cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(N * slices.splits);
  if (rows_fit_packs<T>(D, {g, other})) {
    partial_sums_kernel<T, WithDot, kPack<T>><<<blocks, kThreads, 0, stream>>>(
        g, other, D, slices, ws.partial_squared, ws.partial_dot);
  } else {
    partial_sums_kernel<T, WithDot, 1><<<blocks, kThreads, 0, stream>>>(
        g, other, D, slices, ws.partial_squared, ws.partial_dot);
  }
}

template <typename T>
void launch_scale_rows(const T* grad_out, const T* g, const T* gg, const double* norms, int64_t N, int64_t D,
                       const Slices& slices, const Workspace& ws, double center, bool one_sided, T* grad_g,
                       T* grad_grad_out, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(N * slices.splits);
  if (rows_fit_packs<T>(D, {g, gg, grad_g})) {
    scale_rows_kernel<T, kPack<T>><<<blocks, kThreads, 0, stream>>>(
        grad_out, g, gg, norms, ws.partial_squared, ws.partial_dot, N, D, slices, center, one_sided, grad_g,
        grad_grad_out);
  } else {
    scale_rows_kernel<T, 1><<<blocks, kThreads, 0, stream>>>(
        grad_out, g, gg, norms, ws.partial_squared, ws.partial_dot, N, D, slices, center, one_sided, grad_g,
        grad_grad_out);
  }
}

}  // namespace

int64_t partial_splits(int64_t N, int64_t D) {
  return slices_of(N, D).splits;
}

int64_t workspace_elements(int64_t N, int64_t D) {
  return 2 * N * partial_splits(N, D);
}

template <typename T>
cudaError_t penalty_forward(
    const T* g, int64_t N, int64_t D, double center, bool one_sided, wide_sum_t* workspace, T* out, double* norms,
    cudaStream_t stream) {
  const Slices slices = slices_of(N, D);
  const auto ws = split_workspace(workspace, N, slices);
  launch_partial_sums<T, false>(g, nullptr, N, D, slices, ws, stream);
  penalty_value_kernel<T><<<1, kThreads, 0, stream>>>(
      ws.partial_squared, N, slices.splits, center, one_sided, out, norms);
  return cudaGetLastError();
}

template <typename T>
cudaError_t penalty_backward(
    const T* grad_out, const T* g, const double* norms, int64_t N, int64_t D, double center, bool one_sided,
    T* grad_g, cudaStream_t stream) {
  const Slices slices = slices_of(N, D);
  launch_scale_rows<T>(
      grad_out, g, nullptr, norms, N, D, slices, Workspace{nullptr, nullptr}, center, one_sided, grad_g, nullptr,
      stream);
  return cudaGetLastError();
}

template <typename T>
cudaError_t penalty_double_backward(
    const T* gg, const T* grad_out, const T* g, int64_t N, int64_t D, double center, bool one_sided,
    wide_sum_t* workspace, T* grad_grad_out, T* grad_g, cudaStream_t stream) {
  const Slices slices = slices_of(N, D);
  const auto ws = split_workspace(workspace, N, slices);
  launch_partial_sums<T, true>(g, gg, N, D, slices, ws, stream);
  launch_scale_rows<T>(grad_out, g, gg, nullptr, N, D, slices, ws, center, one_sided, grad_g, grad_grad_out, stream);
  return cudaGetLastError();
}

template <typename T>
cudaError_t interpolate(
    const T* real, const T* fake, const acc_type<T>* eps, int64_t N, int64_t D, T* out, cudaStream_t stream) {
  interpolate_kernel<T><<<elementwise_blocks(N * D), kThreads, 0, stream>>>(real, fake, eps, N, D, out);
  return cudaGetLastError();
}

#define GANOPS_INSTANTIATE_GRADIENT_PENALTY(T)                                                                    \
  template cudaError_t penalty_forward<T>(                                                                       \
      const T*, int64_t, int64_t, double, bool, wide_sum_t*, T*, double*, cudaStream_t);                         \
  template cudaError_t penalty_backward<T>(                                                                      \
      const T*, const T*, const double*, int64_t, int64_t, double, bool, T*, cudaStream_t);                      \
  template cudaError_t penalty_double_backward<T>(                                                               \
      const T*, const T*, const T*, int64_t, int64_t, double, bool, wide_sum_t*, T*, T*, cudaStream_t);          \
  template cudaError_t interpolate<T>(const T*, const T*, const acc_type<T>*, int64_t, int64_t, T*, cudaStream_t);

GANOPS_INSTANTIATE_GRADIENT_PENALTY(double)
GANOPS_INSTANTIATE_GRADIENT_PENALTY(float)
GANOPS_INSTANTIATE_GRADIENT_PENALTY(__half)
GANOPS_INSTANTIATE_GRADIENT_PENALTY(__nv_bfloat16)

}  // namespace gradient_penalty_cuda
}  // namespace ganops
