// CPU kernels of soft_dice_statistics and its backward.
//
// The logistic terms are formed from e = exp(−|x|) (soft_dice_math.h), and
// the sums use selects rather than branches so the compiler vectorises them.
//
// Forward: the elements are cut into fixed chunks (an image and a run of
// pixels), independent of the thread count; each chunk sums its statistics
// per class in the accumulation type, and the chunks are added in order, so
// the result is the same on any number of threads. Multiclass chunks work on
// tiles of kTile pixels: the tile's logits are loaded class by class into a
// [C, kTile] buffer, so the softmax over classes runs along the contiguous
// pixel axis, with an exp inlined into the loop (cpu/vector_math.h
// exp_inline) and compiled with FMA where the CPU has it; the one-hot target
// is a compare per element, never a tensor; the per-class sums are kept per
// tile column (elementwise adds) and reduced once per chunk; Σt and the valid
// count come from a per-pixel histogram of the labels. Multilabel chunks take
// exp/log1p over whole rows through SLEEF (exp_inplace, log1p_inplace).
//
// Backward: the same tiles, elementwise; the softmax Jacobian needs the
// per-pixel Σ_k p_k·dp_k, computed before the gradient is written.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <vector>

#include "common/cpu_multiversion.h"
#include "common/poison.h"
#include "ops/segmentation_losses.h"
#include "cpu/vector_math.h"
#include "ops/soft_dice_math.h"

