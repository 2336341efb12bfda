// CPU kernels of conv_transpose, forward and backward.
//
// Forward: phase (sub-pixel) decomposition (conv_transpose_math.h). Per group,
// block of images and output phase (qh, qw), the phase's outputs are a dense
// stride-1 convolution over the input with only the phase's taps; one ATen
// GEMM computes them, in the data's dtype with the bias as the addend
// (oneDNN/BLAS accumulate 16-bit products in float32 and round once):
//   channels-last: [B * pixels, taps * C_in/g] x [taps * C_in/g, C_out/g]
//   NCHW, per image: [C_out/g, taps * C_in/g] x [taps * C_in/g, pixels]
// The input operand is gathered from the rows the taps read (zeros only
// where a tap falls off the input border; no inserted zero is multiplied);
// with kernel == stride in channels-last the input itself is the operand.
// A store pass writes each row at its interleaved output position with the
// ReLU. float32/float64 convolutions with several taps per phase and more
// input than output channels (TernausNet's 3x3 s2) go by columns instead:
// one GEMM cols = x^T w computes every (input, tap) product once (smaller
// than the gathered phase inputs there) and a gather sums each output's taps
// in a row buffer with the bias and ReLU.
//
// Backward, per group and block of images: im2col of grad_output (the tap
// geometry read the other way; the ReLU mask is applied first), then
//   grad_input  = w_g cols       (an ordinary strided convolution)
//   grad_weight += x_g cols^T    (one GEMM per block, summed over blocks in float32)
//   grad_bias   = grad_output summed per channel in float32.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/cpu_multiversion.h"
#include "ops/conv_transpose.h"
#include "ops/conv_transpose_math.h"

namespace fastops {
namespace {

// Elements of a GEMM operand or result per block of images: large enough for
// efficient GEMMs, small enough that the pass that follows reads it back from
// the last-level cache.
constexpr int64_t kColsBudget = int64_t{1} << 21;

int64_t images_per_block(const ConvTransposeProblem& p) {
  const int64_t per_image = std::max<int64_t>(1, p.in_h * p.in_w * p.taps() * p.out_per_group());
  return std::clamp<int64_t>(kColsBudget / per_image, 1, std::max<int64_t>(p.batch, 1));
}

// The weight of group g as the GEMM operand: [C_in/g, C_out/g * kH * kW] in
// NCHW (the weight's own order), [C_in/g, kH * kW * C_out/g] in channels-last.
at::Tensor group_weight(const ConvTransposeProblem& p, const at::Tensor& weight, int64_t g) {
  const int64_t cin = p.in_per_group();
  at::Tensor w = weight.narrow(0, g * cin, cin);  // [C_in/g, C_out/g, kH, kW]
  if (p.channels_last) {
    return w.permute({0, 2, 3, 1}).reshape({cin, p.taps() * p.out_per_group()});
  }
  return w.reshape({cin, p.out_per_group() * p.taps()});
}

// x (or grad) of images [n0, n0 + count) and group g's channels as the GEMM
// operand: [count, C/g, H * W] in NCHW, [count * H * W, C/g] in channels-last
// (a strided view: the rows skip the other groups' channels).
at::Tensor group_images(const ConvTransposeProblem& p, const at::Tensor& t, int64_t n0, int64_t count,
                        int64_t g, int64_t channels_per_group) {
  at::Tensor block = t.narrow(0, n0, count).narrow(1, g * channels_per_group, channels_per_group);
  if (p.channels_last) {
    return block.permute({0, 2, 3, 1}).view({count * t.size(2) * t.size(3), channels_per_group});
  }
  return block.view({count, channels_per_group, t.size(2) * t.size(3)});
}

// One output phase (qh, qw) of the forward: outputs (qh + sh * jh, qw + sw * jw)
// for jh < len_h, jw < len_w; tap taps_h[i] reads input row jh + shift_h[i]
// (conv_transpose_math.h), likewise along w.
struct PhasePlan {
  int64_t qh = 0, qw = 0, len_h = 0, len_w = 0;
  std::vector<int64_t> taps_h, taps_w, shift_h, shift_w;

