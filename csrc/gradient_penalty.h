// The gradient-penalty ops' input checks and the [N, D] sample-row view of their tensors, shared by the CPU
// kernels (csrc/cpu/gradient_penalty.cpp) and the CUDA binding (csrc/cuda/gradient_penalty_binding.cpp) so that
// both reject the same inputs with the same messages and return the same layouts. Schemas:
// csrc/gradient_penalty.cpp.
#pragma once

#include <ATen/ATen.h>

#include <limits>

#include "common_torch.h"

namespace ganops {
namespace gradient_penalty {

// A floating [N, ...] tensor with at least one element per sample.
inline void check_batch_tensor(const char* op, const char* name, const at::Tensor& t) {
  check_floating(op, name, t);
  TORCH_CHECK(t.dim() >= 1, op, ": ", name, " must have a batch dimension [N, ...], got a 0-dim tensor");
  TORCH_CHECK(
      t.numel() > 0, op, ": ", name, " must not be empty (batch size 0 or an empty dimension), got shape ", t.sizes());
}

// Every other tensor argument must match the reference tensor: the kernels index them with its geometry.
inline void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like, const char* like_name) {
  TORCH_CHECK(
      t.sizes() == like.sizes(), op, ": expected ", name, " of shape ", like.sizes(), " (the shape of ", like_name,
      "), got ", t.sizes());
  TORCH_CHECK(
      t.scalar_type() == like.scalar_type(), op, ": expected ", name, " of dtype ", like.scalar_type(), " (the dtype of ",
      like_name, "), got ", t.scalar_type());
  TORCH_CHECK(
      t.device() == like.device(), op, ": expected ", name, " on ", like.device(), " (the device of ", like_name,
      "), got ", t.device());
}

// grad_out of the scalar penalty: a 0-dim tensor of grad's dtype on grad's device.
inline void check_grad_out(const char* op, const at::Tensor& grad_out, const at::Tensor& grad) {
  TORCH_CHECK(grad_out.dim() == 0, op, ": expected a 0-dim grad_out (the penalty is a scalar), got shape ", grad_out.sizes());
  TORCH_CHECK(
      grad_out.scalar_type() == grad.scalar_type(), op, ": expected grad_out of dtype ", grad.scalar_type(),
      " (the dtype of grad), got ", grad_out.scalar_type());
  TORCH_CHECK(
      grad_out.device() == grad.device(), op, ": expected grad_out on ", grad.device(), " (the device of grad), got ",
      grad_out.device());
}

inline void check_interpolate_inputs(const char* op, const at::Tensor& real, const at::Tensor& fake, const at::Tensor& eps) {
  check_batch_tensor(op, "real", real);
  check_like(op, "fake", fake, real, "real");
  check_floating(op, "eps", eps);
  TORCH_CHECK(
      eps.dim() == 1 && eps.size(0) == real.size(0), op, ": expected eps of shape [N] = [", real.size(0), "], got ",
      eps.sizes());
  TORCH_CHECK(
      eps.device() == real.device(), op, ": expected eps on ", real.device(), " (the device of real), got ", eps.device());
}

inline void check_center(const char* op, double center) {
  TORCH_CHECK(center >= 0 && center < std::numeric_limits<double>::infinity(), op, ": center must be a finite float >= 0, got ", center);
}

// The checks of each registered penalty op, as check_penalty_arguments and check_penalty_backward_arguments in
// ganops/ops/gradient_penalty.py plus the incoming gradients of the backward ops.
inline void check_penalty_inputs(const char* op, const at::Tensor& grad, double center) {
  check_batch_tensor(op, "grad", grad);
  check_center(op, center);
}

inline void check_penalty_backward_inputs(const char* op, const at::Tensor& grad_out, const at::Tensor& grad, double center) {
  check_penalty_inputs(op, grad, center);
  check_grad_out(op, grad_out, grad);
}

// norms of the backward: the forward's second output, float64 [N] on grad's device.
inline void check_norms(const char* op, const at::Tensor& norms, const at::Tensor& grad) {
  TORCH_CHECK(
      norms.scalar_type() == at::kDouble && norms.dim() == 1 && norms.size(0) == grad.size(0), op,
      ": norms must be the forward's per-sample norms, float64 of shape [N] = [", grad.size(0), "], got ",
      norms.scalar_type(), " of shape ", norms.sizes());
  TORCH_CHECK(
      norms.device() == grad.device(), op, ": norms must be on the device of grad (", grad.device(), "), got ",
      norms.device());
}

inline void check_penalty_double_backward_inputs(
    const char* op, const at::Tensor& grad_grad_grad, const at::Tensor& grad_out, const at::Tensor& grad, double center) {
  check_penalty_backward_inputs(op, grad_out, grad, center);
  check_like(op, "grad_grad_grad", grad_grad_grad, grad, "grad");
}

// t as contiguous [N, D] rows whose element order is the memory order of an output allocated by
// empty_in_layout_of (channels_last or contiguous): a view when t is in that layout, else a copy.
inline at::Tensor sample_rows(const at::Tensor& t, bool channels_last) {
  const at::Tensor ordered = channels_last ? t.permute({0, 2, 3, 1}) : t;
  return ordered.reshape({t.size(0), -1}).contiguous();
}

// The rows of an output allocated by empty_in_layout_of: always a view, so writing them fills the output.
inline at::Tensor output_rows(const at::Tensor& out, bool channels_last) {
  at::Tensor rows = sample_rows(out, channels_last);
  TORCH_INTERNAL_ASSERT(rows.data_ptr() == out.data_ptr(), "output rows must alias the output");
  return rows;
}

}  // namespace gradient_penalty
}  // namespace ganops
