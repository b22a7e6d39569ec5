// Torch-side helpers shared by the CUDA bindings (csrc/cuda/<op>_binding.cpp): the kernels are instantiated
// for CUDA's own element types and take raw pointers, so each binding converts torch's scalar_t and tensors
// the same way, and reports launch errors the same way. Only compiled in CUDA builds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "../common.h"

namespace ganops {

// The CUDA type with the same bits as torch's scalar_t.
template <typename scalar_t>
using cuda_type_t = std::conditional_t<
    std::is_same_v<scalar_t, c10::Half>, __half,
    std::conditional_t<std::is_same_v<scalar_t, c10::BFloat16>, __nv_bfloat16, scalar_t>>;

// The kernels' accumulation type for torch's scalar_t (the element type of their workspaces and saved stats).
template <typename scalar_t>
using cuda_acc_t = acc_type<cuda_type_t<scalar_t>>;

template <typename scalar_t>
const cuda_type_t<scalar_t>* input_ptr(const at::Tensor& t) {
  return reinterpret_cast<const cuda_type_t<scalar_t>*>(t.const_data_ptr<scalar_t>());
}

template <typename scalar_t>
cuda_type_t<scalar_t>* output_ptr(at::Tensor& t) {
  return reinterpret_cast<cuda_type_t<scalar_t>*>(t.mutable_data_ptr<scalar_t>());
}

// The launchers return cudaGetLastError(); any error there means that the kernel did not start.
inline void check_launch(cudaError_t error, const char* op) {
  TORCH_CHECK(error == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(error));
}

}  // namespace ganops
