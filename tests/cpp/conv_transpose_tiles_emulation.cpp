// Host emulation of the CUDA conv_transpose kernels' tile index mapping
// (csrc/cuda/conv_transpose_tiles.h, the code the kernels run): every block
// and thread of the load, store and epilogue patterns of the forward, the
// input gradient and the weight gradient, for the three tile configurations,
// compared with direct loops. Arithmetic is exact (small integers in double).
// Built and run by tests/test_conv_transpose.py; exits non-zero on a failure.
#include <c10/macros/Macros.h>

#include <algorithm>
#include <cassert>
#include <cmath>
#include <type_traits>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "ops/conv_transpose_math.h"

#include "cuda/conv_transpose_tiles.h"

using namespace fastops;
using namespace fastops::conv_transpose_tiles;

static int failures = 0;
#define CHECK(cond, ...)                 \
  do {                                   \
    if (!(cond)) {                       \
      if (failures < 20) {               \
        printf("FAIL %s: ", #cond);      \
        printf(__VA_ARGS__);             \
        printf("\n");                    \
      }                                  \
      ++failures;                        \
    }                                    \
  } while (0)

struct Problem {
  int64_t N, Cin, Cout, G, H, W, kH, kW, sh, sw, ph, pw, dh, dw, oph, opw;
  int64_t OH, OW;
  bool cl;
};

static Operand make_operand(const Problem& p, int64_t C, int64_t H, int64_t W) {
  if (p.cl) return Operand{H * W * C, 1, W * C, C, (int)H, (int)W};
  return Operand{C * H * W, H * W, W, 1, (int)H, (int)W};
}
static ConvGeometry geo_of(const Problem& p) { return ConvGeometry{p.kH, p.kW, p.sh, p.sw, p.ph, p.pw, p.dh, p.dw}; }

// weight [Cin, Cout/G, kH, kW] contiguous
static double wv(const std::vector<double>& w, const Problem& p, int64_t ci, int64_t co, int64_t th, int64_t tw) {
  return w[((ci * (p.Cout / p.G) + co) * p.kH + th) * p.kW + tw];
}

// The B buffer of arrange_weight: [G][kH][kW][rows][cols_pad].
static std::vector<double> arrange(const std::vector<double>& w, const Problem& p, bool forward, int vec, int& pad) {
  const int64_t cin = p.Cin / p.G, cout = p.Cout / p.G;
  const int64_t rows = forward ? cin : cout, cols = forward ? cout : cin;
  pad = (int)((cols + vec - 1) / vec * vec);
  std::vector<double> b(p.G * p.kH * p.kW * rows * pad, 0.0);
  for (int64_t g = 0; g < p.G; ++g)
    for (int64_t th = 0; th < p.kH; ++th)
      for (int64_t tw = 0; tw < p.kW; ++tw)
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < cols; ++c) {
            const int64_t ci = forward ? r : c, co = forward ? c : r;
            b[(((g * p.kH + th) * p.kW + tw) * rows + r) * pad + c] = wv(w, p, g * cin + ci, co, th, tw);
          }
  return b;
}

