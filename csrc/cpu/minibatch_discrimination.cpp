// CPU kernels of the minibatch-discrimination ops. The math is that of ganops/reference/minibatch_discrimination.py:
// each task owns one kernel b and visits every pair i < j once (E and Q are symmetric, S antisymmetric, so each pair
// updates both rows), sweeping j in tiles of kTile: it holds kTile values and never the N x N x B x C differences.
// One task per kernel keeps the order of every sum fixed whatever the thread count. Inputs arrive as [B, C, N]
// accumulation-dtype copies (csrc/minibatch_discrimination.h), where the sweep over j reads contiguous memory and
// vectorises.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "../minibatch_discrimination.h"

namespace ganops {
namespace {

constexpr int64_t kTile = 256;

template <typename acc_t>
acc_t sign_of(acc_t v) {
  return static_cast<acc_t>((v > acc_t(0)) - (v < acc_t(0)));
}

// distance[t] = sum_c |x_b[c, i] - x_b[c, j0 + t]| for t < len.
template <typename acc_t>
void distances(const acc_t* x_b, int64_t N, int64_t C, int64_t i, int64_t j0, int64_t len, acc_t* distance) {
  std::fill(distance, distance + len, acc_t(0));
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* row = x_b + c * N;
    const acc_t x_i = row[i];
    for (int64_t t = 0; t < len; ++t) {
      distance[t] += std::abs(x_i - row[j0 + t]);
    }
  }
}

// For every c, with s_t = weight[t] * sign(x_b[c, i] - x_b[c, j0 + t]): grad_b[c, i] += sum_t s_t and
// grad_b[c, j0 + t] -= s_t (S is antisymmetric, so the pair (j, i) contributes the opposite sign).
template <typename acc_t>
void add_pair_terms(
    const acc_t* x_b, int64_t N, int64_t C, int64_t i, int64_t j0, int64_t len, const acc_t* weight, acc_t* grad_b) {
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* row = x_b + c * N;
    acc_t* grad_row = grad_b + c * N;
    const acc_t x_i = row[i];
    acc_t sum(0);
    for (int64_t t = 0; t < len; ++t) {
      const acc_t term = weight[t] * sign_of(x_i - row[j0 + t]);
      sum += term;
      grad_row[j0 + t] -= term;
    }
    grad_row[i] += sum;
  }
}

// Runs pair_tile(i, j0, len) over the pairs i < j of every kernel b, one task per kernel, in a fixed order.
template <typename Fn>
void for_each_pair_tile(const MinibatchDiscriminationShape& s, const Fn& pair_tile) {
  at::parallel_for(0, s.B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t i = 0; i < s.N; ++i) {
        for (int64_t j0 = i + 1; j0 < s.N; j0 += kTile) {
          pair_tile(b, i, j0, std::min(kTile, s.N - j0));
        }
      }
    }
  });
}

// o[b, i] = sum_j exp(-D_ijb), without j = i if exclude_self. E is symmetric: each pair i < j is computed once
// and added to both rows. o starts at zero.
template <typename acc_t>
void forward_kernel(const acc_t* x, acc_t* o, const MinibatchDiscriminationShape& s, bool exclude_self) {
  if (!exclude_self) {
    std::fill(o, o + s.B * s.N, acc_t(1));
  }
  for_each_pair_tile(s, [&](int64_t b, int64_t i, int64_t j0, int64_t len) {
    acc_t similarity[kTile];
    distances(x + b * s.C * s.N, s.N, s.C, i, j0, len, similarity);
    acc_t* o_b = o + b * s.N;
    acc_t sum(0);
    for (int64_t t = 0; t < len; ++t) {
      const acc_t e = std::exp(-similarity[t]);
      sum += e;
      o_b[j0 + t] += e;
    }
    o_b[i] += sum;
  });
}

// grad[b, c, i] = -sum_j (g_ib + g_jb) E_ijb S_ijbc; grad starts at zero.
template <typename acc_t>
void backward_kernel(const acc_t* g, const acc_t* x, acc_t* grad, const MinibatchDiscriminationShape& s) {
  for_each_pair_tile(s, [&](int64_t b, int64_t i, int64_t j0, int64_t len) {
    acc_t weight[kTile];
    const acc_t* x_b = x + b * s.C * s.N;
    const acc_t* g_b = g + b * s.N;
    distances(x_b, s.N, s.C, i, j0, len, weight);
    for (int64_t t = 0; t < len; ++t) {
      weight[t] = -(g_b[i] + g_b[j0 + t]) * std::exp(-weight[t]);
    }
    add_pair_terms(x_b, s.N, s.C, i, j0, len, weight, grad + b * s.C * s.N);
  });
}

