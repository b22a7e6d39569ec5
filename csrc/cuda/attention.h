// Host launchers of the CUDA attention kernels. No torch headers: the kernels take raw pointers to
// contiguous tensors, the sizes and a stream, so attention.cu compiles with nvcc alone (see
// scripts/compile_cuda_sources.sh) and the torch glue lives in attention_binding.cpp.
//
// q [B, Nq, Dqk], k [B, Nk, Dqk], v [B, Nk, Dv], out and grad_out [B, Nq, Dv], lse [B, Nq], all
// contiguous. T is one of double, float, __half, __nv_bfloat16 (explicitly instantiated in the .cu);
// arithmetic and lse are in acc_type<T> (double for double, float otherwise). The launchers
// return the launch error (cudaGetLastError, or the error of a runtime call made to prepare the launch), not
// errors of the asynchronous execution, and say separately when no kernel fits the head dims in the GPU's
// shared memory per block (head dims up to 256 fit on sm_80 and later); then nothing was launched.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../common.h"

namespace ganops {
namespace cuda_kernels {

struct AttentionShape {
  int64_t batch, queries, keys, qk_dim, v_dim;
};

struct AttentionLaunch {
  cudaError_t error = cudaSuccess;
  bool head_dims_fit = true;
};

// out = softmax(scale * q k^T) v and lse = logsumexp(scale * q k^T) over the keys. allow_tf32: fp32 inputs
// may run on the tensor cores as TF32 (the op's argument); ignored for other types.
template <typename T>
AttentionLaunch attention_forward(
    const T* q, const T* k, const T* v, T* out, acc_type<T>* lse, const AttentionShape& shape, double scale,
    bool allow_tf32, cudaStream_t stream);

// grad_q, grad_k, grad_v from grad_out and the forward's out and lse. delta_workspace holds B * Nq
// elements: Delta = rowsum(grad_out * out), passed from the first kernel to the other two.
template <typename T>
AttentionLaunch attention_backward(
    const T* grad_out, const T* q, const T* k, const T* v, const T* out, const acc_type<T>* lse,
    acc_type<T>* delta_workspace, T* grad_q, T* grad_k, T* grad_v, const AttentionShape& shape, double scale,
    bool allow_tf32, cudaStream_t stream);

// Whether the fused double-backward kernels ran, and the launch error. They run on the tensor cores only (fp16,
// bf16, and fp32 as TF32 when allow_tf32 is set; sm_80 or later; Dqk <= 16 and Dv <= 64, which hold SAGAN's and
// BigGAN-128's heads); otherwise nothing is launched (launched = false) and the caller computes the double
// backward another way.
struct DoubleBackwardLaunch {
  cudaError_t error = cudaSuccess;
  bool launched = false;
};

// The gradients of attention_backward with respect to (grad_out, q, k, v), contracted with grad_grad_q,
// grad_grad_k, grad_grad_v (each shaped as q, k, v): grad_grad_out [B, Nq, Dv], grad_q, grad_k, grad_v.
// stats_workspace holds 4 B Nq floats: per-query statistics passed from the first kernel to the second.
template <typename T>
DoubleBackwardLaunch attention_double_backward(
    const T* grad_grad_q, const T* grad_grad_k, const T* grad_grad_v, const T* grad_out, const T* q, const T* k,
    const T* v, const acc_type<T>* lse, float* stats_workspace, T* grad_grad_out, T* grad_q, T* grad_k, T* grad_v,
    const AttentionShape& shape, double scale, bool allow_tf32, cudaStream_t stream);

}  // namespace cuda_kernels
}  // namespace ganops