// ---- implicit GEMM emulation (forward or input gradient) ----
template <int BM, int BN, int V>
static void implicit_gemm(const Problem& p, bool forward, bool along_k, int store_mode, const std::vector<double>& src,
                          const std::vector<double>* gate, const std::vector<double>& wbuf, int nc_pad,
                          const std::vector<double>* bias, bool relu, std::vector<double>& dst,
                          std::vector<int>& writes, const Operand& s, const Operand& d, int kc, int nc) {
  const ConvGeometry geo = geo_of(p);
  const int phases_w = forward ? (int)p.sw : 1, phases = forward ? (int)(p.sh * p.sw) : 1;
  const int64_t max_rows = forward ? p.N * phase_length(p.OH, 0, p.sh) * phase_length(p.OW, 0, p.sw) : p.N * p.H * p.W;
  const int64_t tiles_m = (max_rows + BM - 1) / BM, tiles_n = (nc + BN - 1) / BN;
  using APatK = LoadPattern<kBK, BM, V>;
  using APatM = LoadPattern<BM, kBK, 1>;
  using BPat = LoadPattern<BN, kBK, V>;
  int64_t macs = 0;
  for (int64_t z = 0; z < p.G * phases; ++z)
    for (int64_t bx = 0; bx < tiles_m; ++bx)
      for (int64_t by = 0; by < tiles_n; ++by) {
        // begin()
        const int group = (int)(z / phases);
        const int phase = (int)(z - group * phases);
        const PhaseGeometry ph = forward ? forward_phase(geo, d.height, d.width, phase / phases_w, phase % phases_w)
                                         : input_grad_phase(geo, d.height, d.width);
        const int64_t rows_total = p.N * ph.pixels();
        const int64_t m0 = bx * BM;
        if (m0 >= rows_total) continue;
        const int n0 = (int)by * BN;
        const int channel_chunks = (kc + kBK - 1) / kBK;
        const int chunk_count = (int)ph.taps() * channel_chunks;
        int64_t row_image[BM], row_dst[BM];
        int row_h[BM], row_w[BM];
        for (int tid = 0; tid < BM; ++tid) {
          const RowSource r = row_source(ph, m0 + tid, rows_total, s);
          row_image[tid] = r.valid ? r.image : -1;
          row_h[tid] = r.h;
          row_w[tid] = r.w;
          row_dst[tid] = row_destination(ph, m0 + tid, rows_total, d);
        }
        std::vector<double> C(BM * BN, 0.0);
        for (int chunk = 0; chunk < chunk_count; ++chunk) {
          std::vector<double> A(BM * kBK, 0.0), B(kBK * BN, 0.0);
          std::vector<int> acount(BM * kBK, 0), bcount(kBK * BN, 0);
          const ChunkTap t = chunk_tap(geo, ph, chunk, channel_chunks);
          const int64_t channel0 = int64_t{group} * kc;
          for (int tid = 0; tid < kThreadsPerBlock; ++tid) {
            if (along_k) {
              const int c = t.c0 + APatK::contig(tid);
              for (int pass = 0; pass < APatK::kPasses; ++pass) {
                const int r = APatK::other(tid, pass);
                const RowSource row_r{row_image[r], row_h[r], row_w[r], row_image[r] >= 0};
                const int64_t pixel = tap_pixel_offset(row_r, t, s);
                for (int v = 0; v < V; ++v) {
                  double val = 0;
                  if (pixel >= 0 && c < kc) {
                    assert(s.stride_c == 1);
                    const int64_t off = pixel + channel0 + c + v;
                    val = src[off];
                    if (gate && !((*gate)[off] > 0)) val = 0;
                  }
                  A[r * kBK + APatK::contig(tid) + v] = val;
                  acount[r * kBK + APatK::contig(tid) + v]++;
                }
              }
            } else {
              const RowSource row = row_source(ph, m0 + APatM::contig(tid), rows_total, s);
              const int64_t pixel = tap_pixel_offset(row, t, s);
              for (int pass = 0; pass < APatM::kPasses; ++pass) {
                const int c = t.c0 + APatM::other(tid, pass);
                double val = 0;
                if (pixel >= 0 && c < kc) {
                  const int64_t off = pixel + (channel0 + c) * s.stride_c;
                  val = src[off];
                  if (gate && !((*gate)[off] > 0)) val = 0;
                }
                A[APatM::contig(tid) * kBK + APatM::other(tid, pass)] = val;
                acount[APatM::contig(tid) * kBK + APatM::other(tid, pass)]++;
              }
            }
            const int64_t wbase = ((int64_t{group} * geo.kernel_h + t.th) * geo.kernel_w + t.tw) * kc * nc_pad;
            const int col = n0 + BPat::contig(tid);
            for (int pass = 0; pass < BPat::kPasses; ++pass) {
              const int c = t.c0 + BPat::other(tid, pass);
              for (int v = 0; v < V; ++v) {
                const double val = c < kc && col < nc_pad ? wbuf[wbase + int64_t{c} * nc_pad + col + v] : 0.0;
                B[BPat::other(tid, pass) * BN + BPat::contig(tid) + v] = val;
                bcount[BPat::other(tid, pass) * BN + BPat::contig(tid) + v]++;
              }
            }
          }
          for (int i = 0; i < BM * kBK; ++i) CHECK(acount[i] == 1, "A element loaded %d times", acount[i]);
          for (int i = 0; i < kBK * BN; ++i) CHECK(bcount[i] == 1, "B element loaded %d times", bcount[i]);
          for (int m = 0; m < BM; ++m)
            for (int k = 0; k < kBK; ++k) {
              if (A[m * kBK + k] != 0) ++macs;
              for (int n = 0; n < BN; ++n) C[m * BN + n] += A[m * kBK + k] * B[k * BN + n];
            }
        }
        // epilogue
        const int64_t channel0 = int64_t{group} * nc;
        auto finish = [&](double v, int col) {
          if (bias) v += (*bias)[channel0 + col];
          return relu ? (v > 0 ? v : (v != v ? v : 0.0)) : v;
        };
        if (store_mode == 2) {
          constexpr int kVectors = BN / V;
          for (int tid = 0; tid < kThreadsPerBlock; ++tid)
            for (int e = tid; e < BM * kVectors; e += kThreadsPerBlock) {
              const int r = e / kVectors;
              const int c = (e - r * kVectors) * V;
              const int64_t row = row_dst[r];
              if (row < 0 || n0 + c >= nc) continue;
              for (int i = 0; i < V; ++i) {
                CHECK(n0 + c + i < nc, "vector store past nc");
                const int64_t off = row + channel0 + n0 + c + i;
                dst[off] = finish(C[r * BN + c + i], n0 + c + i);
                writes[off]++;
              }
            }
        } else {
          for (int tid = 0; tid < kThreadsPerBlock; ++tid)
            for (int e = tid; e < BM * BN; e += kThreadsPerBlock) {
              int r, c;
              if (store_mode == 1) {
                r = e / BN;
                c = e - r * BN;
              } else {
                c = e / BM;
                r = e - c * BM;
              }
              const int64_t row = row_dst[r];
              if (row >= 0 && n0 + c < nc) {
                const int64_t off = row + (channel0 + n0 + c) * d.stride_c;
                dst[off] = finish(C[r * BN + c], n0 + c);
                writes[off]++;
              }
            }
        }
      }
  (void)macs;
}

