// CUDA kernels of the spectral-norm ops; math and notation of ganops/reference/spectral_norm.py.
//
// A group of layers runs as one work list over all its layers, so that every SM streams weights whatever the
// sizes of the layers: a persistent grid (two blocks per SM) walks the list in order, block b taking items
// b, b + gridDim.x, ... Two kinds of items cover a layer:
// * row items: R consecutive rows, R the power of two <= 16 with about kItemElements elements (at least one
//   row); the block's 16 warps split each row into 16 / R interleaved 32-column segments, so a warp reads 32
//   consecutive elements of a row-major weight per step. Used by W x, by W_sn = W / sigma and the backward.
// * column items: kColumnsPerItem consecutive columns over all rows (W^T y), each warp taking every 16th row
//   and its lanes two 32-column halves, summed across warps in shared memory.
// The streaming loops keep 16 bytes of weight loads in flight per thread (kLoadsInFlight).
// Each product writes finished rows (or columns) of its result, so no item needs another's partial sums;
// the normalisations are folded into the next pass, which recomputes the norm of its input vector per layer
// (a block reduction over rows or cols of the layer, read from L2; a block recomputes it only when it
// enters a new layer). Launches per forward: 2 per power iteration (W x, W^T y) + 1 (sigma, u, v, W_sn);
// per backward: 2 (<G, W> per block and layer; then grad_W), the first leaving one partial per block and
// layer in a workspace of gridDim.x * layers accumulators that the second sums in a fixed order.
//
// Sums run in a fixed order (fixed grid per device), so results are deterministic on a given GPU.
// torch's order and semantics: u = normalize(W v) first, then v = normalize(W^T u), normalize(x) =
// x / max(||x||, eps) with the scaled (overflow-safe) norm, sigma = u^T W v = ||W^T u||^2 / max(||W^T u||, eps);
// n_power_iterations = 0 computes sigma = u^T W v with the given vectors and returns them unchanged.
#include "spectral_norm.h"

#include <cstdint>

#include "device_utils.cuh"

