// CUDA kernels of conv_transpose and its backward: implicit GEMMs on tensor
// cores (WMMA), the geometry from conv_transpose_math.h.
//
// Shapes: x [N, C_in, H, W], w [C_in, C_out/g, kH, kW], y [N, C_out, H_out, W_out],
// NCHW or channels-last (p.channels_last); all offsets are computed from the
// tensors' strides, so one kernel serves both layouts and only the choice of
// load pattern (which dimension consecutive threads walk) depends on them.
//
// Forward: phase (sub-pixel) decomposition. The outputs oh = qh + sh * jh,
// ow = qw + sw * jw of output phase (qh, qw) form a stride-1 convolution: tap
// (th, tw) of the phase reads x at (jh + phase_input_offset(qh, th),
// jw + phase_input_offset(qw, tw)). Per (group, phase) that is the GEMM
//   M = N * phase_length_h * phase_length_w   (the phase's output pixels)
//   K = taps_of_phase * C_in/g                (ordered tap-major, channel-minor)
//   N = C_out/g
// with A gathered from x (0 where a border tap falls off the input: the only
// masked products, no inserted zero is ever multiplied) and B from the weight
// re-arranged per call into [g][kH][kW][C_in/g][C_out/g padded], contiguous
// along the GEMM's columns. One launch covers every (group, phase) on grid z;
// phases have different M and K (3x3 s2: 1, 2, 2 and 4 taps), blocks past a
// phase's M leave at once, and a phase without taps runs no K step and writes
// bias (or 0), so every output element is written exactly once. For kernel ==
// stride (U-Net 2x2 s2, the Mask R-CNN head) every phase has one tap whose
// offset is 0: this is the single GEMM [N*H*W, C_in] x [C_in, s^2 * C_out],
// with the pixel shuffle done by the epilogue's store addresses.
//
// Input gradient: an ordinary strided convolution of grad_output, the same
// kernel with one "phase" per group: rows are input pixels (n, ih, iw), K is
// every tap (th, tw) times C_out/g, A gathered from grad_output at
// (ih * sh + tap_output_index(0, th), ...) (masked where the fused ReLU's
// output was not positive), B the weight as [g][kH][kW][C_out/g][C_in/g padded].
//
// Weight gradient: per (group, tap) the GEMM [C_in/g, P] x [P, C_out/g] over
// the P = N*H*W input pixels, where pixel (n, ih, iw) pairs x with grad_output
// at tap_output_index(ih, th), .... P is split into a number of slices that
// depends on the shape only; each block writes float32/float64 partial sums of
// its slice to a workspace and a second kernel adds the slices in order, so no
// floating-point atomics are used and the bits repeat run to run. grad_bias is
// the same two-pass scheme over the output pixels.
//
// Tiles: 256 threads, BK = 32. float16/bfloat16 (WMMA m16n16k16, float
// accumulators) and float32 with TF32 allowed (at::globalContext().allowTF32CuBLAS(),
// WMMA m16n16k8) use 128 x 64 block tiles, 8 warps of 32 x 32; exact float32
// uses the same tile with 8 x 4 FFMA micro-tiles; float64 uses 64 x 64 with
// 4 x 4 DFMA micro-tiles (a 128 x 64 double tile does not fit in registers).
// Global loads of chunk k + 1 are issued into registers before the MMA of
// chunk k, then stored to the single shared buffer: two barriers per chunk,
// 36-38 KB of static shared memory and at most 128 registers (the launch
// bounds; the inner k loops are only partly unrolled to fit without spilling),
// so two blocks (16 warps) share an SM. A K chunk
// never straddles two taps (C/g is padded to BK per tap), so the tap, and with
// it the border test, is uniform across the chunk. Shared-memory pads of 16
// bytes keep the 32-byte alignment WMMA needs and spread the rows over banks.
//
// Loads: channels-last sources with C/g a multiple of the 16-byte vector walk
// the channel (K) dimension in 16-byte vectors; otherwise consecutive threads
// walk the GEMM rows, which for NCHW are consecutive jw, i.e. consecutive input
// columns (coalesced). B is always loaded in 16-byte vectors (the weight buffer
// is padded to a whole vector). Stores: channels-last outputs go along the
// output channels (16-byte vectors when C_out/g allows), NCHW outputs along
// the GEMM rows, i.e. along ow (phase-strided in the forward).
//
// Desk check (N = 1, C_in = 2, C_out = 3, 3x3, s2, p1, op1, H = W = 3 ->
// H_out = W_out = 6). Along each axis: phase q = 0 has residue (0 + 1) % 2 = 1,
// first_tap = 1, step 2, taps {1}; offset (0 + 1 - 1) / 2 = 0, so oh = 2 jh
// reads ih = jh, jh in [0, 3). Phase q = 1: residue 0, taps {0, 2}, offsets
// (1 + 1 - 0) / 2 = 1 and (1 + 1 - 2) / 2 = 0, so oh = 1 + 2 jh reads
// ih = jh + 1 (tap 0) and ih = jh (tap 2); at jh = 2 (oh = 5) tap 0 reads
// ih = 3, off the input, and is masked. Check against the direct rule
// oh = 2 ih - 1 + th: oh = 5 gets (ih 2, th 2) and (ih 3, th 0), the latter
// outside. Phases (0,0), (0,1), (1,0), (1,1) have 1, 2, 2, 4 taps, K = 2, 4,
// 4, 8, and 9 rows each (3 x 3 phase grid); their 36 rows x 3 channels are the
// 108 outputs, each the destination of exactly one (phase, row, column).

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>

#include "cuda/conv_transpose_tiles.h"
#include "cuda/launch.cuh"
#include "ops/conv_transpose.h"
#include "ops/conv_transpose_math.h"

