// CPU kernels of the fused attention ops:
//   out_i = sum_j softmax_j(scale * q_i . k_j) v_j,   lse_i = logsumexp_j(scale * q_i . k_j)
// and its backward in the FlashAttention-2 form: with P_ij = exp(scale * q_i . k_j - lse_i) recomputed
// from the saved lse and Delta_i = grad_out_i . out_i,
//   dS_ij = P_ij (grad_out_i . v_j - Delta_i),
//   grad_q_i = scale * sum_j dS_ij k_j,  grad_k_j = scale * sum_i dS_ij q_i,  grad_v_j = sum_i P_ij grad_out_i.
//
// Blockwise, never an Nq x Nk matrix: every parallel task owns kRowTile rows (queries for the forward and
// grad_q, keys for grad_k and grad_v, so no two tasks write the same row) and streams the other side in
// chunks of kChunk, keeping only a kRowTile x kChunk score tile. The forward keeps a running max and sum
// per query (online softmax), so logits of any magnitude stay exact. The tile products go to the BLAS
// through ATen's matrix multiply on views of the tile buffers, the exponentials to ATen's vectorised exp;
// the rest of the softmax is plain loops.
// Half and bfloat16 inputs are converted to float32 once (O(N) memory) and all arithmetic is in
// float32 (float64 for float64 inputs). The split into tasks, and so each task's summation order, does
// not depend on the thread count.
//
// The double backward (formulas in ganops/reference/attention.py) is attention_double_backward_blockwise, a
// composite of ATen ops defined here for every device: the CUDA binding falls back to it where its fused kernels
// do not apply.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "../attention.h"

namespace ganops {
namespace {

// Rows owned by one task: enough work per task to amortise a BLAS call, enough tasks to spread over cores.
constexpr int64_t kRowTile = 64;
// Rows of the other side per step: the kRowTile x kChunk tiles (P and dS in the backward) stay in L2.
constexpr int64_t kChunk = 256;

// A strided matrix view of a tile buffer, as read by the matrix products below.
template <typename acc_t>
struct Matrix {
  const acc_t* data;
  int64_t rows, cols, row_stride, col_stride;

  Matrix transposed() const {
    return {data, cols, rows, col_stride, row_stride};
  }
};

// Row-major rows x cols matrix at data with the given row stride.
template <typename acc_t>
Matrix<acc_t> rows_of(const acc_t* data, int64_t rows, int64_t cols, int64_t row_stride) {
  return {data, rows, cols, row_stride, 1};
}

// c = alpha * a @ b + beta * c, c row-major with row stride ldc. With beta = 0 c's old contents (even NaN)
// are ignored, as in BLAS.
template <typename acc_t>
void matmul(acc_t alpha, Matrix<acc_t> a, Matrix<acc_t> b, acc_t beta, acc_t* c, int64_t ldc) {
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value);
  // from_blob needs non-const pointers; a and b are only read.
  const auto as_tensor = [&](const Matrix<acc_t>& m) {
    return at::from_blob(
        const_cast<acc_t*>(m.data), {m.rows, m.cols}, {std::max<int64_t>(m.row_stride, 1), m.col_stride}, options);
  };
  auto result = at::from_blob(c, {a.rows, b.cols}, {std::max<int64_t>(ldc, 1), 1}, options);
  result.addmm_(as_tensor(a), as_tensor(b), beta, alpha);
}

// x[0, count) <- exp(x) through ATen's exp, which is vectorised for the CPU it runs on (this file is
// compiled for the baseline instruction set, where std::exp in a loop stays scalar).
template <typename acc_t>
void exp_in_place(acc_t* x, int64_t count) {
  at::from_blob(x, {count}, at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value)).exp_();
}

// The inputs in the accumulation dtype (a no-op for float32 and float64) and their data pointers.
template <typename acc_t>
struct AccumulateCopy {
  at::Tensor tensor;
  const acc_t* data;

  explicit AccumulateCopy(const at::Tensor& t)
      : tensor(t.to(c10::CppTypeToScalarType<acc_t>::value).contiguous()), data(tensor.const_data_ptr<acc_t>()) {}
};

// Runs task(index) for index in [0, count) in parallel, inside a guard that skips autograd for the tensor
// ops of the tile products (the worker threads do not inherit the caller's dispatch state).
template <typename Task>
void parallel_tasks(int64_t count, const Task& task) {
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t index = begin; index < end; ++index) {
      task(index);
    }
  });
}

