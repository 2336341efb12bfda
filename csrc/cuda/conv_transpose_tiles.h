#pragma once
// Tile geometry of the CUDA conv_transpose kernels (csrc/cuda/conv_transpose.cu):
// which source element each GEMM row and K chunk reads, where each row is
// stored, and how a block's threads cover a tile. Host-and-device code without
// CUDA types, so that tests/cpp/conv_transpose_tiles_emulation.cpp compiles it
// on the host and checks, block by block and thread by thread, that the
// kernels' mappings read every useful (input, tap) product once, multiply no
// inserted zero, and write every output once.

#include <c10/macros/Macros.h>

#include <cstdint>

#include "ops/conv_transpose_math.h"

namespace fastops::conv_transpose_tiles {

// Threads per block of every conv_transpose kernel (cuda::kThreadsPerBlock).
constexpr int kThreadsPerBlock = 256;

constexpr int kBK = 32;
constexpr int kVectorBytes = 16;

struct ConvGeometry {
  int64_t kernel_h, kernel_w;
  int64_t stride_h, stride_w;
  int64_t pad_h, pad_w;
  int64_t dilation_h, dilation_w;
};

// A 4-D operand addressed through its strides, so NCHW and channels-last
// share every formula.
struct Operand {
  int64_t stride_n, stride_c, stride_h, stride_w;
  int height, width;
};

// The GEMM rows of one implicit-GEMM problem: pixels (n, jh, jw) of a
// len_h x len_w grid. Row (jh, jw) writes destination pixel
// (dst_base + dst_step * j) and reads, through tap (th, tw), source pixel
// (src_mult * j + shift(tap)). Taps th = first_h + i * step_h, i < count_h.
struct PhaseGeometry {
  int64_t len_h, len_w;
  int64_t dst_base_h, dst_step_h, dst_base_w, dst_step_w;
  int64_t src_mult_h, src_mult_w;
  int64_t first_h, step_h, count_h;
  int64_t first_w, step_w, count_w;
  bool forward;

