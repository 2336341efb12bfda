#pragma once
// Device helpers shared by the RoI kernels (roi_align.cu, roi_pool.cu):
// splitting a flat element index into four coordinates, read-only loads
// widened to the accumulation type, and the span bookkeeping of the
// deterministic gathers.

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "common/fast_divmod.h"

namespace fastops::cuda {

// Splits e = ((a * n1 + b) * n2 + c) * n3 + d. With kSmall (every index below
// 2^31) by multiply-shift; 64-bit divisions otherwise.
struct Index4 {
  FastDivmod div1, div2, div3;
  int64_t n1, n2, n3;

  Index4(int64_t size1, int64_t size2, int64_t size3) : n1(size1), n2(size2), n3(size3) {
    const auto small = [](int64_t n) { return static_cast<uint32_t>(std::min<int64_t>(n, INT32_MAX)); };
    div1 = FastDivmod(small(size1));
    div2 = FastDivmod(small(size2));
    div3 = FastDivmod(small(size3));
  }

  template <bool kSmall>
  __device__ __forceinline__ void split(int64_t e, int64_t& a, int64_t& b, int64_t& c, int64_t& d) const {
    if (kSmall) {
      uint32_t rest = static_cast<uint32_t>(e);
      uint32_t r;
      div3.divmod(rest, rest, r);
      d = r;
      div2.divmod(rest, rest, r);
      c = r;
      div1.divmod(rest, rest, r);
      b = r;
      a = rest;
    } else {
      d = e % n3;
      e /= n3;
      c = e % n2;
      e /= n2;
      b = e % n1;
      a = e / n1;
    }
  }
};

// A read-only load through the non-coherent cache, widened to acc_t.
template <typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> load_acc(const scalar_t* p) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    return static_cast<acc_t>(c10::Half(__ldg(reinterpret_cast<const unsigned short*>(p)), c10::Half::from_bits()));
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    return static_cast<acc_t>(
        c10::BFloat16(__ldg(reinterpret_cast<const unsigned short*>(p)), c10::BFloat16::from_bits()));
  } else {
    return __ldg(p);
  }
}

// Widens the [x, y] range of `span` to include `value` (shared memory, many writers).
__device__ __forceinline__ void widen_span(int2* span, int value) {
  atomicMin(&span->x, value);
  atomicMax(&span->y, value);
}

}  // namespace fastops::cuda
