#pragma once
// Division by a loop-invariant divisor as a multiply-high and a shift
// (Granlund & Montgomery, 1994). Index arithmetic dominates the instruction
// count of memory-bound gather kernels; a 32-bit `/` or `%` costs about 20
// instructions on NVIDIA GPUs, this costs 3.

#include <c10/macros/Macros.h>

#include <cstdint>

namespace fastops {

struct FastDivmod {
  uint32_t divisor = 1;
  uint32_t multiplier = 0;
  uint32_t shift = 0;

  FastDivmod() = default;

  // Exact for every dividend in [0, 2^31) and divisor in [1, 2^31):
  // with L = ceil(log2 d), multiplier = ceil(2^(31+L) / d) fits in 32 bits and
  // n / d == (n * multiplier) >> (31 + L) (CUTLASS's FastDivmod uses the same constants).
  explicit FastDivmod(uint32_t d) : divisor(d) {
    if (d > 1) {
      uint32_t log2_ceil = 0;
      while ((uint64_t{1} << log2_ceil) < d) {
        ++log2_ceil;
      }
      multiplier = static_cast<uint32_t>(((uint64_t{1} << (31 + log2_ceil)) + d - 1) / d);
      shift = log2_ceil - 1;
    }
  }

  C10_HOST_DEVICE inline uint32_t div(uint32_t n) const {
    if (divisor == 1) {
      return n;
    }
#if defined(__CUDA_ARCH__)
    return __umulhi(n, multiplier) >> shift;
#else
    return static_cast<uint32_t>((uint64_t{n} * multiplier) >> 32) >> shift;
#endif
  }

  C10_HOST_DEVICE inline void divmod(uint32_t n, uint32_t& quotient, uint32_t& remainder) const {
    quotient = div(n);
    remainder = n - quotient * divisor;
  }
};

}  // namespace fastops
