#pragma once
// A select that stays a select: `blend(take, a, b)` is `take ? a : b`,
// written on the host as bit arithmetic so that compilers do not turn it into
// a branch that data-dependent comparisons (a running maximum) mispredict.

#include <c10/macros/Macros.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace fastops {

// `take ? a : b`. On the CPU as a bit blend: compilers otherwise emit a
// branch on the comparison, mispredicted half the time on random data
// (measured 26 ns per 2x2 window with the branch, about 2 ns without).
template <typename T>
C10_HOST_DEVICE inline T blend(bool take, T a, T b) {
#if defined(__CUDA_ARCH__)
  return take ? a : b;
#else
  using Bits = std::conditional_t<sizeof(T) == 8, uint64_t,
                                  std::conditional_t<sizeof(T) == 4, uint32_t, uint16_t>>;
  static_assert(sizeof(T) == sizeof(Bits), "blend: unsupported size");
  Bits x, y;
  std::memcpy(&x, &a, sizeof(T));
  std::memcpy(&y, &b, sizeof(T));
  const Bits mask = static_cast<Bits>(Bits(0) - static_cast<Bits>(take));
  const Bits r = static_cast<Bits>((x & mask) | (y & static_cast<Bits>(~mask)));
  T result;
  std::memcpy(&result, &r, sizeof(T));
  return result;
#endif
}

}  // namespace fastops
