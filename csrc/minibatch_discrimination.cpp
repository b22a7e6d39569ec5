// Schemas of the minibatch-discrimination ops, the one place that declares their names and signatures. The ops take
// M = features T as [N, B, C] and compute the scores o [N, B] (ganops/reference/minibatch_discrimination.py). Their
// kernels are registered per device type at the end of csrc/cpu/minibatch_discrimination.cpp and
// csrc/cuda/minibatch_discrimination_binding.cpp, their fake kernels and autograd formulas in Python
// (ganops/ops/minibatch_discrimination.py), all against these exact schemas.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(ganops, m) {
  m.def("minibatch_discrimination_cpp(Tensor m, bool exclude_self) -> Tensor");
  m.def("minibatch_discrimination_backward_cpp(Tensor grad_o, Tensor m, bool exclude_self) -> Tensor");
  m.def(
      "minibatch_discrimination_double_backward_cpp(Tensor grad_grad_m, Tensor grad_o, Tensor m, bool exclude_self) "
      "-> (Tensor, Tensor)");
}
