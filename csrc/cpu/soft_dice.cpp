// CPU kernels of soft_dice_statistics and its backward, and of the loss
// formed from the statistics.
//
// The logistic terms are formed from e = exp(−|x|) (soft_dice_math.h); exp
// and log1p are inlined into the loops (cpu/vector_math.h exp_inline,
// log1p_unit_inline), which are compiled a second time with FMA and take that
// version where the CPU has it; the sums use selects rather than branches, and
// are kept per tile column (elementwise adds, which vectorise without
// reassociating a float sum) and reduced once per chunk.
//
// Forward: the elements are cut into fixed chunks (an image and a run of
// pixels), independent of the thread count; each chunk sums its statistics
// per class in the accumulation type, and the chunks are added in order, so
// the result is the same on any number of threads. Multiclass chunks work on
// tiles of kTile pixels: the tile's logits are loaded class by class into a
// [C, kTile] buffer, so the softmax over classes runs along the contiguous
// pixel axis; the one-hot target is a compare per element, never a tensor;
// Σt and the valid count come from a per-pixel histogram of the labels.
// Multilabel chunks go class row by class row.
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
    if (count == kTile) {  // a constant trip count: vector moves, not a rep movs of unknown length
      for (int64_t i = 0; i < kTile; ++i) {
        out[i] = static_cast<acc_t>(row[i]);
      }
      continue;
    }
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
// Σ|p − t| need an element loop; Σt is the class's pixel count, the valid
// count is the same for every class, and there is no BCE term.
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

// The chunk kernels for run_fastest (common/cpu_multiversion.h): compiled
// with FMA where the CPU has it (the exp and log1p are mostly multiply-adds).
template <typename scalar_t>
struct MulticlassStatistics {
  template <bool kFused, typename... Args>
  C10_ALWAYS_INLINE static void run(const Args&... args) {
    multiclass_chunk_statistics_body<scalar_t, kFused>(args...);
  }
};

// A multilabel tile: logits (or probabilities) x and targets t of one class
// row in the accumulation type, zeros past `count`, and the valid mask (1 or
// 0 in acc_t, so that selects on it vectorise).
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void load_multilabel_tile(const SoftDiceProblem& p, const scalar_t* input, const scalar_t* target,
                                            int64_t offset, int64_t count, acc_t* __restrict x, acc_t* __restrict t,
                                            acc_t* __restrict valid) {
  if (count == kTile) {  // a constant trip count: vector moves, not a rep movs of unknown length
    for (int64_t i = 0; i < kTile; ++i) {
      x[i] = static_cast<acc_t>(input[offset + i]);
      t[i] = static_cast<acc_t>(target[offset + i]);
    }
  } else {
    for (int64_t i = 0; i < count; ++i) {
      x[i] = static_cast<acc_t>(input[offset + i]);
      t[i] = static_cast<acc_t>(target[offset + i]);
    }
    std::fill(x + count, x + kTile, acc_t(0));
    std::fill(t + count, t + kTile, acc_t(0));
  }
  // target_is_valid, compared in acc_t: a target (exact in acc_t) equals the
  // ignore value only if that value is itself exact in acc_t. Bitwise & and |
  // rather than && and ||, so that the loop has no branches and vectorises.
  const double ignore_value = static_cast<double>(p.ignore_index);
  const acc_t ignore_in_acc = static_cast<acc_t>(ignore_value);
  const bool can_ignore = p.has_ignore && static_cast<double>(ignore_in_acc) == ignore_value;
  for (int64_t i = 0; i < kTile; ++i) {
    const bool ignored = can_ignore & (t[i] == ignore_in_acc);
    valid[i] = (i < count) & !ignored ? acc_t(1) : acc_t(0);
  }
}

