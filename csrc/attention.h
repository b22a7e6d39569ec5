// The attention ops' input checks, shared by the CPU kernels (csrc/cpu/attention.cpp) and the CUDA binding
// (csrc/cuda/attention_binding.cpp) so that both backends reject the same inputs with the same messages.
// Schemas: csrc/attention.cpp.
//
// Contract (ganops/ops/attention.py relies on it): q [B, Nq, Dqk], k [B, Nk, Dqk], v [B, Nk, Dv], all
// contiguous, one floating dtype; lse [B, Nq] in the accumulation dtype (float64 for float64 inputs,
// float32 otherwise); the double backward's grad_grad_q, grad_grad_k, grad_grad_v have the shapes of q, k, v.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cmath>
#include <tuple>

#include "common_torch.h"

namespace ganops {

struct AttentionSizes {
  int64_t batch, queries, keys, qk_dim, v_dim;
};

inline void check_attention_tensor(
    const char* op, const char* name, const char* layout, const at::Tensor& t, const at::Tensor& q) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is an undefined tensor");
  TORCH_CHECK(t.dim() == 3, op, ": ", name, " must be a 3-D tensor ", layout, ", got shape ", t.sizes());
  TORCH_CHECK(t.numel() > 0, op, ": ", name, " must have no empty dimension, got shape ", t.sizes());
  TORCH_CHECK(
      t.scalar_type() == q.scalar_type(), op, ": ", name, " must have the dtype of q (", q.scalar_type(), "), got ",
      t.scalar_type());
  TORCH_CHECK(
      t.device() == q.device(), op, ": ", name, " must be on the device of q (", q.device(), "), got ", t.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", t.strides());
}

inline AttentionSizes check_attention_inputs(
    const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  TORCH_CHECK(q.defined(), op, ": q is an undefined tensor");
  check_floating(op, "q", q);
  check_attention_tensor(op, "q", "[B, Nq, Dqk]", q, q);
  check_attention_tensor(op, "k", "[B, Nk, Dqk]", k, q);
  check_attention_tensor(op, "v", "[B, Nk, Dv]", v, q);
  const AttentionSizes sizes{q.size(0), q.size(1), k.size(1), q.size(2), v.size(2)};
  TORCH_CHECK(
      k.size(0) == sizes.batch && k.size(2) == sizes.qk_dim, op,
      ": k must have the batch size and head dim of q ([B, Nk, Dqk] with B = ", sizes.batch,
      ", Dqk = ", sizes.qk_dim, "), got shape ", k.sizes());
  TORCH_CHECK(
      v.size(0) == sizes.batch && v.size(1) == sizes.keys, op,
      ": v must have the batch size of q and the key count of k ([B, Nk, Dv] with B = ", sizes.batch, ", Nk = ",
      sizes.keys, "), got shape ", v.sizes());
  TORCH_CHECK(std::isfinite(scale), op, ": scale must be finite, got ", scale);
  return sizes;
}

// The forward's inputs plus grad_out and out [B, Nq, Dv] in the input dtype and lse [B, Nq] in the
// accumulation dtype.
inline AttentionSizes check_attention_backward_inputs(
    const char* op, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, double scale) {
  const AttentionSizes sizes = check_attention_inputs(op, q, k, v, scale);
  check_attention_tensor(op, "grad_out", "[B, Nq, Dv]", grad_out, q);
  check_attention_tensor(op, "out", "[B, Nq, Dv]", out, q);
  // Arrays own their elements; an IntArrayRef built from a braced list would dangle.
  const std::array<int64_t, 3> out_dims{sizes.batch, sizes.queries, sizes.v_dim};
  const at::IntArrayRef out_shape(out_dims);
  TORCH_CHECK(
      grad_out.sizes() == out_shape, op, ": grad_out must have shape [B, Nq, Dv] = ", out_shape, ", got ",
      grad_out.sizes());
  TORCH_CHECK(out.sizes() == out_shape, op, ": out must have shape [B, Nq, Dv] = ", out_shape, ", got ", out.sizes());
  TORCH_CHECK(lse.defined(), op, ": lse is an undefined tensor");
  const std::array<int64_t, 2> lse_dims{sizes.batch, sizes.queries};
  const at::IntArrayRef lse_shape(lse_dims);
  TORCH_CHECK(lse.sizes() == lse_shape, op, ": lse must have shape [B, Nq] = ", lse_shape, ", got ", lse.sizes());
  const auto lse_dtype = accumulate_dtype(q.scalar_type());
  TORCH_CHECK(
      lse.scalar_type() == lse_dtype, op, ": lse must have dtype ", lse_dtype, " (as returned by the forward for ",
      q.scalar_type(), " inputs), got ", lse.scalar_type());
  TORCH_CHECK(
      lse.device() == q.device(), op, ": lse must be on the device of q (", q.device(), "), got ", lse.device());
  TORCH_CHECK(lse.is_contiguous(), op, ": lse must be contiguous, got strides ", lse.strides());
  return sizes;
}

// The backward's inputs plus the cotangents grad_grad_q, grad_grad_k and grad_grad_v of its outputs, each with
// the shape of q, k and v respectively.
inline AttentionSizes check_attention_double_backward_inputs(
    const char* op, const at::Tensor& grad_grad_q, const at::Tensor& grad_grad_k, const at::Tensor& grad_grad_v,
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, double scale) {
  const AttentionSizes sizes = check_attention_backward_inputs(op, grad_out, q, k, v, out, lse, scale);
  const auto check_like = [&](const char* name, const char* layout, const at::Tensor& t, const char* like_name,
                              const at::Tensor& like) {
    check_attention_tensor(op, name, layout, t, q);
    TORCH_CHECK(
        t.sizes() == like.sizes(), op, ": ", name, " must have the shape of ", like_name, " ", layout, " = ",
        like.sizes(), ", got ", t.sizes());
  };
  check_like("grad_grad_q", "[B, Nq, Dqk]", grad_grad_q, "q", q);
  check_like("grad_grad_k", "[B, Nk, Dqk]", grad_grad_k, "k", k);
  check_like("grad_grad_v", "[B, Nk, Dv]", grad_grad_v, "v", v);
  return sizes;
}

// The double backward as a composite of ATen ops, for any device (the CPU kernel, and the CUDA binding where its
// fused kernels do not apply); inputs already checked by check_attention_double_backward_inputs. Returns the
// gradients of the backward op's (grad_q, grad_k, grad_v) . (grad_grad_q, grad_grad_k, grad_grad_v) with respect
// to (grad_out, q, k, v), contiguous, in the dtypes of those inputs (formulas: ganops/reference/attention.py).
// It walks the queries in blocks, so it holds [B, block, Nk] slices of the score matrices, never [B, Nq, Nk]
// ones. Float32 products go through at::bmm, so on a GPU they follow torch's float32 matmul precision setting
// (torch.backends.cuda.matmul), TF32 included, not an allow_tf32 argument. Defined in csrc/cpu/attention.cpp.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_double_backward_blockwise(
    const at::Tensor& grad_grad_q, const at::Tensor& grad_grad_k, const at::Tensor& grad_grad_v,
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lse,
    double scale);

}  // namespace ganops