namespace fastops {
namespace {

using namespace soft_dice;

constexpr int64_t kTile = 64;
constexpr int64_t kChunkPixels = 8192;
constexpr int64_t kLanes = 8;  // independent partial sums per statistic (see add_tile_to_lanes)

struct Chunk {
  int64_t image, begin, end;
};

std::vector<Chunk> make_chunks(const SoftDiceProblem& p) {
  std::vector<Chunk> chunks;
  for (int64_t n = 0; n < p.batch; ++n) {
    for (int64_t s = 0; s < p.pixels; s += kChunkPixels) {
      chunks.push_back({n, s, std::min(p.pixels, s + kChunkPixels)});
    }
  }
  return chunks;
}

// The tile's logits (or probabilities), class by class, as [C, kTile] in the
// accumulation type; columns beyond `count` are zeros, so that the loops over
// a whole tile (a constant trip count, which vectorises) compute on finite
// values that the masks then drop.
template <typename scalar_t, typename acc_t>
void load_tile(const SoftDiceProblem& p, const scalar_t* input, int64_t n, int64_t s, int64_t count, acc_t* tile) {
  for (int64_t c = 0; c < p.classes; ++c) {
    const scalar_t* row = input + (n * p.classes + c) * p.pixels + s;
    acc_t* out = tile + c * kTile;
    for (int64_t i = 0; i < count; ++i) {
      out[i] = static_cast<acc_t>(row[i]);
    }
    std::fill(out + count, out + kTile, acc_t(0));
  }
}

// A tile's labels as what the per-class loops compare with: `label` is the
// class in [0, C) of a valid pixel and −1 otherwise (ignored, padding, or a
// label outside [0, C), which is background in every class); `valid` is 1 for
// a pixel that counts (also one with an out-of-range label) and 0 otherwise,
// in the accumulation type so that selects on it vectorise. Returns the
// number of valid pixels and adds each class's pixel count to `class_counts`.
template <typename acc_t>
int64_t load_labels(const SoftDiceProblem& p, const int64_t* labels, int64_t count, int32_t* __restrict label,
                    acc_t* __restrict valid, int64_t* class_counts) {
  for (int64_t i = 0; i < kTile; ++i) {
    const int64_t value = i < count ? labels[std::min(i, count - 1)] : int64_t(-1);
    const bool counts = i < count && label_is_valid(value, p.has_ignore, p.ignore_index);
    const bool in_range = counts && value >= 0 && value < p.classes;
    label[i] = in_range ? static_cast<int32_t>(value) : int32_t(-1);
    valid[i] = counts ? acc_t(1) : acc_t(0);
  }
  int64_t valid_pixels = 0;
  for (int64_t i = 0; i < count; ++i) {
    valid_pixels += valid[i] != acc_t(0) ? 1 : 0;
    class_counts[label[i] >= 0 ? label[i] : p.classes] += 1;  // slot C collects the rest
  }
  return valid_pixels;
}

// Softmax numerators e = exp(x − max_k x_k) over the classes of a [C, kTile]
// tile, in place, and the reciprocal of their sum per pixel.
template <bool kFused, typename acc_t>
C10_ALWAYS_INLINE void softmax_numerators(acc_t* __restrict tile, int64_t classes, acc_t* __restrict reciprocal) {
  std::array<acc_t, kTile> maximum, total;
  std::copy_n(tile, kTile, maximum.begin());
  for (int64_t c = 1; c < classes; ++c) {
    const acc_t* row = tile + c * kTile;
    for (int64_t i = 0; i < kTile; ++i) {
      maximum[i] = row[i] > maximum[i] ? row[i] : maximum[i];
    }
  }
  total.fill(acc_t(0));
  for (int64_t c = 0; c < classes; ++c) {
    acc_t* row = tile + c * kTile;
    for (int64_t i = 0; i < kTile; ++i) {
      row[i] = cpu::exp_inline<kFused>(row[i] - maximum[i]);
      total[i] += row[i];
    }
  }
  for (int64_t i = 0; i < kTile; ++i) {
    reciprocal[i] = acc_t(1) / total[i];
  }
}

// Adds a class's row of a tile to its Σp, Σp·t and Σ|p − t| partial sums,
// kept per tile column ([3, kTile]: elementwise adds, which vectorise without
// reassociating a float sum), with p = e·scale of the valid pixels and
// t = [label == c].
template <typename acc_t>
C10_ALWAYS_INLINE void add_class_tile(const acc_t* __restrict row, const acc_t* __restrict scale,
                                      const acc_t* __restrict valid, const int32_t* __restrict label, int32_t c,
                                      acc_t* __restrict partial) {
  acc_t* __restrict sp = partial;
  acc_t* __restrict spt = partial + kTile;
  acc_t* __restrict sd = partial + 2 * kTile;
  for (int64_t i = 0; i < kTile; ++i) {
    // A select, not a product with the mask: an ignored pixel's NaN must
    // not enter the sums. Both sides computed first, so it is a blend.
    const acc_t prob = row[i] * scale[i];
    const acc_t q = valid[i] != acc_t(0) ? prob : acc_t(0);
    const acc_t u = label[i] == c ? acc_t(1) : acc_t(0);
    sp[i] += q;
    spt[i] += q * u;
    sd[i] += std::abs(q - u);
  }
}

// Adds one chunk's statistics to `sums` [C, 6]. Per class only Σp, Σp·t and
// Σ|p − t| need an element loop (kLanes independent partial sums each: float
// addition is not associative, so the compiler vectorises a sum only when the
// code already splits it into lanes); Σt is the class's pixel count, the
// valid count is the same for every class, and there is no BCE term.
template <typename scalar_t, bool kFused>
C10_ALWAYS_INLINE void multiclass_chunk_statistics_body(const SoftDiceProblem& p, const scalar_t* input,
                                                        const int64_t* labels, const Chunk& chunk,
                                                        at::opmath_type<scalar_t>* sums) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t kSums = 3;
  std::vector<acc_t> tile(p.classes * kTile);
  std::vector<acc_t> partial(p.classes * kSums * kTile, acc_t(0));
  std::vector<int64_t> class_counts(p.classes + 1, 0);
  std::array<acc_t, kTile> valid, scale;
  std::array<int32_t, kTile> label;
  int64_t valid_pixels = 0;
  for (int64_t s = chunk.begin; s < chunk.end; s += kTile) {
    const int64_t count = std::min(kTile, chunk.end - s);
    load_tile(p, input, chunk.image, s, count, tile.data());
    valid_pixels += load_labels(p, labels + chunk.image * p.pixels + s, count, label.data(), valid.data(),
                                class_counts.data());
    if (p.from_logits) {
      softmax_numerators<kFused>(tile.data(), p.classes, scale.data());
    } else {
      scale.fill(acc_t(1));
    }
    for (int64_t c = 0; c < p.classes; ++c) {
      add_class_tile(tile.data() + c * kTile, scale.data(), valid.data(), label.data(), static_cast<int32_t>(c),
                     partial.data() + c * kSums * kTile);
    }
  }
  for (int64_t c = 0; c < p.classes; ++c) {
    acc_t* out = sums + c * kStatistics;
    const acc_t* class_partial = partial.data() + c * kSums * kTile;
    for (int64_t k = 0; k < kSums; ++k) {
      acc_t total = 0;
      for (int64_t i = 0; i < kTile; ++i) {
        total += class_partial[k * kTile + i];
      }
      out[k == 0 ? kPredictionSum : (k == 1 ? kProductSum : kAbsoluteDifferenceSum)] += total;
    }
    out[kTargetSum] += static_cast<acc_t>(class_counts[c]);
    out[kValidCount] += static_cast<acc_t>(valid_pixels);
  }
}

// The multiclass chunk functions, compiled with FMA where the CPU has it
// (the softmax's exp is mostly multiply-adds) and multiversioned otherwise.
template <typename scalar_t>
FASTOPS_CPU_AVX2_FMA void multiclass_chunk_statistics_fma(const SoftDiceProblem& p, const scalar_t* input,
                                                          const int64_t* labels, const Chunk& chunk,
                                                          at::opmath_type<scalar_t>* sums) {
  multiclass_chunk_statistics_body<scalar_t, FASTOPS_HAVE_CPU_AVX2_FMA != 0>(p, input, labels, chunk, sums);
}
template <typename scalar_t>
FASTOPS_CPU_MULTIVERSION void multiclass_chunk_statistics_plain(const SoftDiceProblem& p, const scalar_t* input,
                                                                const int64_t* labels, const Chunk& chunk,
                                                                at::opmath_type<scalar_t>* sums) {
  multiclass_chunk_statistics_body<scalar_t, false>(p, input, labels, chunk, sums);
}
template <typename scalar_t>
void multiclass_chunk_statistics(const SoftDiceProblem& p, const scalar_t* input, const int64_t* labels,
                                 const Chunk& chunk, at::opmath_type<scalar_t>* sums) {
  if (cpu_has_avx2_fma()) {
    multiclass_chunk_statistics_fma(p, input, labels, chunk, sums);
  } else {
    multiclass_chunk_statistics_plain(p, input, labels, chunk, sums);
  }
}

// Sums over kTile elements kept in kLanes independent partial sums per
// statistic: float addition is not associative, so the compiler vectorises a
// sum only when the code already splits it into lanes. Masked elements are
// zeros (and padding beyond a short tile is masked).
template <typename acc_t>
FASTOPS_CPU_MULTIVERSION void add_tile_to_lanes(acc_t* __restrict lanes, const acc_t* __restrict q,
                                                const acc_t* __restrict u, const acc_t* __restrict w,
                                                const acc_t* __restrict bce) {
  acc_t* sp = lanes + kPredictionSum * kLanes;
  acc_t* st = lanes + kTargetSum * kLanes;
  acc_t* spt = lanes + kProductSum * kLanes;
  acc_t* sd = lanes + kAbsoluteDifferenceSum * kLanes;
  acc_t* sb = lanes + kBceSum * kLanes;
  acc_t* sn = lanes + kValidCount * kLanes;
  for (int64_t i = 0; i < kTile; i += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) {
      const acc_t qv = q[i + j], uv = u[i + j];
      sp[j] += qv;
      st[j] += uv;
      spt[j] += qv * uv;
      sd[j] += std::abs(qv - uv);
      sn[j] += w[i + j];
      sb[j] += bce[i + j];
    }
  }
}

