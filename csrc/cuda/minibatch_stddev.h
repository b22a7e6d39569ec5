// Host launchers of the CUDA minibatch-stddev kernels. No torch headers: the kernels take raw pointers,
// element strides and a stream, so minibatch_stddev.cu compiles with nvcc alone (see
// scripts/compile_cuda_sources.sh) and the torch glue lives in minibatch_stddev_binding.cpp.
//
// T is one of double, float, __half, __nv_bfloat16 (explicitly instantiated in the .cu); arithmetic is in
// acc_type<T> (double for double, float otherwise). Every tensor may have any strides. The launchers
// return the launch error (cudaGetLastError), not errors of the asynchronous execution.
#pragma once

#include <cuda_runtime.h>

#include "../common.h"
#include "../minibatch_stddev_layout.h"

namespace ganops {
namespace cuda_kernels {

// Elements of the partials workspace that the forward and the double backward need (one per block of their
// split pass over positions).
int64_t minibatch_stddev_partials(const MinibatchStddevGeometry& geo);

// out[N, C + F, H, W] = cat(x, statistic); partials holds minibatch_stddev_partials(geo) elements.
template <typename T>
cudaError_t minibatch_stddev_forward(
    const T* x, Strides4 x_strides, T* out, Strides4 out_strides, wide_sum_t* partials,
    const MinibatchStddevGeometry& geo, double eps, cudaStream_t stream);

// grad_x[N, C, H, W] from grad_out[N, C + F, H, W]. grad_stat_workspace holds M * F elements; it carries
// the per-(m, f) sums of grad_out's statistic channels from the first kernel to the second.
template <typename T>
cudaError_t minibatch_stddev_backward(
    const T* grad_out, Strides4 grad_out_strides, const T* x, Strides4 x_strides, T* grad_x, Strides4 grad_x_strides,
    acc_type<T>* grad_stat_workspace, const MinibatchStddevGeometry& geo, double eps, cudaStream_t stream);

// grad_grad_out[N, C + F, H, W] and grad_x[N, C, H, W] from grad_grad_x[N, C, H, W]; partials holds
// minibatch_stddev_partials(geo) elements.
template <typename T>
cudaError_t minibatch_stddev_double_backward(
    const T* grad_grad_x, Strides4 grad_grad_x_strides, const T* grad_out, Strides4 grad_out_strides, const T* x,
    Strides4 x_strides, T* grad_grad_out, Strides4 grad_grad_out_strides, T* grad_x, Strides4 grad_x_strides,
    wide_sum_t* partials, const MinibatchStddevGeometry& geo, double eps, cudaStream_t stream);

}  // namespace cuda_kernels
}  // namespace ganops
