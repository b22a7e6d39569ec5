// CPU kernels of the minibatch-stddev ops. The math is that of ganops/reference/minibatch_stddev.py:
// every kernel makes one pass over the K positions of each (slot m, statistic f) pair, computing the
// exact two-pass mean and variance over the G group members of each position from values still in cache.
// The means over the K positions (the statistic, t of the double backward) and the sums of grad_out's
// statistic channels are accumulated in wide_sum_t (double, csrc/common.h), so their error does not grow with K.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "../minibatch_stddev.h"

namespace ganops {
namespace {

// Positions per inner sweep: the per-position buffers stay on the stack and in L1, and the G rows of a
// tile are re-read from cache by the second pass instead of from memory.
constexpr int64_t kTile = 256;
// Positions per parallel task. Fixed rather than derived from the thread count so that the partial sums
// of the statistics, and therefore the results, are identical whatever the number of threads.
constexpr int64_t kBlock = 4096;

// Calls fn(len, offsets) for each tile of the positions [block * kBlock, (block + 1) * kBlock) of pair
// (m, f). offsets[op] is the offset of the tile's first position, member g = 0, in operand op; within a
// tile, positions are walk.operand[op].dim[2] apart and members walk.operand[op].member apart.
template <std::size_t Ops, typename Fn>
void for_each_tile(
    const PositionWalk<Ops>& walk, int64_t K, int64_t m, int64_t f, int64_t block, const Fn& fn) {
  const int64_t inner = walk.size[2];
  const int64_t end = std::min(K, (block + 1) * kBlock);
  int64_t offsets[Ops];
  for (int64_t p = block * kBlock; p < end;) {
    const int64_t i2 = p % inner, row = p / inner;
    const int64_t i1 = row % walk.size[1], i0 = row / walk.size[1];
    const int64_t len = std::min({end - p, inner - i2, kTile});
    for (std::size_t op = 0; op < Ops; ++op) {
      const OperandStrides& s = walk.operand[op];
      offsets[op] = m * s.slot + f * s.statistic + i0 * s.dim[0] + i1 * s.dim[1] + i2 * s.dim[2];
    }
    fn(len, offsets);
    p += len;
  }
}

// Runs body(m, f, block) over every block of every (m, f) pair in parallel and returns, per pair, the sum
// of the values body returned for its blocks, added in block order (all in wide_sum_t, see common.h).
template <typename Body>
std::vector<wide_sum_t> parallel_over_blocks(const MinibatchStddevGeometry& geo, const Body& body) {
  const int64_t pairs = geo.M * geo.F;
  const int64_t blocks = ceil_div(geo.K, kBlock);
  std::vector<wide_sum_t> partial(pairs * blocks);
  at::parallel_for(0, pairs * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pair = task / blocks;
      partial[task] = body(pair / geo.F, pair % geo.F, task % blocks);
    }
  });
  std::vector<wide_sum_t> total(pairs, 0.0);
  for (int64_t pair = 0; pair < pairs; ++pair) {
    for (int64_t b = 0; b < blocks; ++b) {
      total[pair] += partial[pair * blocks + b];
    }
  }
  return total;
}

// gs[m * F + f] = sum over (g, h, w) of grad_out[g * M + m, C + f, h, w].
template <typename scalar_t>
std::vector<wide_sum_t> grad_of_statistic(const at::Tensor& grad_out, const MinibatchStddevGeometry& geo) {
  const scalar_t* data = grad_out.const_data_ptr<scalar_t>();
  const Strides4 s = strides_of(grad_out);
  std::vector<wide_sum_t> gs(geo.M * geo.F);
  at::parallel_for(0, geo.M * geo.F, 1, [&](int64_t begin, int64_t end) {
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t m = pair / geo.F, f = pair % geo.F;
      wide_sum_t sum = 0;
      for (int64_t g = 0; g < geo.G; ++g) {
        const scalar_t* plane = data + (g * geo.M + m) * s.n + (geo.C + f) * s.c;
        for (int64_t h = 0; h < geo.H; ++h) {
          for (int64_t w = 0; w < geo.W; ++w) {
            sum += static_cast<wide_sum_t>(plane[h * s.h + w * s.w]);
          }
        }
      }
      gs[pair] = sum;
    }
  });
  return gs;
}

