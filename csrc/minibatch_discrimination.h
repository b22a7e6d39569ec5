// The minibatch-discrimination ops' input checks and working layout, shared by the CPU kernels
// (csrc/cpu/minibatch_discrimination.cpp) and the CUDA binding (csrc/cuda/minibatch_discrimination_binding.cpp) so
// that both backends reject the same inputs with the same messages. Schemas: csrc/minibatch_discrimination.cpp.
//
// Both backends compute on [B, C, N] copies of their inputs in the accumulation dtype (O(N B C) memory): for one
// kernel b and one coordinate c the N samples are then contiguous, which is the axis every kernel sweeps.
#pragma once

#include <ATen/ATen.h>

#include "common_torch.h"

namespace ganops {

struct MinibatchDiscriminationShape {
  int64_t N, B, C;
};

// The checks of ganops/ops/minibatch_discrimination.py (check_op_arguments), for callers of torch.ops.ganops.*
// that bypass it.
inline MinibatchDiscriminationShape check_minibatch_discrimination_input(const char* op, const at::Tensor& m) {
  TORCH_CHECK(m.dim() == 3, op, ": m must have 3 dimensions [N, B, C], got shape ", m.sizes());
  check_floating(op, "m", m);
  TORCH_CHECK(m.numel() > 0, op, ": m must have no empty dimension, got shape ", m.sizes());
  return {m.size(0), m.size(1), m.size(2)};
}

// Every other tensor argument must match m: the kernels index all of them with m's shape.
inline void check_like_m(
    const char* op, const char* name, const at::Tensor& t, const at::Tensor& m, at::IntArrayRef expected_shape) {
  TORCH_CHECK(t.sizes() == expected_shape, op, ": expected ", name, " of shape ", expected_shape, ", got ", t.sizes());
  TORCH_CHECK(
      t.scalar_type() == m.scalar_type(), op, ": expected ", name, " of dtype ", m.scalar_type(),
      " (the dtype of m), got ", t.scalar_type());
  TORCH_CHECK(
      t.device() == m.device(), op, ": expected ", name, " on ", m.device(), " (the device of m), got ", t.device());
}

// [N, B, C] -> contiguous [B, C, N] in the accumulation dtype; [N, B] -> contiguous [B, N].
inline at::Tensor samples_last(const at::Tensor& t) {
  const auto acc = t.to(accumulate_dtype(t.scalar_type()));
  return t.dim() == 3 ? acc.permute({1, 2, 0}).contiguous() : acc.t().contiguous();
}

// The inverse of samples_last, in the dtype of `like` and contiguous.
inline at::Tensor samples_first(const at::Tensor& t, const at::Tensor& like) {
  const auto back = t.dim() == 3 ? t.permute({2, 0, 1}) : t.t();
  return back.to(like.scalar_type()).contiguous();
}

}  // namespace ganops
