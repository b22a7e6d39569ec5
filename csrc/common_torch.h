// Torch-side rules shared by every op's CPU kernels and CUDA bindings (csrc/<op>.h builds its input checks
// on them): the dtypes the ops accept, the accumulation dtype as an at::ScalarType, and the layout of
// outputs. Built on common.h, which holds the rules the nvcc-only CUDA kernels need as well.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "common.h"

namespace ganops {

inline bool is_floating_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble || dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16;
}

// Every tensor argument of a ganops op holds one of the floating dtypes above.
inline void check_floating(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(
      is_floating_dtype(t.scalar_type()), op, ": ", name,
      " must have dtype float64, float32, float16 or bfloat16, got ", t.scalar_type());
}

// The dtype of acc_type<scalar_t> for a floating dtype: of saved statistics (lse, sigma) and workspaces.
inline at::ScalarType accumulate_dtype(at::ScalarType dtype) {
  at::ScalarType result = at::kFloat;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "ganops::accumulate_dtype", [&] {
    result = c10::CppTypeToScalarType<acc_type<scalar_t>>::value;
  });
  return result;
}

// Same rule as ganops/_layout.py (the fake kernels use it), so eager and compiled strides agree: an output
// is channels_last when its 4-d input is channels_last and not also contiguous.
inline bool is_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// A new tensor of the given shape (default: t's) in the layout the rule above gives for t.
inline at::Tensor empty_in_layout_of(const at::Tensor& t, at::IntArrayRef shape) {
  return at::empty(
      shape, t.options().memory_format(is_channels_last(t) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
}

inline at::Tensor empty_in_layout_of(const at::Tensor& t) {
  return empty_in_layout_of(t, t.sizes());
}

}  // namespace ganops