  int64_t taps() const { return static_cast<int64_t>(taps_h.size() * taps_w.size()); }
  int64_t pixels() const { return len_h * len_w; }
};

PhasePlan plan_phase(const ConvTransposeProblem& p, int64_t qh, int64_t qw) {
  PhasePlan ph;
  ph.qh = qh;
  ph.qw = qw;
  ph.len_h = phase_length(p.out_h, qh, p.stride_h);
  ph.len_w = phase_length(p.out_w, qw, p.stride_w);
  const int64_t step_h = tap_step(p.stride_h, p.dilation_h), step_w = tap_step(p.stride_w, p.dilation_w);
  for (int64_t t = first_tap(output_residue(qh, p.stride_h, p.pad_h), p.kernel_h, p.stride_h, p.dilation_h);
       t < p.kernel_h; t += step_h) {
    ph.taps_h.push_back(t);
    ph.shift_h.push_back(phase_input_offset(qh, t, p.stride_h, p.pad_h, p.dilation_h));
  }
  for (int64_t t = first_tap(output_residue(qw, p.stride_w, p.pad_w), p.kernel_w, p.stride_w, p.dilation_w);
       t < p.kernel_w; t += step_w) {
    ph.taps_w.push_back(t);
    ph.shift_w.push_back(phase_input_offset(qw, t, p.stride_w, p.pad_w, p.dilation_w));
  }
  return ph;
}

// The phase's weight as the GEMM operand [taps * C_in/g, C_out/g], rows
// ordered (tap_h, tap_w, input channel) as the gathered input's columns.
at::Tensor phase_weight(const at::Tensor& weight_taps_first, const PhasePlan& ph) {
  std::vector<at::Tensor> rows;
  for (const int64_t th : ph.taps_h) {
    for (const int64_t tw : ph.taps_w) {
      rows.push_back(weight_taps_first[th][tw]);  // [C_in/g, C_out/g]
    }
  }
  return at::cat(rows, 0);
}

// The phase's input operand: channels-last A[(b, jh, jw), (tap, ci)] (rows of
// the GEMM), NCHW A[b, (tap, ci), (jh, jw)] (its transpose per image, read along
// input rows); 0 where a tap falls off the input. The only zeros multiplied are
// those border taps: no inserted zero is.
template <typename scalar_t, bool kChannelsLast>
FASTOPS_CPU_MULTIVERSION void gather_phase_input(const ConvTransposeProblem& p, const PhasePlan& ph,
                                                 const scalar_t* x, int64_t g, int64_t n0, int64_t images,
                                                 scalar_t* a) {
  const int64_t cin = p.in_per_group(), H = p.in_h, W = p.in_w;
  const int64_t taps_w = static_cast<int64_t>(ph.taps_w.size()), k = ph.taps() * cin;
  if constexpr (kChannelsLast) {
    // Rows (image, jh); per (jw, tap) a contiguous run of the group's channels.
    at::parallel_for(0, images * ph.len_h, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / ph.len_h, jh = row % ph.len_h, n = n0 + b;
        for (int64_t jw = 0; jw < ph.len_w; ++jw) {
          scalar_t* dst = a + ((b * ph.len_h + jh) * ph.len_w + jw) * k;
          for (int64_t tap = 0; tap < ph.taps(); ++tap) {
            const int64_t ih = jh + ph.shift_h[tap / taps_w], iw = jw + ph.shift_w[tap % taps_w];
            scalar_t* d = dst + tap * cin;
            if (ih < 0 || ih >= H || iw < 0 || iw >= W) {
              std::fill(d, d + cin, scalar_t(0));
            } else {
              const scalar_t* src = x + ((n * H + ih) * W + iw) * p.in_channels + g * cin;
              std::copy(src, src + cin, d);
            }
          }
        }
      }
    });
  } else {
    // Rows (image, tap, channel, jh); each a shifted run of one input row.
    at::parallel_for(0, images * k * ph.len_h, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t jh = row % ph.len_h, column = (row / ph.len_h) % k, b = row / (ph.len_h * k);
        const int64_t tap = column / cin, c = column % cin, n = n0 + b;
        const int64_t ih = jh + ph.shift_h[tap / taps_w], shift = ph.shift_w[tap % taps_w];
        scalar_t* dst = a + row * ph.len_w;
        const int64_t jw_begin = std::clamp<int64_t>(-shift, 0, ph.len_w);
        const int64_t jw_end = std::clamp<int64_t>(W - shift, jw_begin, ph.len_w);
        if (ih < 0 || ih >= H) {
          std::fill(dst, dst + ph.len_w, scalar_t(0));
          continue;
        }
        const scalar_t* src = x + ((n * p.in_channels + g * cin + c) * H + ih) * W + shift;
        std::fill(dst, dst + jw_begin, scalar_t(0));
        std::copy(src + jw_begin, src + jw_end, dst + jw_begin);
        std::fill(dst + jw_end, dst + ph.len_w, scalar_t(0));
      }
    });
  }
}

