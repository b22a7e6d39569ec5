// Schemas of the ganops operators and the Python module ganops._C. The kernels are registered per
// device type by csrc/cpu/ and csrc/cuda/; the fake kernels and autograd formulas are registered in
// Python against these exact schemas.
#include <Python.h>

#include <torch/library.h>

namespace ganops {
namespace {

bool cuda_kernels_built() {
#ifdef GANOPS_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

TORCH_LIBRARY(ganops, m) {
  m.def("minibatch_stddev_cpp(Tensor x, int group_size, int num_channels, float eps) -> Tensor");
  m.def(
      "minibatch_stddev_backward_cpp(Tensor grad_out, Tensor x, int group_size, int num_channels, float eps) "
      "-> Tensor");
  m.def(
      "minibatch_stddev_double_backward_cpp(Tensor grad_grad_x, Tensor grad_out, Tensor x, int group_size, "
      "int num_channels, float eps) -> (Tensor, Tensor)");
  // No tensor arguments, so nothing to dispatch on: a catch-all kernel answers for every device.
  m.def("cuda_kernels_built() -> bool", &cuda_kernels_built);
}

}  // namespace ganops

// Importing ganops._C is what loads this library and runs the registrations above; the module itself
// is empty because every entry point is reached through torch.ops.ganops.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",
      nullptr,
      -1,
      nullptr,
  };
  return PyModule_Create(&module_def);
}