static int64_t useful_macs_forward(const Problem& p) {
  // (input pixel, tap) pairs that land inside the output, times channels.
  int64_t count = 0;
  for (int64_t ih = 0; ih < p.H; ++ih)
    for (int64_t iw = 0; iw < p.W; ++iw)
      for (int64_t th = 0; th < p.kH; ++th)
        for (int64_t tw = 0; tw < p.kW; ++tw) {
          const int64_t oh = ih * p.sh - p.ph + th * p.dh, ow = iw * p.sw - p.pw + tw * p.dw;
          if (oh >= 0 && oh < p.OH && ow >= 0 && ow < p.OW) ++count;
        }
  return count;
}

// Executed (row, tap) pairs of the forward decomposition with the tap inside
// the input: must equal the useful pairs (no inserted zeros, none missing).
static int64_t executed_pairs_forward(const Problem& p) {
  const ConvGeometry geo = geo_of(p);
  int64_t count = 0, all = 0;
  for (int64_t qh = 0; qh < p.sh; ++qh)
    for (int64_t qw = 0; qw < p.sw; ++qw) {
      const PhaseGeometry ph = forward_phase(geo, p.OH, p.OW, qh, qw);
      for (int64_t jh = 0; jh < ph.len_h; ++jh)
        for (int64_t jw = 0; jw < ph.len_w; ++jw)
          for (int chunk = 0; chunk < (int)ph.taps(); ++chunk) {
            const ChunkTap t = chunk_tap(geo, ph, chunk, 1);
            const int64_t ih = jh + t.shift_h, iw = jw + t.shift_w;
            // the tap must be the one the direct rule pairs with this output
            CHECK((qh + ph.dst_step_h * jh) == ih * p.sh - p.ph + t.th * p.dh, "tap pairing h");
            CHECK((qw + ph.dst_step_w * jw) == iw * p.sw - p.pw + t.tw * p.dw, "tap pairing w");
            ++all;
            if (ih >= 0 && ih < p.H && iw >= 0 && iw < p.W) ++count;
          }
    }
  (void)all;
  return count;
}