// Adds the lanes, in order, to sums [classes, 6].
template <typename acc_t>
void add_lanes(const std::vector<acc_t>& lanes, int64_t classes, acc_t* sums) {
  for (int64_t c = 0; c < classes; ++c) {
    for (int64_t k = 0; k < kStatistics; ++k) {
      acc_t total = 0;
      for (int64_t j = 0; j < kLanes; ++j) {
        total += lanes[(c * kStatistics + k) * kLanes + j];
      }
      sums[c * kStatistics + k] += total;
    }
  }
}

// One row run of a multilabel chunk in the accumulation type: logits x,
// targets t, the valid mask and, from logits, e = exp(−|x|) and p = σ(x).
template <typename acc_t>
struct LogisticTile {
  std::array<acc_t, kTile> x, t, e, prob, log1p_e;
  std::array<acc_t, kTile> valid;  // 1 or 0, in acc_t so that selects on it vectorise
};

// p = σ(x) from e = exp(−|x|), over an array (a select, not a branch: the
// signs of logits are random, and a branch mispredicted half the time).
template <typename acc_t>
FASTOPS_CPU_MULTIVERSION void sigmoid_from_exp_array(const acc_t* __restrict x, const acc_t* __restrict e,
                                                     acc_t* __restrict prob, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    prob[i] = sigmoid_from_exp(x[i], e[i]);
  }
}

