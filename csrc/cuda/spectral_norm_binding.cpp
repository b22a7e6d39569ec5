// Torch glue of the CUDA spectral-norm kernels: checks and output allocation (shared with the CPU backend),
// the per-layer descriptor table (built on the host, copied to the device once per call), device guard and
// current stream. Only compiled in CUDA builds.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstring>
#include <tuple>
#include <vector>

#include "../spectral_norm.h"
#include "binding_utils.h"
#include "spectral_norm.h"

namespace ganops {
namespace {

// The descriptors as a device tensor of bytes: one pinned host buffer, one asynchronous copy. The caching
// host allocator keeps the pinned buffer alive until the copy has run.
template <typename Descriptor>
at::Tensor upload(const std::vector<Descriptor>& descriptors, const at::Device& device) {
  const int64_t bytes = static_cast<int64_t>(descriptors.size() * sizeof(Descriptor));
  auto host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.mutable_data_ptr<uint8_t>(), descriptors.data(), bytes);
  return host.to(device, /*non_blocking=*/true);
}

// The fields the forward and backward descriptors share: the weight [rows, cols] with its strides, u and v.
template <typename scalar_t, typename Layer>
void describe_weight(Layer& layer, const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v) {
  layer.weight = input_ptr<scalar_t>(weight);
  layer.row_stride = weight.stride(0);
  layer.col_stride = weight.stride(1);
  layer.rows = weight.size(0);
  layer.cols = weight.size(1);
  layer.u = input_ptr<scalar_t>(u);
  layer.v = input_ptr<scalar_t>(v);
}

using GroupOutputs =
    std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>;

// The forward of checked layers; `op` names the registered op in launch errors.
GroupOutputs forward_group(
    const char* op, at::TensorList weight_mats, at::TensorList us_in, at::TensorList vs_in, int64_t n_power_iterations,
    double eps) {
  const c10::cuda::CUDAGuard guard(weight_mats[0].device());
  std::vector<at::Tensor> us, vs;
  int64_t work_size = 0;
  for (std::size_t i = 0; i < weight_mats.size(); ++i) {
    us.push_back(us_in[i].contiguous());
    vs.push_back(vs_in[i].contiguous());
    work_size += weight_mats[i].size(0) + weight_mats[i].size(1);
  }
  auto out = allocate_spectral_norm_outputs(weight_mats, us, vs);
  const auto acc_dtype = accumulate_dtype(weight_mats[0].scalar_type());
  auto work = at::empty({work_size}, weight_mats[0].options().dtype(acc_dtype));
  // The dispatch name must be a constant expression (torch 2.14); `op` names the op in launch errors.
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, weight_mats[0].scalar_type(), "spectral_norm_forward_cuda", [&] {
    using T = cuda_type_t<scalar_t>;
    using acc_t = acc_type<T>;
    std::vector<cuda_kernels::SpectralNormForwardLayer<T>> layers;
    acc_t* work_ptr = work.mutable_data_ptr<acc_t>();
    for (std::size_t i = 0; i < weight_mats.size(); ++i) {
      cuda_kernels::SpectralNormForwardLayer<T> layer{};
      describe_weight<scalar_t>(layer, weight_mats[i], us[i], vs[i]);
      layer.weight_sn = output_ptr<scalar_t>(out.weight_sn[i]);
      layer.u_out = output_ptr<scalar_t>(out.u[i]);
      layer.v_out = output_ptr<scalar_t>(out.v[i]);
      layer.sigma = out.sigma[i].mutable_data_ptr<acc_t>();
      layer.work_u = work_ptr;
      layer.work_v = work_ptr + layer.rows;
      work_ptr += layer.rows + layer.cols;
      layers.push_back(layer);
    }
    const auto table = upload(layers, weight_mats[0].device());
    check_launch(
        cuda_kernels::spectral_norm_forward<T>(
            reinterpret_cast<const cuda_kernels::SpectralNormForwardLayer<T>*>(table.const_data_ptr<uint8_t>()),
            static_cast<int64_t>(layers.size()), n_power_iterations, eps, at::cuda::getCurrentCUDAStream()),
        op);
  });
  return {out.weight_sn, out.u, out.v, out.sigma};
}

