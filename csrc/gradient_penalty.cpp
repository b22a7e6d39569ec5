// Schemas of the gradient-penalty ops, the one place that declares their names and signatures. Their kernels are
// registered per device type at the end of csrc/cpu/gradient_penalty.cpp and csrc/cuda/gradient_penalty_binding.cpp,
// their fake kernels and autograd formulas in Python (ganops/ops/gradient_penalty.py), all against these exact
// schemas.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(ganops, m) {
  // The forward also returns the per-sample norms (float64 [N]) that the backward takes, so the backward reads grad
  // once.
  m.def("gradient_penalty_cpp(Tensor grad, float center, bool one_sided) -> (Tensor, Tensor)");
  m.def(
      "gradient_penalty_backward_cpp(Tensor grad_out, Tensor grad, Tensor norms, float center, bool one_sided) -> "
      "Tensor");
  m.def(
      "gradient_penalty_double_backward_cpp(Tensor grad_grad_grad, Tensor grad_out, Tensor grad, float center, "
      "bool one_sided) -> (Tensor, Tensor)");
  m.def("gradient_penalty_interpolate_cpp(Tensor real, Tensor fake, Tensor eps) -> Tensor");
}
