// CUDA kernels of the minibatch-stddev ops; math and notation of ganops/reference/minibatch_stddev.py.
//
// Each thread owns whole positions: it loops over the G members of a position itself, so the mean and
// variance over the group are exact two-pass values (the second pass re-reads from L1/L2). The statistic
// of the forward and the t of the double backward are sums over all K positions of a (m, f) pair. A pair's
// positions are cut into spans over several blocks, so that the grid fills the GPU even with few pairs
// (StyleGAN2's N=32, G=4, one statistic at 4x4x512 has 8 pairs, and one block per pair used 8 of 132 SMs):
// each block writes the per-position outputs of its span and one partial sum, then a second kernel, one block
// per pair, adds the pair's partials in order and fills its statistic channels. The backward needs no
// reduction over positions and runs on a grid over all positions, after a small kernel that sums grad_out's
// statistic channels per pair. The split depends on the shape only and every reduction has a fixed order, so
// results are deterministic and the same on every GPU; the sums over the K positions and over the statistic
// channels are carried in wide_sum_t (double, csrc/common.h), so their error does not grow with K.
#include "minibatch_stddev.h"

#include <algorithm>
#include <cstdint>

#include "device_utils.cuh"

namespace ganops {
namespace cuda_kernels {
namespace {

// Every block of this file has exactly this many threads, as block_sum<kThreads> requires.
constexpr int kThreads = 256;
// Grid-stride loops cover anything larger; more blocks than this brings nothing on current GPUs.
constexpr int64_t kMaxBlocks = int64_t(1) << 20;
// Blocks a split pass over positions aims at in all: several waves of a 132-SM GPU.
constexpr int64_t kTargetBlocks = 1024;

// A pair's K positions cut into `splits` spans of `span` positions (whole multiples of kThreads).
struct PositionSplit {
  int64_t splits, span;
};

// Blocks per pair of the statistic kernel: one per kThreads elements of a pair's statistic channels.
int64_t statistic_chunks(const MinibatchStddevGeometry& geo) {
  return std::max<int64_t>(1, ceil_div(geo.G * geo.H * geo.W, kThreads));
}

PositionSplit position_split(const MinibatchStddevGeometry& geo) {
  const int64_t pairs = geo.M * geo.F;
  const int64_t chunks = std::max<int64_t>(1, ceil_div(geo.K, kThreads));
  const int64_t wanted = std::min(chunks, std::max<int64_t>(1, ceil_div(kTargetBlocks, pairs)));
  const int64_t chunks_per_span = ceil_div(chunks, wanted);
  return {ceil_div(chunks, chunks_per_span), chunks_per_span * kThreads};
}

// Offsets, member g = 0, of position p of pair (m, f) in every operand of the walk.
template <std::size_t Ops>
__device__ __forceinline__ void position_offsets(
    const PositionWalk<Ops>& walk, int64_t p, int64_t m, int64_t f, int64_t (&offsets)[Ops]) {
  const int64_t i2 = p % walk.size[2], row = p / walk.size[2];
  const int64_t i1 = row % walk.size[1], i0 = row / walk.size[1];
  for (std::size_t op = 0; op < Ops; ++op) {
    const OperandStrides& s = walk.operand[op];
    offsets[op] = m * s.slot + f * s.statistic + i0 * s.dim[0] + i1 * s.dim[1] + i2 * s.dim[2];
  }
}

// sum over (g, h, w) of t[g * M + m, C + f, h, w], computed by the whole block.
template <typename T>
__device__ wide_sum_t block_sum_of_statistic_channels(
    const T* __restrict__ t, Strides4 s, const MinibatchStddevGeometry& geo, int64_t m, int64_t f) {
  const int64_t plane = geo.H * geo.W;
  wide_sum_t sum = 0;
  for (int64_t e = threadIdx.x; e < geo.G * plane; e += kThreads) {
    const int64_t g = e / plane, h = (e % plane) / geo.W, w = e % geo.W;
    sum += to_acc(t[(g * geo.M + m) * s.n + (geo.C + f) * s.c + h * s.h + w * s.w]);
  }
  return block_sum<kThreads>(sum);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) forward_kernel(
    const T* __restrict__ x, T* __restrict__ out, MinibatchStddevGeometry geo, PositionWalk<2> walk,
    PositionSplit split, acc_type<T> eps, wide_sum_t* __restrict__ partial) {
  using acc_t = acc_type<T>;
  const int64_t pair = blockIdx.x / split.splits;
  const int64_t m = pair / geo.F, f = pair % geo.F;
  const int64_t first = (blockIdx.x % split.splits) * split.span;
  const int64_t last = first + split.span < geo.K ? first + split.span : geo.K;
  const OperandStrides &xs = walk.operand[0], &os = walk.operand[1];
  wide_sum_t sd_sum = 0;
  for (int64_t p = first + threadIdx.x; p < last; p += kThreads) {
    int64_t offsets[2];
    position_offsets(walk, p, m, f, offsets);
    acc_t mean(0);
    for (int64_t g = 0; g < geo.G; ++g) {
      const T v = x[offsets[0] + g * xs.member];
      out[offsets[1] + g * os.member] = v;
      mean += to_acc(v);
    }
    mean /= geo.G;
    acc_t var(0);
    for (int64_t g = 0; g < geo.G; ++g) {
      const acc_t d = to_acc(x[offsets[0] + g * xs.member]) - mean;
      var += d * d;
    }
    sd_sum += sqrt(var / geo.G + eps);
  }
  sd_sum = block_sum<kThreads>(sd_sum);
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = sd_sum;
  }
}

// Block b: pair b / chunks and the b % chunks-th chunk of kThreads elements of the pair's statistic channels
// (t[g * M + m, C + f, h, w] over g, h, w), set to (sum of the pair's partials, in span order) / divisor.
template <typename T>
__global__ void __launch_bounds__(kThreads) statistic_kernel(
    const wide_sum_t* __restrict__ partial, int64_t splits, int64_t chunks, wide_sum_t divisor, T* __restrict__ out,
    Strides4 s, MinibatchStddevGeometry geo) {
  const int64_t pair = blockIdx.x / chunks;
  wide_sum_t sum = 0;
  for (int64_t index = threadIdx.x; index < splits; index += kThreads) {
    sum += partial[pair * splits + index];
  }
  const T value = from_acc<T>(static_cast<acc_type<T>>(block_sum<kThreads>(sum) / divisor));
  const int64_t m = pair / geo.F, f = pair % geo.F, plane = geo.H * geo.W;
  const int64_t e = (blockIdx.x % chunks) * kThreads + threadIdx.x;
  if (e < geo.G * plane) {
    const int64_t g = e / plane, h = (e % plane) / geo.W, w = e % geo.W;
    out[(g * geo.M + m) * s.n + (geo.C + f) * s.c + h * s.h + w * s.w] = value;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) grad_stat_kernel(
    const T* __restrict__ grad_out, Strides4 grad_out_strides, MinibatchStddevGeometry geo,
    acc_type<T>* __restrict__ grad_stat) {
  const int64_t m = blockIdx.x / geo.F, f = blockIdx.x % geo.F;
  const wide_sum_t sum = block_sum_of_statistic_channels(grad_out, grad_out_strides, geo, m, f);
  if (threadIdx.x == 0) {
    grad_stat[blockIdx.x] = static_cast<acc_type<T>>(sum);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) backward_kernel(
    const T* __restrict__ grad_out, const T* __restrict__ x, T* __restrict__ grad_x, MinibatchStddevGeometry geo,
    PositionWalk<3> walk, const acc_type<T>* __restrict__ grad_stat, acc_type<T> eps) {
  using acc_t = acc_type<T>;
  const OperandStrides &xs = walk.operand[0], &gos = walk.operand[1], &gxs = walk.operand[2];
  const acc_t fan_in = static_cast<acc_t>(geo.G * geo.K);
  const int64_t total = geo.M * geo.F * geo.K;
  for (int64_t index = blockIdx.x * int64_t(kThreads) + threadIdx.x; index < total;
       index += int64_t(gridDim.x) * kThreads) {
    const int64_t pair = index / geo.K, p = index % geo.K;
    int64_t offsets[3];
    position_offsets(walk, p, pair / geo.F, pair % geo.F, offsets);
    acc_t mean(0);
    for (int64_t g = 0; g < geo.G; ++g) {
      mean += to_acc(x[offsets[0] + g * xs.member]);
    }
    mean /= geo.G;
    acc_t var(0);
    for (int64_t g = 0; g < geo.G; ++g) {
      const acc_t d = to_acc(x[offsets[0] + g * xs.member]) - mean;
      var += d * d;
    }
    const acc_t scale = grad_stat[pair] / fan_in / sqrt(var / geo.G + eps);
    for (int64_t g = 0; g < geo.G; ++g) {
      const acc_t d = to_acc(x[offsets[0] + g * xs.member]) - mean;
      grad_x[offsets[2] + g * gxs.member] = from_acc<T>(to_acc(grad_out[offsets[1] + g * gos.member]) + d * scale);
    }
  }
}

// Block b: pair b / splits, positions [first, last) of span b % splits. Writes grad_x and grad_grad_out's
// passthrough channels there, and the span's share of the statistic channels' value t to partial[b].
template <typename T>
__global__ void __launch_bounds__(kThreads) double_backward_kernel(
    const T* __restrict__ grad_grad_x, const T* __restrict__ grad_out, Strides4 grad_out_strides,
    const T* __restrict__ x, T* __restrict__ grad_grad_out, T* __restrict__ grad_x, MinibatchStddevGeometry geo,
    PositionWalk<4> walk, PositionSplit split, acc_type<T> eps, wide_sum_t* __restrict__ partial) {
  using acc_t = acc_type<T>;
  const int64_t pair = blockIdx.x / split.splits;
  const int64_t m = pair / geo.F, f = pair % geo.F;
  const int64_t first = (blockIdx.x % split.splits) * split.span;
  const int64_t last = first + split.span < geo.K ? first + split.span : geo.K;
  const OperandStrides &xs = walk.operand[0], &ggs = walk.operand[1], &ggos = walk.operand[2],
                       &gxs = walk.operand[3];
  const acc_t gs = static_cast<acc_t>(block_sum_of_statistic_channels(grad_out, grad_out_strides, geo, m, f));
  const acc_t fan_in = static_cast<acc_t>(geo.G * geo.K);
  wide_sum_t t_sum = 0;
  for (int64_t p = first + threadIdx.x; p < last; p += kThreads) {
    int64_t offsets[4];
    position_offsets(walk, p, m, f, offsets);
    acc_t mean(0), gg_sum(0);
    for (int64_t g = 0; g < geo.G; ++g) {
      const T q = grad_grad_x[offsets[1] + g * ggs.member];
      grad_grad_out[offsets[2] + g * ggos.member] = q;
      mean += to_acc(x[offsets[0] + g * xs.member]);
      gg_sum += to_acc(q);
    }
    mean /= geo.G;
    const acc_t mean_a = gs * gg_sum / geo.G;
    acc_t var(0), gg_dot_d(0);
    for (int64_t g = 0; g < geo.G; ++g) {
      const acc_t d = to_acc(x[offsets[0] + g * xs.member]) - mean;
      var += d * d;
      gg_dot_d += d * to_acc(grad_grad_x[offsets[1] + g * ggs.member]);
    }
    const acc_t sd = sqrt(var / geo.G + eps);
    const acc_t inv = acc_t(1) / (fan_in * sd);
    t_sum += gg_dot_d * inv;
    const acc_t projection = gs * gg_dot_d / (geo.G * (sd * sd));
    for (int64_t g = 0; g < geo.G; ++g) {
      const acc_t d = to_acc(x[offsets[0] + g * xs.member]) - mean;
      const acc_t a = gs * to_acc(grad_grad_x[offsets[1] + g * ggs.member]);
      grad_x[offsets[3] + g * gxs.member] = from_acc<T>((a - mean_a - d * projection) * inv);
    }
  }
  t_sum = block_sum<kThreads>(t_sum);
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = t_sum;
  }
}

}  // namespace

int64_t minibatch_stddev_partials(const MinibatchStddevGeometry& geo) {
  return geo.M * geo.F * position_split(geo).splits;
}

template <typename T>
cudaError_t minibatch_stddev_forward(
    const T* x, Strides4 x_strides, T* out, Strides4 out_strides, wide_sum_t* partials,
    const MinibatchStddevGeometry& geo, double eps, cudaStream_t stream) {
  const int64_t pairs = geo.M * geo.F;
  if (pairs == 0) {
    return cudaSuccess;
  }
  const PositionSplit split = position_split(geo);
  if (pairs * std::max(split.splits, statistic_chunks(geo)) > kMaxGridX) {
    return cudaErrorInvalidConfiguration;
  }
  const auto walk = make_walk<2>(geo, {x_strides, out_strides});
  forward_kernel<T><<<static_cast<unsigned>(pairs * split.splits), kThreads, 0, stream>>>(
      x, out, geo, walk, split, static_cast<acc_type<T>>(eps), partials);
  const int64_t chunks = statistic_chunks(geo);
  statistic_kernel<T><<<static_cast<unsigned>(pairs * chunks), kThreads, 0, stream>>>(
      partials, split.splits, chunks, static_cast<wide_sum_t>(geo.K), out, out_strides, geo);
  return cudaGetLastError();
}

template <typename T>
cudaError_t minibatch_stddev_backward(
    const T* grad_out, Strides4 grad_out_strides, const T* x, Strides4 x_strides, T* grad_x, Strides4 grad_x_strides,
    acc_type<T>* grad_stat_workspace, const MinibatchStddevGeometry& geo, double eps, cudaStream_t stream) {
  const int64_t pairs = geo.M * geo.F;
  if (pairs == 0) {
    return cudaSuccess;
  }
  if (pairs > kMaxGridX) {
    return cudaErrorInvalidConfiguration;
  }
  grad_stat_kernel<T><<<static_cast<unsigned>(pairs), kThreads, 0, stream>>>(
      grad_out, grad_out_strides, geo, grad_stat_workspace);
  cudaError_t error = cudaGetLastError();
  const int64_t total = pairs * geo.K;
  if (error != cudaSuccess || total == 0) {
    return error;
  }
  const auto walk = make_walk<3>(geo, {x_strides, grad_out_strides, grad_x_strides});
  const int64_t blocks = std::min(ceil_div(total, kThreads), kMaxBlocks);
  backward_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      grad_out, x, grad_x, geo, walk, grad_stat_workspace, static_cast<acc_type<T>>(eps));
  return cudaGetLastError();
}

template <typename T>
cudaError_t minibatch_stddev_double_backward(
    const T* grad_grad_x, Strides4 grad_grad_x_strides, const T* grad_out, Strides4 grad_out_strides, const T* x,
    Strides4 x_strides, T* grad_grad_out, Strides4 grad_grad_out_strides, T* grad_x, Strides4 grad_x_strides,
    wide_sum_t* partials, const MinibatchStddevGeometry& geo, double eps, cudaStream_t stream) {
  const int64_t pairs = geo.M * geo.F;
  if (pairs == 0) {
    return cudaSuccess;
  }
  const PositionSplit split = position_split(geo);
  if (pairs * std::max(split.splits, statistic_chunks(geo)) > kMaxGridX) {
    return cudaErrorInvalidConfiguration;
  }
  const auto walk =
      make_walk<4>(geo, {x_strides, grad_grad_x_strides, grad_grad_out_strides, grad_x_strides});
  double_backward_kernel<T><<<static_cast<unsigned>(pairs * split.splits), kThreads, 0, stream>>>(
      grad_grad_x, grad_out, grad_out_strides, x, grad_grad_out, grad_x, geo, walk, split,
      static_cast<acc_type<T>>(eps), partials);
  const int64_t chunks = statistic_chunks(geo);
  statistic_kernel<T><<<static_cast<unsigned>(pairs * chunks), kThreads, 0, stream>>>(
      partials, split.splits, chunks, wide_sum_t(1), grad_grad_out, grad_grad_out_strides, geo);
  return cudaGetLastError();
}

#define GANOPS_INSTANTIATE_MINIBATCH_STDDEV(T)                                                                   \
  template cudaError_t minibatch_stddev_forward<T>(                                                            \
      const T*, Strides4, T*, Strides4, wide_sum_t*, const MinibatchStddevGeometry&, double, cudaStream_t);     \
  template cudaError_t minibatch_stddev_backward<T>(                                                           \
      const T*, Strides4, const T*, Strides4, T*, Strides4, acc_type<T>*, const MinibatchStddevGeometry&, double, \
      cudaStream_t);                                                                                           \
  template cudaError_t minibatch_stddev_double_backward<T>(                                                    \
      const T*, Strides4, const T*, Strides4, const T*, Strides4, T*, Strides4, T*, Strides4, wide_sum_t*,     \
      const MinibatchStddevGeometry&, double, cudaStream_t);

GANOPS_INSTANTIATE_MINIBATCH_STDDEV(double)
GANOPS_INSTANTIATE_MINIBATCH_STDDEV(float)
GANOPS_INSTANTIATE_MINIBATCH_STDDEV(__half)
GANOPS_INSTANTIATE_MINIBATCH_STDDEV(__nv_bfloat16)

#undef GANOPS_INSTANTIATE_MINIBATCH_STDDEV

}  // namespace cuda_kernels
}  // namespace ganops
