// Host launchers of the CUDA spectral-norm kernels. No torch headers: the kernels take raw pointers and a
// stream, so spectral_norm.cu compiles with nvcc alone (scripts/compile_cuda_sources.sh) and the torch
// glue lives in spectral_norm_binding.cpp. Math: ganops/reference/spectral_norm.py.
//
// One call handles a whole group of layers of one dtype T (double, float, __half, __nv_bfloat16) in a few
// launches of a grid that fills the GPU, whatever the layers' sizes (work list over all layers: see
// spectral_norm.cu); arithmetic in acc_type<T> (double for double, float otherwise). The per-layer
// descriptors live in device memory (the binding copies them there with one host-to-device copy). The
// backward takes a small workspace (blocks x layers accumulators) that the binding allocates from torch's
// caching allocator, so it is reused across calls and ordered on torch's current stream.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../common.h"

namespace ganops {
namespace cuda_kernels {

// One layer of the forward: W [rows, cols] with element strides, u [rows] and v [cols] contiguous; the
// outputs W_sn (contiguous [rows, cols]), u, v, sigma; work_u/work_v hold rows + cols accumulators.
template <typename T>
struct SpectralNormForwardLayer {
  const T* weight;
  int64_t row_stride, col_stride, rows, cols;
  const T* u;
  const T* v;
  T* weight_sn;
  T* u_out;
  T* v_out;
  acc_type<T>* sigma;
  acc_type<T>* work_u;
  acc_type<T>* work_v;
};

// One layer of the backward: grad_W (contiguous) = (G - <G, W> / sigma u v^T) / sigma.
template <typename T>
struct SpectralNormBackwardLayer {
  const T* grad;
  int64_t grad_row_stride, grad_col_stride;
  const T* weight;
  int64_t row_stride, col_stride, rows, cols;
  const T* u;
  const T* v;
  const acc_type<T>* sigma;
  T* grad_weight;
};

// n_power_iterations = 0: eval mode (sigma = u^T W v with the given vectors, copied to the outputs).
template <typename T>
cudaError_t spectral_norm_forward(
    const SpectralNormForwardLayer<T>* layers, int64_t num_layers, int64_t n_power_iterations, double eps,
    cudaStream_t stream);

// Elements of acc_type<T> the backward of num_layers layers needs as workspace on the current device.
cudaError_t spectral_norm_backward_workspace(int64_t num_layers, int64_t* elements);

template <typename T>
cudaError_t spectral_norm_backward(
    const SpectralNormBackwardLayer<T>* layers, int64_t num_layers, acc_type<T>* partials, cudaStream_t stream);

}  // namespace cuda_kernels
}  // namespace ganops
