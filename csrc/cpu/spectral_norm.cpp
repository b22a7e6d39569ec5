// CPU kernels of the spectral-norm ops. The math is that of
// ganops/reference/spectral_norm.py: power iteration u <- normalize(W v), v <- normalize(W^T u) with the
// overflow-safe scaled norm, sigma = u^T W v (computed as s . v with s = W^T u, the last unnormalised v),
// W_sn = W / sigma, and the
// backward grad_W = (G - <G, W_sn> u v^T) / sigma. Arithmetic in acc_type (float for half types).
//
// Every parallel loop splits its work into fixed chunks and adds their partial sums in chunk order, so the
// results do not depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "../spectral_norm.h"

namespace ganops {
namespace {

// Rows per parallel task of the row-wise loops, columns per task of W^T u.
constexpr int64_t kRowGrain = 16;
constexpr int64_t kColumnChunk = 256;

template <typename acc_t>
acc_t ordered_sum(const std::vector<acc_t>& values) {
  acc_t total(0);
  for (const acc_t value : values) {
    total += value;
  }
  return total;
}

template <typename scalar_t>
struct Matrix {
  const scalar_t* data;
  int64_t rows, cols, row_stride, col_stride;

  explicit Matrix(const at::Tensor& t)
      : data(t.const_data_ptr<scalar_t>()), rows(t.size(0)), cols(t.size(1)), row_stride(t.stride(0)),
        col_stride(t.stride(1)) {}

  scalar_t at(int64_t r, int64_t c) const {
    return data[r * row_stride + c * col_stride];
  }
};

// out = W x.
template <typename scalar_t, typename acc_t>
void matvec(const Matrix<scalar_t>& w, const std::vector<acc_t>& x, std::vector<acc_t>& out) {
  at::parallel_for(0, w.rows, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      acc_t acc(0);
      for (int64_t c = 0; c < w.cols; ++c) {
        acc += static_cast<acc_t>(w.at(r, c)) * x[c];
      }
      out[r] = acc;
    }
  });
}

// out = W^T x. Each task owns a chunk of columns and walks every row, so a row's columns are read
// contiguously for row-major weights.
template <typename scalar_t, typename acc_t>
void matvec_transposed(const Matrix<scalar_t>& w, const std::vector<acc_t>& x, std::vector<acc_t>& out) {
  const int64_t chunks = ceil_div(w.cols, kColumnChunk);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t c0 = chunk * kColumnChunk, c1 = std::min(w.cols, c0 + kColumnChunk);
      std::fill(out.begin() + c0, out.begin() + c1, acc_t(0));
      for (int64_t r = 0; r < w.rows; ++r) {
        const acc_t xr = x[r];
        for (int64_t c = c0; c < c1; ++c) {
          out[c] += static_cast<acc_t>(w.at(r, c)) * xr;
        }
      }
    }
  });
}

// ||x|| as m ||x / m|| with m = max |x| (the reference's scaled_norm, LAPACK's nrm2): no square over- or
// underflows. NaN in x gives NaN, an infinite entry inf, as the plain norm does. O(R + C), next to the
// O(R C) matrix-vector products.
template <typename acc_t>
acc_t scaled_norm(const std::vector<acc_t>& x) {
  acc_t largest(0);
  for (const acc_t value : x) {
    const acc_t magnitude = std::abs(value);
    if (std::isnan(magnitude)) {
      return magnitude;
    }
    largest = std::max(largest, magnitude);
  }
  if (largest == acc_t(0) || std::isinf(largest)) {
    return largest;
  }
  acc_t squares(0);
  for (const acc_t value : x) {
    const acc_t scaled = value / largest;
    squares += scaled * scaled;
  }
  return largest * std::sqrt(squares);
}

template <typename scalar_t>
std::vector<acc_type<scalar_t>> to_acc_vector(const at::Tensor& t) {
  using acc_t = acc_type<scalar_t>;
  const auto values = t.contiguous();
  const scalar_t* data = values.const_data_ptr<scalar_t>();
  return std::vector<acc_t>(data, data + values.numel());
}

template <typename scalar_t, typename acc_t>
void store_vector(const std::vector<acc_t>& values, at::Tensor& out) {
  scalar_t* data = out.mutable_data_ptr<scalar_t>();
  for (std::size_t i = 0; i < values.size(); ++i) {
    data[i] = static_cast<scalar_t>(values[i]);
  }
}

template <typename scalar_t>
void forward_layer(
    const at::Tensor& weight_mat, const at::Tensor& u_in, const at::Tensor& v_in, int64_t n_power_iterations,
    double eps_, at::Tensor& weight_sn, at::Tensor& u_out, at::Tensor& v_out, at::Tensor& sigma_out) {
  using acc_t = acc_type<scalar_t>;
  const Matrix<scalar_t> w(weight_mat);
  const acc_t eps = static_cast<acc_t>(eps_);
  auto u = to_acc_vector<scalar_t>(u_in);
  auto v = to_acc_vector<scalar_t>(v_in);
  acc_t sigma(0);
  if (n_power_iterations == 0) {
    std::vector<acc_t> t(w.rows);
    matvec(w, v, t);
    for (int64_t r = 0; r < w.rows; ++r) {
      sigma += u[r] * t[r];
    }
  }
  for (int64_t it = 0; it < n_power_iterations; ++it) {
    matvec(w, v, u);
    const acc_t u_norm = std::max(scaled_norm(u), eps);
    for (acc_t& value : u) {
      value /= u_norm;
    }
    matvec_transposed(w, u, v);
    const acc_t s_norm = scaled_norm(v);
    const acc_t v_norm = std::max(s_norm, eps);
    for (acc_t& value : v) {
      value /= v_norm;
    }
    // s . v = ||s||^2 / max(||s||, eps), in this order so that ||s||^2 is never formed (it overflows first).
    sigma = s_norm * (s_norm / v_norm);
  }
  store_vector<scalar_t>(u, u_out);
  store_vector<scalar_t>(v, v_out);
  sigma_out.fill_(sigma);
  scalar_t* out = weight_sn.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, w.rows, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t c = 0; c < w.cols; ++c) {
        out[r * w.cols + c] = static_cast<scalar_t>(static_cast<acc_t>(w.at(r, c)) / sigma);
      }
    }
  });
}