namespace fastops {
namespace {

using cuda::kThreadsPerBlock;

static_assert(conv_transpose_tiles::kThreadsPerBlock == kThreadsPerBlock);
using namespace conv_transpose_tiles;

// ---------------------------------------------------------------------------
// Arithmetic per dtype

namespace wmma = nvcuda::wmma;

__device__ __forceinline__ uint4 load_vector(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

__device__ __forceinline__ void store_vector(void* p, uint4 v) { *reinterpret_cast<uint4*>(p) = v; }

template <typename storage_t>
__device__ __forceinline__ storage_t load_scalar(const storage_t* p) {
  return __ldg(p);
}

// float16 / bfloat16: bits travel untouched to shared memory, WMMA m16n16k16.
template <typename scalar_type, typename fragment_type>
struct Math16 {
  using scalar_t = scalar_type;
  using storage_t = uint16_t;
  using acc_t = float;
  using fragment_t = fragment_type;  // element type of the WMMA A/B fragments
  using fragment_ptr_t = fragment_type;
  static constexpr bool kTensorCore = true;
  static constexpr int kWK = 16;
  static constexpr int kBM = 128, kBN = 64;

  __device__ static storage_t prepare(storage_t v) { return v; }
  __device__ static uint4 prepare(uint4 v) { return v; }
  __device__ static acc_t to_acc(storage_t v) {
    return static_cast<float>(scalar_t(v, scalar_t::from_bits()));
  }
  __device__ static storage_t from_acc(acc_t v) { return scalar_t(v).x; }
};
using MathHalf = Math16<c10::Half, __half>;
using MathBFloat16 = Math16<c10::BFloat16, __nv_bfloat16>;

// float32 on TF32 tensor cores: operands rounded to TF32 on their way to
// shared memory (what the fragments require), WMMA m16n16k8.
struct MathTf32 {
  using scalar_t = float;
  using storage_t = float;
  using acc_t = float;
  using fragment_t = wmma::precision::tf32;
  using fragment_ptr_t = float;
  static constexpr bool kTensorCore = true;
  static constexpr int kWK = 8;
  static constexpr int kBM = 128, kBN = 64;

  __device__ static storage_t prepare(storage_t v) { return wmma::__float_to_tf32(v); }
  __device__ static uint4 prepare(uint4 v) {
    v.x = __float_as_uint(wmma::__float_to_tf32(__uint_as_float(v.x)));
    v.y = __float_as_uint(wmma::__float_to_tf32(__uint_as_float(v.y)));
    v.z = __float_as_uint(wmma::__float_to_tf32(__uint_as_float(v.z)));
    v.w = __float_as_uint(wmma::__float_to_tf32(__uint_as_float(v.w)));
    return v;
  }
  __device__ static acc_t to_acc(storage_t v) { return v; }
  __device__ static storage_t from_acc(acc_t v) { return v; }
};

// Exact float32 and float64: FMA micro-tiles of kTM x kTN per thread.
template <typename scalar_type, int kBlockM, int kMicroM>
struct MathSimt {
  using scalar_t = scalar_type;
  using storage_t = scalar_type;
  using acc_t = scalar_type;
  static constexpr bool kTensorCore = false;
  static constexpr int kBM = kBlockM, kBN = 64;
  static constexpr int kTM = kMicroM, kTN = 4;

  __device__ static storage_t prepare(storage_t v) { return v; }
  __device__ static uint4 prepare(uint4 v) { return v; }
  __device__ static acc_t to_acc(storage_t v) { return v; }
  __device__ static storage_t from_acc(acc_t v) { return v; }
};
using MathFloat = MathSimt<float, 128, 8>;
using MathDouble = MathSimt<double, 64, 4>;

template <typename Math>
constexpr int vector_width() {
  return kVectorBytes / static_cast<int>(sizeof(typename Math::storage_t));
}

// The ReLU backward: the gradient passes where the forward output was positive
// (NaN outputs block it, as where(output > 0, grad, 0)).
template <typename Math>
__device__ __forceinline__ typename Math::storage_t relu_gate(typename Math::storage_t grad,
                                                              typename Math::storage_t output) {
  return Math::to_acc(output) > 0 ? grad : typename Math::storage_t(0);
}

template <typename Math>
__device__ __forceinline__ uint4 relu_gate(uint4 grad, uint4 output) {
  using storage_t = typename Math::storage_t;
  constexpr int kVec = vector_width<Math>();
  storage_t g[kVec], o[kVec];
  memcpy(g, &grad, sizeof(grad));
  memcpy(o, &output, sizeof(output));
#pragma unroll
  for (int i = 0; i < kVec; ++i) {
    g[i] = relu_gate<Math>(g[i], o[i]);
  }
  memcpy(&grad, g, sizeof(grad));
  return grad;
}

// max(0, v) keeping NaN, as torch.relu.
template <typename acc_t>
__device__ __forceinline__ acc_t relu_keep_nan(acc_t v) {
  return v > acc_t(0) ? v : (v != v ? v : acc_t(0));
}

// ---------------------------------------------------------------------------
// Block-tile multiply-accumulate over one K chunk in shared memory

// Tensor cores: 8 warps as 4 (rows) x 2 (columns), each 32 x 32 = 2 x 2 fragments.
template <typename Math, typename Layout>
struct WmmaCore {
  using storage_t = typename Math::storage_t;
  using acc_t = typename Math::acc_t;
  static constexpr int kWK = Math::kWK;
  static constexpr int kUnroll = kWK == 16 ? 2 : 1;
  static_assert(Math::kBM == 4 * 32 && Math::kBN == 2 * 32, "8 warps of 32 x 32");
  using ALayout = std::conditional_t<Layout::a_index(0, 1) == 1, wmma::row_major, wmma::col_major>;
  using BLayout = std::conditional_t<Layout::b_index(0, 1) == 1, wmma::row_major, wmma::col_major>;
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, kWK, typename Math::fragment_t, ALayout>;
  using FragB = wmma::fragment<wmma::matrix_b, 16, 16, kWK, typename Math::fragment_t, BLayout>;
  using FragC = wmma::fragment<wmma::accumulator, 16, 16, kWK, float>;

  FragC acc[2][2];
  int warp_m, warp_n;

  __device__ explicit WmmaCore(int tid) {
    const int warp = tid / 32;
    warp_m = warp % 4;
    warp_n = warp / 4;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        wmma::fill_fragment(acc[i][j], 0.0f);
      }
    }
  }

  __device__ void step(const storage_t* As, const storage_t* Bs) {
    const auto* a = reinterpret_cast<const typename Math::fragment_ptr_t*>(As);
    const auto* b = reinterpret_cast<const typename Math::fragment_ptr_t*>(Bs);
    // 32 bytes of k per iteration (two float16 k-steps, one TF32 k-step):
    // deeper unrolling hoists more fragments than the 128 registers that let
    // two blocks share an SM.
#pragma unroll(kUnroll)
    for (int k = 0; k < kBK; k += kWK) {
      FragA fa[2];
      FragB fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        wmma::load_matrix_sync(fa[i], a + Layout::a_index(warp_m * 32 + i * 16, k), Layout::lda);
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        wmma::load_matrix_sync(fb[j], b + Layout::b_index(k, warp_n * 32 + j * 16), Layout::ldb);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
      }
    }
  }

  __device__ void store(acc_t* Cs, bool row_major) const {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int m = warp_m * 32 + i * 16, n = warp_n * 32 + j * 16;
        if (row_major) {
          wmma::store_matrix_sync(Cs + Layout::c_index(m, n, true), acc[i][j], Layout::ldc_row, wmma::mem_row_major);
        } else {
          wmma::store_matrix_sync(Cs + Layout::c_index(m, n, false), acc[i][j], Layout::ldc_col,
                                  wmma::mem_col_major);
        }
      }
    }
  }
};

// FMA: thread (ty, tx) owns rows ty * kTM + i and columns tx * kTN + j, so
// a warp's A reads are two broadcasts and its B reads one contiguous run.
template <typename Math, typename Layout>
struct SimtCore {
  using storage_t = typename Math::storage_t;
  using acc_t = typename Math::acc_t;
  static constexpr int kTM = Math::kTM, kTN = Math::kTN;
  static constexpr int kThreadsN = Math::kBN / kTN;
  static constexpr int kUnroll = sizeof(acc_t) == 8 ? 4 : 8;
  static_assert(kThreadsN * (Math::kBM / kTM) == kThreadsPerBlock, "one micro-tile per thread");

  acc_t acc[kTM][kTN];
  int tx, ty;

  __device__ explicit SimtCore(int tid) : tx(tid % kThreadsN), ty(tid / kThreadsN) {
#pragma unroll
    for (int i = 0; i < kTM; ++i) {
#pragma unroll
      for (int j = 0; j < kTN; ++j) {
        acc[i][j] = 0;
      }
    }
  }

