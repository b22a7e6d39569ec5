// CPU kernels of the fused gradient-penalty ops. The math and notation are those of
// ganops/reference/gradient_penalty.py: per-sample sums q_n = ||g_n||^2 (and d_n = <g_n, gg_n>), the penalty
// mean_n h(sqrt(q_n)), its backward go * k_n * g_n and its double backward.
//
// Tensors are processed as contiguous [N, D] sample rows (csrc/gradient_penalty.h). Each row is cut into
// fixed blocks of kBlock elements; the blocks are the parallel tasks, and the per-row sums add the block
// partials in block order, so results do not depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "../gradient_penalty.h"

namespace ganops {
namespace {

using namespace gradient_penalty;

// Elements per parallel task.
constexpr int64_t kBlock = 16384;
// Independent accumulators of the row sums, in wide_sum_t (double, csrc/common.h) so that the error of q_n and d_n
// does not grow with D: they break the dependency chain of one running sum, so the compiler vectorises the loop.
constexpr int64_t kLanes = 16;
constexpr int64_t kChunk = 4096;

// Runs body(n, begin, end) over every block of every row in parallel.
template <typename Body>
void parallel_over_blocks(int64_t N, int64_t D, const Body& body) {
  const int64_t blocks = ceil_div(D, kBlock);
  at::parallel_for(0, N * blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      const int64_t n = task / blocks, begin = (task % blocks) * kBlock;
      body(n, begin, std::min(D, begin + kBlock));
    }
  });
}

// sum of g[i]^2 and (WithDot) of g[i] * other[i] over [begin, end), in a fixed order.
template <bool WithDot, typename scalar_t>
void sum_range(
    const scalar_t* g, const scalar_t* other, int64_t begin, int64_t end, wide_sum_t& squared, wide_sum_t& dot) {
  squared = wide_sum_t(0);
  dot = wide_sum_t(0);
  for (int64_t chunk = begin; chunk < end; chunk += kChunk) {
    const int64_t chunk_end = std::min(end, chunk + kChunk);
    wide_sum_t lane_squared[kLanes] = {}, lane_dot[kLanes] = {};
    int64_t i = chunk;
    for (; i + kLanes <= chunk_end; i += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) {
        const wide_sum_t v = static_cast<wide_sum_t>(g[i + l]);
        lane_squared[l] += v * v;
        if constexpr (WithDot) {
          lane_dot[l] += v * static_cast<wide_sum_t>(other[i + l]);
        }
      }
    }
    for (int64_t l = 0; i < chunk_end; ++i, ++l) {
      const wide_sum_t v = static_cast<wide_sum_t>(g[i]);
      lane_squared[l] += v * v;
      if constexpr (WithDot) {
        lane_dot[l] += v * static_cast<wide_sum_t>(other[i]);
      }
    }
    for (int64_t l = 0; l < kLanes; ++l) {
      squared += lane_squared[l];
      dot += lane_dot[l];
    }
  }
}

// q_n = sum_d g[n, d]^2 and, if other is given, d_n = sum_d g[n, d] * other[n, d].
template <typename scalar_t>
void row_sums(
    const scalar_t* g, const scalar_t* other, int64_t N, int64_t D, std::vector<wide_sum_t>& squared,
    std::vector<wide_sum_t>& dot) {
  const int64_t blocks = ceil_div(D, kBlock);
  std::vector<wide_sum_t> partial_squared(N * blocks), partial_dot(other != nullptr ? N * blocks : 0);
  parallel_over_blocks(N, D, [&](int64_t n, int64_t begin, int64_t end) {
    const int64_t task = n * blocks + begin / kBlock;
    wide_sum_t block_squared, block_dot;
    if (other != nullptr) {
      sum_range<true>(g + n * D, other + n * D, begin, end, block_squared, block_dot);
      partial_dot[task] = block_dot;
    } else {
      sum_range<false>(g + n * D, other, begin, end, block_squared, block_dot);
    }
    partial_squared[task] = block_squared;
  });
  squared.assign(N, wide_sum_t(0));
  dot.assign(other != nullptr ? N : 0, wide_sum_t(0));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t b = 0; b < blocks; ++b) {
      squared[n] += partial_squared[n * blocks + b];
      if (other != nullptr) {
        dot[n] += partial_dot[n * blocks + b];
      }
    }
  }
}

// s_n from q_n; NaN for a sample with a non-finite element.
inline wide_sum_t norm_of(wide_sum_t squared) {
  return std::sqrt(nan_unless_finite(squared));
}