// Adds one multilabel chunk's statistics to `sums` [C, 6]: per class, the six
// sums kept per tile column over the chunk's tiles, then reduced in order. The
// sigmoid and the BCE come from e = exp(−|x|) (soft_dice_math.h), with exp and
// log1p inlined (cpu/vector_math.h) so that one loop does all the work.
template <typename scalar_t, bool kFused, bool kFromLogits, bool kWithBce>
C10_ALWAYS_INLINE void multilabel_chunk_statistics_body(const SoftDiceProblem& p, const scalar_t* input,
                                                        const scalar_t* target, const Chunk& chunk,
                                                        at::opmath_type<scalar_t>* sums) {
  using acc_t = at::opmath_type<scalar_t>;
  std::array<acc_t, kTile> x, t, valid;
  std::array<acc_t, kStatistics * kTile> partial;
  for (int64_t c = 0; c < p.classes; ++c) {
    const int64_t row = (chunk.image * p.classes + c) * p.pixels;
    partial.fill(acc_t(0));
    acc_t* __restrict sp = partial.data() + kPredictionSum * kTile;
    acc_t* __restrict st = partial.data() + kTargetSum * kTile;
    acc_t* __restrict spt = partial.data() + kProductSum * kTile;
    acc_t* __restrict sd = partial.data() + kAbsoluteDifferenceSum * kTile;
    acc_t* __restrict sb = partial.data() + kBceSum * kTile;
    acc_t* __restrict sn = partial.data() + kValidCount * kTile;
    for (int64_t s = chunk.begin; s < chunk.end; s += kTile) {
      const int64_t count = std::min(kTile, chunk.end - s);
      load_multilabel_tile(p, input, target, row + s, count, x.data(), t.data(), valid.data());
      for (int64_t i = 0; i < kTile; ++i) {
        acc_t prob = x[i], bce = acc_t(0);
        if constexpr (kFromLogits) {
          const acc_t e = cpu::exp_inline<kFused>(-std::abs(x[i]));
          prob = sigmoid_from_exp(x[i], e);
          if constexpr (kWithBce) {
            bce = bce_from_exp(x[i], t[i], cpu::log1p_unit_inline<kFused>(e));
          }
        }
        // Selects over computed values, not products with the mask: an
        // ignored element's NaN must not enter the sums.
        const bool take = valid[i] != acc_t(0);
        const acc_t q = take ? prob : acc_t(0);
        const acc_t u = take ? t[i] : acc_t(0);
        sp[i] += q;
        st[i] += u;
        spt[i] += q * u;
        sd[i] += std::abs(q - u);
        sb[i] += take ? bce : acc_t(0);
        sn[i] += valid[i];
      }
    }
    for (int64_t k = 0; k < kStatistics; ++k) {
      acc_t total = 0;
      for (int64_t i = 0; i < kTile; ++i) {
        total += partial[k * kTile + i];
      }
      sums[c * kStatistics + k] += total;
    }
  }
}

template <typename scalar_t, bool kFused>
C10_ALWAYS_INLINE void multilabel_chunk_statistics_variant(const SoftDiceProblem& p, const scalar_t* input,
                                                           const scalar_t* target, const Chunk& chunk,
                                                           at::opmath_type<scalar_t>* sums) {
  if (!p.from_logits) {
    multilabel_chunk_statistics_body<scalar_t, kFused, false, false>(p, input, target, chunk, sums);
  } else if (p.with_bce) {
    multilabel_chunk_statistics_body<scalar_t, kFused, true, true>(p, input, target, chunk, sums);
  } else {
    multilabel_chunk_statistics_body<scalar_t, kFused, true, false>(p, input, target, chunk, sums);
  }
}