template <typename scalar_t>
void load_logistic_tile(const SoftDiceProblem& p, const scalar_t* input, const scalar_t* target, int64_t offset,
                        int64_t count, bool with_log1p, LogisticTile<at::opmath_type<scalar_t>>& tile) {
  using acc_t = at::opmath_type<scalar_t>;
  const double ignore_value = static_cast<double>(p.ignore_index);
  for (int64_t i = 0; i < count; ++i) {
    tile.x[i] = static_cast<acc_t>(input[offset + i]);
    tile.t[i] = static_cast<acc_t>(target[offset + i]);
    tile.valid[i] = target_is_valid(tile.t[i], p.has_ignore, ignore_value) ? acc_t(1) : acc_t(0);
  }
  if (!p.from_logits) {
    std::copy(tile.x.begin(), tile.x.begin() + count, tile.prob.begin());
    return;
  }
  for (int64_t i = 0; i < count; ++i) {
    tile.e[i] = -std::abs(tile.x[i]);
  }
  cpu::exp_inplace(tile.e.data(), count);
  sigmoid_from_exp_array(tile.x.data(), tile.e.data(), tile.prob.data(), count);
  if (with_log1p) {
    std::copy(tile.e.begin(), tile.e.begin() + count, tile.log1p_e.begin());
    cpu::log1p_inplace(tile.log1p_e.data(), count);
  }
}

template <typename scalar_t>
FASTOPS_CPU_MULTIVERSION void multilabel_chunk_statistics(const SoftDiceProblem& p, const scalar_t* input,
                                                          const scalar_t* target, const Chunk& chunk,
                                                          at::opmath_type<scalar_t>* sums) {
  using acc_t = at::opmath_type<scalar_t>;
  LogisticTile<acc_t> tile;
  std::array<acc_t, kTile> q, u, w, b;
  std::vector<acc_t> lanes(p.classes * kStatistics * kLanes, acc_t(0));
  for (int64_t c = 0; c < p.classes; ++c) {
    const int64_t row = (chunk.image * p.classes + c) * p.pixels;
    acc_t* class_lanes = lanes.data() + c * kStatistics * kLanes;
    for (int64_t s = chunk.begin; s < chunk.end; s += kTile) {
      const int64_t count = std::min(kTile, chunk.end - s);
      load_logistic_tile(p, input, target, row + s, count, p.with_bce, tile);
      for (int64_t i = 0; i < kTile; ++i) {
        const bool take = i < count && tile.valid[i] != acc_t(0);
        q[i] = take ? tile.prob[i] : acc_t(0);
        u[i] = take ? tile.t[i] : acc_t(0);
        w[i] = take ? acc_t(1) : acc_t(0);
        b[i] = take && p.with_bce ? bce_from_exp(tile.x[i], tile.t[i], tile.log1p_e[i]) : acc_t(0);
      }
      add_tile_to_lanes(class_lanes, q.data(), u.data(), w.data(), b.data());
    }
  }
  add_lanes(lanes, p.classes, sums);
}

