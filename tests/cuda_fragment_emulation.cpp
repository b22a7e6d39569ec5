// Host emulation of the tensor-core attention kernels' warp-level tile math (csrc/cuda/attention_mma.cuh),
// built and run by tests/test_cuda_fragment_emulation.py. The header's own functions run for each of the 32
// lanes; the ldmatrix and mma they call are emulated from an independent transcription of the PTX ISA's
// tables (ldmatrix .x4 with and without .trans; mma.m16n8k16 with .f16/.bf16 inputs and mma.m16n8k8 with .tf32
// inputs, .f32 accumulators), so a lane that passes the wrong address, or a conversion between fragments that
// pairs the wrong registers, gives a wrong product here. Both element formats of the header run: 16-bit
// tiles (fp16, bf16) and 32-bit tiles (fp32 as tf32).
//
// Elements are small integers: in 16-bit tiles stored as their int16 bit patterns (0 is the pattern of +0 in
// fp16 and bf16 too), in 32-bit tiles as floats (exact in tf32), so every product below is exact in float and
// the comparison is equality.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <random>
#include <vector>

#include "csrc/cuda/attention_mma.cuh"

namespace layout = ganops::mma_layout;

namespace spec {
// PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type": element i of each operand per lane.
int group(int lane) { return lane / 4; }
int thread_in_group(int lane) { return lane % 4; }
int a_row(int lane, int i) { return (i == 0 || i == 1 || i == 4 || i == 5) ? group(lane) : group(lane) + 8; }
int a_col(int lane, int i) { return thread_in_group(lane) * 2 + (i & 1) + (i >= 4 ? 8 : 0); }
int b_row(int lane, int i) { return thread_in_group(lane) * 2 + (i & 1) + (i >= 2 ? 8 : 0); }
int b_col(int lane) { return group(lane); }
int c_row(int lane, int i) { return i < 2 ? group(lane) : group(lane) + 8; }
int c_col(int lane, int i) { return thread_in_group(lane) * 2 + (i & 1); }
// Two 16-bit elements per 32-bit register, the lower-numbered element in the lower half.
int element(uint32_t reg, int half) { return static_cast<int16_t>(half == 0 ? reg & 0xffffu : reg >> 16); }

// PTX ISA, "Matrix Fragments for mma.m16n8k8" with .tf32 inputs: A 16 x 8 (a0..a3), B 8 x 8 (b0, b1), one
// element a register; C as above.
namespace tf32 {
int a_row(int lane, int i) { return (i == 0 || i == 2) ? group(lane) : group(lane) + 8; }
int a_col(int lane, int i) { return i < 2 ? thread_in_group(lane) : thread_in_group(lane) + 4; }
int b_row(int lane, int i) { return i == 0 ? thread_in_group(lane) : thread_in_group(lane) + 4; }
float element(uint32_t reg) {
  float value;
  std::memcpy(&value, &reg, sizeof(value));
  return value;
}
}  // namespace tf32
}  // namespace spec

int failures = 0;

void expect(bool ok, const char* what, int a, int b, int c) {
  if (!ok && failures++ < 20) {
    std::printf("FAIL %s (%d, %d, %d)\n", what, a, b, c);
  }
}