// out[n, C + f, :, :] = value[(n % M) * F + f].
template <typename scalar_t>
void fill_statistic_channels(
    at::Tensor& out, const MinibatchStddevGeometry& geo, const std::vector<wide_sum_t>& value) {
  scalar_t* data = out.mutable_data_ptr<scalar_t>();
  const Strides4 s = strides_of(out);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, geo.H * geo.W));
  at::parallel_for(0, geo.N * geo.F, grain, [&](int64_t begin, int64_t end) {
    for (int64_t nf = begin; nf < end; ++nf) {
      const int64_t n = nf / geo.F, f = nf % geo.F;
      const scalar_t v = static_cast<scalar_t>(static_cast<acc_type<scalar_t>>(value[(n % geo.M) * geo.F + f]));
      scalar_t* plane = data + n * s.n + (geo.C + f) * s.c;
      for (int64_t h = 0; h < geo.H; ++h) {
        for (int64_t w = 0; w < geo.W; ++w) {
          plane[h * s.h + w * s.w] = v;
        }
      }
    }
  });
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& x, at::Tensor& out, const MinibatchStddevGeometry& geo, double eps_) {
  using acc_t = acc_type<scalar_t>;
  const auto walk = make_walk<2>(geo, {strides_of(x), strides_of(out)});
  const scalar_t* x_data = x.const_data_ptr<scalar_t>();
  scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
  const OperandStrides &xs = walk.operand[0], &os = walk.operand[1];
  const int64_t G = geo.G;
  const acc_t eps = static_cast<acc_t>(eps_);

  auto stat = parallel_over_blocks(geo, [&](int64_t m, int64_t f, int64_t block) {
    acc_t mean[kTile], var[kTile];
    wide_sum_t block_sum = 0;
    for_each_tile(walk, geo.K, m, f, block, [&](int64_t len, const int64_t* offsets) {
      std::fill(mean, mean + len, acc_t(0));
      std::fill(var, var + len, acc_t(0));
      for (int64_t g = 0; g < G; ++g) {
        const scalar_t* xg = x_data + offsets[0] + g * xs.member;
        scalar_t* og = out_data + offsets[1] + g * os.member;
        for (int64_t i = 0; i < len; ++i) {
          const scalar_t v = xg[i * xs.dim[2]];
          og[i * os.dim[2]] = v;
          mean[i] += static_cast<acc_t>(v);
        }
      }
      for (int64_t i = 0; i < len; ++i) {
        mean[i] /= G;
      }
      for (int64_t g = 0; g < G; ++g) {
        const scalar_t* xg = x_data + offsets[0] + g * xs.member;
        for (int64_t i = 0; i < len; ++i) {
          const acc_t d = static_cast<acc_t>(xg[i * xs.dim[2]]) - mean[i];
          var[i] += d * d;
        }
      }
      for (int64_t i = 0; i < len; ++i) {
        block_sum += static_cast<wide_sum_t>(std::sqrt(var[i] / G + eps));
      }
    });
    return block_sum;
  });
  for (wide_sum_t& s : stat) {
    s /= static_cast<wide_sum_t>(geo.K);
  }
  fill_statistic_channels<scalar_t>(out, geo, stat);
}

