#pragma once
// Geometry of a transposed convolution along one spatial axis, shared by the
// CPU, CUDA and Triton kernels (triton_kernels/conv_transpose.py mirrors it).
//
// Along an axis with input length `in`, kernel `k`, stride `s`, padding `p`,
// dilation `d` and output padding `op`:
//   out = (in - 1) * s - 2 * p + d * (k - 1) + op + 1
//   y[o] = sum over taps t in [0, k) and inputs i in [0, in) with
//          o = i * s - p + t * d   of   x[i] * w[t]
// Output o therefore sees only the taps with t * d == (o + p) (mod s): the
// "phase" of o. Those taps are first_tap(r), first_tap(r) + tap_step, ... for
// r = (o + p) mod s, and tap t reads input i = (o + p - t * d) / s, an exact
// division. No tap of a phase multiplies an inserted zero.
//
// Phase decomposition (the GPU kernels): the outputs o = q + s * j of output
// phase q in [0, s) form a stride-1 convolution over the input: tap t of the
// phase reads input j + phase_input_offset(q, t), the same shift for every j.

#include <c10/macros/Macros.h>

#include <cstdint>

namespace fastops {

C10_HOST_DEVICE inline int64_t conv_transpose_output_length(int64_t in, int64_t kernel, int64_t stride,
                                                            int64_t padding, int64_t dilation,
                                                            int64_t output_padding) {
  return (in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1;
}

C10_HOST_DEVICE inline int64_t greatest_common_divisor(int64_t a, int64_t b) {
  while (b != 0) {
    const int64_t r = a % b;
    a = b;
    b = r;
  }
  return a;
}

// Distance between consecutive taps of one phase: s / gcd(s, d).
C10_HOST_DEVICE inline int64_t tap_step(int64_t stride, int64_t dilation) {
  return stride / greatest_common_divisor(stride, dilation);
}

// The smallest tap t in [0, kernel) with t * dilation == residue (mod stride),
// or `kernel` when the phase has no tap (its outputs are bias only).
C10_HOST_DEVICE inline int64_t first_tap(int64_t residue, int64_t kernel, int64_t stride, int64_t dilation) {
  const int64_t step = tap_step(stride, dilation);
  for (int64_t t = 0; t < step && t < kernel; ++t) {
    if ((t * dilation) % stride == residue) {
      return t;
    }
  }
  return kernel;
}

// Number of taps of the phase that starts at `first` (0 when first >= kernel).
C10_HOST_DEVICE inline int64_t phase_tap_count(int64_t first, int64_t kernel, int64_t step) {
  return first >= kernel ? 0 : (kernel - 1 - first) / step + 1;
}

// Residue of output o: (o + p) mod s, for o >= 0.
C10_HOST_DEVICE inline int64_t output_residue(int64_t o, int64_t stride, int64_t padding) {
  return (o + padding) % stride;
}

// The input that tap t feeds into output o (exact when t is a tap of o's phase);
// it lies outside [0, in) when the tap falls off the input.
C10_HOST_DEVICE inline int64_t tap_input_index(int64_t o, int64_t tap, int64_t stride, int64_t padding,
                                               int64_t dilation) {
  return (o + padding - tap * dilation) / stride;
}

// The output that input i feeds through tap t (the input-gradient direction);
// it lies outside [0, out) when the tap falls off the output.
C10_HOST_DEVICE inline int64_t tap_output_index(int64_t i, int64_t tap, int64_t stride, int64_t padding,
                                                int64_t dilation) {
  return i * stride - padding + tap * dilation;
}

// The inputs i that feed an output inside [0, out) through tap t are
// [tap_input_begin, tap_input_end) (an empty range when end <= begin).
C10_HOST_DEVICE inline int64_t tap_input_begin(int64_t tap, int64_t stride, int64_t padding, int64_t dilation) {
  const int64_t need = padding - tap * dilation;  // i * s must reach it
  return need <= 0 ? 0 : (need + stride - 1) / stride;
}

C10_HOST_DEVICE inline int64_t tap_input_end(int64_t in, int64_t out, int64_t tap, int64_t stride, int64_t padding,
                                             int64_t dilation) {
  const int64_t limit = out - 1 + padding - tap * dilation;  // i * s must not pass it
  if (limit < 0) {
    return 0;
  }
  const int64_t end = limit / stride + 1;
  return end < in ? end : in;
}

// Number of outputs o = q + s * j of output phase q in [0, s): ceil((out - q) / s).
C10_HOST_DEVICE inline int64_t phase_length(int64_t out, int64_t phase, int64_t stride) {
  return phase >= out ? 0 : (out - phase + stride - 1) / stride;
}

// Shift of tap t in output phase q: output q + s * j reads input j + shift.
// (q + p - t * d) is a multiple of s for the phase's taps; the shift may be negative.
C10_HOST_DEVICE inline int64_t phase_input_offset(int64_t phase, int64_t tap, int64_t stride, int64_t padding,
                                                  int64_t dilation) {
  const int64_t numerator = phase + padding - tap * dilation;
  // Floor division, exact for a tap of the phase.
  return numerator >= 0 ? numerator / stride : -((-numerator) / stride);
}

}  // namespace fastops