template <typename scalar_t>
struct MultilabelStatistics {
  template <bool kFused, typename... Args>
  C10_ALWAYS_INLINE static void run(const Args&... args) {
    multilabel_chunk_statistics_variant<scalar_t, kFused>(args...);
  }
};

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
          run_fastest<MulticlassStatistics<scalar_t>>(p, x, target.const_data_ptr<int64_t>(), chunks[i], sums);
        } else {
          run_fastest<MultilabelStatistics<scalar_t>>(p, x, target.const_data_ptr<scalar_t>(), chunks[i], sums);
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
struct MulticlassBackward {
  template <bool kFused, typename... Args>
  C10_ALWAYS_INLINE static void run(const Args&... args) {
    multiclass_chunk_backward_body<scalar_t, kFused>(args...);
  }
};

template <typename scalar_t, bool kFused, bool kFromLogits>
C10_ALWAYS_INLINE void multilabel_chunk_backward_body(const SoftDiceProblem& p,
                                                      const at::opmath_type<scalar_t>* grad, const scalar_t* input,
                                                      const scalar_t* target, const Chunk& chunk,
                                                      scalar_t* grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  std::array<acc_t, kTile> x, t, valid, result;
  for (int64_t c = 0; c < p.classes; ++c) {
    // Local copies: the output may alias nothing, but the compiler cannot know.
    std::array<acc_t, kStatistics> weights;
    std::copy_n(grad + ((p.units > 1 ? chunk.image : 0) * p.classes + c) * kStatistics, kStatistics,
                weights.begin());
    const acc_t bce_weight = weights[kBceSum];
    const int64_t row = (chunk.image * p.classes + c) * p.pixels;
    for (int64_t s = chunk.begin; s < chunk.end; s += kTile) {
      const int64_t count = std::min(kTile, chunk.end - s);
      load_multilabel_tile(p, input, target, row + s, count, x.data(), t.data(), valid.data());
      // Into a local array first: the compiler cannot rule out that the
      // output aliases the tile, and would not vectorise a loop writing it.
      for (int64_t i = 0; i < kTile; ++i) {
        acc_t value;
        if constexpr (kFromLogits) {
          const acc_t e = cpu::exp_inline<kFused>(-std::abs(x[i]));
          const acc_t prob = sigmoid_from_exp(x[i], e);
          const acc_t dp = prediction_gradient(weights.data(), prob, t[i]);
          value = dp * sigmoid_slope_from_exp(e) + bce_weight * (prob - t[i]);
        } else {
          value = prediction_gradient(weights.data(), x[i], t[i]);
        }
        result[i] = valid[i] != acc_t(0) ? value : acc_t(0);
      }
      std::copy_n(result.begin(), count, grad_input + row + s);
    }
  }
}

template <typename scalar_t, bool kFused>
C10_ALWAYS_INLINE void multilabel_chunk_backward_variant(const SoftDiceProblem& p,
                                                         const at::opmath_type<scalar_t>* grad, const scalar_t* input,
                                                         const scalar_t* target, const Chunk& chunk,
                                                         scalar_t* grad_input) {
  if (p.from_logits) {
    multilabel_chunk_backward_body<scalar_t, kFused, true>(p, grad, input, target, chunk, grad_input);
  } else {
    multilabel_chunk_backward_body<scalar_t, kFused, false>(p, grad, input, target, chunk, grad_input);
  }
}

template <typename scalar_t>
struct MultilabelBackward {
  template <bool kFused, typename... Args>
  C10_ALWAYS_INLINE static void run(const Args&... args) {
    multilabel_chunk_backward_variant<scalar_t, kFused>(args...);
  }
};

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
              run_fastest<MulticlassBackward<scalar_t>>(p, g, x, target.const_data_ptr<int64_t>(), chunks[i], out);
            } else {
              run_fastest<MultilabelBackward<scalar_t>>(p, g, x, target.const_data_ptr<scalar_t>(), chunks[i], out);
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
  const double grad_loss =
      check_dice_loss_gradient("_soft_dice_loss_from_statistics_backward", grad, statistics_).item<double>();
  const at::Tensor statistics = statistics_.contiguous();
  at::Tensor grad_statistics = at::empty_like(statistics);
  AT_DISPATCH_FLOATING_TYPES(statistics.scalar_type(), "soft_dice_loss_from_statistics_backward_cpu", [&] {
    const scalar_t* s = statistics.const_data_ptr<scalar_t>();
    const scalar_t* w = coefficients.defined() ? coefficients.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* g = grad_statistics.data_ptr<scalar_t>();
    const scalar_t grad_scaled = static_cast<scalar_t>(grad_loss * scale);
    const int64_t terms = statistics.size(0) * statistics.size(1), classes = statistics.size(1);
    for (int64_t i = 0; i < terms; ++i) {
      const scalar_t grad_term = w != nullptr ? grad_scaled * w[i % classes] : grad_scaled;
      dice_loss_term_gradient<scalar_t>(s + i * kStatistics, smooth, eps, log_loss, grad_term, g + i * kStatistics);
    }
  });
  return grad_statistics;
}