  __device__ void step(const storage_t* As, const storage_t* Bs) {
    // Partly unrolled to stay within 128 registers (two blocks per SM).
#pragma unroll(kUnroll)
    for (int k = 0; k < kBK; ++k) {
      acc_t a[kTM], b[kTN];
#pragma unroll
      for (int i = 0; i < kTM; ++i) {
        a[i] = As[Layout::a_index(ty * kTM + i, k)];
      }
#pragma unroll
      for (int j = 0; j < kTN; ++j) {
        b[j] = Bs[Layout::b_index(k, tx * kTN + j)];
      }
#pragma unroll
      for (int i = 0; i < kTM; ++i) {
#pragma unroll
        for (int j = 0; j < kTN; ++j) {
          acc[i][j] = fma(a[i], b[j], acc[i][j]);
        }
      }
    }
  }

  __device__ void store(acc_t* Cs, bool row_major) const {
#pragma unroll
    for (int i = 0; i < kTM; ++i) {
#pragma unroll
      for (int j = 0; j < kTN; ++j) {
        Cs[Layout::c_index(ty * kTM + i, tx * kTN + j, row_major)] = acc[i][j];
      }
    }
  }
};

template <typename Math, typename Layout>
using CoreFor = std::conditional_t<Math::kTensorCore, WmmaCore<Math, Layout>, SimtCore<Math, Layout>>;

// ---------------------------------------------------------------------------
// The tile kernel: a policy supplies the operands, the core multiplies.
//
// Policy interface: Params, Layout, Shared; begin() (false: the block has no
// rows; every thread returns together, before any barrier), chunks(),
// load(chunk) (global -> registers), store(As, Bs) (registers -> shared),
// after_chunk(chunk) (after the chunk's second barrier), c_row_major() and
// epilogue(Cs).

template <typename Math, typename Policy>
__global__ void __launch_bounds__(kThreadsPerBlock, 2)
    tile_gemm_kernel(const __grid_constant__ typename Policy::Params p) {
  using Layout = typename Policy::Layout;
  using storage_t = typename Math::storage_t;
  using acc_t = typename Math::acc_t;
  __shared__ __align__(128) unsigned char tiles[Layout::kBytes];
  __shared__ typename Policy::Shared shared;
  const int tid = static_cast<int>(threadIdx.x);

  Policy policy;
  if (!policy.begin(p, shared, tid)) {
    return;
  }
  auto* As = reinterpret_cast<storage_t*>(tiles);
  auto* Bs = reinterpret_cast<storage_t*>(tiles + Layout::kABytes);
  CoreFor<Math, Layout> core(tid);
  const int chunks = policy.chunks();
  if (chunks > 0) {
    policy.load(p, shared, 0, tid);
  }
  for (int chunk = 0; chunk < chunks; ++chunk) {
    policy.store(As, Bs, tid);
    __syncthreads();
    // The next chunk's loads are in flight while the tensor cores work.
    if (chunk + 1 < chunks) {
      policy.load(p, shared, chunk + 1, tid);
    }
    core.step(As, Bs);
    __syncthreads();
    policy.after_chunk(p, shared, chunk, tid);
  }
  const bool row_major = policy.c_row_major(p);
  auto* Cs = reinterpret_cast<acc_t*>(tiles);
  core.store(Cs, row_major);
  __syncthreads();
  policy.epilogue(p, shared, Cs, tid);
}

// ---------------------------------------------------------------------------
// Implicit GEMM: forward (one problem per group and phase) and input gradient
// (one per group).

struct ImplicitGemmParams {
  const void* src;   // x (forward) or grad_output (input gradient)
  const void* gate;  // the fused ReLU's output (input gradient), or null
  Operand s;
  void* dst;
  Operand d;
  const void* weight;  // [groups][kH][kW][kc][nc_pad]
  const void* bias;    // [groups * nc] or null
  ConvGeometry geo;
  int64_t batch;
  int kc;      // reduction channels per group
  int nc;      // output channels per group (the GEMM's columns)
  int nc_pad;  // nc rounded up to a whole vector
  int phases_w, phases;
  int z_offset;
  bool forward, relu, store_along_channels, vector_store;
};

// kAlongK: the source is channels-last with whole vectors per group (16-byte
// loads along K); otherwise threads walk the rows (coalesced along W in NCHW).
template <typename Math, bool kAlongK>
struct ImplicitGemmPolicy {
  using Params = ImplicitGemmParams;
  using storage_t = typename Math::storage_t;
  using acc_t = typename Math::acc_t;
  static constexpr int kBM = Math::kBM, kBN = Math::kBN, kVec = vector_width<Math>();
  using Layout = TileLayout<kBM, kBN, sizeof(storage_t), sizeof(acc_t), kAlongK, true>;
  using APattern = std::conditional_t<kAlongK, LoadPattern<kBK, kBM, kVec>, LoadPattern<kBM, kBK, 1>>;
  using BPattern = LoadPattern<kBN, kBK, kVec>;
  using AStage = std::conditional_t<kAlongK, uint4, storage_t>;

  // Per-block geometry, kept in shared memory rather than in registers, which
  // the K loop needs for its staging and fragments.
  struct Shared {
    PhaseGeometry ph;
    int64_t row_image[kBM];  // -1 past the last row
    int row_h[kBM], row_w[kBM];
    int64_t row_dst[kBM];
  };

  int group, n0, channel_chunks, chunk_count;
  RowSource row;  // the one row this thread loads (not kAlongK)
  AStage a_stage[APattern::kPasses];
  uint4 b_stage[BPattern::kPasses];

  __device__ bool begin(const Params& p, Shared& sh, int tid) {
    const int z = static_cast<int>(blockIdx.z) + p.z_offset;
    group = z / p.phases;
    const int phase = z - group * p.phases;
    const PhaseGeometry ph = p.forward
                                 ? forward_phase(p.geo, p.d.height, p.d.width, phase / p.phases_w, phase % p.phases_w)
                                 : input_grad_phase(p.geo, p.d.height, p.d.width);
    const int64_t rows_total = p.batch * ph.pixels();
    const int64_t m0 = int64_t{blockIdx.x} * kBM;
    if (m0 >= rows_total) {
      return false;
    }
    n0 = static_cast<int>(blockIdx.y) * kBN;
    channel_chunks = (p.kc + kBK - 1) / kBK;
    chunk_count = static_cast<int>(ph.taps()) * channel_chunks;
    if (tid == 0) {
      sh.ph = ph;
    }
    if (tid < kBM) {
      const RowSource r = row_source(ph, m0 + tid, rows_total, p.s);
      sh.row_image[tid] = r.valid ? r.image : -1;
      sh.row_h[tid] = r.h;
      sh.row_w[tid] = r.w;
      sh.row_dst[tid] = row_destination(ph, m0 + tid, rows_total, p.d);
    }
    if constexpr (!kAlongK) {
      row = row_source(ph, m0 + APattern::contig(tid), rows_total, p.s);
    }
    __syncthreads();
    return true;
  }

  __device__ int chunks() const { return chunk_count; }

