// Schemas of the spectral-norm ops, the one place that declares their names and signatures. Their kernels are
// registered per device type at the end of csrc/cpu/spectral_norm.cpp and csrc/cuda/spectral_norm_binding.cpp, their
// fake kernels and autograd formulas in Python (ganops/ops/spectral_norm.py), all against these exact schemas.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(ganops, m) {
  m.def(
      "spectral_norm_cpp(Tensor weight_mat, Tensor u, Tensor v, int n_power_iterations, float eps) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "spectral_norm_backward_cpp(Tensor grad_sn, Tensor weight_mat, Tensor u, Tensor v, Tensor sigma) -> Tensor");
  m.def(
      "spectral_norm_group_cpp(Tensor[] weight_mats, Tensor[] us, Tensor[] vs, int n_power_iterations, float eps) "
      "-> (Tensor[], Tensor[], Tensor[], Tensor[])");
  m.def(
      "spectral_norm_group_backward_cpp(Tensor[] grads, Tensor[] weight_mats, Tensor[] us, Tensor[] vs, "
      "Tensor[] sigmas) -> Tensor[]");
}
