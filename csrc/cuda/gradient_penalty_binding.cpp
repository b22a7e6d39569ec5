// Torch glue of the CUDA gradient-penalty kernels: checks and output allocation (shared with the CPU backend,
// csrc/gradient_penalty.h), sample rows, workspace, device guard and current stream. Only compiled in CUDA
// builds.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "../gradient_penalty.h"
#include "binding_utils.h"
#include "gradient_penalty.h"

namespace ganops {
namespace {

using namespace gradient_penalty;

at::Tensor workspace_for(const at::Tensor& rows) {
  const int64_t elements = gradient_penalty_cuda::workspace_elements(rows.size(0), rows.size(1));
  return at::empty({elements}, rows.options().dtype(at::kDouble));  // wide_sum_t partials and coefficients
}

std::tuple<at::Tensor, at::Tensor> gradient_penalty_forward_cuda(const at::Tensor& grad, double center, bool one_sided) {
  constexpr const char* op = "ganops::gradient_penalty_cpp";
  check_penalty_inputs(op, grad, center);
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor rows = sample_rows(grad, is_channels_last(grad));
  at::Tensor workspace = workspace_for(rows);
  at::Tensor out = at::empty({}, grad.options());
  at::Tensor norms = at::empty({rows.size(0)}, grad.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "gradient_penalty_cuda", [&] {
    check_launch(
        gradient_penalty_cuda::penalty_forward(
            input_ptr<scalar_t>(rows), rows.size(0), rows.size(1), center, one_sided,
            workspace.mutable_data_ptr<double>(), output_ptr<scalar_t>(out), norms.mutable_data_ptr<double>(),
            at::cuda::getCurrentCUDAStream()),
        op);
  });
  return {out, norms};
}

at::Tensor gradient_penalty_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& grad, const at::Tensor& norms, double center, bool one_sided) {
  constexpr const char* op = "ganops::gradient_penalty_backward_cpp";
  check_penalty_backward_inputs(op, grad_out, grad, center);
  check_norms(op, norms, grad);
  const c10::cuda::CUDAGuard guard(grad.device());
  const bool channels_last = is_channels_last(grad);
  const at::Tensor rows = sample_rows(grad, channels_last);
  const at::Tensor norm_values = norms.contiguous();
  at::Tensor out = empty_in_layout_of(grad);
  at::Tensor out_rows = output_rows(out, channels_last);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "gradient_penalty_backward_cuda", [&] {
    check_launch(
        gradient_penalty_cuda::penalty_backward(
            input_ptr<scalar_t>(grad_out), input_ptr<scalar_t>(rows), norm_values.const_data_ptr<double>(),
            rows.size(0), rows.size(1), center, one_sided, output_ptr<scalar_t>(out_rows),
            at::cuda::getCurrentCUDAStream()),
        op);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> gradient_penalty_double_backward_cuda(
    const at::Tensor& grad_grad_grad, const at::Tensor& grad_out, const at::Tensor& grad, double center,
    bool one_sided) {
  constexpr const char* op = "ganops::gradient_penalty_double_backward_cpp";
  check_penalty_double_backward_inputs(op, grad_grad_grad, grad_out, grad, center);
  const c10::cuda::CUDAGuard guard(grad.device());
  const bool channels_last = is_channels_last(grad);
  const at::Tensor rows = sample_rows(grad, channels_last);
  const at::Tensor gg_rows = sample_rows(grad_grad_grad, channels_last);
  at::Tensor out = empty_in_layout_of(grad);
  at::Tensor out_rows = output_rows(out, channels_last);
  at::Tensor grad_grad_out = at::empty({}, grad_out.options());
  at::Tensor workspace = workspace_for(rows);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "gradient_penalty_double_backward_cuda", [&] {
        check_launch(
            gradient_penalty_cuda::penalty_double_backward(
                input_ptr<scalar_t>(gg_rows), input_ptr<scalar_t>(grad_out), input_ptr<scalar_t>(rows), rows.size(0),
                rows.size(1), center, one_sided, workspace.mutable_data_ptr<double>(),
                output_ptr<scalar_t>(grad_grad_out), output_ptr<scalar_t>(out_rows), at::cuda::getCurrentCUDAStream()),
            op);
      });
  return {grad_grad_out, out};
}

at::Tensor gradient_penalty_interpolate_cuda(const at::Tensor& real, const at::Tensor& fake, const at::Tensor& eps) {
  constexpr const char* op = "ganops::gradient_penalty_interpolate_cpp";
  check_interpolate_inputs(op, real, fake, eps);
  const c10::cuda::CUDAGuard guard(real.device());
  const bool channels_last = is_channels_last(real);
  const at::Tensor real_rows = sample_rows(real, channels_last);
  const at::Tensor fake_rows = sample_rows(fake, channels_last);
  const at::Tensor weights = eps.to(accumulate_dtype(real.scalar_type())).contiguous();
  at::Tensor out = empty_in_layout_of(real);
  at::Tensor out_rows = output_rows(out, channels_last);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, real.scalar_type(), "gradient_penalty_interpolate_cuda", [&] {
    check_launch(
        gradient_penalty_cuda::interpolate(
            input_ptr<scalar_t>(real_rows), input_ptr<scalar_t>(fake_rows), weights.const_data_ptr<cuda_acc_t<scalar_t>>(),
            real_rows.size(0), real_rows.size(1), output_ptr<scalar_t>(out_rows), at::cuda::getCurrentCUDAStream()),
        op);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganops, CUDA, m) {
  m.impl("gradient_penalty_cpp", &gradient_penalty_forward_cuda);
  m.impl("gradient_penalty_backward_cpp", &gradient_penalty_backward_cuda);
  m.impl("gradient_penalty_double_backward_cpp", &gradient_penalty_double_backward_cuda);
  m.impl("gradient_penalty_interpolate_cpp", &gradient_penalty_interpolate_cuda);
}

}  // namespace ganops