template <typename scalar_t>
inline scalar_t activate(scalar_t v, bool relu) {
  // max(0, v) that keeps NaN, as torch.relu.
  return relu && static_cast<float>(v) <= 0.0f ? scalar_t(0) : v;
}

// Writes the phase's GEMM result into its interleaved output positions, with
// the ReLU: channels-last c[(b, jh, jw), co] with rows c_stride apart, NCHW
// c[b, co, (jh, jw)] with images c_stride apart.
template <typename scalar_t, bool kChannelsLast>
FASTOPS_CPU_MULTIVERSION void store_phase_output(const ConvTransposeProblem& p, const PhasePlan& ph,
                                                 const scalar_t* c, int64_t c_stride, bool relu, int64_t g,
                                                 int64_t n0, int64_t images, scalar_t* out) {
  const int64_t cout = p.out_per_group(), Ho = p.out_h, Wo = p.out_w;
  // Rows (image, jh) in channels-last, (image, channel, jh) in NCHW.
  const int64_t rows = kChannelsLast ? images * ph.len_h : images * cout * ph.len_h;
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t jh = row % ph.len_h, oh = ph.qh + p.stride_h * jh;
      if constexpr (kChannelsLast) {
        const int64_t n = n0 + row / ph.len_h;
        for (int64_t jw = 0; jw < ph.len_w; ++jw) {
          const scalar_t* src = c + (row * ph.len_w + jw) * c_stride;
          scalar_t* dst = out + ((n * Ho + oh) * Wo + ph.qw + p.stride_w * jw) * p.out_channels + g * cout;
          for (int64_t co = 0; co < cout; ++co) {
            dst[co] = activate(src[co], relu);
          }
        }
      } else {
        const int64_t co = (row / ph.len_h) % cout, b = row / (ph.len_h * cout);
        const int64_t n = n0 + b;
        const scalar_t* src = c + b * c_stride + (co * ph.len_h + jh) * ph.len_w;  // c[b, co, jh, :]
        scalar_t* dst = out + ((n * p.out_channels + g * cout + co) * Ho + oh) * Wo + ph.qw;
        for (int64_t jw = 0; jw < ph.len_w; ++jw) {
          dst[jw * p.stride_w] = activate(src[jw], relu);
        }
      }
    }
  });
}

template <typename scalar_t, typename acc_t>
inline scalar_t finish(acc_t v, bool relu) {
  // max(0, v) that keeps NaN, as torch.relu.
  if (relu && v <= acc_t(0)) {
    v = acc_t(0);
  }
  return static_cast<scalar_t>(v);
}