// k_n, (2 / N) c / s_n and 1 / s_n of the reference docstring (m_n d_n g_n is applied as
// ((2 / N) c / s_n) <u_n, gg_n> u_n with u_n = g_n / s_n, in range for tiny and huge s_n).
template <typename acc_t>
struct Coefficients {
  acc_t k, curvature, inverse;
};

template <typename acc_t>
Coefficients<acc_t> coefficients(acc_t norm, acc_t center, bool one_sided, int64_t N) {
  const acc_t inverse = norm == 0 ? acc_t(0) : acc_t(1) / norm;
  const acc_t two_over_n = acc_t(2) / static_cast<acc_t>(N);
  if (one_sided && norm <= center) {  // false for NaN: a NaN sample stays NaN
    return {acc_t(0), acc_t(0), inverse};
  }
  return {two_over_n * (acc_t(1) - center * inverse), two_over_n * center * inverse, inverse};
}

// value rounded to scalar_t, inf beyond its range (a penalty of |g| = 1e20 in float32, the reference docstring):
// Tensor::fill_ refuses to round an out-of-range double itself.
template <typename scalar_t>
double in_range_of(double value) {
  const double largest = static_cast<double>(std::numeric_limits<scalar_t>::max());
  return std::abs(value) > largest ? std::copysign(std::numeric_limits<double>::infinity(), value) : value;
}

template <typename acc_t>
acc_t penalty_of(acc_t squared, acc_t center, bool one_sided) {
  squared = nan_unless_finite(squared);
  if (center == 0) {
    return squared;  // h(s) = s^2 exactly, without the square root
  }
  acc_t distance = std::sqrt(squared) - center;
  if (one_sided && distance < 0) {  // NaN stays NaN
    distance = acc_t(0);
  }
  return distance * distance;
}

std::tuple<at::Tensor, at::Tensor> gradient_penalty_cpu(const at::Tensor& grad, double center, bool one_sided) {
  constexpr const char* op = "ganops::gradient_penalty_cpp";
  check_penalty_inputs(op, grad, center);
  const at::Tensor rows = sample_rows(grad, is_channels_last(grad));
  const int64_t N = rows.size(0), D = rows.size(1);
  at::Tensor out = at::empty({}, grad.options());
  at::Tensor norms = at::empty({N}, grad.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "gradient_penalty_cpu", [&] {
    std::vector<wide_sum_t> squared, unused;
    row_sums<scalar_t>(rows.const_data_ptr<scalar_t>(), nullptr, N, D, squared, unused);
    double* norm_values = norms.mutable_data_ptr<double>();
    wide_sum_t total = 0;
    for (int64_t n = 0; n < N; ++n) {
      total += penalty_of<wide_sum_t>(squared[n], center, one_sided);
      norm_values[n] = norm_of(squared[n]);
    }
    out.fill_(in_range_of<scalar_t>(total / static_cast<wide_sum_t>(N)));
  });
  return {out, norms};
}