at::Tensor bce_dice_loss_from_statistics_cpu(const at::Tensor& statistics_, double dice_weight, double smooth) {
  check_dice_loss_arguments("_bce_dice_loss_from_statistics", statistics_, std::nullopt);
  const at::Tensor statistics = statistics_.contiguous();
  at::Tensor loss = at::empty({}, statistics.options());
  AT_DISPATCH_FLOATING_TYPES(statistics.scalar_type(), "bce_dice_loss_from_statistics_cpu", [&] {
    const scalar_t* s = statistics.const_data_ptr<scalar_t>();
    const int64_t terms = statistics.size(0) * statistics.size(1);
    double bce = 0, count = 0, logs = 0;
    for (int64_t i = 0; i < terms; ++i) {
      bce += static_cast<double>(s[i * kStatistics + kBceSum]);
      count += static_cast<double>(s[i * kStatistics + kValidCount]);
      logs += static_cast<double>(bce_dice_log_term<scalar_t>(s + i * kStatistics, smooth));
    }
    const double value = bce / std::max(count, 1.0) - dice_weight * (logs / static_cast<double>(terms));
    loss.fill_(static_cast<scalar_t>(value));
  });
  return loss;
}

at::Tensor bce_dice_loss_from_statistics_backward_cpu(const at::Tensor& grad, const at::Tensor& statistics_,
                                                      double dice_weight, double smooth) {
  check_dice_loss_arguments("_bce_dice_loss_from_statistics_backward", statistics_, std::nullopt);
  const double grad_loss =
      check_dice_loss_gradient("_bce_dice_loss_from_statistics_backward", grad, statistics_).item<double>();
  const at::Tensor statistics = statistics_.contiguous();
  at::Tensor grad_statistics = at::empty_like(statistics);
  AT_DISPATCH_FLOATING_TYPES(statistics.scalar_type(), "bce_dice_loss_from_statistics_backward_cpu", [&] {
    const scalar_t* s = statistics.const_data_ptr<scalar_t>();
    scalar_t* g = grad_statistics.data_ptr<scalar_t>();
    const int64_t terms = statistics.size(0) * statistics.size(1);
    double bce = 0, count = 0;
    for (int64_t i = 0; i < terms; ++i) {
      bce += static_cast<double>(s[i * kStatistics + kBceSum]);
      count += static_cast<double>(s[i * kStatistics + kValidCount]);
    }
    // d(B / max(N, 1)): 1/max(N, 1) for each BCE sum, −B/N² for each count (where N ≥ 1).
    const auto grad_bce = static_cast<scalar_t>(grad_loss / std::max(count, 1.0));
    const auto grad_count = static_cast<scalar_t>(count >= 1.0 ? -grad_loss * bce / (count * count) : 0.0);
    const auto grad_log = static_cast<scalar_t>(-grad_loss * dice_weight / static_cast<double>(terms));
    for (int64_t i = 0; i < terms; ++i) {
      scalar_t* gi = g + i * kStatistics;
      bce_dice_log_term_gradient<scalar_t>(s + i * kStatistics, smooth, grad_log, gi);
      gi[kBceSum] = grad_bce;
      gi[kValidCount] = grad_count;
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
  m.impl("_bce_dice_loss_from_statistics", &bce_dice_loss_from_statistics_cpu);
  m.impl("_bce_dice_loss_from_statistics_backward", &bce_dice_loss_from_statistics_backward_cpu);
}

}  // namespace fastops