// The forward by columns (float32/float64 with several taps per phase and more
// input than output channels, where a phase's gathered input would be larger
// than the columns): cols = x^T w holds every (input, tap) product once, and
// out[n0 + b, g's channels] = act(bias + sum over the taps of each output of cols),
// each output row summed in a row buffer by one task.
template <typename scalar_t, typename acc_t, bool kChannelsLast>
FASTOPS_CPU_MULTIVERSION void gather_outputs(const ConvTransposeProblem& p, const acc_t* cols, const scalar_t* bias,
                                             bool relu, int64_t g, int64_t n0, int64_t images, scalar_t* out) {
  const int64_t cout = p.out_per_group(), H = p.in_h, W = p.in_w, Ho = p.out_h, Wo = p.out_w;
  const int64_t kH = p.kernel_h, kW = p.kernel_w, step_h = tap_step(p.stride_h, p.dilation_h);
  // Rows: (image, channel, output row) in NCHW, (image, output row) in channels-last.
  const int64_t rows = kChannelsLast ? images * Ho : images * cout * Ho;
  const int64_t row_width = kChannelsLast ? Wo * cout : Wo;
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(row_width);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t oh = row % Ho;
      const int64_t b = kChannelsLast ? row / Ho : row / (cout * Ho);
      const int64_t co = kChannelsLast ? 0 : (row / Ho) % cout;
      if constexpr (kChannelsLast) {
        for (int64_t ow = 0; ow < Wo; ++ow) {
          for (int64_t c = 0; c < cout; ++c) {
            acc[ow * cout + c] = bias ? static_cast<acc_t>(bias[g * cout + c]) : acc_t(0);
          }
        }
      } else {
        std::fill(acc.begin(), acc.end(), bias ? static_cast<acc_t>(bias[g * cout + co]) : acc_t(0));
      }
      const int64_t first = first_tap(output_residue(oh, p.stride_h, p.pad_h), kH, p.stride_h, p.dilation_h);
      for (int64_t th = first; th < kH; th += step_h) {
        const int64_t ih = tap_input_index(oh, th, p.stride_h, p.pad_h, p.dilation_h);
        if (ih < 0 || ih >= H) {
          continue;
        }
        for (int64_t tw = 0; tw < kW; ++tw) {
          const int64_t iw_begin = tap_input_begin(tw, p.stride_w, p.pad_w, p.dilation_w);
          const int64_t iw_end = tap_input_end(W, Wo, tw, p.stride_w, p.pad_w, p.dilation_w);
          const int64_t ow0 = tap_output_index(0, tw, p.stride_w, p.pad_w, p.dilation_w);
          if constexpr (kChannelsLast) {
            // cols[b, ih, iw, th, tw, :] runs over the group's output channels.
            const acc_t* src = cols + ((b * H + ih) * W) * p.taps() * cout + (th * kW + tw) * cout;
            for (int64_t iw = iw_begin; iw < iw_end; ++iw) {
              const acc_t* taps = src + iw * p.taps() * cout;
              acc_t* dst = acc.data() + (ow0 + iw * p.stride_w) * cout;
              for (int64_t c = 0; c < cout; ++c) {
                dst[c] += taps[c];
              }
            }
          } else {
            // cols[b, co, th, tw, ih, :] runs over the input row.
            const acc_t* src = cols + (((b * cout + co) * kH + th) * kW + tw) * H * W + ih * W;
            for (int64_t iw = iw_begin; iw < iw_end; ++iw) {
              acc[ow0 + iw * p.stride_w] += src[iw];
            }
          }
        }
      }
      if constexpr (kChannelsLast) {
        scalar_t* dst = out + ((n0 + b) * Ho + oh) * Wo * p.out_channels + g * cout;
        for (int64_t ow = 0; ow < Wo; ++ow) {
          for (int64_t c = 0; c < cout; ++c) {
            dst[ow * p.out_channels + c] = finish<scalar_t>(acc[ow * cout + c], relu);
          }
        }
      } else {
        scalar_t* dst = out + (((n0 + b) * p.out_channels + g * cout + co) * Ho + oh) * Wo;
        for (int64_t ow = 0; ow < Wo; ++ow) {
          dst[ow] = finish<scalar_t>(acc[ow], relu);
        }
      }
    }
  });
}

