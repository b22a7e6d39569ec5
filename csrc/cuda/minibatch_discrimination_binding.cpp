// Torch glue of the CUDA minibatch-discrimination kernels: checks and working layout (shared with the CPU backend,
// csrc/minibatch_discrimination.h), device guard and current stream. Only compiled in CUDA builds.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "../minibatch_discrimination.h"
#include "binding_utils.h"
#include "minibatch_discrimination.h"

namespace ganops {
namespace {

at::Tensor minibatch_discrimination_cuda(const at::Tensor& m, bool exclude_self) {
  constexpr const char* op = "ganops::minibatch_discrimination_cpp";
  const c10::cuda::CUDAGuard guard(m.device());
  const auto shape = check_minibatch_discrimination_input(op, m);
  const auto x = samples_last(m);
  auto o = at::empty({shape.B, shape.N}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "minibatch_discrimination_cuda", [&] {
    check_launch(
        minibatch_discrimination_kernels::forward(
            x.const_data_ptr<scalar_t>(), shape.N, shape.B, shape.C, exclude_self, o.mutable_data_ptr<scalar_t>(),
            at::cuda::getCurrentCUDAStream()),
        op);
  });
  return samples_first(o, m);
}

at::Tensor minibatch_discrimination_backward_cuda(const at::Tensor& grad_o, const at::Tensor& m, bool /*exclude_self*/) {
  constexpr const char* op = "ganops::minibatch_discrimination_backward_cpp";
  const c10::cuda::CUDAGuard guard(m.device());
  const auto shape = check_minibatch_discrimination_input(op, m);
  check_like_m(op, "grad_o", grad_o, m, {shape.N, shape.B});
  const auto x = samples_last(m), g = samples_last(grad_o);
  auto grad = at::zeros_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "minibatch_discrimination_backward_cuda", [&] {
    check_launch(
        minibatch_discrimination_kernels::backward(
            g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), shape.N, shape.B, shape.C,
            grad.mutable_data_ptr<scalar_t>(), at::cuda::getCurrentCUDAStream()),
        op);
  });
  return samples_first(grad, m);
}

std::tuple<at::Tensor, at::Tensor> minibatch_discrimination_double_backward_cuda(
    const at::Tensor& grad_grad_m, const at::Tensor& grad_o, const at::Tensor& m, bool /*exclude_self*/) {
  constexpr const char* op = "ganops::minibatch_discrimination_double_backward_cpp";
  const c10::cuda::CUDAGuard guard(m.device());
  const auto shape = check_minibatch_discrimination_input(op, m);
  check_like_m(op, "grad_o", grad_o, m, {shape.N, shape.B});
  check_like_m(op, "grad_grad_m", grad_grad_m, m, m.sizes());
  const auto x = samples_last(m), g = samples_last(grad_o), gg = samples_last(grad_grad_m);
  auto grad_g = at::empty_like(g);
  auto grad = at::zeros_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "minibatch_discrimination_double_backward_cuda", [&] {
    check_launch(
        minibatch_discrimination_kernels::double_backward(
            gg.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), shape.N,
            shape.B, shape.C, grad_g.mutable_data_ptr<scalar_t>(), grad.mutable_data_ptr<scalar_t>(),
            at::cuda::getCurrentCUDAStream()),
        op);
  });
  return {samples_first(grad_g, grad_o), samples_first(grad, m)};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganops, CUDA, m) {
  m.impl("minibatch_discrimination_cpp", &minibatch_discrimination_cuda);
  m.impl("minibatch_discrimination_backward_cpp", &minibatch_discrimination_backward_cuda);
  m.impl("minibatch_discrimination_double_backward_cpp", &minibatch_discrimination_double_backward_cuda);
}

}  // namespace ganops