at::Tensor soft_dice_statistics_cpu(const at::Tensor& input_, const at::Tensor& target_, bool multiclass,
                                   bool from_logits, std::optional<int64_t> ignore_index, bool per_image,
                                   bool with_bce) {
  const SoftDiceProblem p = make_soft_dice_problem("soft_dice_statistics", input_, target_, multiclass, from_logits,
                                                   ignore_index, per_image, with_bce);
  const at::Tensor input = input_.contiguous();
  const at::Tensor target = target_.contiguous();
  at::Tensor statistics =
      at::zeros({p.units, p.classes, kStatistics}, input.options().dtype(soft_dice_statistics_dtype(input)));
  if (input.numel() == 0) {
    return statistics;
  }
  poison_if_enabled(statistics);  // every sum is written below
  const std::vector<Chunk> chunks = make_chunks(p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "soft_dice_statistics_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t width = p.classes * kStatistics;
    std::vector<acc_t> partial(chunks.size() * width, acc_t(0));
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        acc_t* sums = partial.data() + i * width;
        if (p.multiclass) {
          multiclass_chunk_statistics(p, x, target.const_data_ptr<int64_t>(), chunks[i], sums);
        } else {
          multilabel_chunk_statistics(p, x, target.const_data_ptr<scalar_t>(), chunks[i], sums);
        }
      }
    });
    // Chunks in order, in double, whatever the thread count.
    std::vector<double> total(p.units * width, 0.0);
    for (size_t i = 0; i < chunks.size(); ++i) {
      double* out = total.data() + (per_image ? chunks[i].image : 0) * width;
      for (int64_t j = 0; j < width; ++j) {
        out[j] += partial[i * width + j];
      }
    }
    acc_t* result = statistics.data_ptr<acc_t>();
    std::copy(total.begin(), total.end(), result);
  });
  return statistics;
}

template <typename scalar_t, bool kFused>
C10_ALWAYS_INLINE void multiclass_chunk_backward_body(const SoftDiceProblem& p,
                                                      const at::opmath_type<scalar_t>* grad, const scalar_t* input,
                                                      const int64_t* labels, const Chunk& chunk,
                                                      scalar_t* grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* g = grad + (p.units > 1 ? chunk.image : 0) * p.classes * kStatistics;
  std::vector<acc_t> tile(p.classes * kTile), slopes(p.classes * kTile);
  std::vector<int64_t> class_counts(p.classes + 1, 0);
  std::array<acc_t, kTile> valid, scale, dot, result;
  std::array<int32_t, kTile> label;
  for (int64_t s = chunk.begin; s < chunk.end; s += kTile) {
    const int64_t count = std::min(kTile, chunk.end - s);
    load_tile(p, input, chunk.image, s, count, tile.data());
    load_labels(p, labels + chunk.image * p.pixels + s, count, label.data(), valid.data(), class_counts.data());
    if (p.from_logits) {
      softmax_numerators<kFused>(tile.data(), p.classes, scale.data());
    } else {
      scale.fill(acc_t(1));
    }
    // dL/dp per element first: the softmax Jacobian needs Σ_k p_k·dp_k per pixel.
    dot.fill(acc_t(0));
    for (int64_t c = 0; c < p.classes; ++c) {
      const acc_t* row = tile.data() + c * kTile;
      acc_t* dp = slopes.data() + c * kTile;
      const acc_t* gc = g + c * kStatistics;
      const acc_t g_prediction = gc[kPredictionSum], g_product = gc[kProductSum];
      const acc_t g_difference = gc[kAbsoluteDifferenceSum];
      const int32_t class_label = static_cast<int32_t>(c);
      for (int64_t i = 0; i < kTile; ++i) {
        const acc_t prob = row[i] * scale[i];
        const acc_t t = label[i] == class_label ? acc_t(1) : acc_t(0);
        dp[i] = g_prediction + g_product * t + g_difference * sign(prob - t);
        dot[i] += prob * dp[i];
      }
    }
    for (int64_t c = 0; c < p.classes; ++c) {
      const acc_t* row = tile.data() + c * kTile;
      const acc_t* dp = slopes.data() + c * kTile;
      for (int64_t i = 0; i < kTile; ++i) {
        const acc_t value = p.from_logits ? row[i] * scale[i] * (dp[i] - dot[i]) : dp[i];
        result[i] = valid[i] != acc_t(0) ? value : acc_t(0);
      }
      std::copy_n(result.begin(), count, grad_input + (chunk.image * p.classes + c) * p.pixels + s);
    }
  }
}