// With Q_ijb = sum_c (gg_ibc - gg_jbc) S_ijbc (symmetric in i, j): grad_g[b, i] = -sum_j E Q and
// grad[b, c, i] = sum_j (g_ib + g_jb) E Q S_ijbc; both start at zero.
template <typename acc_t>
void double_backward_kernel(
    const acc_t* gg, const acc_t* g, const acc_t* x, acc_t* grad_g, acc_t* grad, const MinibatchDiscriminationShape& s) {
  for_each_pair_tile(s, [&](int64_t b, int64_t i, int64_t j0, int64_t len) {
    acc_t weight[kTile], q[kTile];
    const acc_t* x_b = x + b * s.C * s.N;
    const acc_t* gg_b = gg + b * s.C * s.N;
    const acc_t* g_b = g + b * s.N;
    acc_t* grad_g_b = grad_g + b * s.N;
    distances(x_b, s.N, s.C, i, j0, len, weight);
    std::fill(q, q + len, acc_t(0));
    for (int64_t c = 0; c < s.C; ++c) {
      const acc_t* row = x_b + c * s.N;
      const acc_t* gg_row = gg_b + c * s.N;
      const acc_t x_i = row[i], gg_i = gg_row[i];
      for (int64_t t = 0; t < len; ++t) {
        q[t] += (gg_i - gg_row[j0 + t]) * sign_of(x_i - row[j0 + t]);
      }
    }
    acc_t sum(0);
    for (int64_t t = 0; t < len; ++t) {
      const acc_t eq = std::exp(-weight[t]) * q[t];
      sum += eq;
      grad_g_b[j0 + t] -= eq;
      weight[t] = (g_b[i] + g_b[j0 + t]) * eq;
    }
    grad_g_b[i] -= sum;
    add_pair_terms(x_b, s.N, s.C, i, j0, len, weight, grad + b * s.C * s.N);
  });
}

at::Tensor minibatch_discrimination_cpu(const at::Tensor& m, bool exclude_self) {
  const auto shape = check_minibatch_discrimination_input("ganops::minibatch_discrimination_cpp", m);
  const auto x = samples_last(m);
  auto o = at::zeros({shape.B, shape.N}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "minibatch_discrimination_cpu", [&] {
    forward_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), o.mutable_data_ptr<scalar_t>(), shape, exclude_self);
  });
  return samples_first(o, m);
}

at::Tensor minibatch_discrimination_backward_cpu(const at::Tensor& grad_o, const at::Tensor& m, bool /*exclude_self*/) {
  constexpr const char* op = "ganops::minibatch_discrimination_backward_cpp";
  const auto shape = check_minibatch_discrimination_input(op, m);
  check_like_m(op, "grad_o", grad_o, m, {shape.N, shape.B});
  const auto x = samples_last(m), g = samples_last(grad_o);
  auto grad = at::zeros_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "minibatch_discrimination_backward_cpu", [&] {
    backward_kernel<scalar_t>(
        g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), grad.mutable_data_ptr<scalar_t>(), shape);
  });
  return samples_first(grad, m);
}

std::tuple<at::Tensor, at::Tensor> minibatch_discrimination_double_backward_cpu(
    const at::Tensor& grad_grad_m, const at::Tensor& grad_o, const at::Tensor& m, bool /*exclude_self*/) {
  constexpr const char* op = "ganops::minibatch_discrimination_double_backward_cpp";
  const auto shape = check_minibatch_discrimination_input(op, m);
  check_like_m(op, "grad_o", grad_o, m, {shape.N, shape.B});
  check_like_m(op, "grad_grad_m", grad_grad_m, m, m.sizes());
  const auto x = samples_last(m), g = samples_last(grad_o), gg = samples_last(grad_grad_m);
  auto grad_g = at::zeros_like(g);
  auto grad = at::zeros_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "minibatch_discrimination_double_backward_cpu", [&] {
    double_backward_kernel<scalar_t>(
        gg.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
        grad_g.mutable_data_ptr<scalar_t>(), grad.mutable_data_ptr<scalar_t>(), shape);
  });
  return {samples_first(grad_g, grad_o), samples_first(grad, m)};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganops, CPU, m) {
  m.impl("minibatch_discrimination_cpp", &minibatch_discrimination_cpu);
  m.impl("minibatch_discrimination_backward_cpp", &minibatch_discrimination_backward_cpu);
  m.impl("minibatch_discrimination_double_backward_cpp", &minibatch_discrimination_double_backward_cpu);
}

}  // namespace ganops