// cols[b, ...] = grad[n0 + b, g's channels] at the output each (input, tap)
// feeds, 0 where it falls off the output: the layout gather_outputs reads.
template <typename scalar_t, typename acc_t, bool kChannelsLast>
FASTOPS_CPU_MULTIVERSION void gather_taps(const ConvTransposeProblem& p, const scalar_t* grad, int64_t g,
                                          int64_t n0, int64_t images, acc_t* cols) {
  const int64_t cout = p.out_per_group(), H = p.in_h, W = p.in_w, Ho = p.out_h, Wo = p.out_w;
  const int64_t kH = p.kernel_h, kW = p.kernel_w;
  // Rows: (image, input row) in channels-last; (image, channel, th, tw, input row) in NCHW.
  const int64_t rows = kChannelsLast ? images * H : images * cout * kH * kW * H;
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t ih = row % H;
      if constexpr (kChannelsLast) {
        const int64_t b = row / H;
        acc_t* dst = cols + (b * H + ih) * W * p.taps() * cout;
        for (int64_t th = 0; th < kH; ++th) {
          const int64_t oh = tap_output_index(ih, th, p.stride_h, p.pad_h, p.dilation_h);
          for (int64_t tw = 0; tw < kW; ++tw) {
            for (int64_t iw = 0; iw < W; ++iw) {
              acc_t* d = dst + iw * p.taps() * cout + (th * kW + tw) * cout;
              const int64_t ow = tap_output_index(iw, tw, p.stride_w, p.pad_w, p.dilation_w);
              if (oh < 0 || oh >= Ho || ow < 0 || ow >= Wo) {
                std::fill(d, d + cout, acc_t(0));
                continue;
              }
              const scalar_t* s = grad + (((n0 + b) * Ho + oh) * Wo + ow) * p.out_channels + g * cout;
              for (int64_t c = 0; c < cout; ++c) {
                d[c] = static_cast<acc_t>(s[c]);
              }
            }
          }
        }
      } else {
        const int64_t tw = (row / H) % kW, th = (row / (H * kW)) % kH;
        const int64_t co = (row / (H * kW * kH)) % cout, b = row / (H * kW * kH * cout);
        acc_t* dst = cols + row * W;
        const int64_t oh = tap_output_index(ih, th, p.stride_h, p.pad_h, p.dilation_h);
        if (oh < 0 || oh >= Ho) {
          std::fill(dst, dst + W, acc_t(0));
          continue;
        }
        const scalar_t* s = grad + (((n0 + b) * p.out_channels + g * cout + co) * Ho + oh) * Wo;
        const int64_t iw_begin = tap_input_begin(tw, p.stride_w, p.pad_w, p.dilation_w);
        const int64_t iw_end = std::max(iw_begin, tap_input_end(W, Wo, tw, p.stride_w, p.pad_w, p.dilation_w));
        const int64_t ow0 = tap_output_index(0, tw, p.stride_w, p.pad_w, p.dilation_w);
        std::fill(dst, dst + std::min(iw_begin, W), acc_t(0));
        for (int64_t iw = iw_begin; iw < iw_end; ++iw) {
          dst[iw] = static_cast<acc_t>(s[ow0 + iw * p.stride_w]);
        }
        std::fill(dst + std::min(iw_end, W), dst + W, acc_t(0));
      }
    }
  });
}

at::MemoryFormat layout(const ConvTransposeProblem& p) {
  return p.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

at::ScalarType accumulate_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// The forward by columns (see gather_outputs).
void forward_by_columns(const ConvTransposeProblem& p, const at::Tensor& input, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias_arg, bool relu, at::Tensor& output) {
  const at::ScalarType acc_type = accumulate_type(input.scalar_type());
  const at::Tensor input_acc = input.to(acc_type);  // no copy for float32/float64
  const at::Tensor weight_acc = weight.to(acc_type);
  const at::Tensor bias = bias_arg ? bias_arg->contiguous() : at::Tensor();
  const int64_t block = images_per_block(p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "conv_transpose_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* bias_data = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
    for (int64_t n0 = 0; n0 < p.batch; n0 += block) {
      const int64_t images = std::min(block, p.batch - n0);
      for (int64_t g = 0; g < p.groups; ++g) {
        const at::Tensor w = group_weight(p, weight_acc, g);
        const at::Tensor x = group_images(p, input_acc, n0, images, g, p.in_per_group());
        // [B * H * W, kH * kW * C_out/g] or [B, C_out/g * kH * kW, H * W]
        const at::Tensor cols = (p.channels_last ? at::mm(x, w) : at::matmul(w.t(), x)).contiguous();
        if (p.channels_last) {
          gather_outputs<scalar_t, acc_t, true>(p, cols.const_data_ptr<acc_t>(), bias_data, relu, g, n0, images,
                                                output.data_ptr<scalar_t>());
        } else {
          gather_outputs<scalar_t, acc_t, false>(p, cols.const_data_ptr<acc_t>(), bias_data, relu, g, n0, images,
                                                 output.data_ptr<scalar_t>());
        }
      }
    }
  });
}