template <typename scalar_t>
FASTOPS_CPU_AVX2_FMA void multiclass_chunk_backward_fma(const SoftDiceProblem& p,
                                                        const at::opmath_type<scalar_t>* grad, const scalar_t* input,
                                                        const int64_t* labels, const Chunk& chunk,
                                                        scalar_t* grad_input) {
  multiclass_chunk_backward_body<scalar_t, FASTOPS_HAVE_CPU_AVX2_FMA != 0>(p, grad, input, labels, chunk, grad_input);
}
template <typename scalar_t>
FASTOPS_CPU_MULTIVERSION void multiclass_chunk_backward_plain(const SoftDiceProblem& p,
                                                              const at::opmath_type<scalar_t>* grad,
                                                              const scalar_t* input, const int64_t* labels,
                                                              const Chunk& chunk, scalar_t* grad_input) {
  multiclass_chunk_backward_body<scalar_t, false>(p, grad, input, labels, chunk, grad_input);
}
template <typename scalar_t>
void multiclass_chunk_backward(const SoftDiceProblem& p, const at::opmath_type<scalar_t>* grad, const scalar_t* input,
                               const int64_t* labels, const Chunk& chunk, scalar_t* grad_input) {
  if (cpu_has_avx2_fma()) {
    multiclass_chunk_backward_fma(p, grad, input, labels, chunk, grad_input);
  } else {
    multiclass_chunk_backward_plain(p, grad, input, labels, chunk, grad_input);
  }
}

template <typename scalar_t>
FASTOPS_CPU_MULTIVERSION void multilabel_chunk_backward(const SoftDiceProblem& p, const at::opmath_type<scalar_t>* grad,
                                                        const scalar_t* input, const scalar_t* target,
                                                        const Chunk& chunk, scalar_t* grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  LogisticTile<acc_t> tile{};
  std::array<acc_t, kTile> result;
  for (int64_t c = 0; c < p.classes; ++c) {
    // Local copies: the output may alias nothing, but the compiler cannot know.
    std::array<acc_t, kStatistics> weights;
    std::copy_n(grad + ((p.units > 1 ? chunk.image : 0) * p.classes + c) * kStatistics, kStatistics,
                weights.begin());
    const acc_t bce_weight = weights[kBceSum];
    const int64_t row = (chunk.image * p.classes + c) * p.pixels;
    for (int64_t s = chunk.begin; s < chunk.end; s += kTile) {
      const int64_t count = std::min(kTile, chunk.end - s);
      load_logistic_tile(p, input, target, row + s, count, /*with_log1p=*/false, tile);
      // Into a local array first: the compiler cannot rule out that the
      // output aliases the tile, and would not vectorise a loop writing it.
      if (p.from_logits) {
        for (int64_t i = 0; i < kTile; ++i) {
          const acc_t dp = prediction_gradient(weights.data(), tile.prob[i], tile.t[i]);
          const acc_t value = dp * sigmoid_slope_from_exp(tile.e[i]) + bce_weight * (tile.prob[i] - tile.t[i]);
          result[i] = tile.valid[i] != acc_t(0) ? value : acc_t(0);
        }
      } else {
        for (int64_t i = 0; i < kTile; ++i) {
          const acc_t value = prediction_gradient(weights.data(), tile.prob[i], tile.t[i]);
          result[i] = tile.valid[i] != acc_t(0) ? value : acc_t(0);
        }
      }
      std::copy_n(result.begin(), count, grad_input + row + s);
    }
  }
}

at::Tensor soft_dice_statistics_backward_cpu(const at::Tensor& grad_statistics, const at::Tensor& input_,
                                            const at::Tensor& target_, bool multiclass, bool from_logits,
                                            std::optional<int64_t> ignore_index, bool per_image) {
  const SoftDiceProblem p = make_soft_dice_problem("_soft_dice_statistics_backward", input_, target_, multiclass,
                                                   from_logits, ignore_index, per_image, /*with_bce=*/false);
  TORCH_CHECK(grad_statistics.dim() == 3 && grad_statistics.size(0) == p.units &&
                  grad_statistics.size(1) == p.classes && grad_statistics.size(2) == kStatistics,
              "_soft_dice_statistics_backward: grad_statistics must be [", p.units, ", ", p.classes, ", 6], got ",
              grad_statistics.sizes());
  const at::Tensor input = input_.contiguous();
  const at::Tensor target = target_.contiguous();
  at::Tensor grad_input = at::empty_like(input, at::MemoryFormat::Contiguous);
  if (input.numel() == 0) {
    return grad_input;
  }
  poison_if_enabled(grad_input);
  const std::vector<Chunk> chunks = make_chunks(p);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "soft_dice_statistics_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const at::Tensor grad = grad_statistics.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
        const acc_t* g = grad.const_data_ptr<acc_t>();
        const scalar_t* x = input.const_data_ptr<scalar_t>();
        scalar_t* out = grad_input.data_ptr<scalar_t>();
        at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            if (p.multiclass) {
              multiclass_chunk_backward(p, g, x, target.const_data_ptr<int64_t>(), chunks[i], out);
            } else {
              multilabel_chunk_backward(p, g, x, target.const_data_ptr<scalar_t>(), chunks[i], out);
            }
          }
        });
      });
  return grad_input;
}

