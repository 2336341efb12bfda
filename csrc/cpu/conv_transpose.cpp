// CPU kernels of conv_transpose, forward and backward.
//
// Forward, per group and block of images: one GEMM from ATen computes every
// product a tap makes, cols = x^T w (all useful work: no inserted zeros are
// multiplied), then a gather adds, for each output row, the taps of its phase
// (conv_transpose_math.h) into a row buffer, adds the bias, applies the ReLU
// and stores once. The gather is col2im turned around: every output is
// written by one task in a fixed tap order, so it needs no zero fill, no
// scatter and no atomics, and the bias and ReLU cost no extra pass.
//   NCHW:          cols[b] = w_g^T [C_out/g * kH * kW, C_in/g] x x[b, g] [C_in/g, H * W]
//   channels-last: cols    = x[:, g] [B * H * W, C_in/g] x w_g [C_in/g, kH * kW * C_out/g]
// so in channels-last the gather adds contiguous runs of output channels.
//
// Backward, per group and block of images: im2col of grad_output (the same
// tap geometry read the other way; the ReLU mask is applied first), then
//   grad_input  = w_g cols       (an ordinary strided convolution)
//   grad_weight += x_g cols^T    (accumulated over image blocks in order)
//   grad_bias   = grad_output summed per channel.
// float16 and bfloat16 compute in float32 (the GEMM inputs are converted,
// the sums and the weight gradient stay float32 until the final store);
// float64 in float64. Results do not depend on the number of threads beyond
// what ATen's GEMM does.

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

// Elements of cols per block of images: large enough for efficient GEMMs,
// small enough that the gather reads cols back from the last-level cache.
constexpr int64_t kColsBudget = int64_t{1} << 21;

int64_t images_per_block(const ConvTransposeProblem& p) {
  const int64_t per_image = std::max<int64_t>(1, p.in_h * p.in_w * p.taps() * p.out_per_group());
  return std::clamp<int64_t>(kColsBudget / per_image, 1, std::max<int64_t>(p.batch, 1));
}

// The weight of group g as the GEMM operand: [C_in/g, C_out/g * kH * kW] in
// NCHW (the weight's own order), [C_in/g, kH * kW * C_out/g] in channels-last.
at::Tensor group_weight(const ConvTransposeProblem& p, const at::Tensor& weight_acc, int64_t g) {
  const int64_t cin = p.in_per_group();
  at::Tensor w = weight_acc.narrow(0, g * cin, cin);  // [C_in/g, C_out/g, kH, kW]
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

template <typename scalar_t, typename acc_t>
inline scalar_t finish(acc_t v, bool relu) {
  // max(0, v) that keeps NaN, as torch.relu.
  if (relu && v <= acc_t(0)) {
    v = acc_t(0);
  }
  return static_cast<scalar_t>(v);
}

// out[n0 + b, g's channels] = act(bias + sum over the taps of each output of cols).
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
  // Accumulated over image blocks in float32/float64, in the GEMM's layout.
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
    const at::Tensor input_acc = output_mask[1] ? input.to(acc_type) : at::Tensor();
    const at::Tensor weight_acc = weight.to(acc_type);
    const int64_t block = images_per_block(p);
    const int64_t cin = p.in_per_group(), cout = p.out_per_group();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "conv_transpose_backward_cpu",
                                    [&] {
      using acc_t = at::opmath_type<scalar_t>;
      for (int64_t n0 = 0; n0 < p.batch; n0 += block) {
        const int64_t images = std::min(block, p.batch - n0);
        const int64_t rows = images * p.in_h * p.in_w;
        for (int64_t g = 0; g < p.groups; ++g) {
          at::Tensor cols = p.channels_last ? at::empty({rows, p.taps() * cout}, options.dtype(acc_type))
                                            : at::empty({images, cout * p.taps(), p.in_h * p.in_w},
                                                        options.dtype(acc_type));
          if (p.channels_last) {
            gather_taps<scalar_t, acc_t, true>(p, grad.const_data_ptr<scalar_t>(), g, n0, images,
                                               cols.data_ptr<acc_t>());
          } else {
            gather_taps<scalar_t, acc_t, false>(p, grad.const_data_ptr<scalar_t>(), g, n0, images,
                                                cols.data_ptr<acc_t>());
          }
          const at::Tensor w = group_weight(p, weight_acc, g);  // [C_in/g, taps * C_out/g]
          if (output_mask[0]) {
            // [rows, C_in/g] or [B, C_in/g, H * W]
            const at::Tensor dx = p.channels_last ? at::mm(cols, w.t()) : at::matmul(w, cols);
            group_images(p, grad_input, n0, images, g, cin).copy_(dx);
          }
          if (output_mask[1]) {
            const at::Tensor x = group_images(p, input_acc, n0, images, g, cin);
            at::Tensor dw = grad_weight_acc.narrow(0, g * cin, cin).view({cin, cout * p.taps()});
            if (p.channels_last) {
              dw.addmm_(x.t(), cols);
            } else {
              for (int64_t b = 0; b < images; ++b) {
                dw.addmm_(x[b], cols[b].t());
              }
            }
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
