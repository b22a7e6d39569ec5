// Torch glue of the CUDA minibatch-stddev kernels: checks, output allocation (shared with the CPU
// backend), device guard and current stream. Only compiled in CUDA builds.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "../minibatch_stddev.h"
#include "binding_utils.h"
#include "minibatch_stddev.h"

namespace ganops {
namespace {

at::Tensor minibatch_stddev_cuda(const at::Tensor& x, int64_t group_size, int64_t num_channels, double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto args = prepare_forward(x, group_size, num_channels, eps);
  auto partials = at::empty({cuda_kernels::minibatch_stddev_partials(args.geo)}, x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "minibatch_stddev_cuda", [&] {
    check_launch(
        cuda_kernels::minibatch_stddev_forward(
            input_ptr<scalar_t>(x), strides_of(x), output_ptr<scalar_t>(args.out), strides_of(args.out),
            partials.mutable_data_ptr<wide_sum_t>(), args.geo, eps, at::cuda::getCurrentCUDAStream()),
        "ganops::minibatch_stddev_cpp");
  });
  return args.out;
}

at::Tensor minibatch_stddev_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, int64_t group_size, int64_t num_channels, double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto args = prepare_backward(grad_out, x, group_size, num_channels, eps);
  auto grad_stat = at::empty({args.geo.M * args.geo.F}, x.options().dtype(accumulate_dtype(x.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "minibatch_stddev_backward_cuda", [&] {
    check_launch(
        cuda_kernels::minibatch_stddev_backward(
            input_ptr<scalar_t>(grad_out), strides_of(grad_out), input_ptr<scalar_t>(x), strides_of(x),
            output_ptr<scalar_t>(args.grad_x), strides_of(args.grad_x),
            grad_stat.mutable_data_ptr<cuda_acc_t<scalar_t>>(), args.geo, eps, at::cuda::getCurrentCUDAStream()),
        "ganops::minibatch_stddev_backward_cpp");
  });
  return args.grad_x;
}

std::tuple<at::Tensor, at::Tensor> minibatch_stddev_double_backward_cuda(
    const at::Tensor& grad_grad_x, const at::Tensor& grad_out, const at::Tensor& x, int64_t group_size,
    int64_t num_channels, double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto args = prepare_double_backward(grad_grad_x, grad_out, x, group_size, num_channels, eps);
  auto partials = at::empty({cuda_kernels::minibatch_stddev_partials(args.geo)}, x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "minibatch_stddev_double_backward_cuda", [&] {
        check_launch(
            cuda_kernels::minibatch_stddev_double_backward(
                input_ptr<scalar_t>(grad_grad_x), strides_of(grad_grad_x), input_ptr<scalar_t>(grad_out),
                strides_of(grad_out), input_ptr<scalar_t>(x), strides_of(x), output_ptr<scalar_t>(args.grad_grad_out),
                strides_of(args.grad_grad_out), output_ptr<scalar_t>(args.grad_x), strides_of(args.grad_x),
                partials.mutable_data_ptr<wide_sum_t>(), args.geo, eps, at::cuda::getCurrentCUDAStream()),
            "ganops::minibatch_stddev_double_backward_cpp");
      });
  return {args.grad_grad_out, args.grad_x};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganops, CUDA, m) {
  m.impl("minibatch_stddev_cpp", &minibatch_stddev_cuda);
  m.impl("minibatch_stddev_backward_cpp", &minibatch_stddev_backward_cuda);
  m.impl("minibatch_stddev_double_backward_cpp", &minibatch_stddev_double_backward_cuda);
}

}  // namespace ganops