void check_fragment_maps() {
  for (int lane = 0; lane < 32; ++lane) {
    for (int reg = 0; reg < 4; ++reg) {
      for (int half = 0; half < 2; ++half) {
        const int i = 2 * reg + half;
        expect(layout::a_row(lane, reg) == spec::a_row(lane, i), "a_row", lane, reg, half);
        expect(layout::a_col(lane, reg, half) == spec::a_col(lane, i), "a_col", lane, reg, half);
        // The A element a register takes from the accumulators is the same element of the score tile.
        const int index = layout::c_index_for_a(reg, half), tile = layout::c_tile_for_a(reg);
        expect(spec::c_row(lane, index) == spec::a_row(lane, i), "c->a row", lane, reg, half);
        expect(8 * tile + spec::c_col(lane, index) == spec::a_col(lane, i), "c->a col", lane, reg, half);
      }
    }
    for (int reg = 0; reg < 2; ++reg) {
      for (int half = 0; half < 2; ++half) {
        expect(layout::b_row(lane, reg, half) == spec::b_row(lane, 2 * reg + half), "b_row", lane, reg, half);
      }
    }
    expect(layout::b_col(lane) == spec::b_col(lane), "b_col", lane, 0, 0);
    for (int i = 0; i < 4; ++i) {
      expect(layout::c_row(lane, i) == spec::c_row(lane, i), "c_row", lane, i, 0);
      expect(layout::c_col(lane, i) == spec::c_col(lane, i), "c_col", lane, i, 0);
    }
    for (int reg = 0; reg < 4; ++reg) {
      expect(layout::a_row(lane, reg) == spec::tf32::a_row(lane, reg), "tf32 a_row", lane, reg, 0);
      expect(layout::tf32_a_col(lane, reg) == spec::tf32::a_col(lane, reg), "tf32 a_col", lane, reg, 0);
      // The accumulator a tf32 A register takes is the element of the score tile at the permuted column.
      const int index = layout::tf32_c_index_for_a(reg);
      expect(spec::c_row(lane, index) == spec::tf32::a_row(lane, reg), "tf32 c->a row", lane, reg, 0);
      expect(spec::c_col(lane, index) == layout::tf32_k_column(spec::tf32::a_col(lane, reg)), "tf32 c->a col", lane,
             reg, 0);
    }
    for (int reg = 0; reg < 2; ++reg) {
      expect(layout::tf32_b_row(lane, reg) == spec::tf32::b_row(lane, reg), "tf32 b_row", lane, reg, 0);
    }
  }
  // The permutation of k within a step is one: every column of the step is taken once.
  int seen = 0;
  for (int j = 0; j < 8; ++j) {
    seen |= 1 << layout::tf32_k_column(j);
  }
  expect(seen == 0xff, "tf32 k permutation", seen, 0, 0);
}

// The header's functions run lane by lane. ldmatrix and mma are warp-wide, so each lane's calls are recorded
// with symbolic registers (an index into the lane's register table: a packed literal, or matrix m of its n-th
// ldmatrix) and resolved once every lane has run: ldmatrix from all lanes' addresses, then the mma calls in
// order (their operands never depend on results of the same function).
struct Register {
  bool from_ldmatrix;
  uint32_t literal;
  size_t call;
  int matrix;
};

struct LdmatrixCall {
  const unsigned char* address;
  bool trans;
};

struct MmaCall {
  float* c;
  uint32_t a[4], b0, b1;
  bool tf32;
};

struct Warp {
  std::vector<Register> registers[32];
  std::vector<LdmatrixCall> loads[32];
  std::vector<MmaCall> products[32];
};

uint32_t pack_exact(float low, float high);
uint32_t tf32_exact(float value);

struct LaneOps {
  Warp* warp;
  int lane;
  bool tf32;

  uint32_t add(const Register& r) {
    warp->registers[lane].push_back(r);
    return static_cast<uint32_t>(warp->registers[lane].size() - 1);
  }
  void load(uint32_t (&r)[4], const void* address, bool trans) {
    const size_t call = warp->loads[lane].size();
    warp->loads[lane].push_back({static_cast<const unsigned char*>(address), trans});
    for (int m = 0; m < 4; ++m) {
      r[m] = add({true, 0, call, m});
    }
  }
  void ldmatrix_x4(uint32_t (&r)[4], const void* address) { load(r, address, false); }
  void ldmatrix_x4_trans(uint32_t (&r)[4], const void* address) { load(r, address, true); }
  void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    warp->products[lane].push_back({c, {a[0], a[1], a[2], a[3]}, b0, b1, tf32});
  }
  uint32_t pack(float low, float high) { return add({false, pack_exact(low, high), 0, 0}); }
  uint32_t load_b(const uint32_t* address) { return add({false, *address, 0, 0}); }
  uint32_t round(float value) { return add({false, tf32_exact(value), 0, 0}); }
};

// ldmatrix .x4 per the PTX ISA: lane 8 m + r passes the address of row r of matrix m (8 consecutive 16-bit
// elements); lane l receives in register m elements (l / 4, 2 (l % 4)) and (l / 4, 2 (l % 4) + 1) of matrix m,
// transposed with .trans: (2 (l % 4), l / 4) and (2 (l % 4) + 1, l / 4). The rows are read as bytes, whatever
// the tile's element type.
uint32_t ldmatrix_register(const Warp& warp, size_t call, int matrix, int lane) {
  const bool trans = warp.loads[lane][call].trans;
  for (int l = 0; l < 32; ++l) {
    expect(warp.loads[l][call].trans == trans, "same ldmatrix on every lane", l, int(call), 0);
  }
  const auto element = [&](int row, int col) {
    uint16_t value;
    std::memcpy(&value, warp.loads[8 * matrix + row][call].address + 2 * col, sizeof(value));
    return uint32_t(value);
  };
  const int row = lane / 4, col = 2 * (lane % 4);
  return trans ? element(col, row) | (element(col + 1, row) << 16) : element(row, col) | (element(row, col + 1) << 16);
}