namespace ganops {
namespace cuda_kernels {
namespace {

// Every block of this file has exactly this many threads, as block_sum<kThreads> requires.
constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kBlocksPerSm = 2;
// About this many weight elements per row item: a block keeps ~4 loads per thread in flight for a few
// microseconds, and a BigGAN-128 D group gets ~1000 items, several per block.
constexpr int64_t kItemElements = 32768;
constexpr int kColumnsPerItem = 64;

__device__ int rows_per_item(int64_t cols) {
  int rows = kWarps;
  while (rows > 1 && rows * cols > kItemElements) {
    rows >>= 1;
  }
  return rows;
}

enum class Items { kRows, kColumns };

template <Items kKind, typename Layer>
__device__ int64_t item_count(const Layer& layer) {
  return kKind == Items::kRows ? ceil_div(layer.rows, rows_per_item(layer.cols))
                               : ceil_div(layer.cols, kColumnsPerItem);
}

// Calls body(layer, layer_index, item_in_layer) for this block's items of the work list (the items of layer 0,
// then of layer 1, ...). Uniform across the block: bodies may synchronise.
template <Items kKind, typename Layer, typename Body>
__device__ void for_each_item(const Layer* __restrict__ layers, int64_t num_layers, const Body& body) {
  int64_t layer_index = 0, layer_first = 0;
  Layer layer = layers[0];
  int64_t count = item_count<kKind>(layer);
  for (int64_t item = blockIdx.x;; item += gridDim.x) {
    while (item >= layer_first + count) {
      layer_first += count;
      if (++layer_index == num_layers) {
        return;
      }
      layer = layers[layer_index];
      count = item_count<kKind>(layer);
    }
    body(layer, layer_index, item - layer_first);
  }
}

// Independent loads in flight per thread in the weight-streaming loops: 16 bytes of weights (4 floats, 8
// halves; 4 doubles), about 16 KB per SM at two blocks of 512 threads, near H100's latency-bandwidth product
// per SM, within the 64 registers a thread has at this occupancy.
template <typename T>
constexpr int kLoadsInFlight = sizeof(T) == 2 ? 8 : 4;

// sum over i = first, first + stride, ... < count of term(i), with kUnroll independent accumulators so that
// kUnroll loads are in flight per thread, added in a fixed order.
template <typename acc_t, int kUnroll, typename Term>
__device__ __forceinline__ acc_t strided_sum(int64_t first, int64_t count, int64_t stride, const Term& term) {
  acc_t sums[kUnroll];
#pragma unroll
  for (int j = 0; j < kUnroll; ++j) {
    sums[j] = acc_t(0);
  }
  int64_t i = first;
  for (; i + (kUnroll - 1) * stride < count; i += kUnroll * stride) {
#pragma unroll
    for (int j = 0; j < kUnroll; ++j) {
      sums[j] += term(i + j * stride);
    }
  }
  for (; i < count; i += stride) {
    sums[0] += term(i);
  }
#pragma unroll
  for (int width = kUnroll / 2; width > 0; width /= 2) {
#pragma unroll
    for (int j = 0; j < width; ++j) {
      sums[j] += sums[j + width];
    }
  }
  return sums[0];
}

// ||x|| over x[0, count) by the whole block, as m ||x / m|| with m = max |x| (the reference's scaled_norm:
// no square over- or underflows); NaN in x gives NaN, an infinite entry inf. Two passes over x, which is a
// vector of the layer (R or C entries, from L2), next to the R C weights a layer's pass streams.
template <typename acc_t, typename Element>
__device__ acc_t block_norm(int64_t count, const Element& element) {
  acc_t largest(0);
  for (int64_t i = threadIdx.x; i < count; i += kThreads) {
    largest = fmax(largest, abs(element(i)));
  }
  largest = block_max<kThreads>(largest);
  // As the reference: scale 1 where the largest is 0 or inf (or all NaN), so that NaN and inf come through.
  const acc_t scale = largest > acc_t(0) && !isinf(largest) ? largest : acc_t(1);
  return scale * sqrt(block_sum<kThreads>(strided_sum<acc_t, 1>(threadIdx.x, count, kThreads, [&](int64_t i) {
    const acc_t scaled = element(i) / scale;
    return scaled * scaled;
  })));
}

// max(norm, eps), NaN staying NaN (fmax would return eps).
template <typename acc_t>
__device__ acc_t clamped_norm(acc_t norm, acc_t eps) {
  return norm < eps ? eps : norm;
}

// The row item `index` of `layer`: the warp's row (or -1) and its segment of the row.
struct RowSlice {
  int64_t row;
  int rows, segment, segments;
};

template <typename Layer>
__device__ RowSlice row_slice(const Layer& layer, int64_t index) {
  const int rows = rows_per_item(layer.cols), segments = kWarps / rows, warp = threadIdx.x / 32;
  const int64_t row = index * rows + warp / segments;
  return {row < layer.rows ? row : -1, rows, warp % segments, segments};
}

// sum over the columns of the warp's segment of its row of term(c); lanes stride the segment.
template <typename T, typename acc_t, typename Layer, typename Term>
__device__ acc_t row_segment_sum(const Layer& layer, const RowSlice& slice, const Term& term) {
  if (slice.row < 0) {
    return acc_t(0);
  }
  const int lane = threadIdx.x % 32;
  const int64_t stride = int64_t(slice.segments) * 32;
  return strided_sum<acc_t, kLoadsInFlight<T>>(slice.segment * 32 + lane, layer.cols, stride, term);
}

// W x for the rows of one row item, x = v (first iteration) or work_v / max(||work_v||, eps).
template <typename T>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) rows_kernel(
    const SpectralNormForwardLayer<T>* __restrict__ layers, int64_t num_layers, bool first_iteration,
    acc_type<T> eps) {
  using acc_t = acc_type<T>;
  __shared__ acc_t segment_sums[kWarps];
  int64_t scaled_layer = -1;
  acc_t x_scale(1);
  for_each_item<Items::kRows>(layers, num_layers, [&](const SpectralNormForwardLayer<T>& layer, int64_t layer_index,
                                                     int64_t index) {
    if (!first_iteration && layer_index != scaled_layer) {
      const acc_t norm = block_norm<acc_t>(layer.cols, [&](int64_t c) { return layer.work_v[c]; });
      x_scale = acc_t(1) / clamped_norm(norm, eps);
      scaled_layer = layer_index;
    }
    const RowSlice slice = row_slice(layer, index);
    const T* row = layer.weight + slice.row * layer.row_stride;
    acc_t sum = row_segment_sum<T, acc_t>(layer, slice, [&](int64_t c) {
      const acc_t x = first_iteration ? to_acc(layer.v[c]) : layer.work_v[c];
      return to_acc(row[c * layer.col_stride]) * x;
    });
    sum = warp_sum(sum);
    // The previous item's readers of segment_sums are done.
    __syncthreads();
    if (threadIdx.x % 32 == 0) {
      segment_sums[threadIdx.x / 32] = sum;
    }
    __syncthreads();
    if (threadIdx.x < slice.rows) {
      const int64_t r = index * slice.rows + threadIdx.x;
      if (r < layer.rows) {
        acc_t t(0);
        for (int s = 0; s < slice.segments; ++s) {
          t += segment_sums[threadIdx.x * slice.segments + s];
        }
        layer.work_u[r] = t * x_scale;
      }
    }
  });
}

// W^T y for the columns of one column item, y = work_u / max(||work_u||, eps).
template <typename T>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) columns_kernel(
    const SpectralNormForwardLayer<T>* __restrict__ layers, int64_t num_layers, acc_type<T> eps) {
  using acc_t = acc_type<T>;
  __shared__ acc_t warp_sums[kWarps][kColumnsPerItem];
  int64_t scaled_layer = -1;
  acc_t y_scale(1);
  for_each_item<Items::kColumns>(layers, num_layers, [&](const SpectralNormForwardLayer<T>& layer,
                                                        int64_t layer_index, int64_t index) {
    if (layer_index != scaled_layer) {
      const acc_t norm = block_norm<acc_t>(layer.rows, [&](int64_t r) { return layer.work_u[r]; });
      y_scale = acc_t(1) / clamped_norm(norm, eps);
      scaled_layer = layer_index;
    }
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int64_t col0 = index * kColumnsPerItem + lane, col1 = col0 + 32;
    const T* w0 = layer.weight + col0 * layer.col_stride;
    const T* w1 = layer.weight + col1 * layer.col_stride;
    const bool has0 = col0 < layer.cols, has1 = col1 < layer.cols;
    // kRows rows a step, two columns each: 2 kRows loads in flight per thread.
    constexpr int kRows = kLoadsInFlight<T> / 2;
    acc_t sums0[kRows], sums1[kRows];
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      sums0[j] = acc_t(0);
      sums1[j] = acc_t(0);
    }
    if (has0) {
      int64_t r = warp;
      for (; r + (kRows - 1) * kWarps < layer.rows; r += kRows * kWarps) {
#pragma unroll
        for (int j = 0; j < kRows; ++j) {
          const int64_t row = r + j * kWarps;
          const acc_t y = layer.work_u[row];
          sums0[j] += to_acc(w0[row * layer.row_stride]) * y;
          if (has1) {
            sums1[j] += to_acc(w1[row * layer.row_stride]) * y;
          }
        }
      }
      for (; r < layer.rows; r += kWarps) {
        const acc_t y = layer.work_u[r];
        sums0[0] += to_acc(w0[r * layer.row_stride]) * y;
        if (has1) {
          sums1[0] += to_acc(w1[r * layer.row_stride]) * y;
        }
      }
    }
    acc_t sum0(0), sum1(0);
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      sum0 += sums0[j];
      sum1 += sums1[j];
    }
    __syncthreads();
    warp_sums[warp][lane] = sum0;
    warp_sums[warp][lane + 32] = sum1;
    __syncthreads();
    if (threadIdx.x < kColumnsPerItem) {
      const int64_t c = index * kColumnsPerItem + threadIdx.x;
      if (c < layer.cols) {
        acc_t s(0);
        for (int w = 0; w < kWarps; ++w) {
          s += warp_sums[w][threadIdx.x];
        }
        layer.work_v[c] = s * y_scale;
      }
    }
  });
}