  __device__ void load(const Params& p, const Shared& sh, int chunk, int tid) {
    const ChunkTap t = chunk_tap(p.geo, sh.ph, chunk, channel_chunks);
    const auto* src = static_cast<const storage_t*>(p.src);
    const auto* gate = static_cast<const storage_t*>(p.gate);
    const int64_t channel0 = int64_t{group} * p.kc;
    if constexpr (kAlongK) {
      // stride_c == 1 here (checked on the host), and kc is a whole number of
      // vectors, so a vector is entirely inside or outside the group.
      const int c = t.c0 + APattern::contig(tid);
#pragma unroll
      for (int pass = 0; pass < APattern::kPasses; ++pass) {
        const int r = APattern::other(tid, pass);
        const RowSource row_r{sh.row_image[r], sh.row_h[r], sh.row_w[r], sh.row_image[r] >= 0};
        const int64_t pixel = tap_pixel_offset(row_r, t, p.s);
        uint4 v = make_uint4(0, 0, 0, 0);
        if (pixel >= 0 && c < p.kc) {
          const int64_t offset = pixel + channel0 + c;
          v = load_vector(src + offset);
          if (gate != nullptr) {
            v = relu_gate<Math>(v, load_vector(gate + offset));
          }
        }
        a_stage[pass] = v;
      }
    } else {
      const int64_t pixel = tap_pixel_offset(row, t, p.s);
#pragma unroll
      for (int pass = 0; pass < APattern::kPasses; ++pass) {
        const int c = t.c0 + APattern::other(tid, pass);
        storage_t v = 0;
        if (pixel >= 0 && c < p.kc) {
          const int64_t offset = pixel + (channel0 + c) * p.s.stride_c;
          v = load_scalar(src + offset);
          if (gate != nullptr) {
            v = relu_gate<Math>(v, load_scalar(gate + offset));
          }
        }
        a_stage[pass] = v;
      }
    }
    const auto* w = static_cast<const storage_t*>(p.weight) +
                    ((int64_t{group} * p.geo.kernel_h + t.th) * p.geo.kernel_w + t.tw) * p.kc * p.nc_pad;
    const int col = n0 + BPattern::contig(tid);
#pragma unroll
    for (int pass = 0; pass < BPattern::kPasses; ++pass) {
      const int c = t.c0 + BPattern::other(tid, pass);
      b_stage[pass] =
          c < p.kc && col < p.nc_pad ? load_vector(w + int64_t{c} * p.nc_pad + col) : make_uint4(0, 0, 0, 0);
    }
  }

  __device__ void store(storage_t* As, storage_t* Bs, int tid) const {
#pragma unroll
    for (int pass = 0; pass < APattern::kPasses; ++pass) {
      if constexpr (kAlongK) {
        store_vector(As + Layout::a_index(APattern::other(tid, pass), APattern::contig(tid)),
                     Math::prepare(a_stage[pass]));
      } else {
        As[Layout::a_index(APattern::contig(tid), APattern::other(tid, pass))] = Math::prepare(a_stage[pass]);
      }
    }
#pragma unroll
    for (int pass = 0; pass < BPattern::kPasses; ++pass) {
      store_vector(Bs + Layout::b_index(BPattern::other(tid, pass), BPattern::contig(tid)),
                   Math::prepare(b_stage[pass]));
    }
  }

  __device__ void after_chunk(const Params&, Shared&, int, int) const {}

  __device__ bool c_row_major(const Params& p) const { return p.store_along_channels; }

  __device__ acc_t finish(const Params& p, acc_t v, int col) const {
    if (p.bias != nullptr) {
      v += Math::to_acc(load_scalar(static_cast<const storage_t*>(p.bias) + int64_t{group} * p.nc + col));
    }
    return p.relu ? relu_keep_nan(v) : v;
  }

  __device__ void epilogue(const Params& p, const Shared& sh, const acc_t* Cs, int tid) const {
    auto* dst = static_cast<storage_t*>(p.dst);
    const int64_t channel0 = int64_t{group} * p.nc;
    if (p.vector_store) {
      // Channels-last, nc a whole number of vectors: 16-byte stores along C.
      constexpr int kVectors = kBN / kVec;
      for (int e = tid; e < kBM * kVectors; e += kThreadsPerBlock) {
        const int r = e / kVectors;
        const int c = (e - r * kVectors) * kVec;
        const int64_t row = sh.row_dst[r];
        if (row < 0 || n0 + c >= p.nc) {
          continue;
        }
        storage_t out[kVec];
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          out[i] = Math::from_acc(finish(p, Cs[Layout::c_index(r, c + i, true)], n0 + c + i));
        }
        uint4 packed;
        memcpy(&packed, out, sizeof(packed));
        store_vector(dst + row + channel0 + n0 + c, packed);
      }
    } else if (p.store_along_channels) {
      for (int e = tid; e < kBM * kBN; e += kThreadsPerBlock) {
        const int r = e / kBN;
        const int c = e - r * kBN;
        const int64_t row = sh.row_dst[r];
        if (row >= 0 && n0 + c < p.nc) {
          dst[row + (channel0 + n0 + c) * p.d.stride_c] =
              Math::from_acc(finish(p, Cs[Layout::c_index(r, c, true)], n0 + c));
        }
      }
    } else {
      // NCHW: consecutive threads take consecutive rows (along ow).
      for (int e = tid; e < kBM * kBN; e += kThreadsPerBlock) {
        const int c = e / kBM;
        const int r = e - c * kBM;
        const int64_t row = sh.row_dst[r];
        if (row >= 0 && n0 + c < p.nc) {
          dst[row + (channel0 + n0 + c) * p.d.stride_c] =
              Math::from_acc(finish(p, Cs[Layout::c_index(r, c, false)], n0 + c));
        }
      }
    }
  }
};

// ---------------------------------------------------------------------------
// Weight gradient: per (group, tap) and slice of input pixels, a partial
// [C_in/g, C_out/g] product written to the workspace.

struct WeightGradParams {
  const void* x;
  Operand xs;
  const void* grad;
  const void* gate;
  Operand gs;
  void* workspace;  // acc_t [splits][groups * taps][cin][cout]
  ConvGeometry geo;
  int cin, cout;  // per group
  int taps;
  int problems;  // groups * taps
  int64_t pixels, split_len;
  int splits;
  int z_offset;
};

// kAlongChannels: channels-last with whole vectors per group: x and
// grad_output are read in 16-byte vectors along C (the GEMM's rows and
// columns); otherwise threads walk the pixels (coalesced in NCHW).
template <typename Math, bool kAlongChannels>
struct WeightGradPolicy {
  using Params = WeightGradParams;
  using storage_t = typename Math::storage_t;
  using acc_t = typename Math::acc_t;
  static constexpr int kBM = Math::kBM, kBN = Math::kBN, kVec = vector_width<Math>();
  using Layout = TileLayout<kBM, kBN, sizeof(storage_t), sizeof(acc_t), !kAlongChannels, kAlongChannels>;
  using APattern = std::conditional_t<kAlongChannels, LoadPattern<kBM, kBK, kVec>, LoadPattern<kBK, kBM, 1>>;
  using BPattern = std::conditional_t<kAlongChannels, LoadPattern<kBN, kBK, kVec>, LoadPattern<kBK, kBN, 1>>;
  using Stage = std::conditional_t<kAlongChannels, uint4, storage_t>;

  // The pixel pairs of two chunks (the one being loaded and the next), and
  // the block's slice and tap, which only the pair computation reads.
  struct Shared {
    int64_t x[2][kBK];
    int64_t grad[2][kBK];
    int64_t begin_pixel, end_pixel, th, tw;
  };

  int z, split, m0, n0, chunk_count;
  Stage a_stage[APattern::kPasses];
  Stage b_stage[BPattern::kPasses];

  __device__ static void pixel_pairs(const Params& p, Shared& sh, int chunk, int tid, int64_t begin_pixel,
                                     int64_t end_pixel, int64_t th, int64_t tw) {
    if (tid < kBK) {
      const PixelPair pair =
          weight_grad_pixel(p.geo, begin_pixel + int64_t{chunk} * kBK + tid, end_pixel, th, tw, p.xs, p.gs);
      sh.x[chunk & 1][tid] = pair.x;
      sh.grad[chunk & 1][tid] = pair.grad;
    }
  }