uint32_t value_of(const Warp& warp, int lane, uint32_t token) {
  const Register& r = warp.registers[lane][token];
  return r.from_ldmatrix ? ldmatrix_register(warp, r.call, r.matrix, lane) : r.literal;
}

void replay(const Warp& warp) {
  for (size_t n = 0; n < warp.products[0].size(); ++n) {
    float a[16][16] = {}, b[16][8] = {}, c[16][8] = {};
    for (int lane = 0; lane < 32; ++lane) {
      expect(warp.products[lane].size() == warp.products[0].size(), "same mma calls on every lane", lane, 0, 0);
      const MmaCall& call = warp.products[lane][n];
      const uint32_t b_registers[2] = {value_of(warp, lane, call.b0), value_of(warp, lane, call.b1)};
      if (call.tf32) {
        // K = 8: a and b keep zeros in k = 8 .. 15.
        for (int i = 0; i < 4; ++i) {
          a[spec::tf32::a_row(lane, i)][spec::tf32::a_col(lane, i)] =
              spec::tf32::element(value_of(warp, lane, call.a[i]));
        }
        for (int i = 0; i < 2; ++i) {
          b[spec::tf32::b_row(lane, i)][spec::b_col(lane)] = spec::tf32::element(b_registers[i]);
        }
      } else {
        for (int i = 0; i < 8; ++i) {
          a[spec::a_row(lane, i)][spec::a_col(lane, i)] = spec::element(value_of(warp, lane, call.a[i / 2]), i % 2);
        }
        for (int i = 0; i < 4; ++i) {
          b[spec::b_row(lane, i)][spec::b_col(lane)] = spec::element(b_registers[i / 2], i % 2);
        }
      }
      for (int i = 0; i < 4; ++i) {
        c[spec::c_row(lane, i)][spec::c_col(lane, i)] = call.c[i];
      }
    }
    for (int lane = 0; lane < 32; ++lane) {
      for (int i = 0; i < 4; ++i) {
        float d = c[spec::c_row(lane, i)][spec::c_col(lane, i)];
        for (int k = 0; k < 16; ++k) {
          d += a[spec::c_row(lane, i)][k] * b[k][spec::c_col(lane, i)];
        }
        warp.products[lane][n].c[i] = d;
      }
    }
  }
}

uint32_t pack_exact(float low, float high) {
  const auto bits = [](float v) {
    expect(v == static_cast<float>(static_cast<int16_t>(v)), "packed value is a small integer", int(v), 0, 0);
    return static_cast<uint32_t>(static_cast<uint16_t>(static_cast<int16_t>(v)));
  };
  return bits(low) | (bits(high) << 16);
}

uint32_t tf32_exact(float value) {
  expect(value == static_cast<float>(static_cast<int16_t>(value)), "rounded value is a small integer", int(value), 0,
         0);
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

std::mt19937 rng(1234);

// A shared tile as the kernels lay it out (elements E: uint16_t holding int16 patterns, or uint32_t holding
// floats): 64 rows, stride = width rounded up to a k-step, plus 16 bytes; `rows` rows of small random integers,
// zeros elsewhere. Also returns the values as floats [64][width].
template <typename E>
struct HostTile {
  int width, stride;
  std::vector<E> data;
  std::vector<float> values;
};

template <typename E>
E stored(int value) {
  if constexpr (sizeof(E) == 2) {
    return static_cast<uint16_t>(static_cast<int16_t>(value));
  } else {
    return tf32_exact(static_cast<float>(value));
  }
}

template <typename E>
HostTile<E> random_tile(int rows, int width) {
  std::uniform_int_distribution<int> value(-3, 3);
  const int step = layout::kStep<E>;
  const int stride = (width + step - 1) / step * step + layout::kUnit<E>;
  HostTile<E> tile{width, stride, std::vector<E>(64 * stride, stored<E>(0)), std::vector<float>(64 * width, 0.0f)};
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < width; ++c) {
      const int v = value(rng);
      tile.data[r * stride + c] = stored<E>(v);
      tile.values[r * width + c] = static_cast<float>(v);
    }
  }
  return tile;
}

constexpr int kMaxDim = 64, kMaxTiles = 8;