// The backward of checked layers; `op` names the registered op in launch errors.
std::vector<at::Tensor> backward_group(
    const char* op, at::TensorList grads, at::TensorList weight_mats, at::TensorList us_in, at::TensorList vs_in,
    at::TensorList sigmas) {
  const c10::cuda::CUDAGuard guard(weight_mats[0].device());
  std::vector<at::Tensor> us, vs, out;
  for (std::size_t i = 0; i < weight_mats.size(); ++i) {
    us.push_back(us_in[i].contiguous());
    vs.push_back(vs_in[i].contiguous());
    out.push_back(at::empty(weight_mats[i].sizes(), weight_mats[i].options().memory_format(at::MemoryFormat::Contiguous)));
  }
  int64_t workspace_elements = 0;
  const auto num_layers = static_cast<int64_t>(weight_mats.size());
  check_launch(cuda_kernels::spectral_norm_backward_workspace(num_layers, &workspace_elements), op);
  const auto workspace = at::empty(
      {workspace_elements}, weight_mats[0].options().dtype(accumulate_dtype(weight_mats[0].scalar_type())));
  // The dispatch name must be a constant expression (torch 2.14); `op` names the op in launch errors.
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, weight_mats[0].scalar_type(), "spectral_norm_backward_cuda", [&] {
    using T = cuda_type_t<scalar_t>;
    using acc_t = acc_type<T>;
    std::vector<cuda_kernels::SpectralNormBackwardLayer<T>> layers;
    for (std::size_t i = 0; i < weight_mats.size(); ++i) {
      cuda_kernels::SpectralNormBackwardLayer<T> layer{};
      describe_weight<scalar_t>(layer, weight_mats[i], us[i], vs[i]);
      layer.grad = input_ptr<scalar_t>(grads[i]);
      layer.grad_row_stride = grads[i].stride(0);
      layer.grad_col_stride = grads[i].stride(1);
      layer.sigma = sigmas[i].const_data_ptr<acc_t>();
      layer.grad_weight = output_ptr<scalar_t>(out[i]);
      layers.push_back(layer);
    }
    const auto table = upload(layers, weight_mats[0].device());
    check_launch(
        cuda_kernels::spectral_norm_backward<T>(
            reinterpret_cast<const cuda_kernels::SpectralNormBackwardLayer<T>*>(table.const_data_ptr<uint8_t>()),
            static_cast<int64_t>(layers.size()), workspace.mutable_data_ptr<acc_t>(), at::cuda::getCurrentCUDAStream()),
        op);
  });
  return out;
}

GroupOutputs spectral_norm_group_cuda(
    at::TensorList weight_mats, at::TensorList us, at::TensorList vs, int64_t n_power_iterations, double eps) {
  constexpr const char* op = "ganops::spectral_norm_group_cpp";
  check_spectral_norm_inputs(op, weight_mats, us, vs, n_power_iterations, eps, true);
  return forward_group(op, weight_mats, us, vs, n_power_iterations, eps);
}

std::vector<at::Tensor> spectral_norm_group_backward_cuda(
    at::TensorList grads, at::TensorList weight_mats, at::TensorList us, at::TensorList vs, at::TensorList sigmas) {
  constexpr const char* op = "ganops::spectral_norm_group_backward_cpp";
  check_spectral_norm_backward_inputs(op, grads, weight_mats, us, vs, sigmas, true);
  return backward_group(op, grads, weight_mats, us, vs, sigmas);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> spectral_norm_cuda(
    const at::Tensor& weight_mat, const at::Tensor& u, const at::Tensor& v, int64_t n_power_iterations,
    double eps) {
  constexpr const char* op = "ganops::spectral_norm_cpp";
  check_spectral_norm_inputs(op, {weight_mat}, {u}, {v}, n_power_iterations, eps, false);
  auto [weight_sn, u_out, v_out, sigma] = forward_group(op, {weight_mat}, {u}, {v}, n_power_iterations, eps);
  return {weight_sn[0], u_out[0], v_out[0], sigma[0]};
}

at::Tensor spectral_norm_backward_cuda(
    const at::Tensor& grad_sn, const at::Tensor& weight_mat, const at::Tensor& u, const at::Tensor& v,
    const at::Tensor& sigma) {
  constexpr const char* op = "ganops::spectral_norm_backward_cpp";
  check_spectral_norm_backward_inputs(op, {grad_sn}, {weight_mat}, {u}, {v}, {sigma}, false);
  return backward_group(op, {grad_sn}, {weight_mat}, {u}, {v}, {sigma})[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(ganops, CUDA, m) {
  m.impl("spectral_norm_cpp", &spectral_norm_cuda);
  m.impl("spectral_norm_backward_cpp", &spectral_norm_backward_cuda);
  m.impl("spectral_norm_group_cpp", &spectral_norm_group_cuda);
  m.impl("spectral_norm_group_backward_cpp", &spectral_norm_group_backward_cuda);
}

}  // namespace ganops