template <typename scalar_t>
void backward_layer(
    const at::Tensor& grad_sn, const at::Tensor& weight_mat, const at::Tensor& u_in, const at::Tensor& v_in,
    const at::Tensor& sigma_in, at::Tensor& grad_w) {
  using acc_t = acc_type<scalar_t>;
  const Matrix<scalar_t> g(grad_sn), w(weight_mat);
  const auto u = to_acc_vector<scalar_t>(u_in);
  const auto v = to_acc_vector<scalar_t>(v_in);
  const acc_t sigma = sigma_in.item<acc_t>();
  std::vector<acc_t> row_dots(w.rows);
  at::parallel_for(0, w.rows, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      acc_t acc(0);
      for (int64_t c = 0; c < w.cols; ++c) {
        acc += static_cast<acc_t>(g.at(r, c)) * static_cast<acc_t>(w.at(r, c));
      }
      row_dots[r] = acc;
    }
  });
  // <G, W_sn> = <G, W> / sigma.
  const acc_t projection = ordered_sum(row_dots) / sigma;
  scalar_t* out = grad_w.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, w.rows, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const acc_t pu = projection * u[r];
      for (int64_t c = 0; c < w.cols; ++c) {
        out[r * w.cols + c] = static_cast<scalar_t>((static_cast<acc_t>(g.at(r, c)) - pu * v[c]) / sigma);
      }
    }
  });
}

using GroupOutputs =
    std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>;

// The forward of checked layers.
GroupOutputs forward_group(
    at::TensorList weight_mats, at::TensorList us, at::TensorList vs, int64_t n_power_iterations, double eps) {
  auto out = allocate_spectral_norm_outputs(weight_mats, us, vs);
  for (std::size_t i = 0; i < weight_mats.size(); ++i) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight_mats[i].scalar_type(), "spectral_norm_cpu", [&] {
      forward_layer<scalar_t>(
          weight_mats[i], us[i], vs[i], n_power_iterations, eps, out.weight_sn[i], out.u[i], out.v[i],
          out.sigma[i]);
    });
  }
  return {out.weight_sn, out.u, out.v, out.sigma};
}

// The backward of checked layers.
std::vector<at::Tensor> backward_group(
    at::TensorList grads, at::TensorList weight_mats, at::TensorList us, at::TensorList vs,
    at::TensorList sigmas) {
  std::vector<at::Tensor> out;
  for (std::size_t i = 0; i < weight_mats.size(); ++i) {
    out.push_back(at::empty(weight_mats[i].sizes(), weight_mats[i].options().memory_format(at::MemoryFormat::Contiguous)));
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, weight_mats[i].scalar_type(), "spectral_norm_backward_cpu",
        [&] { backward_layer<scalar_t>(grads[i], weight_mats[i], us[i], vs[i], sigmas[i], out.back()); });
  }
  return out;
}

GroupOutputs spectral_norm_group_cpu(
    at::TensorList weight_mats, at::TensorList us, at::TensorList vs, int64_t n_power_iterations, double eps) {
  check_spectral_norm_inputs("ganops::spectral_norm_group_cpp", weight_mats, us, vs, n_power_iterations, eps, true);
  return forward_group(weight_mats, us, vs, n_power_iterations, eps);
}

std::vector<at::Tensor> spectral_norm_group_backward_cpu(
    at::TensorList grads, at::TensorList weight_mats, at::TensorList us, at::TensorList vs, at::TensorList sigmas) {
  check_spectral_norm_backward_inputs(
      "ganops::spectral_norm_group_backward_cpp", grads, weight_mats, us, vs, sigmas, true);
  return backward_group(grads, weight_mats, us, vs, sigmas);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> spectral_norm_cpu(
    const at::Tensor& weight_mat, const at::Tensor& u, const at::Tensor& v, int64_t n_power_iterations,
    double eps) {
  check_spectral_norm_inputs("ganops::spectral_norm_cpp", {weight_mat}, {u}, {v}, n_power_iterations, eps, false);
  auto [weight_sn, u_out, v_out, sigma] = forward_group({weight_mat}, {u}, {v}, n_power_iterations, eps);
  return {weight_sn[0], u_out[0], v_out[0], sigma[0]};
}

at::Tensor spectral_norm_backward_cpu(
    const at::Tensor& grad_sn, const at::Tensor& weight_mat, const at::Tensor& u, const at::Tensor& v,
    const at::Tensor& sigma) {
  check_spectral_norm_backward_inputs(
      "ganops::spectral_norm_backward_cpp", {grad_sn}, {weight_mat}, {u}, {v}, {sigma}, false);
  return backward_group({grad_sn}, {weight_mat}, {u}, {v}, {sigma})[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(ganops, CPU, m) {
  m.impl("spectral_norm_cpp", &spectral_norm_cpu);
  m.impl("spectral_norm_backward_cpp", &spectral_norm_backward_cpu);
  m.impl("spectral_norm_group_cpp", &spectral_norm_group_cpu);
  m.impl("spectral_norm_group_backward_cpp", &spectral_norm_group_backward_cpu);
}

}  // namespace ganops
