// Host emulation of the tensor-core attention kernels' warp-level tile math (csrc/cuda/attention_mma.cuh),
// built and run by tests/test_cuda_fragment_emulation.py. The header's own functions run for each of the 32
// lanes; the MMA they call is emulated from an independent transcription of the PTX ISA's fragment tables
// for mma.m16n8k16 (.f16/.bf16 inputs, .f32 accumulators), so a lane that loads the wrong element, or a
// conversion between fragments that pairs the wrong registers, gives a wrong product here.
//
// Elements are small integers stored as their int16 bit patterns (0 is the pattern of +0 in fp16 and bf16
// too), so every product below is exact in float and the comparison is equality.
#include <cstdint>
#include <cstdio>
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
  }
}

// The header's functions run lane by lane; each mma call is recorded with its operands and replayed for the
// whole warp once every lane has made it (the operands never depend on results of the same function).
struct Call {
  float* c;
  uint32_t a[4], b[2];
};

struct RecordingMma {
  std::vector<Call>* calls;
  void operator()(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) const {
    calls->push_back({c, {a[0], a[1], a[2], a[3]}, {b[0], b[1]}});
  }
};

void replay(std::vector<Call> (&calls)[32]) {
  for (size_t n = 0; n < calls[0].size(); ++n) {
    float a[16][16] = {}, b[16][8] = {}, c[16][8] = {};
    for (int lane = 0; lane < 32; ++lane) {
      expect(calls[lane].size() == calls[0].size(), "same calls on every lane", lane, 0, 0);
      const Call& call = calls[lane][n];
      for (int i = 0; i < 8; ++i) {
        a[spec::a_row(lane, i)][spec::a_col(lane, i)] = spec::element(call.a[i / 2], i % 2);
      }
      for (int i = 0; i < 4; ++i) {
        b[spec::b_row(lane, i)][spec::b_col(lane)] = spec::element(call.b[i / 2], i % 2);
        c[spec::c_row(lane, i)][spec::c_col(lane, i)] = call.c[i];
      }
    }
    for (int lane = 0; lane < 32; ++lane) {
      for (int i = 0; i < 4; ++i) {
        float d = c[spec::c_row(lane, i)][spec::c_col(lane, i)];
        for (int k = 0; k < 16; ++k) {
          d += a[spec::c_row(lane, i)][k] * b[k][spec::c_col(lane, i)];
        }
        calls[lane][n].c[i] = d;
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

std::mt19937 rng(1234);

std::vector<uint16_t> random_block(int rows, int width) {
  std::uniform_int_distribution<int> value(-3, 3);
  std::vector<uint16_t> block(static_cast<size_t>(rows) * width);
  for (auto& e : block) {
    e = static_cast<uint16_t>(static_cast<int16_t>(value(rng)));
  }
  return block;
}

float value(const std::vector<uint16_t>& block, int width, int row, int col) {
  return static_cast<int16_t>(block[static_cast<size_t>(row) * width + col]);
}

constexpr int kMaxSteps = 4, kMaxTiles = 8;

// scores(): s = R C^T for the warp's rows row0 .. row0 + 15 of R [rows, dim] and C [cols, dim].
void check_scores(int rows, int row0, int cols, int dim) {
  const auto r = random_block(rows, dim), c = random_block(cols, dim);
  const layout::Span r_span{r.data(), rows, dim}, c_span{c.data(), cols, dim};
  static float s[32][layout::kColTiles][4];
  std::vector<Call> calls[32];
  const int steps = (dim + 15) / 16;
  for (int lane = 0; lane < 32; ++lane) {
    layout::scores<kMaxSteps>(s[lane], r_span, row0, c_span, steps, lane, RecordingMma{&calls[lane]});
  }
  replay(calls);
  for (int lane = 0; lane < 32; ++lane) {
    for (int nt = 0; nt < layout::kColTiles; ++nt) {
      for (int i = 0; i < 4; ++i) {
        const int row = row0 + layout::c_row(lane, i), col = nt * 8 + layout::c_col(lane, i);
        float expected = 0;
        if (row < rows && col < cols) {
          for (int d = 0; d < dim; ++d) {
            expected += value(r, dim, row, d) * value(c, dim, col, d);
          }
        }
        expect(s[lane][nt][i] == expected, "scores", rows * 1000 + row0, cols, dim);
      }
    }
  }
}

// accumulate_product(): acc += P V for P a 16 x 64 accumulator tile and V [cols, width].
void check_product(int cols, int width) {
  const auto v = random_block(cols, width);
  const layout::Span v_span{v.data(), cols, width};
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
  std::vector<Call> calls[32];
  const int tiles = (width + 7) / 8;
  for (int lane = 0; lane < 32; ++lane) {
    layout::accumulate_product<kMaxTiles>(acc[lane], c[lane], v_span, tiles, lane, pack_exact, RecordingMma{&calls[lane]});
  }
  replay(calls);
  for (int lane = 0; lane < 32; ++lane) {
    for (int dt = 0; dt < tiles; ++dt) {
      for (int i = 0; i < 4; ++i) {
        const int row = layout::c_row(lane, i), col = dt * 8 + layout::c_col(lane, i);
        float expected = 1.0f;
        if (col < width) {
          for (int j = 0; j < cols; ++j) {
            expected += p[row][j] * value(v, width, j, col);
          }
        }
        expect(acc[lane][dt][i] == expected, "product", cols, width, dt);
      }
    }
  }
}

int main() {
  check_fragment_maps();
  // BigGAN's Dqk = 12 and Dv = 48, an odd dim, whole and partial tiles, every warp's row offset.
  for (const int dim : {12, 16, 5, 48, 64}) {
    for (const int row0 : {0, 16, 48}) {
      check_scores(64, row0, 64, dim);
      check_scores(53, row0, 37, dim);
    }
  }
  for (const int width : {48, 12, 7, 64}) {
    check_product(64, width);
    check_product(37, width);
    check_product(1, width);
  }
  if (failures != 0) {
    std::printf("%d mismatches\n", failures);
    return 1;
  }
  std::printf("all fragment checks passed\n");
  return 0;
}