  __device__ bool begin(const Params& p, Shared& sh, int tid) {
    split = static_cast<int>(blockIdx.x % static_cast<unsigned>(p.splits));
    m0 = static_cast<int>(blockIdx.x / static_cast<unsigned>(p.splits)) * kBM;
    n0 = static_cast<int>(blockIdx.y) * kBN;
    z = static_cast<int>(blockIdx.z) + p.z_offset;
    const int tap = z % p.taps;
    const int64_t th = tap / p.geo.kernel_w;
    const int64_t tw = tap - th * p.geo.kernel_w;
    const int64_t begin_pixel = int64_t{split} * p.split_len;
    const int64_t end_pixel = begin_pixel + p.split_len < p.pixels ? begin_pixel + p.split_len : p.pixels;
    chunk_count = static_cast<int>((end_pixel - begin_pixel + kBK - 1) / kBK);
    if (tid == 0) {
      sh.begin_pixel = begin_pixel;
      sh.end_pixel = end_pixel;
      sh.th = th;
      sh.tw = tw;
    }
    pixel_pairs(p, sh, 0, tid, begin_pixel, end_pixel, th, tw);
    pixel_pairs(p, sh, 1, tid, begin_pixel, end_pixel, th, tw);
    __syncthreads();
    return true;
  }

  __device__ int chunks() const { return chunk_count; }

  __device__ void load(const Params& p, Shared& sh, int chunk, int tid) {
    const int buffer = chunk & 1;
    const int group = z / p.taps;
    const auto* x = static_cast<const storage_t*>(p.x);
    const auto* grad = static_cast<const storage_t*>(p.grad);
    const auto* gate = static_cast<const storage_t*>(p.gate);
    const int64_t x_channel0 = int64_t{group} * p.cin;
    const int64_t g_channel0 = int64_t{group} * p.cout;
    if constexpr (kAlongChannels) {
      const int ci = m0 + APattern::contig(tid);
#pragma unroll
      for (int pass = 0; pass < APattern::kPasses; ++pass) {
        const int64_t pixel = sh.x[buffer][APattern::other(tid, pass)];
        a_stage[pass] = pixel >= 0 && ci < p.cin ? load_vector(x + pixel + x_channel0 + ci) : make_uint4(0, 0, 0, 0);
      }
      const int co = n0 + BPattern::contig(tid);
#pragma unroll
      for (int pass = 0; pass < BPattern::kPasses; ++pass) {
        const int64_t pixel = sh.grad[buffer][BPattern::other(tid, pass)];
        uint4 v = make_uint4(0, 0, 0, 0);
        if (pixel >= 0 && co < p.cout) {
          const int64_t offset = pixel + g_channel0 + co;
          v = load_vector(grad + offset);
          if (gate != nullptr) {
            v = relu_gate<Math>(v, load_vector(gate + offset));
          }
        }
        b_stage[pass] = v;
      }
    } else {
      const int64_t x_pixel = sh.x[buffer][APattern::contig(tid)];
#pragma unroll
      for (int pass = 0; pass < APattern::kPasses; ++pass) {
        const int ci = m0 + APattern::other(tid, pass);
        a_stage[pass] =
            x_pixel >= 0 && ci < p.cin ? load_scalar(x + x_pixel + (x_channel0 + ci) * p.xs.stride_c) : storage_t(0);
      }
      const int64_t g_pixel = sh.grad[buffer][BPattern::contig(tid)];
#pragma unroll
      for (int pass = 0; pass < BPattern::kPasses; ++pass) {
        const int co = n0 + BPattern::other(tid, pass);
        storage_t v = 0;
        if (g_pixel >= 0 && co < p.cout) {
          const int64_t offset = g_pixel + (g_channel0 + co) * p.gs.stride_c;
          v = load_scalar(grad + offset);
          if (gate != nullptr) {
            v = relu_gate<Math>(v, load_scalar(gate + offset));
          }
        }
        b_stage[pass] = v;
      }
    }
  }

  __device__ void store(storage_t* As, storage_t* Bs, int tid) const {
#pragma unroll
    for (int pass = 0; pass < APattern::kPasses; ++pass) {
      if constexpr (kAlongChannels) {
        store_vector(As + Layout::a_index(APattern::contig(tid), APattern::other(tid, pass)),
                     Math::prepare(a_stage[pass]));
      } else {
        As[Layout::a_index(APattern::other(tid, pass), APattern::contig(tid))] = Math::prepare(a_stage[pass]);
      }
    }
#pragma unroll
    for (int pass = 0; pass < BPattern::kPasses; ++pass) {
      if constexpr (kAlongChannels) {
        store_vector(Bs + Layout::b_index(BPattern::other(tid, pass), BPattern::contig(tid)),
                     Math::prepare(b_stage[pass]));
      } else {
        Bs[Layout::b_index(BPattern::contig(tid), BPattern::other(tid, pass))] = Math::prepare(b_stage[pass]);
      }
    }
  }

  // Chunk + 2 reuses the pair buffer of `chunk`, whose loads finished before
  // the barrier that precedes this call.
  __device__ void after_chunk(const Params& p, Shared& sh, int chunk, int tid) const {
    if (chunk + 2 < chunk_count) {
      pixel_pairs(p, sh, chunk + 2, tid, sh.begin_pixel, sh.end_pixel, sh.th, sh.tw);
    }
  }

  __device__ bool c_row_major(const Params&) const { return true; }

  __device__ void epilogue(const Params& p, const Shared&, const acc_t* Cs, int tid) const {
    auto* ws = static_cast<acc_t*>(p.workspace) + (int64_t{split} * p.problems + z) * p.cin * p.cout;
    for (int e = tid; e < kBM * kBN; e += kThreadsPerBlock) {
      const int r = e / kBN;
      const int c = e - r * kBN;
      if (m0 + r < p.cin && n0 + c < p.cout) {
        ws[int64_t{m0 + r} * p.cout + n0 + c] = Cs[Layout::c_index(r, c, true)];
      }
    }
  }
};


// grad_w[ci, co, th, tw] = the workspace's slices summed in slice order.
template <typename Math>
__global__ void __launch_bounds__(kThreadsPerBlock)
    weight_grad_reduce_kernel(const typename Math::acc_t* __restrict__ workspace,
                              typename Math::storage_t* __restrict__ grad_weight, const int64_t total,
                              const int splits, const int64_t cin, const int64_t cout, const int64_t taps) {
  using acc_t = typename Math::acc_t;
  for (int64_t e = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; e < total; e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t tap = e % taps;
    const int64_t rest = e / taps;
    const int64_t co = rest % cout;
    const int64_t channel = rest / cout;
    const int64_t group = channel / cin;
    const int64_t ci = channel - group * cin;
    const int64_t source = ((group * taps + tap) * cin + ci) * cout + co;
    acc_t sum = 0;
    for (int s = 0; s < splits; ++s) {
      sum += workspace[s * total + source];
    }
    grad_weight[e] = Math::from_acc(sum);
  }
}

// ---------------------------------------------------------------------------
// Bias gradient: per (slice of output pixels, channel) partial sums, then the
// slices added in order.

constexpr int kBiasChannels = 32;  // channels-last: channels per block, one per lane
constexpr int kBiasPixelLanes = kThreadsPerBlock / kBiasChannels;