// sigma, u, v per layer (by the layer's first item) and W_sn = W / sigma for the rows of each row item.
template <typename T>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) finish_kernel(
    const SpectralNormForwardLayer<T>* __restrict__ layers, int64_t num_layers, int64_t n_power_iterations,
    acc_type<T> eps) {
  using acc_t = acc_type<T>;
  int64_t sigma_layer = -1;
  acc_t sigma(1), v_norm(1);
  for_each_item<Items::kRows>(layers, num_layers, [&](const SpectralNormForwardLayer<T>& layer, int64_t layer_index,
                                                     int64_t index) {
    if (layer_index != sigma_layer) {
      if (n_power_iterations > 0) {
        const acc_t s_norm = block_norm<acc_t>(layer.cols, [&](int64_t c) { return layer.work_v[c]; });
        v_norm = clamped_norm(s_norm, eps);
        // ||s||^2 / max(||s||, eps) without forming ||s||^2, which overflows first.
        sigma = s_norm * (s_norm / v_norm);
      } else {
        // Eval: sigma = u . (W v) with the given u, v (work_u = W v).
        sigma = block_sum<kThreads>(strided_sum<acc_t, 4>(threadIdx.x, layer.rows, kThreads, [&](int64_t r) {
          return to_acc(layer.u[r]) * layer.work_u[r];
        }));
      }
      sigma_layer = layer_index;
    }
    if (index == 0) {
      if (n_power_iterations > 0) {
        const acc_t u_norm =
            clamped_norm(block_norm<acc_t>(layer.rows, [&](int64_t r) { return layer.work_u[r]; }), eps);
        for (int64_t r = threadIdx.x; r < layer.rows; r += kThreads) {
          layer.u_out[r] = from_acc<T>(layer.work_u[r] / u_norm);
        }
        for (int64_t c = threadIdx.x; c < layer.cols; c += kThreads) {
          layer.v_out[c] = from_acc<T>(layer.work_v[c] / v_norm);
        }
      } else {
        for (int64_t r = threadIdx.x; r < layer.rows; r += kThreads) {
          layer.u_out[r] = layer.u[r];
        }
        for (int64_t c = threadIdx.x; c < layer.cols; c += kThreads) {
          layer.v_out[c] = layer.v[c];
        }
      }
      if (threadIdx.x == 0) {
        *layer.sigma = sigma;
      }
    }
    const RowSlice slice = row_slice(layer, index);
    if (slice.row >= 0) {
      const T* row = layer.weight + slice.row * layer.row_stride;
      T* out = layer.weight_sn + slice.row * layer.cols;
      const int64_t stride = int64_t(slice.segments) * 32;
#pragma unroll 8
      for (int64_t c = slice.segment * 32 + threadIdx.x % 32; c < layer.cols; c += stride) {
        out[c] = from_acc<T>(to_acc(row[c * layer.col_stride]) / sigma);
      }
    }
  });
}

