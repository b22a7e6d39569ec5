// Torch glue of the CUDA attention kernels: the checks shared with the CPU kernels, output allocation,
// device guard and current stream. Only compiled in CUDA builds.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "../attention.h"
#include "attention.h"
#include "binding_utils.h"

namespace ganops {
namespace {

cuda_kernels::AttentionShape shape_of(const AttentionSizes& n) {
  return {n.batch, n.queries, n.keys, n.qk_dim, n.v_dim};
}

// Head dims that no kernel fits in the GPU's shared memory are reported as such; any CUDA error (of the launch or
// of a runtime call preparing it) is reported as that error.
void check_attention_launch(const cuda_kernels::AttentionLaunch& launch, const char* op, const AttentionSizes& n) {
  TORCH_CHECK(
      launch.head_dims_fit, op, ": the head dims Dqk = ", n.qk_dim, " and Dv = ", n.v_dim,
      " need more shared memory per block than this GPU has (head dims up to 256 are supported)");
  check_launch(launch.error, op);
}

constexpr const char* kForwardOp = "ganops::attention_cpp";
constexpr const char* kBackwardOp = "ganops::attention_backward_cpp";
constexpr const char* kDoubleBackwardOp = "ganops::attention_double_backward_cpp";

std::tuple<at::Tensor, at::Tensor> attention_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale, bool allow_tf32) {
  const AttentionSizes n = check_attention_inputs(kForwardOp, q, k, v, scale);
  const c10::cuda::CUDAGuard guard(q.device());
  auto out = at::empty({n.batch, n.queries, n.v_dim}, q.options());
  auto lse = at::empty({n.batch, n.queries}, q.options().dtype(accumulate_dtype(q.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), kForwardOp, [&] {
    check_attention_launch(
        cuda_kernels::attention_forward(
            input_ptr<scalar_t>(q), input_ptr<scalar_t>(k), input_ptr<scalar_t>(v), output_ptr<scalar_t>(out),
            lse.mutable_data_ptr<cuda_acc_t<scalar_t>>(), shape_of(n), scale, allow_tf32,
            at::cuda::getCurrentCUDAStream()),
        kForwardOp, n);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, double scale, bool allow_tf32) {
  const AttentionSizes n = check_attention_backward_inputs(kBackwardOp, grad_out, q, k, v, out, lse, scale);
  const c10::cuda::CUDAGuard guard(q.device());
  auto grad_q = at::empty_like(q);
  auto grad_k = at::empty_like(k);
  auto grad_v = at::empty_like(v);
  auto delta = at::empty({n.batch, n.queries}, lse.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), kBackwardOp, [&] {
    check_attention_launch(
        cuda_kernels::attention_backward(
            input_ptr<scalar_t>(grad_out), input_ptr<scalar_t>(q), input_ptr<scalar_t>(k), input_ptr<scalar_t>(v),
            input_ptr<scalar_t>(out), lse.const_data_ptr<cuda_acc_t<scalar_t>>(),
            delta.mutable_data_ptr<cuda_acc_t<scalar_t>>(), output_ptr<scalar_t>(grad_q), output_ptr<scalar_t>(grad_k),
            output_ptr<scalar_t>(grad_v), shape_of(n), scale, allow_tf32, at::cuda::getCurrentCUDAStream()),
        kBackwardOp, n);
  });
  return {grad_q, grad_k, grad_v};
}

// The fused tensor-core kernels where they apply (cuda_kernels::DoubleBackwardLaunch says where), else the
// blockwise composite of torch ops.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_double_backward_cuda(
    const at::Tensor& grad_grad_q, const at::Tensor& grad_grad_k, const at::Tensor& grad_grad_v,
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, double scale, bool allow_tf32) {
  const AttentionSizes n = check_attention_double_backward_inputs(
      kDoubleBackwardOp, grad_grad_q, grad_grad_k, grad_grad_v, grad_out, q, k, v, out, lse, scale);
  const c10::cuda::CUDAGuard guard(q.device());
  {
    // Whether the fused kernels apply is known only to the launcher; where they do not, this block's buffers are
    // released before the composite allocates its own, so the fallback's peak memory does not carry them.
    auto grad_grad_out = at::empty_like(grad_out);
    auto grad_q = at::empty_like(q);
    auto grad_k = at::empty_like(k);
    auto grad_v = at::empty_like(v);
    auto stats = at::empty({4, n.batch, n.queries}, q.options().dtype(at::kFloat));
    bool launched = false;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), kDoubleBackwardOp, [&] {
      const cuda_kernels::DoubleBackwardLaunch launch = cuda_kernels::attention_double_backward(
          input_ptr<scalar_t>(grad_grad_q), input_ptr<scalar_t>(grad_grad_k), input_ptr<scalar_t>(grad_grad_v),
          input_ptr<scalar_t>(grad_out), input_ptr<scalar_t>(q), input_ptr<scalar_t>(k), input_ptr<scalar_t>(v),
          lse.const_data_ptr<cuda_acc_t<scalar_t>>(), stats.mutable_data_ptr<float>(),
          output_ptr<scalar_t>(grad_grad_out), output_ptr<scalar_t>(grad_q), output_ptr<scalar_t>(grad_k),
          output_ptr<scalar_t>(grad_v), shape_of(n), scale, allow_tf32, at::cuda::getCurrentCUDAStream());
      check_launch(launch.error, kDoubleBackwardOp);
      launched = launch.launched;
    });
    if (launched) {
      return {grad_grad_out, grad_q, grad_k, grad_v};
    }
  }
  return attention_double_backward_blockwise(grad_grad_q, grad_grad_k, grad_grad_v, grad_out, q, k, v, lse, scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(ganops, CUDA, m) {
  m.impl("attention_cpp", &attention_cuda);
  m.impl("attention_backward_cpp", &attention_backward_cuda);
  m.impl("attention_double_backward_cpp", &attention_double_backward_cuda);
}

}  // namespace ganops
