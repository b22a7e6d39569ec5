// The spectral-norm ops' input checks and output allocation, shared by the CPU kernels
// (csrc/cpu/spectral_norm.cpp) and the CUDA binding (csrc/cuda/spectral_norm_binding.cpp) so that both backends
// reject the same inputs with the same messages and return the same layouts. Schemas: csrc/spectral_norm.cpp.
// The math is that of ganops/reference/spectral_norm.py.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <string>
#include <tuple>
#include <vector>

#include "common_torch.h"

namespace ganops {

// The name of argument `name` of layer `layer` in messages: "u" for the single-layer ops (layer < 0), "us[2]"
// for layer 2 of a group (`name` is then the list's name).
inline std::string layer_argument(const char* name, int64_t layer) {
  return layer < 0 ? std::string(name) : std::string(name) + "[" + std::to_string(layer) + "]";
}

// weight_mat [R, C] (non-empty), u [R] and v [C] of one floating dtype on one device; as check_layer in
// ganops/ops/spectral_norm.py.
inline void check_spectral_norm_layer(
    const char* op, const at::Tensor& weight_mat, const at::Tensor& u, const at::Tensor& v, int64_t layer) {
  const bool group = layer >= 0;
  const std::string w_name = layer_argument(group ? "weight_mats" : "weight_mat", layer);
  TORCH_CHECK(weight_mat.dim() == 2, op, ": ", w_name, " must be a 2-D tensor [R, C], got shape ", weight_mat.sizes());
  check_floating(op, w_name.c_str(), weight_mat);
  TORCH_CHECK(weight_mat.numel() > 0, op, ": ", w_name, " must not be empty, got shape ", weight_mat.sizes());
  const std::array<std::tuple<const at::Tensor*, const char*, int64_t, const char*>, 2> vectors{
      std::make_tuple(&u, group ? "us" : "u", weight_mat.size(0), "rows"),
      std::make_tuple(&v, group ? "vs" : "v", weight_mat.size(1), "columns")};
  for (const auto& [t, list_name, size, dim_name] : vectors) {
    const std::string name = layer_argument(list_name, layer);
    TORCH_CHECK(
        t->dim() == 1 && t->size(0) == size, op, ": expected ", name, " of shape [", size, "] (the ", dim_name, " of ",
        w_name, "), got ", t->sizes());
    TORCH_CHECK(
        t->scalar_type() == weight_mat.scalar_type() && t->device() == weight_mat.device(), op, ": ", name,
        " must have the dtype ", weight_mat.scalar_type(), " and device ", weight_mat.device(), " of ", w_name,
        ", got ", t->scalar_type(), " on ", t->device());
  }
}

// The checks of spectral_norm_cpp (one layer: single-element lists, `group` false) and spectral_norm_group_cpp.
inline void check_spectral_norm_inputs(
    const char* op, at::TensorList weight_mats, at::TensorList us, at::TensorList vs, int64_t n_power_iterations,
    double eps, bool group) {
  TORCH_CHECK(
      !weight_mats.empty() && us.size() == weight_mats.size() && vs.size() == weight_mats.size(), op,
      ": weight_mats, us and vs must be non-empty lists of one length, got ", weight_mats.size(), ", ", us.size(),
      ", ", vs.size());
  for (std::size_t i = 0; i < weight_mats.size(); ++i) {
    check_spectral_norm_layer(op, weight_mats[i], us[i], vs[i], group ? static_cast<int64_t>(i) : -1);
    TORCH_CHECK(
        weight_mats[i].scalar_type() == weight_mats[0].scalar_type() &&
            weight_mats[i].device() == weight_mats[0].device(),
        op, ": every weight of a group must have one dtype and device; weight_mats[", i, "] has ",
        weight_mats[i].scalar_type(), " on ", weight_mats[i].device(), ", weight_mats[0] has ",
        weight_mats[0].scalar_type(), " on ", weight_mats[0].device());
  }
  TORCH_CHECK(n_power_iterations >= 0, op, ": n_power_iterations must be >= 0, got ", n_power_iterations);
  TORCH_CHECK(eps >= 0, op, ": eps must be >= 0, got ", eps);
}

// The checks of spectral_norm_backward_cpp (`group` false) and spectral_norm_group_backward_cpp: the forward's
// layers plus grad_sn like weight_mat and sigma as the forward returned it (0-dim, accumulation dtype).
inline void check_spectral_norm_backward_inputs(
    const char* op, at::TensorList grads, at::TensorList weight_mats, at::TensorList us, at::TensorList vs,
    at::TensorList sigmas, bool group) {
  check_spectral_norm_inputs(op, weight_mats, us, vs, 0, 0.0, group);
  TORCH_CHECK(
      grads.size() == weight_mats.size() && sigmas.size() == weight_mats.size(), op,
      ": grads and sigmas must have one entry per weight, got ", grads.size(), " and ", sigmas.size(), " for ",
      weight_mats.size(), " weights");
  for (std::size_t i = 0; i < weight_mats.size(); ++i) {
    const int64_t layer = group ? static_cast<int64_t>(i) : -1;
    const at::Tensor &w = weight_mats[i], &grad = grads[i], &sigma = sigmas[i];
    const std::string grad_name = layer_argument(group ? "grads" : "grad_sn", layer);
    const std::string sigma_name = layer_argument(group ? "sigmas" : "sigma", layer);
    TORCH_CHECK(
        grad.sizes() == w.sizes() && grad.scalar_type() == w.scalar_type() && grad.device() == w.device(), op, ": ",
        grad_name, " must have the shape ", w.sizes(), ", dtype ", w.scalar_type(), " and device ", w.device(),
        " of its weight, got ", grad.sizes(), " ", grad.scalar_type(), " on ", grad.device());
    const auto sigma_dtype = accumulate_dtype(w.scalar_type());
    TORCH_CHECK(
        sigma.dim() == 0 && sigma.scalar_type() == sigma_dtype && sigma.device() == w.device(), op, ": ", sigma_name,
        " must be a 0-dim ", sigma_dtype, " tensor on ", w.device(), " (as returned by the forward), got shape ",
        sigma.sizes(), " ", sigma.scalar_type(), " on ", sigma.device());
  }
}

struct SpectralNormOutputs {
  std::vector<at::Tensor> weight_sn, u, v, sigma;
};

// Contiguous [R, C] W_sn, u, v like the inputs, 0-dim sigma in the accumulation dtype; one set per layer.
inline SpectralNormOutputs allocate_spectral_norm_outputs(
    at::TensorList weight_mats, at::TensorList us, at::TensorList vs) {
  SpectralNormOutputs out;
  for (std::size_t i = 0; i < weight_mats.size(); ++i) {
    const auto& w = weight_mats[i];
    out.weight_sn.push_back(at::empty(w.sizes(), w.options().memory_format(at::MemoryFormat::Contiguous)));
    out.u.push_back(at::empty(us[i].sizes(), us[i].options()));
    out.v.push_back(at::empty(vs[i].sizes(), vs[i].options()));
    out.sigma.push_back(at::empty({}, w.options().dtype(accumulate_dtype(w.scalar_type()))));
  }
  return out;
}

}  // namespace ganops
