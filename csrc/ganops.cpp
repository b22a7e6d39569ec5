// The ganops operator library itself and the Python module ganops._C. Each op's schemas are declared in
// csrc/<op>.cpp (TORCH_LIBRARY_FRAGMENT), its kernels in csrc/cpu/<op>.cpp and csrc/cuda/<op>_binding.cpp;
// this file holds only what belongs to the library as a whole.
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
      nullptr,
      nullptr,
      nullptr,
      nullptr,
  };
  return PyModule_Create(&module_def);
}