template <typename scalar_t>
void backward_kernel(
    const at::Tensor& grad_out, const at::Tensor& x, at::Tensor& grad_x, const MinibatchStddevGeometry& geo,
    double eps_) {
  using acc_t = acc_type<scalar_t>;
  const auto walk = make_walk<3>(geo, {strides_of(x), strides_of(grad_out), strides_of(grad_x)});
  const scalar_t* x_data = x.const_data_ptr<scalar_t>();
  const scalar_t* go_data = grad_out.const_data_ptr<scalar_t>();
  scalar_t* gx_data = grad_x.mutable_data_ptr<scalar_t>();
  const OperandStrides &xs = walk.operand[0], &gos = walk.operand[1], &gxs = walk.operand[2];
  const int64_t G = geo.G;
  const acc_t eps = static_cast<acc_t>(eps_);
  const auto gs = grad_of_statistic<scalar_t>(grad_out, geo);

  const int64_t blocks = ceil_div(geo.K, kBlock);
  at::parallel_for(0, geo.M * geo.F * blocks, 1, [&](int64_t begin, int64_t end) {
    acc_t mean[kTile], scale[kTile];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pair = task / blocks;
      const acc_t coef = static_cast<acc_t>(gs[pair] / static_cast<wide_sum_t>(G * geo.K));
      for_each_tile(walk, geo.K, pair / geo.F, pair % geo.F, task % blocks, [&](int64_t len, const int64_t* offsets) {
        std::fill(mean, mean + len, acc_t(0));
        std::fill(scale, scale + len, acc_t(0));
        for (int64_t g = 0; g < G; ++g) {
          const scalar_t* xg = x_data + offsets[0] + g * xs.member;
          for (int64_t i = 0; i < len; ++i) {
            mean[i] += static_cast<acc_t>(xg[i * xs.dim[2]]);
          }
        }
        for (int64_t i = 0; i < len; ++i) {
          mean[i] /= G;
        }
        for (int64_t g = 0; g < G; ++g) {
          const scalar_t* xg = x_data + offsets[0] + g * xs.member;
          for (int64_t i = 0; i < len; ++i) {
            const acc_t d = static_cast<acc_t>(xg[i * xs.dim[2]]) - mean[i];
            scale[i] += d * d;
          }
        }
        for (int64_t i = 0; i < len; ++i) {
          scale[i] = coef / std::sqrt(scale[i] / G + eps);
        }
        for (int64_t g = 0; g < G; ++g) {
          const scalar_t* xg = x_data + offsets[0] + g * xs.member;
          const scalar_t* gog = go_data + offsets[1] + g * gos.member;
          scalar_t* gxg = gx_data + offsets[2] + g * gxs.member;
          for (int64_t i = 0; i < len; ++i) {
            const acc_t d = static_cast<acc_t>(xg[i * xs.dim[2]]) - mean[i];
            gxg[i * gxs.dim[2]] = static_cast<scalar_t>(static_cast<acc_t>(gog[i * gos.dim[2]]) + d * scale[i]);
          }
        }
      });
    }
  });
}