  C10_HOST_DEVICE int64_t pixels() const { return len_h * len_w; }
  C10_HOST_DEVICE int64_t taps() const { return count_h * count_w; }
};

// Output phase (qh, qw) of the forward: a stride-1 convolution over the input.
C10_HOST_DEVICE inline PhaseGeometry forward_phase(const ConvGeometry& g, int64_t out_h, int64_t out_w, int64_t qh,
                                                   int64_t qw) {
  PhaseGeometry ph{};
  ph.len_h = phase_length(out_h, qh, g.stride_h);
  ph.len_w = phase_length(out_w, qw, g.stride_w);
  ph.dst_base_h = qh;
  ph.dst_step_h = g.stride_h;
  ph.dst_base_w = qw;
  ph.dst_step_w = g.stride_w;
  ph.src_mult_h = 1;
  ph.src_mult_w = 1;
  ph.step_h = tap_step(g.stride_h, g.dilation_h);
  ph.first_h = first_tap(output_residue(qh, g.stride_h, g.pad_h), g.kernel_h, g.stride_h, g.dilation_h);
  ph.count_h = phase_tap_count(ph.first_h, g.kernel_h, ph.step_h);
  ph.step_w = tap_step(g.stride_w, g.dilation_w);
  ph.first_w = first_tap(output_residue(qw, g.stride_w, g.pad_w), g.kernel_w, g.stride_w, g.dilation_w);
  ph.count_w = phase_tap_count(ph.first_w, g.kernel_w, ph.step_w);
  ph.forward = true;
  return ph;
}

// The input gradient: rows are input pixels, every tap reads grad_output at
// tap_output_index(i, t) = i * s + tap_output_index(0, t).
C10_HOST_DEVICE inline PhaseGeometry input_grad_phase(const ConvGeometry& g, int64_t in_h, int64_t in_w) {
  PhaseGeometry ph{};
  ph.len_h = in_h;
  ph.len_w = in_w;
  ph.dst_base_h = 0;
  ph.dst_step_h = 1;
  ph.dst_base_w = 0;
  ph.dst_step_w = 1;
  ph.src_mult_h = g.stride_h;
  ph.src_mult_w = g.stride_w;
  ph.first_h = 0;
  ph.step_h = 1;
  ph.count_h = g.kernel_h;
  ph.first_w = 0;
  ph.step_w = 1;
  ph.count_w = g.kernel_w;
  ph.forward = false;
  return ph;
}

// One K chunk: BK channels [c0, c0 + BK) of one tap, read at a source pixel
// shifted by (shift_h, shift_w) from the row's (src_mult * j).
struct ChunkTap {
  int64_t th, tw;
  int shift_h, shift_w;
  int c0;
};

C10_HOST_DEVICE inline ChunkTap chunk_tap(const ConvGeometry& g, const PhaseGeometry& ph, int chunk,
                                          int channel_chunks) {
  const int tap = chunk / channel_chunks;
  const int ith = tap / static_cast<int>(ph.count_w);
  const int itw = tap - ith * static_cast<int>(ph.count_w);
  ChunkTap t{};
  t.th = ph.first_h + ith * ph.step_h;
  t.tw = ph.first_w + itw * ph.step_w;
  if (ph.forward) {
    t.shift_h = static_cast<int>(phase_input_offset(ph.dst_base_h, t.th, g.stride_h, g.pad_h, g.dilation_h));
    t.shift_w = static_cast<int>(phase_input_offset(ph.dst_base_w, t.tw, g.stride_w, g.pad_w, g.dilation_w));
  } else {
    t.shift_h = static_cast<int>(tap_output_index(0, t.th, g.stride_h, g.pad_h, g.dilation_h));
    t.shift_w = static_cast<int>(tap_output_index(0, t.tw, g.stride_w, g.pad_w, g.dilation_w));
  }
  t.c0 = (chunk - tap * channel_chunks) * kBK;
  return t;
}

// Where GEMM row m reads: image offset and unshifted source coordinates.
struct RowSource {
  int64_t image;
  int h, w;
  bool valid;
};

C10_HOST_DEVICE inline RowSource row_source(const PhaseGeometry& ph, int64_t m, int64_t rows, const Operand& s) {
  RowSource r{0, 0, 0, false};
  if (m < rows) {
    const int64_t n = m / ph.pixels();
    const int64_t rest = m - n * ph.pixels();
    const int64_t jh = rest / ph.len_w;
    const int64_t jw = rest - jh * ph.len_w;
    r = RowSource{n * s.stride_n, static_cast<int>(jh * ph.src_mult_h), static_cast<int>(jw * ph.src_mult_w), true};
  }
  return r;
}

// Offset (without the channel term) of the source pixel row r reads through
// the chunk's tap, or -1 where the tap falls off the source.
C10_HOST_DEVICE inline int64_t tap_pixel_offset(const RowSource& r, const ChunkTap& t, const Operand& s) {
  const int h = r.h + t.shift_h;
  const int w = r.w + t.shift_w;
  if (!r.valid || h < 0 || h >= s.height || w < 0 || w >= s.width) {
    return -1;
  }
  return r.image + int64_t{h} * s.stride_h + int64_t{w} * s.stride_w;
}

// Offset (without the channel term) of the destination pixel of row m, or -1
// past the last row.
C10_HOST_DEVICE inline int64_t row_destination(const PhaseGeometry& ph, int64_t m, int64_t rows, const Operand& d) {
  if (m >= rows) {
    return -1;
  }
  const int64_t n = m / ph.pixels();
  const int64_t rest = m - n * ph.pixels();
  const int64_t jh = rest / ph.len_w;
  const int64_t jw = rest - jh * ph.len_w;
  return n * d.stride_n + (ph.dst_base_h + ph.dst_step_h * jh) * d.stride_h +
         (ph.dst_base_w + ph.dst_step_w * jw) * d.stride_w;
}

// Weight gradient, pixel p of the reduction for tap (th, tw): x's pixel and
// the grad_output pixel it feeds (-1 where off the output or past `end`).
struct PixelPair {
  int64_t x, grad;
};

C10_HOST_DEVICE inline PixelPair weight_grad_pixel(const ConvGeometry& g, int64_t p, int64_t end, int64_t th,
                                                   int64_t tw, const Operand& x, const Operand& grad) {
  if (p >= end) {
    return PixelPair{-1, -1};
  }
  const int64_t plane = int64_t{x.height} * x.width;
  const int64_t n = p / plane;
  const int64_t rest = p - n * plane;
  const int64_t ih = rest / x.width;
  const int64_t iw = rest - ih * x.width;
  const int64_t oh = tap_output_index(ih, th, g.stride_h, g.pad_h, g.dilation_h);
  const int64_t ow = tap_output_index(iw, tw, g.stride_w, g.pad_w, g.dilation_w);
  const int64_t x_offset = n * x.stride_n + ih * x.stride_h + iw * x.stride_w;
  if (oh < 0 || oh >= grad.height || ow < 0 || ow >= grad.width) {
    return PixelPair{x_offset, -1};
  }
  return PixelPair{x_offset, n * grad.stride_n + oh * grad.stride_h + ow * grad.stride_w};
}

// How the block's threads cover a kContig x kOther tile whose kContig side is
// contiguous in memory: kThreadsPerLine threads of kVec elements per line,
// kLines lines per pass, kPasses passes; each element exactly once.
template <int kContig, int kOther, int kVec>
struct LoadPattern {
  static constexpr int kThreadsPerLine = kContig / kVec;
  static constexpr int kLines = kThreadsPerBlock / kThreadsPerLine;
  static constexpr int kPasses = kOther / kLines;
  static_assert(kContig % kVec == 0 && kThreadsPerBlock % kThreadsPerLine == 0 && kOther % kLines == 0,
                "the pattern must tile the block's tile exactly");