at::Tensor conv_transpose_cpu(const at::Tensor& input_arg, const at::Tensor& weight_arg,
                              const std::optional<at::Tensor>& bias_arg, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups,
                              at::IntArrayRef dilation, bool relu) {
  at::Tensor input = input_arg, weight = weight_arg;
  const ConvTransposeProblem p = make_conv_transpose_problem("conv_transpose", input, weight, bias_arg, stride,
                                                             padding, output_padding, groups, dilation);
  at::Tensor output = empty_conv_transpose_output(p, input.options());
  if (output.numel() == 0) {
    return output;
  }
  const int64_t cin = p.in_per_group(), cout = p.out_per_group();
  const bool several_taps =
      p.kernel_h > tap_step(p.stride_h, p.dilation_h) || p.kernel_w > tap_step(p.stride_w, p.dilation_w);
  if (several_taps && cin > cout && !at::isReducedFloatingType(input.scalar_type())) {
    // Measured faster there (bench/NOTES.md); 16-bit types keep the phase
    // path, whose GEMM runs in their own dtype.
    forward_by_columns(p, input, weight, bias_arg, relu, output);
    return output;
  }
  // [C_in, kH, kW, C_out/g]: per tap a [C_in, C_out/g] block (the weight is small).
  const at::Tensor weight_taps = weight.permute({2, 3, 0, 1}).contiguous();
  const at::Tensor bias = bias_arg ? bias_arg->contiguous() : at::zeros({p.out_channels}, input.options());
  std::vector<PhasePlan> phases;
  int64_t largest = 1;  // input-operand elements per image, largest phase
  for (int64_t qh = 0; qh < p.stride_h; ++qh) {
    for (int64_t qw = 0; qw < p.stride_w; ++qw) {
      phases.push_back(plan_phase(p, qh, qw));
      largest = std::max(largest, phases.back().pixels() * std::max<int64_t>(1, phases.back().taps()) *
                                      std::max(cin, cout));
    }
  }
  const int64_t block = std::clamp<int64_t>(kColsBudget / largest, 1, p.batch);
  const bool one_tap_each = cin > 0 && std::all_of(phases.begin(), phases.end(), [&](const PhasePlan& ph) {
    return ph.taps() == 1 && ph.shift_h[0] == 0 && ph.shift_w[0] == 0 && ph.len_h == p.in_h && ph.len_w == p.in_w;
  });
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "conv_transpose_cpu", [&] {
    for (int64_t n0 = 0; n0 < p.batch; n0 += block) {
      const int64_t images = std::min(block, p.batch - n0);
      for (int64_t g = 0; g < p.groups; ++g) {
        const at::Tensor bias_g = bias.narrow(0, g * cout, cout);
        const at::Tensor w_g = weight_taps.narrow(2, g * cin, cin);
        if (one_tap_each) {
          // kernel == stride: every phase reads the input itself through one
          // tap, so one GEMM over all phases' weights computes the whole
          // output, [B * H * W, C_in/g] x [C_in/g, phases * C_out/g] (NCHW: its
          // transpose per image), and the stores interleave it.
          std::vector<at::Tensor> weights;
          for (const PhasePlan& ph : phases) {
            weights.push_back(phase_weight(w_g, ph));
          }
          const at::Tensor w_all = at::cat(weights, 1);  // [C_in/g, phases * C_out/g]
          const int64_t columns = w_all.size(1), phase_count = static_cast<int64_t>(phases.size());
          const at::Tensor bias_all = bias_g.repeat({phase_count});
          const at::Tensor x = group_images(p, input, n0, images, g, cin);
          at::Tensor result;
          if (p.channels_last) {
            result = at::addmm(bias_all, x, w_all);  // [B * H * W, phases * C_out/g]
          } else {
            const int64_t pixels = p.in_h * p.in_w;
            result = at::empty({images, columns, pixels}, input.options());
            const at::Tensor w_t = w_all.t();
            const at::Tensor bias_column = bias_all.view({columns, 1}).expand({columns, pixels});
            for (int64_t b = 0; b < images; ++b) {
              at::Tensor r = result[b];
              at::addmm_out(r, bias_column, w_t, x[b]);
            }
          }
          for (int64_t i = 0; i < phase_count; ++i) {
            const scalar_t* c = result.const_data_ptr<scalar_t>() + i * cout * (p.channels_last ? 1 : p.in_h * p.in_w);
            if (p.channels_last) {
              store_phase_output<scalar_t, true>(p, phases[i], c, columns, relu, g, n0, images,
                                                 output.data_ptr<scalar_t>());
            } else {
              store_phase_output<scalar_t, false>(p, phases[i], c, columns * p.in_h * p.in_w, relu, g, n0,
                                                  images, output.data_ptr<scalar_t>());
            }
          }
          continue;
        }
        for (const PhasePlan& ph : phases) {
          if (ph.pixels() == 0) {
            continue;
          }
          const int64_t rows = images * ph.pixels();
          // The GEMM in the data's own dtype (oneDNN/BLAS accumulate 16-bit
          // types in float32), the bias added in it: one rounding per output.
          at::Tensor result;
          if (ph.taps() == 0 || cin == 0) {
            result = p.channels_last ? bias_g.expand({rows, cout}).contiguous()
                                     : bias_g.view({1, cout, 1}).expand({images, cout, ph.pixels()}).contiguous();
          } else {
            const at::Tensor w_phase = phase_weight(w_g, ph);  // [taps * C_in/g, C_out/g]
            if (p.channels_last) {
              at::Tensor a = at::empty({rows, ph.taps() * cin}, input.options());
              gather_phase_input<scalar_t, true>(p, ph, input.const_data_ptr<scalar_t>(), g, n0, images,
                                                 a.data_ptr<scalar_t>());
              result = at::addmm(bias_g, a, w_phase);
            } else {
              at::Tensor a = at::empty({images, ph.taps() * cin, ph.pixels()}, input.options());
              gather_phase_input<scalar_t, false>(p, ph, input.const_data_ptr<scalar_t>(), g, n0, images,
                                                  a.data_ptr<scalar_t>());
              result = at::empty({images, cout, ph.pixels()}, input.options());
              const at::Tensor w_t = w_phase.t();
              const at::Tensor bias_column = bias_g.view({cout, 1}).expand({cout, ph.pixels()});
              for (int64_t b = 0; b < images; ++b) {
                at::Tensor r = result[b];
                at::addmm_out(r, bias_column, w_t, a[b]);
              }
            }
          }
          result = result.contiguous();
          if (p.channels_last) {
            store_phase_output<scalar_t, true>(p, ph, result.const_data_ptr<scalar_t>(), cout, relu, g, n0, images,
                                               output.data_ptr<scalar_t>());
          } else {
            store_phase_output<scalar_t, false>(p, ph, result.const_data_ptr<scalar_t>(), cout * ph.pixels(), relu,
                                                g, n0, images, output.data_ptr<scalar_t>());
          }
        }
      }
    }
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_transpose_backward_cpu(
    const at::Tensor& grad_output_arg, const at::Tensor& input_arg, const at::Tensor& weight_arg,
    const std::optional<at::Tensor>& output_arg, at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups,
    at::IntArrayRef dilation, std::array<bool, 3> output_mask) {
  at::Tensor grad = grad_output_arg, input = input_arg, weight = weight_arg;
  std::optional<at::Tensor> output = output_arg;
  const ConvTransposeProblem p = make_conv_transpose_backward_problem("_conv_transpose_backward", grad, input,
                                                                      weight, output, stride, padding, groups,
                                                                      dilation);
  const at::ScalarType acc_type = accumulate_type(input.scalar_type());
  if (output) {
    grad = at::where(*output > 0, grad, at::zeros({}, grad.options())).contiguous(layout(p));
  }
  const at::TensorOptions options = input.options();
  at::Tensor grad_input = output_mask[0] ? empty_conv_transpose_input_grad(p, options) : at::empty({0}, options);
  // Blocks of images add their GEMM results in float32/float64, in the GEMM's layout.
  at::Tensor grad_weight_acc;
  if (output_mask[1]) {
    grad_weight_acc = p.channels_last
                          ? at::zeros({p.in_channels, p.kernel_h, p.kernel_w, p.out_per_group()}, options.dtype(acc_type))
                          : at::zeros({p.in_channels, p.out_per_group(), p.kernel_h, p.kernel_w}, options.dtype(acc_type));
  }
  at::Tensor grad_bias = output_mask[2] ? at::sum(grad, {0, 2, 3}, false, acc_type).to(input.scalar_type())
                                        : at::empty({0}, options);
  const bool any_gemm = (output_mask[0] && grad_input.numel() > 0) || (output_mask[1] && weight.numel() > 0);
  if (any_gemm && grad.numel() > 0) {
    const int64_t block = images_per_block(p);
    const int64_t cin = p.in_per_group(), cout = p.out_per_group();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "conv_transpose_backward_cpu",
                                    [&] {
      for (int64_t n0 = 0; n0 < p.batch; n0 += block) {
        const int64_t images = std::min(block, p.batch - n0);
        const int64_t rows = images * p.in_h * p.in_w;
        for (int64_t g = 0; g < p.groups; ++g) {
          // The GEMMs run in the data's dtype (16-bit types accumulate in
          // float32 inside oneDNN/BLAS); cols holds copies of grad_output.
          at::Tensor cols = p.channels_last ? at::empty({rows, p.taps() * cout}, options)
                                            : at::empty({images, cout * p.taps(), p.in_h * p.in_w}, options);
          if (p.channels_last) {
            gather_taps<scalar_t, scalar_t, true>(p, grad.const_data_ptr<scalar_t>(), g, n0, images,
                                                  cols.data_ptr<scalar_t>());
          } else {
            gather_taps<scalar_t, scalar_t, false>(p, grad.const_data_ptr<scalar_t>(), g, n0, images,
                                                   cols.data_ptr<scalar_t>());
          }
          const at::Tensor w = group_weight(p, weight, g);  // [C_in/g, taps * C_out/g]
          if (output_mask[0]) {
            // [rows, C_in/g] or [B, C_in/g, H * W]
            const at::Tensor dx = p.channels_last ? at::mm(cols, w.t()) : at::matmul(w, cols);
            group_images(p, grad_input, n0, images, g, cin).copy_(dx);
          }
          if (output_mask[1]) {
            const at::Tensor x = group_images(p, input, n0, images, g, cin);
            // One GEMM per block of images: [C_in/g, pixels] x [pixels, taps * C_out/g].
            const at::Tensor dw_block =
                p.channels_last
                    ? at::mm(x.t(), cols)
                    : at::mm(x.transpose(0, 1).reshape({cin, rows}),
                             cols.transpose(0, 1).reshape({cout * p.taps(), rows}).t());
            grad_weight_acc.narrow(0, g * cin, cin).view({cin, cout * p.taps()}).add_(dw_block);
          }
        }
      }
    });
  } else if (output_mask[0]) {
    grad_input.zero_();
  }
  at::Tensor grad_weight = at::empty({0}, options);
  if (output_mask[1]) {
    grad_weight = (p.channels_last ? grad_weight_acc.permute({0, 3, 1, 2}) : grad_weight_acc)
                      .to(input.scalar_type())
                      .contiguous();
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("conv_transpose", &conv_transpose_cpu);
  m.impl("_conv_transpose_backward", &conv_transpose_backward_cpu);
}

}  // namespace fastops