// The loss from the statistics: a few hundred terms, in double, in order.
at::Tensor soft_dice_loss_from_statistics_cpu(const at::Tensor& statistics_,
                                              const std::optional<at::Tensor>& class_coefficients, double scale,
                                              double smooth, double eps, bool log_loss) {
  const at::Tensor coefficients =
      check_dice_loss_arguments("_soft_dice_loss_from_statistics", statistics_, class_coefficients);
  const at::Tensor statistics = statistics_.contiguous();
  at::Tensor loss = at::empty({}, statistics.options());
  AT_DISPATCH_FLOATING_TYPES(statistics.scalar_type(), "soft_dice_loss_from_statistics_cpu", [&] {
    const scalar_t* s = statistics.const_data_ptr<scalar_t>();
    const scalar_t* w = coefficients.defined() ? coefficients.const_data_ptr<scalar_t>() : nullptr;
    const int64_t units = statistics.size(0), classes = statistics.size(1);
    double total = 0;
    for (int64_t u = 0; u < units; ++u) {
      for (int64_t c = 0; c < classes; ++c) {
        const scalar_t term = dice_loss_term<scalar_t>(s + (u * classes + c) * kStatistics, smooth, eps, log_loss);
        total += static_cast<double>(w != nullptr ? term * w[c] : term);
      }
    }
    loss.fill_(static_cast<scalar_t>(total * scale));
  });
  return loss;
}

at::Tensor soft_dice_loss_from_statistics_backward_cpu(const at::Tensor& grad, const at::Tensor& statistics_,
                                                       const std::optional<at::Tensor>& class_coefficients,
                                                       double scale, double smooth, double eps, bool log_loss) {
  const at::Tensor coefficients =
      check_dice_loss_arguments("_soft_dice_loss_from_statistics_backward", statistics_, class_coefficients);
  TORCH_CHECK(grad.numel() == 1, "_soft_dice_loss_from_statistics_backward: grad must be a scalar, got ",
              grad.sizes());
  const at::Tensor statistics = statistics_.contiguous();
  at::Tensor grad_statistics = at::empty_like(statistics);
  AT_DISPATCH_FLOATING_TYPES(statistics.scalar_type(), "soft_dice_loss_from_statistics_backward_cpu", [&] {
    const scalar_t* s = statistics.const_data_ptr<scalar_t>();
    const scalar_t* w = coefficients.defined() ? coefficients.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* g = grad_statistics.data_ptr<scalar_t>();
    const scalar_t grad_scaled = static_cast<scalar_t>(grad.item<double>() * scale);
    const int64_t terms = statistics.size(0) * statistics.size(1), classes = statistics.size(1);
    for (int64_t i = 0; i < terms; ++i) {
      const scalar_t grad_term = w != nullptr ? grad_scaled * w[i % classes] : grad_scaled;
      dice_loss_term_gradient<scalar_t>(s + i * kStatistics, smooth, eps, log_loss, grad_term, g + i * kStatistics);
    }
  });
  return grad_statistics;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("soft_dice_statistics", &soft_dice_statistics_cpu);
  m.impl("_soft_dice_statistics_backward", &soft_dice_statistics_backward_cpu);
  m.impl("_soft_dice_loss_from_statistics", &soft_dice_loss_from_statistics_cpu);
  m.impl("_soft_dice_loss_from_statistics_backward", &soft_dice_loss_from_statistics_backward_cpu);
}

}  // namespace fastops
