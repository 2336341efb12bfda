// Autograd of max_unpool and max_pool_with_offsets, in C++.
//
// Registered from Python (torch.library.register_autograd) the same formulas
// cost 12 us per forward and ~75 us per forward+backward of Python on a
// 2-core CPU, more than the GPU kernels of most SegNet layers
// (bench/NOTES.md); here they cost what PyTorch's own autograd costs. The
// Triton twins keep the Python registration (fastops/_registrations).
//
//   max_unpool:                      grad_input = _max_unpool_backward(grad, indices)  (a gather)
//   _max_unpool_backward:            its derivative is max_unpool of the gradient
//   max_pool_with_offsets:           grad_input = _max_pool_with_offsets_backward(grad, offsets)
//   _max_pool_with_offsets_backward: its derivative is the gather _max_unpool_backward

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

namespace fastops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor max_unpool_call(const at::Tensor& input, const at::Tensor& indices, c10::SymIntArrayRef output_size,
                           at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastops::max_unpool", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef,
                                               at::IntArrayRef, at::IntArrayRef, at::IntArrayRef)>();
  return op.call(input, indices, output_size, kernel_size, stride, padding);
}

at::Tensor max_unpool_backward_call(const at::Tensor& grad_output, const at::Tensor& indices,
                                    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastops::_max_unpool_backward", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                                               at::IntArrayRef, at::IntArrayRef)>();
  return op.call(grad_output, indices, kernel_size, stride, padding);
}

std::tuple<at::Tensor, at::Tensor> max_pool_call(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                 at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastops::max_pool_with_offsets", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::IntArrayRef,
                                                                       at::IntArrayRef, at::IntArrayRef, bool)>();
  return op.call(input, kernel_size, stride, padding, ceil_mode);
}

at::Tensor max_pool_backward_call(const at::Tensor& grad_output, const at::Tensor& offsets,
                                  c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
                                  at::IntArrayRef stride, at::IntArrayRef padding) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastops::_max_pool_with_offsets_backward", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef,
                                               at::IntArrayRef, at::IntArrayRef, at::IntArrayRef)>();
  return op.call(grad_output, offsets, input_size, kernel_size, stride, padding);
}

void save_geometry(AutogradContext* ctx, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                   at::IntArrayRef padding) {
  ctx->saved_data["kernel_size"] = kernel_size.vec();
  ctx->saved_data["stride"] = stride.vec();
  ctx->saved_data["padding"] = padding.vec();
}

struct Geometry {
  std::vector<int64_t> kernel_size, stride, padding;
};

Geometry saved_geometry(AutogradContext* ctx) {
  return {ctx->saved_data["kernel_size"].toIntVector(), ctx->saved_data["stride"].toIntVector(),
          ctx->saved_data["padding"].toIntVector()};
}

class MaxUnpoolFunction : public torch::autograd::Function<MaxUnpoolFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& indices,
                            c10::SymIntArrayRef output_size, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({indices});
    save_geometry(ctx, kernel_size, stride, padding);
    return max_unpool_call(input, indices, output_size, kernel_size, stride, padding);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto g = saved_geometry(ctx);
    const at::Tensor indices = ctx->get_saved_variables()[0];
    return {max_unpool_backward_call(grads[0], indices, g.kernel_size, g.stride, g.padding),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class MaxUnpoolBackwardFunction : public torch::autograd::Function<MaxUnpoolBackwardFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output, const at::Tensor& indices,
                            at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({indices});
    ctx->saved_data["output_size"] = grad_output.sym_sizes().slice(2).vec();
    save_geometry(ctx, kernel_size, stride, padding);
    return max_unpool_backward_call(grad_output, indices, kernel_size, stride, padding);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto g = saved_geometry(ctx);
    const at::Tensor indices = ctx->get_saved_variables()[0];
    const auto output_size = ctx->saved_data["output_size"].toSymIntVector();
    return {max_unpool_call(grads[0], indices, output_size, g.kernel_size, g.stride, g.padding), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class MaxPoolFunction : public torch::autograd::Function<MaxPoolFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [values, offsets] = max_pool_call(input, kernel_size, stride, padding, ceil_mode);
    ctx->save_for_backward({offsets});
    ctx->saved_data["input_size"] = input.sym_sizes().slice(2).vec();
    save_geometry(ctx, kernel_size, stride, padding);
    ctx->mark_non_differentiable({offsets});
    return {values, offsets};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto g = saved_geometry(ctx);
    const at::Tensor offsets = ctx->get_saved_variables()[0];
    const auto input_size = ctx->saved_data["input_size"].toSymIntVector();
    return {max_pool_backward_call(grads[0], offsets, input_size, g.kernel_size, g.stride, g.padding),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class MaxPoolBackwardFunction : public torch::autograd::Function<MaxPoolBackwardFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output, const at::Tensor& offsets,
                            c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({offsets});
    save_geometry(ctx, kernel_size, stride, padding);
    return max_pool_backward_call(grad_output, offsets, input_size, kernel_size, stride, padding);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto g = saved_geometry(ctx);
    const at::Tensor offsets = ctx->get_saved_variables()[0];
    return {max_unpool_backward_call(grads[0], offsets, g.kernel_size, g.stride, g.padding), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor max_unpool_autograd(const at::Tensor& input, const at::Tensor& indices, c10::SymIntArrayRef output_size,
                               at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding) {
  return MaxUnpoolFunction::apply(input, indices, output_size, kernel_size, stride, padding);
}

at::Tensor max_unpool_backward_autograd(const at::Tensor& grad_output, const at::Tensor& indices,
                                        at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding) {
  return MaxUnpoolBackwardFunction::apply(grad_output, indices, kernel_size, stride, padding);
}

std::tuple<at::Tensor, at::Tensor> max_pool_autograd(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                     at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode) {
  const auto outputs = MaxPoolFunction::apply(input, kernel_size, stride, padding, ceil_mode);
  return {outputs[0], outputs[1]};
}

at::Tensor max_pool_backward_autograd(const at::Tensor& grad_output, const at::Tensor& offsets,
                                      c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
                                      at::IntArrayRef stride, at::IntArrayRef padding) {
  return MaxPoolBackwardFunction::apply(grad_output, offsets, input_size, kernel_size, stride, padding);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, Autograd, m) {
  m.impl("max_unpool", &max_unpool_autograd);
  m.impl("_max_unpool_backward", &max_unpool_backward_autograd);
  m.impl("max_pool_with_offsets", &max_pool_autograd);
  m.impl("_max_pool_with_offsets_backward", &max_pool_backward_autograd);
}

}  // namespace fastops
