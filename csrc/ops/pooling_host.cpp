#include "ops/pooling_host.h"

#include <c10/util/Exception.h>

#include <limits>
#include <sstream>

namespace fastops {

int64_t check_pool_params(const char* op, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding) {
  const auto dims = static_cast<int64_t>(kernel_size.size());
  TORCH_CHECK(dims >= 1 && dims <= kSpatialDims, op, ": kernel_size must have 1, 2 or 3 entries, got ",
              kernel_size);
  TORCH_CHECK(static_cast<int64_t>(stride.size()) == dims, op, ": stride must have ", dims,
              " entries like kernel_size, got ", stride);
  TORCH_CHECK(static_cast<int64_t>(padding.size()) == dims, op, ": padding must have ", dims,
              " entries like kernel_size, got ", padding);
  constexpr int64_t kLimit = std::numeric_limits<int32_t>::max();
  for (int64_t d = 0; d < dims; ++d) {
    TORCH_CHECK(kernel_size[d] > 0 && kernel_size[d] <= kLimit, op,
                ": kernel_size must be positive, got ", kernel_size);
    TORCH_CHECK(stride[d] > 0 && stride[d] <= kLimit, op, ": stride must be positive, got ", stride);
    TORCH_CHECK(padding[d] >= 0 && padding[d] <= kLimit, op, ": padding must be non-negative, got ",
                padding);
  }
  return dims;
}

void check_floating_dtype(const char* op, const char* name, const at::Tensor& t) {
  const auto type = t.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kDouble || type == at::kHalf || type == at::kBFloat16, op, ": ",
              name, " must be float16, bfloat16, float32 or float64, got ", type);
}

PoolWindows make_pool_windows(at::IntArrayRef window_sizes, at::IntArrayRef plane_sizes,
                              at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding) {
  PoolWindows g{};
  const auto dims = static_cast<int64_t>(kernel_size.size());
  const int64_t lead = kSpatialDims - dims;
  for (int64_t d = 0; d < kSpatialDims; ++d) {
    const bool real = d >= lead;
    g.windows[d] = real ? window_sizes[d - lead] : 1;
    g.plane[d] = real ? plane_sizes[d - lead] : 1;
    g.kernel[d] = real ? kernel_size[d - lead] : 1;
    g.stride[d] = real ? stride[d - lead] : 1;
    g.padding[d] = real ? padding[d - lead] : 0;
  }
  g.init_divisors();
  return g;
}

at::MemoryFormat pooling_memory_format(const at::Tensor& t) {
  // Same rule as fastops/_pooling.py, so fake and real outputs agree in strides.
  const auto channels_last = t.dim() == 4   ? at::MemoryFormat::ChannelsLast
                             : t.dim() == 5 ? at::MemoryFormat::ChannelsLast3d
                                            : at::MemoryFormat::Contiguous;
  if (channels_last != at::MemoryFormat::Contiguous && t.is_contiguous(channels_last) && !t.is_contiguous()) {
    return channels_last;
  }
  return at::MemoryFormat::Contiguous;
}

bool is_channels_last(at::MemoryFormat format) {
  return format == at::MemoryFormat::ChannelsLast || format == at::MemoryFormat::ChannelsLast3d;
}

std::string sizes_string(at::IntArrayRef sizes) {
  std::ostringstream out;
  for (size_t i = 0; i < sizes.size(); ++i) {
    out << (i ? "x" : "") << sizes[i];
  }
  return out.str();
}

}  // namespace fastops