// scores(), then accumulate_scores() for each further term: s = sum_t R_t C_t^T for the warp's rows row0 ..
// row0 + 15 of R_t [rows, dim] and C_t [cols, dim] (two terms: the double backward's R = Uq K^T + Q Uk^T).
template <typename E>
void check_scores(int rows, int row0, int cols, int dim, int terms = 1) {
  std::vector<HostTile<E>> r, c;
  for (int t = 0; t < terms; ++t) {
    r.push_back(random_tile<E>(rows, dim));
    c.push_back(random_tile<E>(cols, dim));
  }
  static float s[32][layout::kColTiles][4];
  Warp warp;
  const int steps = (dim + layout::kStep<E> - 1) / layout::kStep<E>;
  for (int lane = 0; lane < 32; ++lane) {
    LaneOps ops{&warp, lane, sizeof(E) == 4};
    for (int t = 0; t < terms; ++t) {
      const layout::Tile<E> rows_tile{r[t].data.data(), r[t].stride}, cols_tile{c[t].data.data(), c[t].stride};
      if (t == 0) {
        layout::scores<kMaxDim / layout::kStep<E>>(s[lane], rows_tile, row0, cols_tile, steps, lane, ops);
      } else {
        layout::accumulate_scores<kMaxDim / layout::kStep<E>>(s[lane], rows_tile, row0, cols_tile, steps, lane, ops);
      }
    }
  }
  replay(warp);
  for (int lane = 0; lane < 32; ++lane) {
    for (int nt = 0; nt < layout::kColTiles; ++nt) {
      for (int i = 0; i < 4; ++i) {
        const int row = row0 + layout::c_row(lane, i), col = nt * 8 + layout::c_col(lane, i);
        float expected = 0;
        for (int t = 0; t < terms; ++t) {
          for (int d = 0; d < dim; ++d) {
            expected += r[t].values[row * dim + d] * c[t].values[col * dim + d];
          }
        }
        expect(s[lane][nt][i] == expected, "scores", rows * 1000 + row0, cols, dim * 10 + terms);
      }
    }
  }
}

// accumulate_product(): acc += P B for P a 16 x 64 accumulator tile and B [cols, width].
template <typename E>
void check_product(int cols, int width) {
  const HostTile<E> b = random_tile<E>(cols, width);
  std::uniform_int_distribution<int> entry(-4, 4);
  float p[16][64];
  for (auto& row : p) {
    for (auto& e : row) {
      e = static_cast<float>(entry(rng));
    }
  }
  static float c[32][layout::kColTiles][4], acc[32][kMaxTiles][4];
  for (int lane = 0; lane < 32; ++lane) {
    for (int nt = 0; nt < layout::kColTiles; ++nt) {
      for (int i = 0; i < 4; ++i) {
        c[lane][nt][i] = p[layout::c_row(lane, i)][nt * 8 + layout::c_col(lane, i)];
      }
    }
    for (int dt = 0; dt < kMaxTiles; ++dt) {
      for (int i = 0; i < 4; ++i) {
        acc[lane][dt][i] = 1.0f;  // accumulates onto what is there
      }
    }
  }
  Warp warp;
  const int tiles = (width + 7) / 8;
  for (int lane = 0; lane < 32; ++lane) {
    LaneOps ops{&warp, lane, sizeof(E) == 4};
    layout::accumulate_product<kMaxTiles>(acc[lane], c[lane], layout::Tile<E>{b.data.data(), b.stride}, tiles, lane,
                                          ops);
  }
  replay(warp);
  for (int lane = 0; lane < 32; ++lane) {
    for (int dt = 0; dt < tiles; ++dt) {
      for (int i = 0; i < 4; ++i) {
        const int row = layout::c_row(lane, i), col = dt * 8 + layout::c_col(lane, i);
        float expected = 1.0f;
        if (col < width) {
          for (int j = 0; j < 64; ++j) {
            expected += p[row][j] * b.values[j * width + col];
          }
        }
        expect(acc[lane][dt][i] == expected, "product", cols, width, dt);
      }
    }
  }
}

template <typename E>
void check_format() {
  // BigGAN's Dqk = 12 and Dv = 48, an odd dim, whole and partial tiles, every warp's row offset.
  for (const int dim : {12, 16, 5, 48, 64}) {
    for (const int row0 : {0, 16, 48}) {
      check_scores<E>(64, row0, 64, dim);
      check_scores<E>(53, row0, 37, dim);
    }
    check_scores<E>(53, 16, 37, dim, 2);
  }
  for (const int width : {48, 12, 7, 64, 16}) {
    check_product<E>(64, width);
    check_product<E>(37, width);
    check_product<E>(1, width);
  }
}

int main() {
  check_fragment_maps();
  check_format<uint16_t>();
  check_format<uint32_t>();
  if (failures != 0) {
    std::printf("%d mismatches\n", failures);
    return 1;
  }
  std::printf("all fragment checks passed\n");
  return 0;
}
