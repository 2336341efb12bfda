#pragma once
// Dispatch helpers for kernels that only move elements: they are instantiated
// per element size, not per dtype, since copying bits needs no arithmetic.

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <type_traits>

namespace fastops {

template <typename F>
void dispatch_by_element_size(const at::Tensor& t, const char* name, F&& f) {
  switch (t.element_size()) {
    case 2:
      f(uint16_t{});
      break;
    case 4:
      f(uint32_t{});
      break;
    case 8:
      f(uint64_t{});
      break;
    default:
      TORCH_CHECK(false, name, ": unsupported dtype ", t.scalar_type());
  }
}

// Indices are int64 flat positions or int8 window offsets.
template <typename F>
void dispatch_index_type(const at::Tensor& indices, const char* name, F&& f) {
  switch (indices.scalar_type()) {
    case at::kLong:
      f(int64_t{});
      break;
    case at::kChar:
      f(int8_t{});
      break;
    default:
      TORCH_CHECK(false, name, ": indices must be int64 or int8, got ", indices.scalar_type());
  }
}

// Calls f(std::true_type{}) for channels-last layouts, f(std::false_type{})
// for channels-first, so kernels can take the layout as a template argument.
template <typename F>
void dispatch_layout(bool channels_last, F&& f) {
  if (channels_last) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

}  // namespace fastops
