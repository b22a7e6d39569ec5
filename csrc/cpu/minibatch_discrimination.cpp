// CPU kernels of the minibatch-discrimination ops. The math is that of ganops/reference/minibatch_discrimination.py:
// each task owns one (kernel b, sample i) and sweeps the samples j in tiles of kTile, so it holds kTile distances
// and never the N x N x B x C differences. Inputs arrive as [B, C, N] accumulation-dtype copies
// (csrc/minibatch_discrimination.h), where the sweep over j reads contiguous memory and vectorises.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "../minibatch_discrimination.h"

namespace ganops {
namespace {

constexpr int64_t kTile = 256;

template <typename acc_t>
acc_t sign_of(acc_t v) {
  return static_cast<acc_t>((v > acc_t(0)) - (v < acc_t(0)));
}

// Tasks per parallel chunk: about 64k pair-coordinate operations, and the same for every thread count.
int64_t grain_of(const MinibatchDiscriminationShape& shape) {
  return std::max<int64_t>(1, 65536 / std::max<int64_t>(1, shape.N * shape.C));
}

// distance[t] = sum_c |x[b, c, i] - x[b, c, j0 + t]| for t < len.
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

// grad[b, c, i] += sum_t weight[t] * sign(x[b, c, i] - x[b, c, j0 + t]) for every c.
template <typename acc_t>
void add_signed_sums(
    const acc_t* x_b, int64_t N, int64_t C, int64_t i, int64_t j0, int64_t len, const acc_t* weight, acc_t* grad_b) {
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* row = x_b + c * N;
    const acc_t x_i = row[i];
    acc_t sum(0);
    for (int64_t t = 0; t < len; ++t) {
      sum += weight[t] * sign_of(x_i - row[j0 + t]);
    }
    grad_b[c * N + i] += sum;
  }
}

// o[b, i] = sum_j exp(-D_ijb), without j = i if exclude_self.
template <typename acc_t>
void forward_kernel(const acc_t* x, acc_t* o, const MinibatchDiscriminationShape& s, bool exclude_self) {
  at::parallel_for(0, s.B * s.N, grain_of(s), [&](int64_t begin, int64_t end) {
    acc_t distance[kTile];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / s.N, i = task % s.N;
      const acc_t* x_b = x + b * s.C * s.N;
      acc_t total(0);
      for (int64_t j0 = 0; j0 < s.N; j0 += kTile) {
        const int64_t len = std::min(kTile, s.N - j0);
        distances(x_b, s.N, s.C, i, j0, len, distance);
        if (exclude_self && i >= j0 && i < j0 + len) {
          // exp(-inf) = 0 leaves the term out; subtracting exp(0) = 1 afterwards would round away small sums.
          distance[i - j0] = std::numeric_limits<acc_t>::infinity();
        }
        acc_t tile(0);
        for (int64_t t = 0; t < len; ++t) {
          tile += std::exp(-distance[t]);
        }
        total += tile;
      }
      o[b * s.N + i] = total;
    }
  });
}

// grad[b, c, i] = -sum_j (g_ib + g_jb) E_ijb S_ijbc; grad starts at zero.
template <typename acc_t>
void backward_kernel(const acc_t* g, const acc_t* x, acc_t* grad, const MinibatchDiscriminationShape& s) {
  at::parallel_for(0, s.B * s.N, grain_of(s), [&](int64_t begin, int64_t end) {
    acc_t weight[kTile];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / s.N, i = task % s.N;
      const acc_t* x_b = x + b * s.C * s.N;
      const acc_t* g_b = g + b * s.N;
      for (int64_t j0 = 0; j0 < s.N; j0 += kTile) {
        const int64_t len = std::min(kTile, s.N - j0);
        distances(x_b, s.N, s.C, i, j0, len, weight);
        for (int64_t t = 0; t < len; ++t) {
          weight[t] = -(g_b[i] + g_b[j0 + t]) * std::exp(-weight[t]);
        }
        add_signed_sums(x_b, s.N, s.C, i, j0, len, weight, grad + b * s.C * s.N);
      }
    }
  });
}

// With Q_ijb = sum_c (gg_ibc - gg_jbc) S_ijbc: grad_g[b, i] = -sum_j E Q and
// grad[b, c, i] = sum_j (g_ib + g_jb) E Q S_ijbc; grad starts at zero.
template <typename acc_t>
void double_backward_kernel(
    const acc_t* gg, const acc_t* g, const acc_t* x, acc_t* grad_g, acc_t* grad, const MinibatchDiscriminationShape& s) {
  at::parallel_for(0, s.B * s.N, grain_of(s), [&](int64_t begin, int64_t end) {
    acc_t weight[kTile], q[kTile];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / s.N, i = task % s.N;
      const acc_t* x_b = x + b * s.C * s.N;
      const acc_t* gg_b = gg + b * s.C * s.N;
      const acc_t* g_b = g + b * s.N;
      acc_t grad_g_i(0);
      for (int64_t j0 = 0; j0 < s.N; j0 += kTile) {
        const int64_t len = std::min(kTile, s.N - j0);
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
        acc_t tile(0);
        for (int64_t t = 0; t < len; ++t) {
          const acc_t eq = std::exp(-weight[t]) * q[t];
          tile += eq;
          weight[t] = (g_b[i] + g_b[j0 + t]) * eq;
        }
        grad_g_i -= tile;
        add_signed_sums(x_b, s.N, s.C, i, j0, len, weight, grad + b * s.C * s.N);
      }
      grad_g[b * s.N + i] = grad_g_i;
    }
  });
}

at::Tensor minibatch_discrimination_cpu(const at::Tensor& m, bool exclude_self) {
  const auto shape = check_minibatch_discrimination_input("ganops::minibatch_discrimination_cpp", m);
  const auto x = samples_last(m);
  auto o = at::empty({shape.B, shape.N}, x.options());
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
  auto grad_g = at::empty_like(g);
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
