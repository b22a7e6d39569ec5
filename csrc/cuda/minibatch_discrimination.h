// Host launchers of the CUDA minibatch-discrimination kernels. No torch headers: the kernels take raw pointers and a
// stream, so minibatch_discrimination.cu compiles with nvcc alone (see scripts/compile_cuda_sources.sh) and the
// torch glue lives in minibatch_discrimination_binding.cpp. Math and notation:
// ganops/reference/minibatch_discrimination.py.
//
// Every array is a contiguous samples-last copy in the accumulation type acc_t (float or double, instantiated in
// the .cu): x and grad_grad_m are [B, C, N], grad_o, o and grad_grad_o are [B, N] (csrc/minibatch_discrimination.h
// makes them so). The launchers return the launch error (cudaGetLastError), not errors of the execution.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace ganops {
namespace minibatch_discrimination_kernels {

// o[b, i] = sum_j exp(-sum_c |x[b, c, i] - x[b, c, j]|), without j = i if exclude_self.
template <typename acc_t>
cudaError_t forward(const acc_t* x, int64_t N, int64_t B, int64_t C, bool exclude_self, acc_t* o, cudaStream_t stream);

// grad_m[b, c, i] = -sum_j (g[b, i] + g[b, j]) E_ijb S_ijbc.
template <typename acc_t>
cudaError_t backward(
    const acc_t* grad_o, const acc_t* x, int64_t N, int64_t B, int64_t C, acc_t* grad_m, cudaStream_t stream);

// grad_grad_o[b, i] = -sum_j E Q and grad_m[b, c, i] = sum_j (g[b, i] + g[b, j]) E Q S_ijbc, with
// Q_ijb = sum_c (gg[b, c, i] - gg[b, c, j]) S_ijbc.
template <typename acc_t>
cudaError_t double_backward(
    const acc_t* grad_grad_m, const acc_t* grad_o, const acc_t* x, int64_t N, int64_t B, int64_t C,
    acc_t* grad_grad_o, acc_t* grad_m, cudaStream_t stream);

}  // namespace minibatch_discrimination_kernels
}  // namespace ganops
