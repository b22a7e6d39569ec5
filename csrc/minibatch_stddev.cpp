// Schemas of the minibatch-stddev ops, the one place that declares their names and signatures. Their kernels are
// registered per device type at the end of csrc/cpu/minibatch_stddev.cpp and csrc/cuda/minibatch_stddev_binding.cpp,
// their fake kernels and autograd formulas in Python (ganops/ops/minibatch_stddev.py), all against these exact
// schemas.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(ganops, m) {
  m.def("minibatch_stddev_cpp(Tensor x, int group_size, int num_channels, float eps) -> Tensor");
  m.def(
      "minibatch_stddev_backward_cpp(Tensor grad_out, Tensor x, int group_size, int num_channels, float eps) "
      "-> Tensor");
  m.def(
      "minibatch_stddev_double_backward_cpp(Tensor grad_grad_x, Tensor grad_out, Tensor x, int group_size, "
      "int num_channels, float eps) -> (Tensor, Tensor)");
}