// ---- weight-gradient emulation ----
template <int BM, int BN, int V>
static void weight_grad(const Problem& p, bool along_channels, const std::vector<double>& x, const Operand& xs,
                        const std::vector<double>& gr, const std::vector<double>* gate, const Operand& gs,
                        std::vector<double>& grad_w, int64_t target_blocks) {
  const ConvGeometry geo = geo_of(p);
  const int64_t cin = p.Cin / p.G, cout = p.Cout / p.G, taps = p.kH * p.kW;
  const int64_t pixels = p.N * p.H * p.W;
  const int64_t tiles_m = (cin + BM - 1) / BM, tiles_n = (cout + BN - 1) / BN;
  const int64_t tiles = p.G * taps * tiles_m * tiles_n;
  const int64_t chunks = (pixels + kBK - 1) / kBK;
  const int64_t max_splits = std::min<int64_t>(256, std::max<int64_t>(1, chunks / 8));
  int64_t splits = std::clamp<int64_t>((target_blocks + tiles - 1) / tiles, 1, max_splits);
  const int64_t split_len = (chunks + splits - 1) / splits * kBK;
  splits = (pixels + split_len - 1) / split_len;
  const int problems = (int)(p.G * taps);
  std::vector<double> ws(splits * problems * cin * cout, -12345.0);
  std::vector<int> wcount(ws.size(), 0);
  using APat = std::conditional_t<true, LoadPattern<BM, kBK, V>, void>;
  using APatP = LoadPattern<kBK, BM, 1>;
  using BPat = LoadPattern<BN, kBK, V>;
  using BPatP = LoadPattern<kBK, BN, 1>;
  for (int64_t bx = 0; bx < splits * tiles_m; ++bx)
    for (int64_t by = 0; by < tiles_n; ++by)
      for (int z = 0; z < problems; ++z) {
        const int split = (int)(bx % splits);
        const int m0 = (int)(bx / splits) * BM;
        const int n0 = (int)by * BN;
        const int tap = z % (int)taps;
        const int64_t th = tap / geo.kernel_w, tw = tap - th * geo.kernel_w;
        const int64_t begin_pixel = split * split_len;
        const int64_t end_pixel = std::min(begin_pixel + split_len, pixels);
        const int chunk_count = (int)((end_pixel - begin_pixel + kBK - 1) / kBK);
        CHECK(chunk_count > 0, "empty split");
        int64_t shx[2][kBK], shg[2][kBK];
        int buffer_chunk[2] = {-1, -1};
        auto pairs = [&](int chunk) {
          for (int tid = 0; tid < kBK; ++tid) {
            const PixelPair pr = weight_grad_pixel(geo, begin_pixel + int64_t{chunk} * kBK + tid, end_pixel, th, tw,
                                                   xs, gs);
            shx[chunk & 1][tid] = pr.x;
            shg[chunk & 1][tid] = pr.grad;
          }
          buffer_chunk[chunk & 1] = chunk;
        };
        pairs(0);
        pairs(1);
        std::vector<double> C(BM * BN, 0.0);
        const int group = z / (int)taps;
        const int64_t xc0 = int64_t{group} * cin, gc0 = int64_t{group} * cout;
        for (int chunk = 0; chunk < chunk_count; ++chunk) {
          const int buffer = chunk & 1;
          CHECK(buffer_chunk[buffer] == chunk, "pair buffer holds chunk %d, loading %d", buffer_chunk[buffer], chunk);
          std::vector<double> A(BM * kBK, 0.0), B(kBK * BN, 0.0);
          std::vector<int> ac(BM * kBK, 0), bc(kBK * BN, 0);
          for (int tid = 0; tid < kThreadsPerBlock; ++tid) {
            if (along_channels) {
              const int ci = m0 + APat::contig(tid);
              for (int pass = 0; pass < APat::kPasses; ++pass) {
                const int k = APat::other(tid, pass);
                const int64_t pixel = shx[buffer][k];
                for (int v = 0; v < V; ++v) {
                  A[(APat::contig(tid) + v) * kBK + k] = pixel >= 0 && ci < cin ? x[pixel + xc0 + ci + v] : 0.0;
                  ac[(APat::contig(tid) + v) * kBK + k]++;
                }
              }
              const int co = n0 + BPat::contig(tid);
              for (int pass = 0; pass < BPat::kPasses; ++pass) {
                const int k = BPat::other(tid, pass);
                const int64_t pixel = shg[buffer][k];
                for (int v = 0; v < V; ++v) {
                  double val = 0;
                  if (pixel >= 0 && co < cout) {
                    const int64_t off = pixel + gc0 + co + v;
                    val = gr[off];
                    if (gate && !((*gate)[off] > 0)) val = 0;
                  }
                  B[k * BN + BPat::contig(tid) + v] = val;
                  bc[k * BN + BPat::contig(tid) + v]++;
                }
              }
            } else {
              const int64_t xp = shx[buffer][APatP::contig(tid)];
              for (int pass = 0; pass < APatP::kPasses; ++pass) {
                const int ci = m0 + APatP::other(tid, pass);
                A[APatP::other(tid, pass) * kBK + APatP::contig(tid)] =
                    xp >= 0 && ci < cin ? x[xp + (xc0 + ci) * xs.stride_c] : 0.0;
                ac[APatP::other(tid, pass) * kBK + APatP::contig(tid)]++;
              }
              const int64_t gp = shg[buffer][BPatP::contig(tid)];
              for (int pass = 0; pass < BPatP::kPasses; ++pass) {
                const int co = n0 + BPatP::other(tid, pass);
                double val = 0;
                if (gp >= 0 && co < cout) {
                  const int64_t off = gp + (gc0 + co) * gs.stride_c;
                  val = gr[off];
                  if (gate && !((*gate)[off] > 0)) val = 0;
                }
                B[BPatP::contig(tid) * BN + BPatP::other(tid, pass)] = val;
                bc[BPatP::contig(tid) * BN + BPatP::other(tid, pass)]++;
              }
            }
          }
          for (int i = 0; i < BM * kBK; ++i) CHECK(ac[i] == 1, "wgrad A loaded %d times", ac[i]);
          for (int i = 0; i < kBK * BN; ++i) CHECK(bc[i] == 1, "wgrad B loaded %d times", bc[i]);
          for (int m = 0; m < BM; ++m)
            for (int k = 0; k < kBK; ++k)
              for (int n = 0; n < BN; ++n) C[m * BN + n] += A[m * kBK + k] * B[k * BN + n];
          // after_chunk
          if (chunk + 2 < chunk_count) pairs(chunk + 2);
        }
        // epilogue
        const int64_t base = (int64_t{split} * problems + z) * cin * cout;
        for (int tid = 0; tid < kThreadsPerBlock; ++tid)
          for (int e = tid; e < BM * BN; e += kThreadsPerBlock) {
            const int r = e / BN, c = e - r * BN;
            if (m0 + r < cin && n0 + c < cout) {
              ws[base + int64_t{m0 + r} * cout + n0 + c] = C[r * BN + c];
              wcount[base + int64_t{m0 + r} * cout + n0 + c]++;
            }
          }
      }
  for (size_t i = 0; i < ws.size(); ++i) CHECK(wcount[i] == 1, "workspace element written %d times", wcount[i]);
  // reduce kernel
  const int64_t total = p.Cin * cout * taps;
  for (int64_t e = 0; e < total; ++e) {
    const int64_t tp = e % taps, rest = e / taps, co = rest % cout, channel = rest / cout, group = channel / cin,
                  ci = channel - group * cin;
    const int64_t source = ((group * taps + tp) * cin + ci) * cout + co;
    double sum = 0;
    for (int64_t s = 0; s < splits; ++s) sum += ws[s * total + source];
    grad_w[e] = sum;
  }
}