  C10_HOST_DEVICE static int contig(int tid) { return (tid % kThreadsPerLine) * kVec; }
  C10_HOST_DEVICE static int other(int tid, int pass) { return tid / kThreadsPerLine + pass * kLines; }
};

// Shared-memory tiles: A (BM x BK) row-major ([m][k]) or column-major
// ([k][m]), B (BK x BN) row-major ([k][n]) or column-major ([n][k]), and the
// accumulator tile C, row- or column-major, which reuses A and B's space.
template <int kBM, int kBN, int kStorageBytes, int kAccBytes, bool kARowMajor, bool kBRowMajor>
struct TileLayout {
  static constexpr int kPad = kVectorBytes / kStorageBytes;
  static constexpr int kAccPad = kVectorBytes / kAccBytes;
  static constexpr int lda = kARowMajor ? kBK + kPad : kBM + kPad;
  static constexpr int ldb = kBRowMajor ? kBN + kPad : kBK + kPad;
  static constexpr int ldc_row = kBN + kAccPad;  // row-major C: [BM][ldc_row]
  static constexpr int ldc_col = kBM + kAccPad;  // column-major C: [BN][ldc_col]

  C10_HOST_DEVICE static constexpr int a_index(int m, int k) { return kARowMajor ? m * lda + k : k * lda + m; }
  C10_HOST_DEVICE static constexpr int b_index(int k, int n) { return kBRowMajor ? k * ldb + n : n * ldb + k; }
  C10_HOST_DEVICE static constexpr int c_index(int m, int n, bool row_major) {
    return row_major ? m * ldc_row + n : n * ldc_col + m;
  }

  static constexpr int round_up(int bytes) { return (bytes + 127) / 128 * 128; }
  static constexpr int kABytes = round_up((kARowMajor ? kBM : kBK) * lda * kStorageBytes);
  static constexpr int kBBytes = round_up((kBRowMajor ? kBK : kBN) * ldb * kStorageBytes);
  static constexpr int kCBytes =
      round_up((kBM * ldc_row > kBN * ldc_col ? kBM * ldc_row : kBN * ldc_col) * kAccBytes);
  static constexpr int kBytes = kABytes + kBBytes > kCBytes ? kABytes + kBBytes : kCBytes;
};

}  // namespace fastops::conv_transpose_tiles
