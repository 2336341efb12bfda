#include "common/poison.h"

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <limits>

namespace fastops {

bool poison_outputs_enabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("FASTOPS_POISON_OUTPUTS");
    return value != nullptr && std::strcmp(value, "") != 0 && std::strcmp(value, "0") != 0;
  }();
  return enabled;
}

void poison_if_enabled(at::Tensor& t) {
  if (!poison_outputs_enabled() || t.numel() == 0) {
    return;
  }
  if (at::isFloatingType(t.scalar_type())) {
    t.fill_(std::numeric_limits<double>::quiet_NaN());
  } else {
    t.fill_(-1);
  }
}

}  // namespace fastops