// bias partial, NCHW loop structure
static void bias_nchw(const Problem& p, const std::vector<double>& g, std::vector<double>& gb) {
  const int64_t plane = p.OH * p.OW, pixels = p.N * plane, channels = p.Cout;
  int64_t splits = std::clamp<int64_t>((pixels + 16383) / 16384, 1, 64);
  // use small slices here to exercise the image-crossing logic
  splits = std::min<int64_t>(pixels, 7);
  const int64_t split_len = (pixels + splits - 1) / splits;
  splits = (pixels + split_len - 1) / split_len;
  std::vector<int> seen(p.N * channels * plane, 0);
  for (int64_t c = 0; c < channels; ++c) {
    double total = 0;
    for (int64_t split = 0; split < splits; ++split) {
      const int64_t begin = split * split_len, end = std::min(begin + split_len, pixels);
      for (int tid = 0; tid < 256; ++tid)
        for (int64_t n = begin / plane; n * plane < end; ++n) {
          const int64_t lo = std::max(begin, n * plane) - n * plane;
          const int64_t hi = std::min(end, (n + 1) * plane) - n * plane;
          const int64_t base = (n * channels + c) * plane;
          for (int64_t i = lo + tid; i < hi; i += 256) {
            total += g[base + i];
            seen[base + i]++;
          }
        }
    }
    gb[c] = total;
  }
  for (size_t i = 0; i < seen.size(); ++i) CHECK(seen[i] == 1, "bias element read %d times", seen[i]);
}

