// CUDA kernels of the spectral-norm ops; math and notation of ganops/reference/spectral_norm.py.
//
// One thread block per layer. W v: one warp per row (lanes stride the columns, a shuffle reduction sums
// them); W^T u: one thread per column walking every row, so a warp reads 32 consecutive columns of a row
// (coalesced for row-major weights). sigma = s . v with s the last W^T u (one pass saved). Norms and dot
// products are block reductions in a fixed order, so results are deterministic.
#include "spectral_norm.h"

#include <cstdint>

#include "device_utils.cuh"

namespace ganops {
namespace cuda_kernels {
namespace {

// Every block of this file has exactly this many threads, as block_sum<kThreads> requires.
constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

// work_u[r] = (W x)[r] for x = work_v; returns sum over rows of work_u[r] * weight_of_row(r) (by the block).
template <typename T, typename RowWeight>
__device__ acc_type<T> matvec_rows(const SpectralNormForwardLayer<T>& layer, const RowWeight& weight_of_row) {
  using acc_t = acc_type<T>;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  acc_t partial(0);
  for (int64_t r = warp; r < layer.rows; r += kWarps) {
    const T* row = layer.weight + r * layer.row_stride;
    acc_t acc(0);
    for (int64_t c = lane; c < layer.cols; c += 32) {
      acc += to_acc(row[c * layer.col_stride]) * layer.work_v[c];
    }
    acc = warp_sum(acc);
    if (lane == 0) {
      layer.work_u[r] = acc;
      partial += acc * weight_of_row(r, acc);
    }
  }
  return block_sum<kThreads>(partial);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) forward_kernel(
    const SpectralNormForwardLayer<T>* __restrict__ layers, int64_t n_power_iterations, acc_type<T> eps) {
  using acc_t = acc_type<T>;
  const SpectralNormForwardLayer<T> layer = layers[blockIdx.x];
  for (int64_t r = threadIdx.x; r < layer.rows; r += kThreads) {
    layer.work_u[r] = to_acc(layer.u[r]);
  }
  for (int64_t c = threadIdx.x; c < layer.cols; c += kThreads) {
    layer.work_v[c] = to_acc(layer.v[c]);
  }
  __syncthreads();
  acc_t sigma(0);
  if (n_power_iterations == 0) {
    // sigma = u . (W v); W v overwrites work_u only after u[r] has been read, by the same thread.
    sigma = matvec_rows(layer, [&](int64_t r, acc_t) { return to_acc(layer.u[r]); });
    __syncthreads();
    for (int64_t r = threadIdx.x; r < layer.rows; r += kThreads) {
      layer.work_u[r] = to_acc(layer.u[r]);
    }
  }
  for (int64_t it = 0; it < n_power_iterations; ++it) {
    const acc_t t_squared = matvec_rows(layer, [](int64_t, acc_t t) { return t; });
    const acc_t u_norm = max(sqrt(t_squared), eps);
    for (int64_t r = threadIdx.x; r < layer.rows; r += kThreads) {
      layer.work_u[r] /= u_norm;
    }
    __syncthreads();
    acc_t partial(0);
    for (int64_t c = threadIdx.x; c < layer.cols; c += kThreads) {
      acc_t acc(0);
      for (int64_t r = 0; r < layer.rows; ++r) {
        acc += to_acc(layer.weight[r * layer.row_stride + c * layer.col_stride]) * layer.work_u[r];
      }
      layer.work_v[c] = acc;
      partial += acc * acc;
    }
    const acc_t s_squared = block_sum<kThreads>(partial);
    const acc_t v_norm = max(sqrt(s_squared), eps);
    sigma = s_squared / v_norm;
    for (int64_t c = threadIdx.x; c < layer.cols; c += kThreads) {
      layer.work_v[c] /= v_norm;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    *layer.sigma = sigma;
  }
  for (int64_t r = threadIdx.x; r < layer.rows; r += kThreads) {
    layer.u_out[r] = from_acc<T>(layer.work_u[r]);
  }
  for (int64_t c = threadIdx.x; c < layer.cols; c += kThreads) {
    layer.v_out[c] = from_acc<T>(layer.work_v[c]);
  }
  const int64_t elements = layer.rows * layer.cols;
  for (int64_t e = threadIdx.x; e < elements; e += kThreads) {
    const int64_t r = e / layer.cols, c = e % layer.cols;
    layer.weight_sn[e] = from_acc<T>(to_acc(layer.weight[r * layer.row_stride + c * layer.col_stride]) / sigma);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) backward_kernel(const SpectralNormBackwardLayer<T>* __restrict__ layers) {
  using acc_t = acc_type<T>;
  const SpectralNormBackwardLayer<T> layer = layers[blockIdx.x];
  const int64_t elements = layer.rows * layer.cols;
  acc_t partial(0);
  for (int64_t e = threadIdx.x; e < elements; e += kThreads) {
    const int64_t r = e / layer.cols, c = e % layer.cols;
    partial += to_acc(layer.grad[r * layer.grad_row_stride + c * layer.grad_col_stride]) *
               to_acc(layer.weight[r * layer.row_stride + c * layer.col_stride]);
  }
  const acc_t sigma = *layer.sigma;
  // <G, W_sn> = <G, W> / sigma.
  const acc_t projection = block_sum<kThreads>(partial) / sigma;
  for (int64_t e = threadIdx.x; e < elements; e += kThreads) {
    const int64_t r = e / layer.cols, c = e % layer.cols;
    const acc_t g = to_acc(layer.grad[r * layer.grad_row_stride + c * layer.grad_col_stride]);
    layer.grad_weight[e] = from_acc<T>((g - projection * to_acc(layer.u[r]) * to_acc(layer.v[c])) / sigma);
  }
}

}  // namespace

template <typename T>
cudaError_t spectral_norm_forward(
    const SpectralNormForwardLayer<T>* layers, int64_t num_layers, int64_t n_power_iterations, double eps,
    cudaStream_t stream) {
  if (num_layers == 0) {
    return cudaSuccess;
  }
  forward_kernel<T><<<static_cast<unsigned int>(num_layers), kThreads, 0, stream>>>(
      layers, n_power_iterations, static_cast<acc_type<T>>(eps));
  return cudaGetLastError();
}

template <typename T>
cudaError_t spectral_norm_backward(const SpectralNormBackwardLayer<T>* layers, int64_t num_layers, cudaStream_t stream) {
  if (num_layers == 0) {
    return cudaSuccess;
  }
  backward_kernel<T><<<static_cast<unsigned int>(num_layers), kThreads, 0, stream>>>(layers);
  return cudaGetLastError();
}

#define GANOPS_INSTANTIATE_SPECTRAL_NORM(T)                                                                  \
  template cudaError_t spectral_norm_forward<T>(                                                             \
      const SpectralNormForwardLayer<T>*, int64_t, int64_t, double, cudaStream_t);                           \
  template cudaError_t spectral_norm_backward<T>(const SpectralNormBackwardLayer<T>*, int64_t, cudaStream_t);

GANOPS_INSTANTIATE_SPECTRAL_NORM(double)
GANOPS_INSTANTIATE_SPECTRAL_NORM(float)
GANOPS_INSTANTIATE_SPECTRAL_NORM(__half)
GANOPS_INSTANTIATE_SPECTRAL_NORM(__nv_bfloat16)

#undef GANOPS_INSTANTIATE_SPECTRAL_NORM

}  // namespace cuda_kernels
}  // namespace ganops
