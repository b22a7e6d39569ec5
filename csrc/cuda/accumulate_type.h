// The accumulation type of the CUDA kernels, shared by the launcher headers (csrc/cuda/<op>.h), the kernels
// and the torch bindings. It lives apart from device_utils.cuh because the bindings are compiled by the host
// compiler and need the type, never the device helpers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace ganops {

// Kernels read and write T (double, float, __half, __nv_bfloat16) and compute in acc_type<T>: double for
// double, float otherwise (the same as torch's opmath type, so workspaces can be allocated with it).
template <typename T>
struct AccumulateType {
  using type = float;
};
template <>
struct AccumulateType<double> {
  using type = double;
};
template <typename T>
using acc_type = typename AccumulateType<T>::type;

}  // namespace ganops
