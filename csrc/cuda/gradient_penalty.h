// Host launchers of the CUDA gradient-penalty kernels. No torch headers: the kernels take raw pointers and a
// stream, so gradient_penalty.cu compiles with nvcc alone (scripts/compile_cuda_sources.sh) and the torch glue
// lives in gradient_penalty_binding.cpp. Math and notation: ganops/reference/gradient_penalty.py.
//
// Every tensor is a contiguous [N, D] block of sample rows (the binding makes them so). T is one of double,
// float, __half, __nv_bfloat16 (explicitly instantiated in the .cu); arithmetic is in acc_type<T> (double for
// double, float otherwise). Scalars (grad_out, the outputs of the reductions) stay on the device: no launcher
// synchronises. The launchers return the launch error (cudaGetLastError), not errors of the execution.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../common.h"

namespace ganops {
namespace gradient_penalty_cuda {

// Rows are summed in `splits` slices by separate blocks, so that a small batch of large samples fills the GPU.
int64_t partial_splits(int64_t N, int64_t D);

// Elements of wide_sum_t (double) the launchers below need as workspace.
int64_t workspace_elements(int64_t N, int64_t D);

// out (a single T) = mean_n h(||g_n||) and norms[N] = ||g_n|| (NaN for a sample with a non-finite element).
template <typename T>
cudaError_t penalty_forward(
    const T* g, int64_t N, int64_t D, double center, bool one_sided, wide_sum_t* workspace, T* out, double* norms,
    cudaStream_t stream);

// grad_g[N, D] = go * k_n * g_n, with go = *grad_out and s_n = norms[n] as penalty_forward wrote them: one pass
// over g, no workspace.
template <typename T>
cudaError_t penalty_backward(
    const T* grad_out, const T* g, const double* norms, int64_t N, int64_t D, double center, bool one_sided,
    T* grad_g, cudaStream_t stream);

// grad_grad_out (a single T) = sum_n k_n d_n and grad_g[N, D] = go * (k_n gg_n + m_n d_n g_n).
template <typename T>
cudaError_t penalty_double_backward(
    const T* gg, const T* grad_out, const T* g, int64_t N, int64_t D, double center, bool one_sided,
    wide_sum_t* workspace, T* grad_grad_out, T* grad_g, cudaStream_t stream);

// out[N, D] = eps_n * real_n + (1 - eps_n) * fake_n.
template <typename T>
cudaError_t interpolate(
    const T* real, const T* fake, const acc_type<T>* eps, int64_t N, int64_t D, T* out, cudaStream_t stream);

}  // namespace gradient_penalty_cuda
}  // namespace ganops