template <typename Math>
__device__ __forceinline__ typename Math::acc_t gated_value(const typename Math::storage_t* grad,
                                                            const typename Math::storage_t* gate, int64_t offset) {
  const typename Math::storage_t v = load_scalar(grad + offset);
  return Math::to_acc(gate != nullptr ? relu_gate<Math>(v, load_scalar(gate + offset)) : v);
}

// grad_output is dense channels-last: pixel p, channel c at p * channels + c.
template <typename Math>
__global__ void __launch_bounds__(kThreadsPerBlock)
    bias_grad_partial_channels_last_kernel(const typename Math::storage_t* __restrict__ grad,
                                           const typename Math::storage_t* __restrict__ gate,
                                           typename Math::acc_t* __restrict__ partial, const int64_t pixels,
                                           const int64_t channels, const int64_t split_len) {
  using acc_t = typename Math::acc_t;
  __shared__ acc_t sums[kBiasPixelLanes][kBiasChannels];
  const int lane = static_cast<int>(threadIdx.x) % kBiasChannels;
  const int pixel_lane = static_cast<int>(threadIdx.x) / kBiasChannels;
  const int64_t c = int64_t{blockIdx.x} * kBiasChannels + lane;
  const int64_t split = blockIdx.y;
  const int64_t begin = split * split_len;
  const int64_t end = std::min(begin + split_len, pixels);
  acc_t sum = 0;
  if (c < channels) {
    for (int64_t p = begin + pixel_lane; p < end; p += kBiasPixelLanes) {
      sum += gated_value<Math>(grad, gate, p * channels + c);
    }
  }
  sums[pixel_lane][lane] = sum;
  __syncthreads();
  if (pixel_lane == 0 && c < channels) {
    acc_t total = sums[0][lane];
    for (int i = 1; i < kBiasPixelLanes; ++i) {
      total += sums[i][lane];
    }
    partial[split * channels + c] = total;
  }
}

// grad_output is dense NCHW: one block per (channel, slice), threads along the plane.
template <typename Math>
__global__ void __launch_bounds__(kThreadsPerBlock)
    bias_grad_partial_channels_first_kernel(const typename Math::storage_t* __restrict__ grad,
                                            const typename Math::storage_t* __restrict__ gate,
                                            typename Math::acc_t* __restrict__ partial, const int64_t pixels,
                                            const int64_t plane, const int64_t channels, const int64_t split_len) {
  using acc_t = typename Math::acc_t;
  __shared__ acc_t sums[kThreadsPerBlock];
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t c = blockIdx.x;
  const int64_t split = blockIdx.y;
  const int64_t begin = split * split_len;
  const int64_t end = std::min(begin + split_len, pixels);
  acc_t sum = 0;
  for (int64_t n = begin / plane; n * plane < end; ++n) {
    const int64_t lo = std::max(begin, n * plane) - n * plane;
    const int64_t hi = std::min(end, (n + 1) * plane) - n * plane;
    const int64_t base = (n * channels + c) * plane;
    for (int64_t i = lo + tid; i < hi; i += kThreadsPerBlock) {
      sum += gated_value<Math>(grad, gate, base + i);
    }
  }
  sums[tid] = sum;
  __syncthreads();
  // A fixed tree: the same additions in the same order on every run.
  for (int half = kThreadsPerBlock / 2; half > 0; half /= 2) {
    if (tid < half) {
      sums[tid] += sums[tid + half];
    }
    __syncthreads();
  }
  if (tid == 0) {
    partial[split * channels + c] = sums[0];
  }
}

template <typename Math>
__global__ void __launch_bounds__(kThreadsPerBlock)
    bias_grad_reduce_kernel(const typename Math::acc_t* __restrict__ partial,
                            typename Math::storage_t* __restrict__ grad_bias, const int64_t channels,
                            const int splits) {
  using acc_t = typename Math::acc_t;
  for (int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; c < channels;
       c += int64_t{gridDim.x} * blockDim.x) {
    acc_t sum = 0;
    for (int s = 0; s < splits; ++s) {
      sum += partial[s * channels + c];
    }
    grad_bias[c] = Math::from_acc(sum);
  }
}

// ---------------------------------------------------------------------------
// Host side

constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kMaxGridZ = 65535;
// Weight gradient: slices of the pixel reduction. The count depends on the
// shape only (never on the device), so the summation order, and the bits,
// are fixed for a shape.
constexpr int64_t kWeightGradTargetBlocks = 512;
constexpr int64_t kWeightGradMaxSplits = 256;
constexpr int64_t kWeightGradMinChunksPerSplit = 8;
// Bias gradient: about this many pixels per slice, at most kBiasMaxSplits slices.
constexpr int64_t kBiasPixelsPerSplit = 16384;
constexpr int64_t kBiasMaxSplits = 64;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool is_aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % kVectorBytes == 0; }

Operand operand_of(const at::Tensor& t) {
  return Operand{t.stride(0), t.stride(1), t.stride(2), t.stride(3), static_cast<int>(t.size(2)),
                 static_cast<int>(t.size(3))};
}

ConvGeometry geometry_of(const ConvTransposeProblem& p) {
  return ConvGeometry{p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.dilation_h, p.dilation_w};
}

// The kernels form pixel coordinates, channel indices and chunk counts in
// 32-bit integers (offsets are 64-bit); this bounds every such value.
void check_index_range(const char* op, const ConvTransposeProblem& p) {
  constexpr int64_t kLimit = int64_t{1} << 30;
  const auto span = [](int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
    // |coordinate| <= (in + 1) * stride + out + pad + dilation * kernel, for
    // the phase shifts, the input-gradient taps and the rows alike.
    return (in + 1) * stride + out + pad + dilation * kernel;
  };
  TORCH_CHECK(p.stride_h <= kLimit && p.stride_w <= kLimit && p.dilation_h <= kLimit && p.dilation_w <= kLimit &&
                  p.kernel_h <= kLimit && p.kernel_w <= kLimit && p.in_h <= kLimit && p.in_w <= kLimit &&
                  p.out_h <= kLimit && p.out_w <= kLimit,
              op, ": sizes, strides and dilations above 2^30 are not supported by the CUDA kernels");
  TORCH_CHECK(span(p.in_h, p.out_h, p.kernel_h, p.stride_h, p.pad_h, p.dilation_h) < kLimit &&
                  span(p.in_w, p.out_w, p.kernel_w, p.stride_w, p.pad_w, p.dilation_w) < kLimit,
              op, ": the geometry (sizes, stride, padding, dilation) exceeds the CUDA kernels' 2^30 coordinate range");
  const int64_t max_channels = std::max(p.in_per_group(), p.out_per_group());
  TORCH_CHECK(p.in_channels < kLimit && p.out_channels < kLimit &&
                  p.taps() * ceil_div(max_channels, kBK) < kLimit && p.groups * p.stride_h * p.stride_w < kLimit &&
                  p.groups * p.taps() < kLimit,
              op, ": too many channels, taps or phases for the CUDA kernels");
}

// The weight as the B operand, [groups][kH][kW][rows][columns] with the
// columns (the GEMM's N: C_out/g in the forward, C_in/g for the input
// gradient) padded with zeros to whole 16-byte vectors.
at::Tensor arrange_weight(const at::Tensor& weight, const ConvTransposeProblem& p, bool forward, int64_t vector) {
  const int64_t cin = p.in_per_group(), cout = p.out_per_group();
  at::Tensor w = weight.view({p.groups, cin, cout, p.kernel_h, p.kernel_w});
  w = forward ? w.permute({0, 3, 4, 1, 2}) : w.permute({0, 3, 4, 2, 1});
  const int64_t columns = w.size(4);
  const int64_t padded = ceil_div(columns, vector) * vector;
  if (padded == columns) {
    return w.contiguous();
  }
  at::Tensor buffer = at::zeros({p.groups, p.kernel_h, p.kernel_w, w.size(3), padded}, weight.options());
  buffer.narrow(4, 0, columns).copy_(w);
  return buffer;
}