template <int BM, int BN, int V>
static void run_case(const Problem& p, std::mt19937& rng) {
  const int64_t cin = p.Cin / p.G, cout = p.Cout / p.G;
  std::uniform_int_distribution<int> dist(-3, 3);
  std::vector<double> x(p.N * p.Cin * p.H * p.W), w(p.Cin * cout * p.kH * p.kW), bias(p.Cout),
      g(p.N * p.Cout * p.OH * p.OW), gate(g.size());
  for (auto& v : x) v = dist(rng);
  for (auto& v : w) v = dist(rng);
  for (auto& v : bias) v = dist(rng);
  for (auto& v : g) v = dist(rng);
  for (auto& v : gate) v = dist(rng);
  const Operand xs = make_operand(p, p.Cin, p.H, p.W), ys = make_operand(p, p.Cout, p.OH, p.OW);
  auto xat = [&](int64_t n, int64_t c, int64_t h, int64_t ww) {
    return x[n * xs.stride_n + c * xs.stride_c + h * xs.stride_h + ww * xs.stride_w];
  };
  auto gat = [&](int64_t n, int64_t c, int64_t h, int64_t ww) {
    const int64_t o = n * ys.stride_n + c * ys.stride_c + h * ys.stride_h + ww * ys.stride_w;
    return gate[o] > 0 ? g[o] : 0.0;
  };
  // naive forward (scatter), with bias + relu
  std::vector<double> ref(g.size(), 0.0);
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t gr = 0; gr < p.G; ++gr)
      for (int64_t ci = 0; ci < cin; ++ci)
        for (int64_t co = 0; co < cout; ++co)
          for (int64_t ih = 0; ih < p.H; ++ih)
            for (int64_t iw = 0; iw < p.W; ++iw)
              for (int64_t th = 0; th < p.kH; ++th)
                for (int64_t tw = 0; tw < p.kW; ++tw) {
                  const int64_t oh = ih * p.sh - p.ph + th * p.dh, ow = iw * p.sw - p.pw + tw * p.dw;
                  if (oh < 0 || oh >= p.OH || ow < 0 || ow >= p.OW) continue;
                  ref[n * ys.stride_n + (gr * cout + co) * ys.stride_c + oh * ys.stride_h + ow * ys.stride_w] +=
                      xat(n, gr * cin + ci, ih, iw) * wv(w, p, gr * cin + ci, co, th, tw);
                }
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t c = 0; c < p.Cout; ++c)
      for (int64_t oh = 0; oh < p.OH; ++oh)
        for (int64_t ow = 0; ow < p.OW; ++ow) {
          double& v = ref[n * ys.stride_n + c * ys.stride_c + oh * ys.stride_h + ow * ys.stride_w];
          v += bias[c];
          v = v > 0 ? v : 0;
        }
  CHECK(executed_pairs_forward(p) == useful_macs_forward(p), "executed (row, tap) pairs != useful pairs");
  int pad;
  const std::vector<double> wf = arrange(w, p, true, V, pad);
  const bool can_k = p.cl && cin % V == 0;
  const bool can_vs = p.cl && cout % V == 0;
  for (int mode = 0; mode < 2; ++mode) {
    const bool along_k = mode == 1;
    if (along_k && !can_k) continue;
    const int store_mode = p.cl ? (can_vs ? 2 : 1) : 0;
    std::vector<double> y(g.size(), std::nan(""));
    std::vector<int> writes(g.size(), 0);
    implicit_gemm<BM, BN, V>(p, true, along_k, store_mode, x, nullptr, wf, pad, &bias, true, y, writes, xs, ys,
                             (int)cin, (int)cout);
    for (size_t i = 0; i < y.size(); ++i) {
      CHECK(writes[i] == 1, "forward output %zu written %d times", i, writes[i]);
      CHECK(y[i] == ref[i], "forward output %zu: %g vs %g", i, y[i], ref[i]);
    }
    if (p.cl && store_mode == 2) {  // also the scalar along-channels store
      std::vector<double> y2(g.size(), std::nan(""));
      std::vector<int> w2(g.size(), 0);
      implicit_gemm<BM, BN, V>(p, true, along_k, 1, x, nullptr, wf, pad, &bias, true, y2, w2, xs, ys, (int)cin,
                               (int)cout);
      for (size_t i = 0; i < y2.size(); ++i) CHECK(w2[i] == 1 && y2[i] == ref[i], "forward scalar store %zu", i);
    }
  }
  // input gradient
  std::vector<double> gx_ref(x.size(), 0.0);
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t gr = 0; gr < p.G; ++gr)
      for (int64_t ci = 0; ci < cin; ++ci)
        for (int64_t ih = 0; ih < p.H; ++ih)
          for (int64_t iw = 0; iw < p.W; ++iw) {
            double s = 0;
            for (int64_t th = 0; th < p.kH; ++th)
              for (int64_t tw = 0; tw < p.kW; ++tw)
                for (int64_t co = 0; co < cout; ++co) {
                  const int64_t oh = ih * p.sh - p.ph + th * p.dh, ow = iw * p.sw - p.pw + tw * p.dw;
                  if (oh < 0 || oh >= p.OH || ow < 0 || ow >= p.OW) continue;
                  s += gat(n, gr * cout + co, oh, ow) * wv(w, p, gr * cin + ci, co, th, tw);
                }
            gx_ref[n * xs.stride_n + (gr * cin + ci) * xs.stride_c + ih * xs.stride_h + iw * xs.stride_w] = s;
          }
  const std::vector<double> wd = arrange(w, p, false, V, pad);
  const bool can_k2 = p.cl && cout % V == 0;
  const bool can_vs2 = p.cl && cin % V == 0;
  for (int mode = 0; mode < 2; ++mode) {
    const bool along_k = mode == 1;
    if (along_k && !can_k2) continue;
    std::vector<double> gx(x.size(), std::nan(""));
    std::vector<int> writes(x.size(), 0);
    implicit_gemm<BM, BN, V>(p, false, along_k, p.cl ? (can_vs2 ? 2 : 1) : 0, g, &gate, wd, pad, nullptr, false, gx,
                             writes, ys, xs, (int)cout, (int)cin);
    for (size_t i = 0; i < gx.size(); ++i) {
      CHECK(writes[i] == 1, "grad_input %zu written %d times", i, writes[i]);
      CHECK(gx[i] == gx_ref[i], "grad_input %zu: %g vs %g", i, gx[i], gx_ref[i]);
    }
  }
  // weight gradient
  std::vector<double> gw_ref(w.size(), 0.0);
  for (int64_t gr = 0; gr < p.G; ++gr)
    for (int64_t ci = 0; ci < cin; ++ci)
      for (int64_t co = 0; co < cout; ++co)
        for (int64_t th = 0; th < p.kH; ++th)
          for (int64_t tw = 0; tw < p.kW; ++tw) {
            double s = 0;
            for (int64_t n = 0; n < p.N; ++n)
              for (int64_t ih = 0; ih < p.H; ++ih)
                for (int64_t iw = 0; iw < p.W; ++iw) {
                  const int64_t oh = ih * p.sh - p.ph + th * p.dh, ow = iw * p.sw - p.pw + tw * p.dw;
                  if (oh < 0 || oh >= p.OH || ow < 0 || ow >= p.OW) continue;
                  s += xat(n, gr * cin + ci, ih, iw) * gat(n, gr * cout + co, oh, ow);
                }
            gw_ref[(((gr * cin + ci) * cout + co) * p.kH + th) * p.kW + tw] = s;
          }
  const bool can_c = p.cl && cin % V == 0 && cout % V == 0;
  for (int mode = 0; mode < 2; ++mode) {
    if (mode == 1 && !can_c) continue;
    for (int64_t target : {int64_t{512}, int64_t{100000}}) {
      std::vector<double> gw(w.size(), std::nan(""));
      weight_grad<BM, BN, V>(p, mode == 1, x, xs, g, &gate, ys, gw, target);
      for (size_t i = 0; i < gw.size(); ++i) CHECK(gw[i] == gw_ref[i], "grad_weight %zu: %g vs %g", i, gw[i], gw_ref[i]);
    }
  }
  // bias (NCHW loop structure; ungated values)
  if (!p.cl) {
    std::vector<double> gb(p.Cout), gb_ref(p.Cout, 0.0);
    for (int64_t n = 0; n < p.N; ++n)
      for (int64_t c = 0; c < p.Cout; ++c)
        for (int64_t i = 0; i < p.OH * p.OW; ++i) gb_ref[c] += g[(n * p.Cout + c) * p.OH * p.OW + i];
    bias_nchw(p, g, gb);
    for (int64_t c = 0; c < p.Cout; ++c) CHECK(gb[c] == gb_ref[c], "grad_bias %ld", (long)c);
  }
}

