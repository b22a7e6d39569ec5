// Rules shared by every op's kernels on every device, each written once: the accumulation types and ceil_div.
// Plain C++ (no torch, no CUDA headers) so that the CUDA kernels (csrc/cuda/*.cu), which compile with nvcc
// alone (scripts/compile_cuda_sources.sh), share them with the CPU kernels. The torch-side rules built on
// these (accumulation dtype as an at::ScalarType, accepted dtypes, output layout) are in common_torch.h.
#pragma once

#include <cstdint>

// ceil_div is called by CUDA kernels too; nvcc needs it marked as a device function as well.
#if defined(__CUDACC__)
#define GANOPS_HOST_DEVICE __host__ __device__
#else
#define GANOPS_HOST_DEVICE
#endif

namespace ganops {

// Kernels read and write T and compute in acc_type<T>: double for double, float for everything else
// (float, and the half types of either library: c10::Half, c10::BFloat16, __half, __nv_bfloat16). This is
// torch's opmath type for every dtype the ops accept, so saved statistics and workspaces allocated with
// accumulate_dtype (common_torch.h) hold exactly this type.
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

// Sums over a reduced dimension (the K positions of minibatch stddev, the D elements of a gradient-penalty
// row: up to 2^28 terms and more) are carried in wide_sum_t whatever T is. In float32 the rounding error of a
// running sum grows with the number of terms (relative errors of 1e-6 to 4e-5 at 2^22 to 2^26 terms), while
// in double it stays far below the float32 rounding of the result, at any size the ops are used with. The
// conversions and double additions are cheap next to the loads on the CPU and on sm_80 / sm_90 GPUs.
using wide_sum_t = double;

// A wide sum of squares as the gradient-penalty rule takes it (ganops/reference/gradient_penalty.py): a sample
// with a NaN or infinite element is NaN. In wide_sum_t the sum is non-finite only then (no float32 or narrower
// square overflows a double), and squared - squared is 0 exactly when squared is finite, NaN otherwise.
template <typename T>
GANOPS_HOST_DEVICE inline T nan_unless_finite(T squared) {
  const T difference = squared - squared;
  return difference == T(0) ? squared : difference;
}

// The number of blocks of size `block` that cover `count` items (count >= 0, block > 0).
GANOPS_HOST_DEVICE constexpr int64_t ceil_div(int64_t count, int64_t block) {
  return (count + block - 1) / block;
}

}  // namespace ganops
