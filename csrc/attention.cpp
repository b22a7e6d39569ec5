// Schemas of the fused attention ops, the one place that declares their names and signatures. Their kernels are
// registered per device type at the end of csrc/cpu/attention.cpp and csrc/cuda/attention_binding.cpp, their fake
// kernels and autograd formulas in Python (ganops/ops/attention.py), all against these exact schemas.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(ganops, m) {
  m.def(
      "attention_cpp(Tensor q, Tensor k, Tensor v, float scale, bool allow_tf32=False) -> (Tensor out, Tensor lse)");
  m.def(
      "attention_backward_cpp(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, float scale, "
      "bool allow_tf32=False) "
      "-> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
  m.def(
      "attention_double_backward_cpp(Tensor grad_grad_q, Tensor grad_grad_k, Tensor grad_grad_v, Tensor grad_out, "
      "Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, float scale, bool allow_tf32=False) "
      "-> (Tensor grad_grad_out, Tensor grad_q, Tensor grad_k, Tensor grad_v)");
}