at::Tensor gradient_penalty_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& grad, const at::Tensor& norms, double center, bool one_sided) {
  constexpr const char* op = "ganops::gradient_penalty_backward_cpp";
  check_penalty_backward_inputs(op, grad_out, grad, center);
  check_norms(op, norms, grad);
  const at::Tensor norm_values = norms.contiguous();
  const bool channels_last = is_channels_last(grad);
  const at::Tensor rows = sample_rows(grad, channels_last);
  at::Tensor out = empty_in_layout_of(grad);
  at::Tensor out_rows = output_rows(out, channels_last);
  const int64_t N = rows.size(0), D = rows.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "gradient_penalty_backward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* g = rows.const_data_ptr<scalar_t>();
    scalar_t* result = out_rows.mutable_data_ptr<scalar_t>();
    const double* norm = norm_values.const_data_ptr<double>();
    const acc_t go = grad_out.item().to<acc_t>();
    parallel_over_blocks(N, D, [&](int64_t n, int64_t begin, int64_t end) {
      // k_n (about c / s_n) leaves float32's range for a subnormal g_n while k_n g_n does not: multiplied wide.
      const wide_sum_t scale = static_cast<wide_sum_t>(go) * coefficients<wide_sum_t>(norm[n], center, one_sided, N).k;
      for (int64_t i = n * D + begin; i < n * D + end; ++i) {
        result[i] = static_cast<scalar_t>(scale * static_cast<wide_sum_t>(g[i]));
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> gradient_penalty_double_backward_cpu(
    const at::Tensor& grad_grad_grad, const at::Tensor& grad_out, const at::Tensor& grad, double center, bool one_sided) {
  constexpr const char* op = "ganops::gradient_penalty_double_backward_cpp";
  check_penalty_double_backward_inputs(op, grad_grad_grad, grad_out, grad, center);
  const bool channels_last = is_channels_last(grad);
  const at::Tensor rows = sample_rows(grad, channels_last);
  const at::Tensor gg_rows = sample_rows(grad_grad_grad, channels_last);
  at::Tensor out = empty_in_layout_of(grad);
  at::Tensor out_rows = output_rows(out, channels_last);
  at::Tensor grad_grad_out = at::empty({}, grad_out.options());
  const int64_t N = rows.size(0), D = rows.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "gradient_penalty_double_backward_cpu", [&] {
        using acc_t = acc_type<scalar_t>;
        const scalar_t* g = rows.const_data_ptr<scalar_t>();
        const scalar_t* gg = gg_rows.const_data_ptr<scalar_t>();
        scalar_t* result = out_rows.mutable_data_ptr<scalar_t>();
        std::vector<wide_sum_t> squared, dot;
        row_sums<scalar_t>(g, gg, N, D, squared, dot);
        const acc_t go = grad_out.item().to<acc_t>();
        wide_sum_t total = 0;
        for (int64_t n = 0; n < N; ++n) {
          total += coefficients<wide_sum_t>(norm_of(squared[n]), center, one_sided, N).k * dot[n];
        }
        grad_grad_out.fill_(in_range_of<scalar_t>(total));
        parallel_over_blocks(N, D, [&](int64_t n, int64_t begin, int64_t end) {
          const auto c = coefficients<wide_sum_t>(norm_of(squared[n]), center, one_sided, N);
          // As in the backward, k_n and 1 / s_n may leave float32's range where the products do not.
          const wide_sum_t along_gg = static_cast<wide_sum_t>(go) * c.k;
          const wide_sum_t along_unit = static_cast<wide_sum_t>(go) * c.curvature * (dot[n] * c.inverse);
          for (int64_t i = n * D + begin; i < n * D + end; ++i) {
            result[i] = static_cast<scalar_t>(
                along_gg * static_cast<wide_sum_t>(gg[i]) + along_unit * (static_cast<wide_sum_t>(g[i]) * c.inverse));
          }
        });
      });
  return {grad_grad_out, out};
}

at::Tensor gradient_penalty_interpolate_cpu(const at::Tensor& real, const at::Tensor& fake, const at::Tensor& eps) {
  constexpr const char* op = "ganops::gradient_penalty_interpolate_cpp";
  check_interpolate_inputs(op, real, fake, eps);
  const bool channels_last = is_channels_last(real);
  const at::Tensor real_rows = sample_rows(real, channels_last);
  const at::Tensor fake_rows = sample_rows(fake, channels_last);
  const at::Tensor weights = eps.to(at::kDouble).contiguous();
  at::Tensor out = empty_in_layout_of(real);
  at::Tensor out_rows = output_rows(out, channels_last);
  const int64_t N = real_rows.size(0), D = real_rows.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, real.scalar_type(), "gradient_penalty_interpolate_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* r = real_rows.const_data_ptr<scalar_t>();
    const scalar_t* f = fake_rows.const_data_ptr<scalar_t>();
    const double* w = weights.const_data_ptr<double>();
    scalar_t* result = out_rows.mutable_data_ptr<scalar_t>();
    parallel_over_blocks(N, D, [&](int64_t n, int64_t begin, int64_t end) {
      const acc_t weight = static_cast<acc_t>(w[n]);
      for (int64_t i = n * D + begin; i < n * D + end; ++i) {
        result[i] = static_cast<scalar_t>(
            weight * static_cast<acc_t>(r[i]) + (acc_t(1) - weight) * static_cast<acc_t>(f[i]));
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganops, CPU, m) {
  m.impl("gradient_penalty_cpp", &gradient_penalty_cpu);
  m.impl("gradient_penalty_backward_cpp", &gradient_penalty_backward_cpu);
  m.impl("gradient_penalty_double_backward_cpp", &gradient_penalty_double_backward_cpu);
  m.impl("gradient_penalty_interpolate_cpp", &gradient_penalty_interpolate_cpu);
}

}  // namespace ganops