int main() {
  std::mt19937 rng(1234);
  // The desk-check case first, then random geometry.
  std::vector<Problem> cases;
  cases.push_back({1, 2, 3, 1, 3, 3, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 0, 0, false});
  cases.push_back({2, 8, 16, 1, 5, 4, 2, 2, 2, 2, 0, 0, 1, 1, 0, 0, 0, 0, true});      // k == s
  cases.push_back({1, 16, 8, 2, 6, 5, 4, 4, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0, true});      // k4 s2 p1, groups
  cases.push_back({1, 4, 4, 4, 7, 3, 16, 16, 8, 8, 4, 4, 1, 1, 0, 0, 0, 0, false});    // FCN-like k16 s8
  cases.push_back({2, 3, 5, 1, 4, 6, 3, 2, 3, 2, 2, 0, 2, 3, 1, 2, 0, 0, false});      // dilation, op >= s
  cases.push_back({1, 2, 2, 1, 3, 3, 2, 2, 5, 5, 0, 0, 1, 1, 0, 0, 0, 0, false});      // stride > kernel: empty phases
  cases.push_back({1, 40, 72, 1, 3, 3, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 0, 0, true});     // > BK channels, > BN cols
  std::uniform_int_distribution<int> small(1, 4);
  for (int i = 0; i < 60; ++i) {
    Problem p{};
    p.N = small(rng);
    p.G = small(rng) <= 2 ? 1 : small(rng);
    p.Cin = p.G * (small(rng) * (small(rng) == 4 ? 8 : 1));
    p.Cout = p.G * (small(rng) * (small(rng) == 4 ? 8 : 1));
    p.H = small(rng) + small(rng) - 1;
    p.W = small(rng) + small(rng) - 1;
    p.kH = small(rng);
    p.kW = small(rng);
    p.sh = small(rng);
    p.sw = small(rng);
    p.dh = small(rng) <= 3 ? 1 : small(rng);
    p.dw = small(rng) <= 3 ? 1 : small(rng);
    p.ph = std::uniform_int_distribution<int>(0, 3)(rng);
    p.pw = std::uniform_int_distribution<int>(0, 3)(rng);
    p.oph = std::uniform_int_distribution<int>(0, (int)std::max(p.sh, p.dh) - 1)(rng);
    p.opw = std::uniform_int_distribution<int>(0, (int)std::max(p.sw, p.dw) - 1)(rng);
    p.cl = rng() % 2;
    cases.push_back(p);
  }
  int run = 0;
  for (Problem p : cases) {
    p.OH = conv_transpose_output_length(p.H, p.kH, p.sh, p.ph, p.dh, p.oph);
    p.OW = conv_transpose_output_length(p.W, p.kW, p.sw, p.pw, p.dw, p.opw);
    if (p.OH <= 0 || p.OW <= 0) continue;
    const int before = failures;
    run_case<128, 64, 8>(p, rng);  // float16 / bfloat16 / TF32 tiles (V = 8 for 16-bit)
    run_case<128, 64, 4>(p, rng);  // float32 (V = 4)
    run_case<64, 64, 2>(p, rng);   // float64
    ++run;
    if (failures != before)
      printf("case N%ld Cin%ld Cout%ld G%ld %ldx%ld k%ldx%ld s%ldx%ld p%ldx%ld d%ldx%ld op%ldx%ld cl%d failed\n",
             (long)p.N, (long)p.Cin, (long)p.Cout, (long)p.G, (long)p.H, (long)p.W, (long)p.kH, (long)p.kW,
             (long)p.sh, (long)p.sw, (long)p.ph, (long)p.pw, (long)p.dh, (long)p.dw, (long)p.oph, (long)p.opw,
             p.cl);
  }
  printf("%d cases, %d failures\n", run, failures);
  return failures != 0;
}
