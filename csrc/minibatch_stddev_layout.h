// Index arithmetic of the minibatch-stddev kernels, shared by the CPU kernels and the CUDA kernels.
// Plain C++ on purpose (no torch, no CUDA headers): the .cu file must compile with nvcc alone, and the
// structs below are passed by value straight into CUDA kernels.
//
// Notation (see ganops/reference/minibatch_stddev.py): x is [N, C, H, W], G members per group, M = N / G
// group slots, F statistics of c = C / F channels each, K = c * H * W positions per (slot m, statistic f).
// Sample n = g * M + m is member g of slot m; channel ch = f * c + j.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace ganops {

struct MinibatchStddevGeometry {
  int64_t N, C, H, W;
  int64_t G, M, F, c, K;
};

inline MinibatchStddevGeometry make_geometry(
    int64_t N, int64_t C, int64_t H, int64_t W, int64_t group_size, int64_t num_channels) {
  MinibatchStddevGeometry geo{};
  geo.N = N;
  geo.C = C;
  geo.H = H;
  geo.W = W;
  geo.G = group_size;
  geo.M = N / group_size;
  geo.F = num_channels;
  geo.c = C / num_channels;
  geo.K = geo.c * H * W;
  return geo;
}

// Element strides of a 4-d tensor, in [N, C, H, W] order.
struct Strides4 {
  int64_t n, c, h, w;
};

// How one tensor is addressed by (member g, slot m, statistic f, walk position): the offset of element
// (g, m, f, i0, i1, i2) is g * member + m * slot + f * statistic + i0 * dim[0] + i1 * dim[1] + i2 * dim[2].
struct OperandStrides {
  int64_t member, slot, statistic;
  int64_t dim[3];
};

// The K positions (j, h, w) of one (m, f) pair as a 3-d walk [outer, middle, inner]: the dimensions are
// ordered by the first operand's strides (x) so that the inner loop runs along its smallest stride, and
// dimensions that are contiguous in every operand are merged. That makes the inner loop long and
// unit-stride for contiguous and channels_last inputs alike, which is what lets the CPU loops vectorise
// and the CUDA accesses coalesce, while any other strided view still works.
template <std::size_t NumOperands>
struct PositionWalk {
  int64_t size[3];
  OperandStrides operand[NumOperands];
};

template <std::size_t NumOperands>
PositionWalk<NumOperands> make_walk(
    const MinibatchStddevGeometry& geo, const std::array<Strides4, NumOperands>& strides) {
  struct Dim {
    int64_t size;
    int64_t stride[NumOperands];
  };
  Dim dims[3];
  const int64_t sizes[3] = {geo.c, geo.H, geo.W};
  for (std::size_t op = 0; op < NumOperands; ++op) {
    dims[0].stride[op] = strides[op].c;
    dims[1].stride[op] = strides[op].h;
    dims[2].stride[op] = strides[op].w;
  }
  for (int d = 0; d < 3; ++d) {
    dims[d].size = sizes[d];
  }
  // Outermost first: descending stride of x (insertion sort, stable, so ties keep (j, h, w) order).
  for (int i = 1; i < 3; ++i) {
    for (int k = i; k > 0 && dims[k - 1].stride[0] < dims[k].stride[0]; --k) {
      const Dim tmp = dims[k - 1];
      dims[k - 1] = dims[k];
      dims[k] = tmp;
    }
  }
  Dim merged[3];
  int count = 0;
  for (const Dim& d : dims) {
    if (d.size == 1 && count > 0) {
      continue;
    }
    if (count > 0) {
      Dim& last = merged[count - 1];
      bool contiguous = true;
      for (std::size_t op = 0; op < NumOperands; ++op) {
        contiguous = contiguous && last.stride[op] == d.stride[op] * d.size;
      }
      if (last.size == 1 || contiguous) {
        last.size *= d.size;
        for (std::size_t op = 0; op < NumOperands; ++op) {
          last.stride[op] = d.stride[op];
        }
        continue;
      }
    }
    merged[count++] = d;
  }

  PositionWalk<NumOperands> walk{};
  const int pad = 3 - count;
  for (int d = 0; d < 3; ++d) {
    walk.size[d] = d < pad ? 1 : merged[d - pad].size;
  }
  for (std::size_t op = 0; op < NumOperands; ++op) {
    walk.operand[op].member = geo.M * strides[op].n;
    walk.operand[op].slot = strides[op].n;
    walk.operand[op].statistic = geo.c * strides[op].c;
    for (int d = 0; d < 3; ++d) {
      walk.operand[op].dim[d] = d < pad ? 0 : merged[d - pad].stride[op];
    }
  }
  return walk;
}

}  // namespace ganops