template <typename acc_t>
void forward_kernel(
    const acc_t* q, const acc_t* k, const acc_t* v, acc_t* out, acc_t* lse, const AttentionSizes& n, acc_t scale) {
  const int64_t tiles = ceil_div(n.queries, kRowTile);
  parallel_tasks(n.batch * tiles, [&](int64_t task) {
    const int64_t b = task / tiles, row0 = (task % tiles) * kRowTile;
    const int64_t rows = std::min(kRowTile, n.queries - row0);
    const acc_t* q_tile = q + (b * n.queries + row0) * n.qk_dim;
    const acc_t* k_b = k + b * n.keys * n.qk_dim;
    const acc_t* v_b = v + b * n.keys * n.v_dim;
    acc_t* out_tile = out + (b * n.queries + row0) * n.v_dim;
    acc_t* lse_tile = lse + b * n.queries + row0;

    std::vector<acc_t> scores(rows * kChunk);
    std::vector<acc_t> row_max(rows, -std::numeric_limits<acc_t>::infinity());
    std::vector<acc_t> row_sum(rows, acc_t(0));
    std::vector<acc_t> rescale(rows);
    // The unnormalised output accumulates in out itself (acc_t rows); it is divided by row_sum at the end.
    std::fill(out_tile, out_tile + rows * n.v_dim, acc_t(0));

    for (int64_t col0 = 0; col0 < n.keys; col0 += kChunk) {
      const int64_t cols = std::min(kChunk, n.keys - col0);
      matmul(
          scale, rows_of(q_tile, rows, n.qk_dim, n.qk_dim),
          rows_of(k_b + col0 * n.qk_dim, cols, n.qk_dim, n.qk_dim).transposed(), acc_t(0), scores.data(), cols);
      for (int64_t i = 0; i < rows; ++i) {
        acc_t* s = scores.data() + i * cols;
        acc_t chunk_max = s[0];
        for (int64_t j = 1; j < cols; ++j) {
          chunk_max = std::max(chunk_max, s[j]);
        }
        const acc_t new_max = std::max(row_max[i], chunk_max);
        // exp(-inf) = 0 on the first chunk, when nothing has been accumulated yet.
        rescale[i] = std::exp(row_max[i] - new_max);
        row_max[i] = new_max;
        for (int64_t j = 0; j < cols; ++j) {
          s[j] -= new_max;
        }
      }
      exp_in_place(scores.data(), rows * cols);
      for (int64_t i = 0; i < rows; ++i) {
        const acc_t* s = scores.data() + i * cols;
        acc_t chunk_sum(0);
        for (int64_t j = 0; j < cols; ++j) {
          chunk_sum += s[j];
        }
        row_sum[i] = row_sum[i] * rescale[i] + chunk_sum;
        acc_t* o = out_tile + i * n.v_dim;
        for (int64_t d = 0; d < n.v_dim; ++d) {
          o[d] *= rescale[i];
        }
      }
      matmul(
          acc_t(1), rows_of(scores.data(), rows, cols, cols), rows_of(v_b + col0 * n.v_dim, cols, n.v_dim, n.v_dim),
          acc_t(1), out_tile, n.v_dim);
    }
    for (int64_t i = 0; i < rows; ++i) {
      // Without keys the softmax is over an empty set: out is 0 (an empty sum) and lse is -inf.
      const acc_t inverse = row_sum[i] > 0 ? acc_t(1) / row_sum[i] : acc_t(0);
      acc_t* o = out_tile + i * n.v_dim;
      for (int64_t d = 0; d < n.v_dim; ++d) {
        o[d] *= inverse;
      }
      lse_tile[i] = row_max[i] + std::log(row_sum[i]);
    }
  });
}

// Delta_i = grad_out_i . out_i over all B * Nq rows.
template <typename acc_t>
std::vector<acc_t> output_grad_dot_output(const acc_t* grad_out, const acc_t* out, const AttentionSizes& n) {
  std::vector<acc_t> delta(n.batch * n.queries);
  at::parallel_for(0, n.batch * n.queries, 256, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const acc_t* g = grad_out + row * n.v_dim;
      const acc_t* o = out + row * n.v_dim;
      acc_t sum(0);
      for (int64_t d = 0; d < n.v_dim; ++d) {
        sum += g[d] * o[d];
      }
      delta[row] = sum;
    }
  });
  return delta;
}