// Calls f with the arithmetic of the dtype: tensor cores for 16-bit types and
// for float32 when TF32 is allowed (the cuBLAS flag, as for matmul), FMA otherwise.
template <typename F>
void dispatch_math(at::ScalarType type, const char* op, F&& f) {
  switch (type) {
    case at::kHalf:
      f(MathHalf{});
      break;
    case at::kBFloat16:
      f(MathBFloat16{});
      break;
    case at::kFloat:
      if (at::globalContext().allowTF32CuBLAS()) {
        f(MathTf32{});
      } else {
        f(MathFloat{});
      }
      break;
    case at::kDouble:
      f(MathDouble{});
      break;
    default:
      TORCH_CHECK(false, op, ": unsupported dtype ", type);
  }
}

template <typename Math>
at::ScalarType accumulate_dtype() {
  return std::is_same_v<typename Math::acc_t, double> ? at::kDouble : at::kFloat;
}

template <typename Math, bool kAlongK>
void launch_implicit_gemm(ImplicitGemmParams params, int64_t max_rows, int64_t problems) {
  using Policy = ImplicitGemmPolicy<Math, kAlongK>;
  const int64_t tiles_m = ceil_div(max_rows, Math::kBM);
  const int64_t tiles_n = ceil_div(params.nc, Math::kBN);
  if (tiles_m == 0 || tiles_n == 0 || problems == 0) {
    return;
  }
  TORCH_CHECK(tiles_m <= std::numeric_limits<int32_t>::max() && tiles_n <= kMaxGridY,
              "conv_transpose: too many output pixels or channels for one CUDA grid");
  const auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t z0 = 0; z0 < problems; z0 += kMaxGridZ) {
    params.z_offset = static_cast<int>(z0);
    const dim3 grid(static_cast<unsigned int>(tiles_m), static_cast<unsigned int>(tiles_n),
                    static_cast<unsigned int>(std::min(kMaxGridZ, problems - z0)));
    tile_gemm_kernel<Math, Policy><<<grid, kThreadsPerBlock, 0, stream>>>(params);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename Math>
void run_implicit_gemm(const ImplicitGemmParams& params, bool along_k, int64_t max_rows, int64_t problems) {
  if (along_k) {
    launch_implicit_gemm<Math, true>(params, max_rows, problems);
  } else {
    launch_implicit_gemm<Math, false>(params, max_rows, problems);
  }
}

// 16-byte loads along the channels need them contiguous, whole vectors per
// group (so group offsets and pixel strides are whole vectors) and aligned data.
bool vector_channels(const at::Tensor& t, int64_t per_group, int64_t vector) {
  return t.stride(1) == 1 && per_group % vector == 0 && is_aligned(t.const_data_ptr());
}

template <typename Math>
void forward(const ConvTransposeProblem& p, const at::Tensor& input, const at::Tensor& weight,
             const at::Tensor& bias, bool relu, at::Tensor& output) {
  constexpr int64_t kVec = vector_width<Math>();
  const at::Tensor packed = arrange_weight(weight, p, /*forward=*/true, kVec);
  ImplicitGemmParams params{};
  params.src = input.const_data_ptr();
  params.gate = nullptr;
  params.s = operand_of(input);
  params.dst = output.data_ptr();
  params.d = operand_of(output);
  params.weight = packed.const_data_ptr();
  params.bias = bias.defined() ? bias.const_data_ptr() : nullptr;
  params.geo = geometry_of(p);
  params.batch = p.batch;
  params.kc = static_cast<int>(p.in_per_group());
  params.nc = static_cast<int>(p.out_per_group());
  params.nc_pad = static_cast<int>(packed.size(4));
  params.phases_w = static_cast<int>(p.stride_w);
  params.phases = static_cast<int>(p.stride_h * p.stride_w);
  params.forward = true;
  params.relu = relu;
  params.store_along_channels = p.channels_last;
  params.vector_store = p.channels_last && p.out_channels > 1 && vector_channels(output, p.out_per_group(), kVec);
  const bool along_k = p.channels_last && p.in_channels > 1 && vector_channels(input, p.in_per_group(), kVec);
  // Phase 0 has the most rows along each axis.
  const int64_t max_rows =
      p.batch * phase_length(p.out_h, 0, p.stride_h) * phase_length(p.out_w, 0, p.stride_w);
  run_implicit_gemm<Math>(params, along_k, max_rows, p.groups * params.phases);
}

template <typename Math>
void input_grad(const ConvTransposeProblem& p, const at::Tensor& grad, const void* gate, const at::Tensor& weight,
                at::Tensor& grad_input) {
  constexpr int64_t kVec = vector_width<Math>();
  const at::Tensor packed = arrange_weight(weight, p, /*forward=*/false, kVec);
  ImplicitGemmParams params{};
  params.src = grad.const_data_ptr();
  params.gate = gate;
  params.s = operand_of(grad);
  params.dst = grad_input.data_ptr();
  params.d = operand_of(grad_input);
  params.weight = packed.const_data_ptr();
  params.bias = nullptr;
  params.geo = geometry_of(p);
  params.batch = p.batch;
  params.kc = static_cast<int>(p.out_per_group());
  params.nc = static_cast<int>(p.in_per_group());
  params.nc_pad = static_cast<int>(packed.size(4));
  params.phases_w = 1;
  params.phases = 1;
  params.forward = false;
  params.relu = false;
  params.store_along_channels = p.channels_last;
  params.vector_store = p.channels_last && p.in_channels > 1 && vector_channels(grad_input, p.in_per_group(), kVec);
  const bool along_k = p.channels_last && p.out_channels > 1 && vector_channels(grad, p.out_per_group(), kVec) &&
                       (gate == nullptr || is_aligned(gate));
  run_implicit_gemm<Math>(params, along_k, p.batch * p.in_h * p.in_w, p.groups);
}

template <typename Math, bool kAlongChannels>
void launch_weight_grad(const WeightGradParams& params, int64_t tiles_m, int64_t tiles_n) {
  using Policy = WeightGradPolicy<Math, kAlongChannels>;
  const auto stream = at::cuda::getCurrentCUDAStream();
  WeightGradParams launch = params;
  for (int64_t z0 = 0; z0 < params.problems; z0 += kMaxGridZ) {
    launch.z_offset = static_cast<int>(z0);
    const dim3 grid(static_cast<unsigned int>(params.splits * tiles_m), static_cast<unsigned int>(tiles_n),
                    static_cast<unsigned int>(std::min(kMaxGridZ, params.problems - z0)));
    tile_gemm_kernel<Math, Policy><<<grid, kThreadsPerBlock, 0, stream>>>(launch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename Math>
void weight_grad(const ConvTransposeProblem& p, const at::Tensor& input, const at::Tensor& grad, const void* gate,
                 at::Tensor& grad_weight) {
  using acc_t = typename Math::acc_t;
  using storage_t = typename Math::storage_t;
  constexpr int64_t kVec = vector_width<Math>();
  const int64_t pixels = p.batch * p.in_h * p.in_w;
  if (pixels == 0) {
    grad_weight.zero_();
    return;
  }
  const int64_t cin = p.in_per_group(), cout = p.out_per_group(), taps = p.taps();
  const int64_t tiles_m = ceil_div(cin, Math::kBM), tiles_n = ceil_div(cout, Math::kBN);
  const int64_t tiles = p.groups * taps * tiles_m * tiles_n;
  const int64_t chunks = ceil_div(pixels, kBK);
  const int64_t max_splits =
      std::min(kWeightGradMaxSplits, std::max<int64_t>(1, chunks / kWeightGradMinChunksPerSplit));
  int64_t splits = std::clamp<int64_t>(ceil_div(kWeightGradTargetBlocks, tiles), 1, max_splits);
  const int64_t split_len = ceil_div(chunks, splits) * kBK;
  splits = ceil_div(pixels, split_len);
  TORCH_CHECK(splits * tiles_m <= std::numeric_limits<int32_t>::max() && tiles_n <= kMaxGridY,
              "_conv_transpose_backward: too many channels for one CUDA grid");
  at::Tensor workspace =
      at::empty({splits, p.groups * taps, cin, cout}, grad.options().dtype(accumulate_dtype<Math>()));

  WeightGradParams params{};
  params.x = input.const_data_ptr();
  params.xs = operand_of(input);
  params.grad = grad.const_data_ptr();
  params.gate = gate;
  params.gs = operand_of(grad);
  params.workspace = workspace.data_ptr();
  params.geo = geometry_of(p);
  params.cin = static_cast<int>(cin);
  params.cout = static_cast<int>(cout);
  params.taps = static_cast<int>(taps);
  params.problems = static_cast<int>(p.groups * taps);
  params.pixels = pixels;
  params.split_len = split_len;
  params.splits = static_cast<int>(splits);
  const bool along_channels = p.channels_last && p.in_channels > 1 && p.out_channels > 1 &&
                              vector_channels(input, cin, kVec) && vector_channels(grad, cout, kVec) &&
                              (gate == nullptr || is_aligned(gate));
  if (along_channels) {
    launch_weight_grad<Math, true>(params, tiles_m, tiles_n);
  } else {
    launch_weight_grad<Math, false>(params, tiles_m, tiles_n);
  }
  const int64_t total = grad_weight.numel();
  weight_grad_reduce_kernel<Math><<<cuda::grid_blocks(total), kThreadsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
      workspace.const_data_ptr<acc_t>(), static_cast<storage_t*>(grad_weight.data_ptr()), total,
      static_cast<int>(splits), cin, cout, taps);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename Math>
void bias_grad(const ConvTransposeProblem& p, const at::Tensor& grad, const void* gate, at::Tensor& grad_bias) {
  using acc_t = typename Math::acc_t;
  using storage_t = typename Math::storage_t;
  const int64_t plane = p.out_h * p.out_w;
  const int64_t pixels = p.batch * plane;
  if (pixels == 0) {
    grad_bias.zero_();
    return;
  }
  const int64_t channels = p.out_channels;
  int64_t splits = std::clamp<int64_t>(ceil_div(pixels, kBiasPixelsPerSplit), 1, kBiasMaxSplits);
  const int64_t split_len = ceil_div(pixels, splits);
  splits = ceil_div(pixels, split_len);
  at::Tensor partial = at::empty({splits, channels}, grad.options().dtype(accumulate_dtype<Math>()));
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto* g = static_cast<const storage_t*>(grad.const_data_ptr());
  const auto* gt = static_cast<const storage_t*>(gate);
  auto* part = partial.data_ptr<acc_t>();
  if (p.channels_last) {
    const dim3 grid(static_cast<unsigned int>(ceil_div(channels, kBiasChannels)), static_cast<unsigned int>(splits));
    bias_grad_partial_channels_last_kernel<Math>
        <<<grid, kThreadsPerBlock, 0, stream>>>(g, gt, part, pixels, channels, split_len);
  } else {
    const dim3 grid(static_cast<unsigned int>(channels), static_cast<unsigned int>(splits));
    bias_grad_partial_channels_first_kernel<Math>
        <<<grid, kThreadsPerBlock, 0, stream>>>(g, gt, part, pixels, plane, channels, split_len);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  bias_grad_reduce_kernel<Math><<<cuda::grid_blocks(channels), kThreadsPerBlock, 0, stream>>>(
      part, static_cast<storage_t*>(grad_bias.data_ptr()), channels, static_cast<int>(splits));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor conv_transpose_cuda(const at::Tensor& input_arg, const at::Tensor& weight_arg,
                               const std::optional<at::Tensor>& bias_arg, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups,
                               at::IntArrayRef dilation, bool relu) {
  const c10::cuda::CUDAGuard device_guard(input_arg.device());
  at::Tensor input = input_arg, weight = weight_arg;
  const ConvTransposeProblem p = make_conv_transpose_problem("conv_transpose", input, weight, bias_arg, stride,
                                                             padding, output_padding, groups, dilation);
  at::Tensor output = empty_conv_transpose_output(p, input.options());
  if (output.numel() == 0) {
    return output;
  }
  check_index_range("conv_transpose", p);
  const at::Tensor bias = bias_arg ? bias_arg->contiguous() : at::Tensor();
  dispatch_math(input.scalar_type(), "conv_transpose", [&](auto math) {
    forward<decltype(math)>(p, input, weight, bias, relu, output);
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_transpose_backward_cuda(
    const at::Tensor& grad_output_arg, const at::Tensor& input_arg, const at::Tensor& weight_arg,
    const std::optional<at::Tensor>& output_arg, at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups,
    at::IntArrayRef dilation, std::array<bool, 3> output_mask) {
  const c10::cuda::CUDAGuard device_guard(input_arg.device());
  at::Tensor grad = grad_output_arg, input = input_arg, weight = weight_arg;
  std::optional<at::Tensor> output = output_arg;
  const ConvTransposeProblem p = make_conv_transpose_backward_problem("_conv_transpose_backward", grad, input,
                                                                      weight, output, stride, padding, groups,
                                                                      dilation);
  const at::TensorOptions options = input.options();
  at::Tensor grad_input = output_mask[0] ? empty_conv_transpose_input_grad(p, options) : at::empty({0}, options);
  at::Tensor grad_weight = output_mask[1] ? at::empty(weight.sizes(), options) : at::empty({0}, options);
  at::Tensor grad_bias = output_mask[2] ? at::empty({p.out_channels}, options) : at::empty({0}, options);
  if (grad_input.numel() == 0 && grad_weight.numel() == 0 && grad_bias.numel() == 0) {
    return {grad_input, grad_weight, grad_bias};
  }
  check_index_range("_conv_transpose_backward", p);
  const void* gate = output ? output->const_data_ptr() : nullptr;
  dispatch_math(input.scalar_type(), "_conv_transpose_backward", [&](auto math) {
    using Math = decltype(math);
    if (grad_input.numel() > 0) {
      input_grad<Math>(p, grad, gate, weight, grad_input);
    }
    if (grad_weight.numel() > 0) {
      weight_grad<Math>(p, input, grad, gate, grad_weight);
    }
    if (grad_bias.numel() > 0) {
      bias_grad<Math>(p, grad, gate, grad_bias);
    }
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("conv_transpose", &conv_transpose_cuda);
  m.impl("_conv_transpose_backward", &conv_transpose_backward_cuda);
}

}  // namespace fastops