template <typename scalar_t>
void double_backward_kernel(
    const at::Tensor& grad_grad_x, const at::Tensor& grad_out, const at::Tensor& x, at::Tensor& grad_grad_out,
    at::Tensor& grad_x, const MinibatchStddevGeometry& geo, double eps_) {
  using acc_t = acc_type<scalar_t>;
  const auto walk = make_walk<4>(
      geo, {strides_of(x), strides_of(grad_grad_x), strides_of(grad_grad_out), strides_of(grad_x)});
  const scalar_t* x_data = x.const_data_ptr<scalar_t>();
  const scalar_t* gg_data = grad_grad_x.const_data_ptr<scalar_t>();
  scalar_t* ggo_data = grad_grad_out.mutable_data_ptr<scalar_t>();
  scalar_t* gx_data = grad_x.mutable_data_ptr<scalar_t>();
  const OperandStrides &xs = walk.operand[0], &ggs = walk.operand[1], &ggos = walk.operand[2],
                       &gxs = walk.operand[3];
  const int64_t G = geo.G;
  const acc_t eps = static_cast<acc_t>(eps_);
  const acc_t fan_in = static_cast<acc_t>(G * geo.K);
  const auto gs = grad_of_statistic<scalar_t>(grad_out, geo);

  auto t = parallel_over_blocks(geo, [&](int64_t m, int64_t f, int64_t block) {
    // Per position: mean of x, then sum_g gg -> mean_g(a), sum_g gg * d -> the projection, 1 / (G K sd).
    acc_t mean[kTile], mean_a[kTile], projection[kTile], inv[kTile];
    const acc_t gsv = static_cast<acc_t>(gs[m * geo.F + f]);
    wide_sum_t block_sum = 0;
    for_each_tile(walk, geo.K, m, f, block, [&](int64_t len, const int64_t* offsets) {
      std::fill(mean, mean + len, acc_t(0));
      std::fill(mean_a, mean_a + len, acc_t(0));
      std::fill(projection, projection + len, acc_t(0));
      std::fill(inv, inv + len, acc_t(0));
      for (int64_t g = 0; g < G; ++g) {
        const scalar_t* xg = x_data + offsets[0] + g * xs.member;
        const scalar_t* ggg = gg_data + offsets[1] + g * ggs.member;
        scalar_t* ggog = ggo_data + offsets[2] + g * ggos.member;
        for (int64_t i = 0; i < len; ++i) {
          const scalar_t q = ggg[i * ggs.dim[2]];
          ggog[i * ggos.dim[2]] = q;
          mean[i] += static_cast<acc_t>(xg[i * xs.dim[2]]);
          mean_a[i] += static_cast<acc_t>(q);
        }
      }
      for (int64_t i = 0; i < len; ++i) {
        mean[i] /= G;
        mean_a[i] = gsv * mean_a[i] / G;
      }
      for (int64_t g = 0; g < G; ++g) {
        const scalar_t* xg = x_data + offsets[0] + g * xs.member;
        const scalar_t* ggg = gg_data + offsets[1] + g * ggs.member;
        for (int64_t i = 0; i < len; ++i) {
          const acc_t d = static_cast<acc_t>(xg[i * xs.dim[2]]) - mean[i];
          inv[i] += d * d;
          projection[i] += d * static_cast<acc_t>(ggg[i * ggs.dim[2]]);
        }
      }
      for (int64_t i = 0; i < len; ++i) {
        const acc_t sd = std::sqrt(inv[i] / G + eps);
        inv[i] = acc_t(1) / (fan_in * sd);
        block_sum += static_cast<wide_sum_t>(projection[i] * inv[i]);
        projection[i] = gsv * projection[i] / (G * (sd * sd));
      }
      for (int64_t g = 0; g < G; ++g) {
        const scalar_t* xg = x_data + offsets[0] + g * xs.member;
        const scalar_t* ggg = gg_data + offsets[1] + g * ggs.member;
        scalar_t* gxg = gx_data + offsets[3] + g * gxs.member;
        for (int64_t i = 0; i < len; ++i) {
          const acc_t d = static_cast<acc_t>(xg[i * xs.dim[2]]) - mean[i];
          const acc_t a = gsv * static_cast<acc_t>(ggg[i * ggs.dim[2]]);
          gxg[i * gxs.dim[2]] = static_cast<scalar_t>((a - mean_a[i] - d * projection[i]) * inv[i]);
        }
      }
    });
    return block_sum;
  });
  fill_statistic_channels<scalar_t>(grad_grad_out, geo, t);
}

at::Tensor minibatch_stddev_cpu(const at::Tensor& x, int64_t group_size, int64_t num_channels, double eps) {
  auto args = prepare_forward(x, group_size, num_channels, eps);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "minibatch_stddev_cpu", [&] {
    forward_kernel<scalar_t>(x, args.out, args.geo, eps);
  });
  return args.out;
}

at::Tensor minibatch_stddev_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, int64_t group_size, int64_t num_channels, double eps) {
  auto args = prepare_backward(grad_out, x, group_size, num_channels, eps);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "minibatch_stddev_backward_cpu", [&] {
    backward_kernel<scalar_t>(grad_out, x, args.grad_x, args.geo, eps);
  });
  return args.grad_x;
}

std::tuple<at::Tensor, at::Tensor> minibatch_stddev_double_backward_cpu(
    const at::Tensor& grad_grad_x, const at::Tensor& grad_out, const at::Tensor& x, int64_t group_size,
    int64_t num_channels, double eps) {
  auto args = prepare_double_backward(grad_grad_x, grad_out, x, group_size, num_channels, eps);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "minibatch_stddev_double_backward_cpu", [&] {
        double_backward_kernel<scalar_t>(grad_grad_x, grad_out, x, args.grad_grad_out, args.grad_x, args.geo, eps);
      });
  return {args.grad_grad_out, args.grad_x};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganops, CPU, m) {
  m.impl("minibatch_stddev_cpp", &minibatch_stddev_cpu);
  m.impl("minibatch_stddev_backward_cpp", &minibatch_stddev_backward_cpu);
  m.impl("minibatch_stddev_double_backward_cpp", &minibatch_stddev_double_backward_cpu);
}

}  // namespace ganops