// p[i, j] <- exp(s[i, j] - lse_i) and ds[i, j] <- p[i, j] * (ds[i, j] - delta_i) over a rows x cols tile
// (row-major, row stride cols), where lse and delta are indexed by the tile's row (row_indexed) or by its
// column (a transposed tile, rows = keys).
template <typename acc_t>
void probabilities_and_score_grads(
    acc_t* p, acc_t* ds, int64_t rows, int64_t cols, const acc_t* lse, const acc_t* delta, bool row_indexed) {
  for (int64_t i = 0; i < rows; ++i) {
    acc_t* p_row = p + i * cols;
    if (row_indexed) {
      const acc_t lse_i = lse[i];
      for (int64_t j = 0; j < cols; ++j) {
        p_row[j] -= lse_i;
      }
    } else {
      for (int64_t j = 0; j < cols; ++j) {
        p_row[j] -= lse[j];
      }
    }
  }
  exp_in_place(p, rows * cols);
  for (int64_t i = 0; i < rows; ++i) {
    const acc_t* p_row = p + i * cols;
    acc_t* ds_row = ds + i * cols;
    if (row_indexed) {
      const acc_t delta_i = delta[i];
      for (int64_t j = 0; j < cols; ++j) {
        ds_row[j] = p_row[j] * (ds_row[j] - delta_i);
      }
    } else {
      for (int64_t j = 0; j < cols; ++j) {
        ds_row[j] = p_row[j] * (ds_row[j] - delta[j]);
      }
    }
  }
}

template <typename acc_t>
void backward_kernel(
    const acc_t* grad_out, const acc_t* q, const acc_t* k, const acc_t* v, const acc_t* out, const acc_t* lse,
    acc_t* grad_q, acc_t* grad_k, acc_t* grad_v, const AttentionSizes& n, acc_t scale) {
  const std::vector<acc_t> delta = output_grad_dot_output(grad_out, out, n);
  const int64_t query_tiles = ceil_div(n.queries, kRowTile);
  const int64_t key_tiles = ceil_div(n.keys, kRowTile);
  const int64_t query_tasks = n.batch * query_tiles;

  // grad_q tasks (batch, query tile) and grad_k/grad_v tasks (batch, key tile) are independent; one
  // parallel loop over both keeps the cores busy when one kind is scarce.
  parallel_tasks(query_tasks + n.batch * key_tiles, [&](int64_t task) {
    std::vector<acc_t> p(kRowTile * kChunk), ds(kRowTile * kChunk);
    if (task < query_tasks) {
      const int64_t b = task / query_tiles, row0 = (task % query_tiles) * kRowTile;
      const int64_t rows = std::min(kRowTile, n.queries - row0);
      const int64_t first = b * n.queries + row0;
      const acc_t* q_tile = q + first * n.qk_dim;
      const acc_t* go_tile = grad_out + first * n.v_dim;
      const acc_t* k_b = k + b * n.keys * n.qk_dim;
      const acc_t* v_b = v + b * n.keys * n.v_dim;
      acc_t* gq_tile = grad_q + first * n.qk_dim;
      std::fill(gq_tile, gq_tile + rows * n.qk_dim, acc_t(0));
      for (int64_t col0 = 0; col0 < n.keys; col0 += kChunk) {
        const int64_t cols = std::min(kChunk, n.keys - col0);
        const auto k_chunk = rows_of(k_b + col0 * n.qk_dim, cols, n.qk_dim, n.qk_dim);
        const auto v_chunk = rows_of(v_b + col0 * n.v_dim, cols, n.v_dim, n.v_dim);
        matmul(scale, rows_of(q_tile, rows, n.qk_dim, n.qk_dim), k_chunk.transposed(), acc_t(0), p.data(), cols);
        matmul(acc_t(1), rows_of(go_tile, rows, n.v_dim, n.v_dim), v_chunk.transposed(), acc_t(0), ds.data(), cols);
        probabilities_and_score_grads(p.data(), ds.data(), rows, cols, lse + first, delta.data() + first, true);
        matmul(scale, rows_of(ds.data(), rows, cols, cols), k_chunk, acc_t(1), gq_tile, n.qk_dim);
      }
      return;
    }
    const int64_t key_task = task - query_tasks;
    const int64_t b = key_task / key_tiles, row0 = (key_task % key_tiles) * kRowTile;
    const int64_t rows = std::min(kRowTile, n.keys - row0);
    const int64_t first = b * n.keys + row0;
    const acc_t* k_tile = k + first * n.qk_dim;
    const acc_t* v_tile = v + first * n.v_dim;
    acc_t* gk_tile = grad_k + first * n.qk_dim;
    acc_t* gv_tile = grad_v + first * n.v_dim;
    std::fill(gk_tile, gk_tile + rows * n.qk_dim, acc_t(0));
    std::fill(gv_tile, gv_tile + rows * n.v_dim, acc_t(0));
    for (int64_t col0 = 0; col0 < n.queries; col0 += kChunk) {
      const int64_t cols = std::min(kChunk, n.queries - col0);
      const int64_t first_query = b * n.queries + col0;
      const auto q_chunk = rows_of(q + first_query * n.qk_dim, cols, n.qk_dim, n.qk_dim);
      const auto go_chunk = rows_of(grad_out + first_query * n.v_dim, cols, n.v_dim, n.v_dim);
      // The transposed tiles: row j is key row0 + j, column i is query col0 + i.
      matmul(scale, rows_of(k_tile, rows, n.qk_dim, n.qk_dim), q_chunk.transposed(), acc_t(0), p.data(), cols);
      matmul(acc_t(1), rows_of(v_tile, rows, n.v_dim, n.v_dim), go_chunk.transposed(), acc_t(0), ds.data(), cols);
      probabilities_and_score_grads(
          p.data(), ds.data(), rows, cols, lse + first_query, delta.data() + first_query, false);
      matmul(acc_t(1), rows_of(p.data(), rows, cols, cols), go_chunk, acc_t(1), gv_tile, n.v_dim);
      matmul(scale, rows_of(ds.data(), rows, cols, cols), q_chunk, acc_t(1), gk_tile, n.qk_dim);
    }
  });
}

