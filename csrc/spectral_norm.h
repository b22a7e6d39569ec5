// The spectral-norm ops' input checks and output allocation, shared by the CPU kernels
// (csrc/cpu/spectral_norm.cpp) and the CUDA binding (csrc/cuda/spectral_norm_binding.cpp) so that both backends
// reject the same inputs with the same messages and return the same layouts. Schemas: csrc/spectral_norm.cpp.
// The math is that of ganops/reference/spectral_norm.py.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

#include "common_torch.h"

namespace ganops {

// weight_mat [R, C], u [R], v [C] of one dtype on one device.
inline void check_spectral_norm_layer(
    const char* op, const at::Tensor& weight_mat, const at::Tensor& u, const at::Tensor& v) {
  TORCH_CHECK(weight_mat.dim() == 2, op, ": expected weight_mat of rank 2 [R, C], got shape ", weight_mat.sizes());
  check_floating(op, "weight_mat", weight_mat);
  TORCH_CHECK(
      weight_mat.size(0) > 0 && weight_mat.size(1) > 0, op, ": weight_mat must not be empty, got shape ",
      weight_mat.sizes());
  TORCH_CHECK(
      u.dim() == 1 && u.size(0) == weight_mat.size(0), op, ": expected u of shape [", weight_mat.size(0),
      "] (rows of weight_mat), got ", u.sizes());
  TORCH_CHECK(
      v.dim() == 1 && v.size(0) == weight_mat.size(1), op, ": expected v of shape [", weight_mat.size(1),
      "] (columns of weight_mat), got ", v.sizes());
  for (const auto* t : {&u, &v}) {
    TORCH_CHECK(
        t->scalar_type() == weight_mat.scalar_type() && t->device() == weight_mat.device(), op,
        ": u and v must have weight_mat's dtype ", weight_mat.scalar_type(), " and device ", weight_mat.device(),
        ", got ", t->scalar_type(), " on ", t->device());
  }
}

inline void check_spectral_norm_hyperparameters(const char* op, int64_t n_power_iterations, double eps) {
  TORCH_CHECK(n_power_iterations >= 0, op, ": n_power_iterations must be >= 0, got ", n_power_iterations);
  TORCH_CHECK(eps >= 0, op, ": eps must be >= 0, got ", eps);
}

inline void check_spectral_norm_group(
    const char* op, at::TensorList weight_mats, at::TensorList us, at::TensorList vs) {
  TORCH_CHECK(!weight_mats.empty(), op, ": weight_mats must not be empty");
  TORCH_CHECK(
      us.size() == weight_mats.size() && vs.size() == weight_mats.size(), op,
      ": weight_mats, us and vs must have the same length, got ", weight_mats.size(), ", ", us.size(), ", ",
      vs.size());
  for (std::size_t i = 0; i < weight_mats.size(); ++i) {
    check_spectral_norm_layer(op, weight_mats[i], us[i], vs[i]);
    TORCH_CHECK(
        weight_mats[i].scalar_type() == weight_mats[0].scalar_type() &&
            weight_mats[i].device() == weight_mats[0].device(),
        op, ": every weight of a group must have one dtype and device; layer ", i, " has ",
        weight_mats[i].scalar_type(), " on ", weight_mats[i].device(), ", layer 0 has ",
        weight_mats[0].scalar_type(), " on ", weight_mats[0].device());
  }
}

inline void check_spectral_norm_backward_layer(
    const char* op, const at::Tensor& grad_sn, const at::Tensor& weight_mat, const at::Tensor& u,
    const at::Tensor& v, const at::Tensor& sigma) {
  check_spectral_norm_layer(op, weight_mat, u, v);
  TORCH_CHECK(
      grad_sn.sizes() == weight_mat.sizes() && grad_sn.scalar_type() == weight_mat.scalar_type() &&
          grad_sn.device() == weight_mat.device(),
      op, ": expected grad_sn of shape ", weight_mat.sizes(), " and dtype ", weight_mat.scalar_type(), " on ",
      weight_mat.device(), ", got ", grad_sn.sizes(), " ", grad_sn.scalar_type(), " on ", grad_sn.device());
  TORCH_CHECK(
      sigma.dim() == 0 && sigma.scalar_type() == accumulate_dtype(weight_mat.scalar_type()) &&
          sigma.device() == weight_mat.device(),
      op, ": expected sigma to be a 0-dim ", accumulate_dtype(weight_mat.scalar_type()), " tensor on ",
      weight_mat.device(), ", got shape ", sigma.sizes(), " ", sigma.scalar_type(), " on ", sigma.device());
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