// partials[block * num_layers + layer] = this block's part of <G, W> for every layer (0 where it has no item).
template <typename T>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) projection_kernel(
    const SpectralNormBackwardLayer<T>* __restrict__ layers, int64_t num_layers, acc_type<T>* __restrict__ partials) {
  using acc_t = acc_type<T>;
  acc_t* own = partials + blockIdx.x * num_layers;
  for (int64_t l = threadIdx.x; l < num_layers; l += kThreads) {
    own[l] = acc_t(0);
  }
  // Only thread 0 adds to `own` below, after block_sum's barriers have made every thread's zeros visible.
  for_each_item<Items::kRows>(layers, num_layers, [&](const SpectralNormBackwardLayer<T>& layer,
                                                     int64_t layer_index, int64_t index) {
    const RowSlice slice = row_slice(layer, index);
    const T* g = layer.grad + slice.row * layer.grad_row_stride;
    const T* w = layer.weight + slice.row * layer.row_stride;
    const acc_t part = row_segment_sum<T, acc_t>(layer, slice, [&](int64_t c) {
      return to_acc(g[c * layer.grad_col_stride]) * to_acc(w[c * layer.col_stride]);
    });
    const acc_t item_sum = block_sum<kThreads>(part);
    if (threadIdx.x == 0) {
      own[layer_index] += item_sum;
    }
  });
}