constexpr const char* kForwardOp = "ganops::attention_cpp";
constexpr const char* kBackwardOp = "ganops::attention_backward_cpp";
constexpr const char* kDoubleBackwardOp = "ganops::attention_double_backward_cpp";

// allow_tf32 (fp32 on a GPU's tensor cores) has no meaning on the CPU: every product is exact.
std::tuple<at::Tensor, at::Tensor> attention_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale, bool /*allow_tf32*/) {
  const AttentionSizes n = check_attention_inputs(kForwardOp, q, k, v, scale);
  const auto acc_dtype = accumulate_dtype(q.scalar_type());
  auto out = at::empty({n.batch, n.queries, n.v_dim}, q.options().dtype(acc_dtype));
  auto lse = at::empty({n.batch, n.queries}, q.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES(acc_dtype, kForwardOp, [&] {
    const AccumulateCopy<scalar_t> qa(q), ka(k), va(v);
    forward_kernel<scalar_t>(
        qa.data, ka.data, va.data, out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<scalar_t>(), n,
        static_cast<scalar_t>(scale));
  });
  return {out.to(q.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, double scale, bool /*allow_tf32*/) {
  const AttentionSizes n = check_attention_backward_inputs(kBackwardOp, grad_out, q, k, v, out, lse, scale);
  const auto acc_dtype = accumulate_dtype(q.scalar_type());
  const auto acc_options = q.options().dtype(acc_dtype);
  auto grad_q = at::empty(q.sizes(), acc_options);
  auto grad_k = at::empty(k.sizes(), acc_options);
  auto grad_v = at::empty(v.sizes(), acc_options);
  AT_DISPATCH_FLOATING_TYPES(acc_dtype, kBackwardOp, [&] {
    const AccumulateCopy<scalar_t> ga(grad_out), qa(q), ka(k), va(v), oa(out);
    backward_kernel<scalar_t>(
        ga.data, qa.data, ka.data, va.data, oa.data, lse.const_data_ptr<scalar_t>(),
        grad_q.mutable_data_ptr<scalar_t>(), grad_k.mutable_data_ptr<scalar_t>(), grad_v.mutable_data_ptr<scalar_t>(),
        n, static_cast<scalar_t>(scale));
  });
  const auto dtype = q.scalar_type();
  return {grad_q.to(dtype), grad_k.to(dtype), grad_v.to(dtype)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_double_backward_cpu(
    const at::Tensor& grad_grad_q, const at::Tensor& grad_grad_k, const at::Tensor& grad_grad_v,
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, double scale, bool /*allow_tf32*/) {
  check_attention_double_backward_inputs(
      kDoubleBackwardOp, grad_grad_q, grad_grad_k, grad_grad_v, grad_out, q, k, v, out, lse, scale);
  return attention_double_backward_blockwise(grad_grad_q, grad_grad_k, grad_grad_v, grad_out, q, k, v, lse, scale);
}

// Query rows per block of the double backward, as the reference's DEFAULT_BLOCK: enough rows for the batched
// matmuls to run at full speed on a CPU or GPU, few enough that its ten or so live [B, block, Nk] tiles stay small
// next to the inputs at GAN sizes (Nk <= 4096).
constexpr int64_t kDoubleBackwardQueryBlock = 256;

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_double_backward_blockwise(
    const at::Tensor& grad_grad_q, const at::Tensor& grad_grad_k, const at::Tensor& grad_grad_v,
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lse,
    double scale) {
  // Under torch.autocast the op's kernel still sees autocast enabled, which would run the matmuls below in the
  // autocast dtype: the composite computes in the accumulation dtype whatever the caller's autocast state.
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto acc_dtype = accumulate_dtype(q.scalar_type());
  const auto in_acc = [&](const at::Tensor& t) { return t.to(acc_dtype); };
  const at::Tensor qc = in_acc(q), kc = in_acc(k), vc = in_acc(v), doc = in_acc(grad_out);
  const at::Tensor uq = in_acc(grad_grad_q), uk = in_acc(grad_grad_k), uv = in_acc(grad_grad_v);
  const at::Tensor k_t = kc.transpose(1, 2), v_t = vc.transpose(1, 2);
  const at::Tensor uk_t = uk.transpose(1, 2), uv_t = uv.transpose(1, 2);
  auto grad_grad_out = at::empty({q.size(0), q.size(1), v.size(2)}, vc.options());
  auto grad_q = at::empty_like(qc);
  auto grad_k = at::zeros_like(kc);
  auto grad_v = at::zeros_like(vc);
  const int64_t queries = q.size(1);
  for (int64_t row0 = 0; row0 < queries; row0 += kDoubleBackwardQueryBlock) {
    const int64_t rows = std::min(kDoubleBackwardQueryBlock, queries - row0);
    const at::Tensor q_b = qc.narrow(1, row0, rows), do_b = doc.narrow(1, row0, rows);
    const at::Tensor uq_b = uq.narrow(1, row0, rows);
    // P from the saved lse rather than a softmax: lse_i >= max_j S_ij up to the forward's rounding, so
    // exp(S - lse) cannot overflow and needs no max pass, and S - lse is one baddbmm. Dividing by the row sums
    // then removes that rounding (eps * |S|, more where the forward's products were TF32), a factor common to
    // the row that the double backward would multiply by R: the rows of P sum to 1, as the reference's softmax's.
    auto p = at::baddbmm(lse.narrow(1, row0, rows).unsqueeze(-1), q_b, k_t, /*beta=*/-1, /*alpha=*/scale).exp_();
    p.div_(p.sum(-1, /*keepdim=*/true));
    auto dp = at::bmm(do_b, v_t);
    // Delta from P and dP rather than rowsum(grad_out * out): consistent with this P, and free of the rounding of
    // a half-precision out.
    const auto delta = (p * dp).sum(-1, /*keepdim=*/true);
    auto r = at::bmm(uq_b, k_t).baddbmm_(q_b, uk_t).mul_(scale);
    auto w = at::bmm(do_b, uv_t);
    const auto p_r = p * r;
    const auto rho = p_r.sum(-1, /*keepdim=*/true);
    const auto gamma = (p_r * dp + p * w).sum(-1, /*keepdim=*/true) - 2 * rho * delta;
    const auto dp_centered = dp - delta;
    const auto ds = p * dp_centered;
    const auto t = p * (r - rho);
    // dS2 = P * (R * (dP - Delta) - rho * dP + W - gamma), in place in r: R, dP and W are not needed again.
    const auto ds2 = r.mul_(dp_centered).sub_(dp.mul_(rho)).add_(w).sub_(gamma).mul_(p);
    grad_grad_out.narrow(1, row0, rows).copy_(at::bmm(t, vc).baddbmm_(p, uv));
    grad_q.narrow(1, row0, rows).copy_(at::bmm(ds, uk).baddbmm_(ds2, kc).mul_(scale));
    grad_k.baddbmm_(ds.transpose(1, 2), uq_b, /*beta=*/1, /*alpha=*/scale)
        .baddbmm_(ds2.transpose(1, 2), q_b, /*beta=*/1, /*alpha=*/scale);
    grad_v.baddbmm_(t.transpose(1, 2), do_b);
  }
  return {
      grad_grad_out.to(grad_out.scalar_type()), grad_q.to(q.scalar_type()), grad_k.to(k.scalar_type()),
      grad_v.to(v.scalar_type())};
}

TORCH_LIBRARY_IMPL(ganops, CPU, m) {
  m.impl("attention_cpp", &attention_cpu);
  m.impl("attention_backward_cpp", &attention_backward_cpu);
  m.impl("attention_double_backward_cpp", &attention_double_backward_cpu);
}

}  // namespace ganops
