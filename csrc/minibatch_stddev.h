// The minibatch-stddev ops' input checks and output allocation, shared by the CPU kernels
// (csrc/cpu/minibatch_stddev.cpp) and the CUDA binding (csrc/cuda/minibatch_stddev_binding.cpp) so that both
// backends reject the same inputs with the same messages and return the same layouts. Schemas:
// csrc/minibatch_stddev.cpp. The index arithmetic lives in minibatch_stddev_layout.h because the CUDA kernels,
// which compile without torch, need it too.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cmath>

#include "common_torch.h"
#include "minibatch_stddev_layout.h"

namespace ganops {

// The checks of ganops/ops/minibatch_stddev.py (check_arguments), for callers of torch.ops.ganops.* that
// bypass it. `group_size` is the effective group size G = min(group_size, N), which the Python wrapper
// computes; the registered ops refuse any other.
inline MinibatchStddevGeometry check_minibatch_stddev_input(
    const char* op, const at::Tensor& x, int64_t group_size, int64_t num_channels, double eps) {
  TORCH_CHECK(x.dim() == 4, op, ": x must have 4 dimensions [N, C, H, W], got shape ", x.sizes());
  check_floating(op, "x", x);
  TORCH_CHECK(x.numel() > 0, op, ": x must have no empty dimension, got shape ", x.sizes());
  const int64_t N = x.size(0), C = x.size(1);
  TORCH_CHECK(group_size >= 1, op, ": group_size must be a positive int, got ", group_size);
  TORCH_CHECK(num_channels >= 1, op, ": num_channels must be a positive int, got ", num_channels);
  TORCH_CHECK(
      std::isfinite(eps) && eps >= 0, op, ": eps must be a finite non-negative float, got ", eps);
  TORCH_CHECK(
      group_size <= N, op, ": the registered ops take the effective group size min(group_size, N); got group_size = ",
      group_size, " for N = ", N);
  TORCH_CHECK(
      N % group_size == 0, op, ": the batch size N = ", N, " of x must be divisible by the group size ", group_size);
  TORCH_CHECK(
      C % num_channels == 0, op, ": the channel count C = ", C, " of x must be divisible by num_channels = ",
      num_channels);
  return make_geometry(N, C, x.size(2), x.size(3), group_size, num_channels);
}

// Every other tensor argument must live with x: the kernels index all of them with x's geometry.
inline void check_like_x(
    const char* op, const char* name, const at::Tensor& t, const at::Tensor& x, at::IntArrayRef expected_shape) {
  TORCH_CHECK(
      t.sizes() == expected_shape, op, ": expected ", name, " of shape ", expected_shape, ", got ", t.sizes());
  TORCH_CHECK(
      t.scalar_type() == x.scalar_type(), op, ": expected ", name, " of dtype ", x.scalar_type(),
      " (the dtype of x), got ", t.scalar_type());
  TORCH_CHECK(
      t.device() == x.device(), op, ": expected ", name, " on ", x.device(), " (the device of x), got ",
      t.device());
}

inline std::array<int64_t, 4> output_shape(const MinibatchStddevGeometry& geo) {
  return {geo.N, geo.C + geo.F, geo.H, geo.W};
}

inline std::array<int64_t, 4> input_shape(const MinibatchStddevGeometry& geo) {
  return {geo.N, geo.C, geo.H, geo.W};
}

inline Strides4 strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// The checked geometry and the freshly allocated outputs of one op call.
struct ForwardArgs {
  MinibatchStddevGeometry geo;
  at::Tensor out;
};

inline ForwardArgs prepare_forward(const at::Tensor& x, int64_t group_size, int64_t num_channels, double eps) {
  const auto geo = check_minibatch_stddev_input("ganops::minibatch_stddev_cpp", x, group_size, num_channels, eps);
  return {geo, empty_in_layout_of(x, output_shape(geo))};
}

struct BackwardArgs {
  MinibatchStddevGeometry geo;
  at::Tensor grad_x;
};

inline BackwardArgs prepare_backward(
    const at::Tensor& grad_out, const at::Tensor& x, int64_t group_size, int64_t num_channels, double eps) {
  constexpr const char* op = "ganops::minibatch_stddev_backward_cpp";
  const auto geo = check_minibatch_stddev_input(op, x, group_size, num_channels, eps);
  check_like_x(op, "grad_out", grad_out, x, output_shape(geo));
  return {geo, empty_in_layout_of(x, input_shape(geo))};
}

struct DoubleBackwardArgs {
  MinibatchStddevGeometry geo;
  at::Tensor grad_grad_out;
  at::Tensor grad_x;
};

inline DoubleBackwardArgs prepare_double_backward(
    const at::Tensor& grad_grad_x, const at::Tensor& grad_out, const at::Tensor& x, int64_t group_size,
    int64_t num_channels, double eps) {
  constexpr const char* op = "ganops::minibatch_stddev_double_backward_cpp";
  const auto geo = check_minibatch_stddev_input(op, x, group_size, num_channels, eps);
  check_like_x(op, "grad_out", grad_out, x, output_shape(geo));
  check_like_x(op, "grad_grad_x", grad_grad_x, x, input_shape(geo));
  return {geo, empty_in_layout_of(x, output_shape(geo)), empty_in_layout_of(x, input_shape(geo))};
}

}  // namespace ganops