// grad_W = (G - <G, W> / sigma * u v^T) / sigma for the rows of each row item.
template <typename T>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) grad_weight_kernel(
    const SpectralNormBackwardLayer<T>* __restrict__ layers, int64_t num_layers,
    const acc_type<T>* __restrict__ partials) {
  using acc_t = acc_type<T>;
  int64_t projected_layer = -1;
  acc_t projection(0), sigma(1);
  for_each_item<Items::kRows>(layers, num_layers, [&](const SpectralNormBackwardLayer<T>& layer,
                                                     int64_t layer_index, int64_t index) {
    if (layer_index != projected_layer) {
      sigma = *layer.sigma;
      // <G, W_sn> = <G, W> / sigma, the blocks' parts added in block order.
      projection = block_sum<kThreads>(strided_sum<acc_t, 4>(threadIdx.x, gridDim.x, kThreads, [&](int64_t b) {
                     return partials[b * num_layers + layer_index];
                   })) /
                   sigma;
      projected_layer = layer_index;
    }
    const RowSlice slice = row_slice(layer, index);
    if (slice.row >= 0) {
      const T* g = layer.grad + slice.row * layer.grad_row_stride;
      T* out = layer.grad_weight + slice.row * layer.cols;
      const acc_t u_scaled = projection * to_acc(layer.u[slice.row]);
      const int64_t stride = int64_t(slice.segments) * 32;
#pragma unroll 8
      for (int64_t c = slice.segment * 32 + threadIdx.x % 32; c < layer.cols; c += stride) {
        out[c] = from_acc<T>((to_acc(g[c * layer.grad_col_stride]) - u_scaled * to_acc(layer.v[c])) / sigma);
      }
    }
  });
}

// Blocks of the persistent grid on the current device: kBlocksPerSm per SM.
cudaError_t grid_blocks(int* blocks) {
  DeviceInfo info;
  const cudaError_t error = current_device_info(&info);
  if (error == cudaSuccess) {
    *blocks = info.sm_count * kBlocksPerSm;
  }
  return error;
}

}  // namespace

template <typename T>
cudaError_t spectral_norm_forward(
    const SpectralNormForwardLayer<T>* layers, int64_t num_layers, int64_t n_power_iterations, double eps,
    cudaStream_t stream) {
  if (num_layers == 0) {
    return cudaSuccess;
  }
  int blocks = 0;
  const cudaError_t error = grid_blocks(&blocks);
  if (error != cudaSuccess) {
    return error;
  }
  const acc_type<T> acc_eps = static_cast<acc_type<T>>(eps);
  const int64_t products = n_power_iterations > 0 ? n_power_iterations : 1;
  for (int64_t it = 0; it < products; ++it) {
    rows_kernel<T><<<blocks, kThreads, 0, stream>>>(layers, num_layers, it == 0, acc_eps);
    if (n_power_iterations > 0) {
      columns_kernel<T><<<blocks, kThreads, 0, stream>>>(layers, num_layers, acc_eps);
    }
  }
  finish_kernel<T><<<blocks, kThreads, 0, stream>>>(layers, num_layers, n_power_iterations, acc_eps);
  return cudaGetLastError();
}

cudaError_t spectral_norm_backward_workspace(int64_t num_layers, int64_t* elements) {
  int blocks = 0;
  const cudaError_t error = grid_blocks(&blocks);
  if (error == cudaSuccess) {
    *elements = static_cast<int64_t>(blocks) * num_layers;
  }
  return error;
}

template <typename T>
cudaError_t spectral_norm_backward(
    const SpectralNormBackwardLayer<T>* layers, int64_t num_layers, acc_type<T>* partials, cudaStream_t stream) {
  if (num_layers == 0) {
    return cudaSuccess;
  }
  int blocks = 0;
  const cudaError_t error = grid_blocks(&blocks);
  if (error != cudaSuccess) {
    return error;
  }
  projection_kernel<T><<<blocks, kThreads, 0, stream>>>(layers, num_layers, partials);
  grad_weight_kernel<T><<<blocks, kThreads, 0, stream>>>(layers, num_layers, partials);
  return cudaGetLastError();
}

#define GANOPS_INSTANTIATE_SPECTRAL_NORM(T)                                                                  \
  template cudaError_t spectral_norm_forward<T>(                                                             \
      const SpectralNormForwardLayer<T>*, int64_t, int64_t, double, cudaStream_t);                           \
  template cudaError_t spectral_norm_backward<T>(                                                            \
      const SpectralNormBackwardLayer<T>*, int64_t, acc_type<T>*, cudaStream_t);

GANOPS_INSTANTIATE_SPECTRAL_NORM(double)
GANOPS_INSTANTIATE_SPECTRAL_NORM(float)
GANOPS_INSTANTIATE_SPECTRAL_NORM(__half)
GANOPS_INSTANTIATE_SPECTRAL_NORM(__nv_bfloat16)

#undef GANOPS_INSTANTIATE_SPECTRAL_NORM

}  // namespace cuda_kernels
}  // namespace ganops
