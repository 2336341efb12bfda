"""Reference roi_align, multi-level roi_align and roi_pool: plain PyTorch,
vectorised over RoIs and bins (each RoI's sample grid padded to the largest
one and masked), differentiable through autograd. Written to be read.

Shapes: ``input [N, C, H, W]``, ``rois [K, 5]`` rows (batch index, x1, y1, x2,
y2), output ``[K, C, pooled_height, pooled_width]``. The rules are those of
``csrc/ops/roi_align_math.h`` and ``csrc/ops/roi_pool_math.h`` (torchvision's,
plus fastops' choices for non-finite coordinates, bad batch indices, NaN in a
roi_pool bin). Computed in float32 (float64 for float64 input).
"""

from __future__ import annotations

import torch

from fastops._pooling import roi_memory_format
from fastops.reference.nms import compute_dtype

MAX_ADAPTIVE_SAMPLES = 512


def _batch_index(rois: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(image index, valid): rois[:, 0] truncated toward zero, valid when in [0, N)."""
    batch = rois[:, 0]
    valid = (batch > -1) & (batch < batch_size)
    return torch.where(valid, batch, 0).trunc().long(), valid


def _sample_grid(start, bin_size, samples, pooled: int, max_samples: int):
    """Sample coordinates ``[K, pooled, max_samples]`` along one axis and their mask."""
    p = torch.arange(pooled, device=start.device, dtype=start.dtype)[None, :, None]
    i = torch.arange(max_samples, device=start.device)[None, None, :]
    within = ((i.to(start.dtype) + 0.5) * bin_size[:, None, None]) / samples.clamp_min(1)[
        :, None, None
    ].to(start.dtype)
    coords = (start[:, None, None] + p * bin_size[:, None, None]) + within
    return coords, i < samples[:, None, None]


def _bilinear(image_rows, y, x, height: int, width: int):
    """Bilinear values of ``image_rows [K, C, H, W]`` at ``y [K, A, B, 1, 1]`` and
    ``x [K, 1, 1, P, Q]`` (broadcast), zero outside [-1, H] x [-1, W]."""
    inside = (y >= -1) & (y <= height) & (x >= -1) & (x <= width)
    # Points outside (NaN included) are masked by the caller; park them at 0 to index.
    y = torch.where((y >= -1) & (y <= height), y, 0).clamp_min(0)
    x = torch.where((x >= -1) & (x <= width), x, 0).clamp_min(0)
    y_low = y.long().clamp_max(height - 1)
    x_low = x.long().clamp_max(width - 1)
    y = torch.where(y_low >= height - 1, y_low.to(y.dtype), y)
    x = torch.where(x_low >= width - 1, x_low.to(x.dtype), x)
    y_high = (y_low + 1).clamp_max(height - 1)
    x_high = (x_low + 1).clamp_max(width - 1)
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    k = torch.arange(image_rows.shape[0], device=image_rows.device)[:, None, None, None, None]

    def at(yy, xx):  # [K, A, B, P, Q, C]
        return image_rows[k, :, yy, xx]

    shape = torch.broadcast_shapes(y.shape, x.shape)
    y_low, y_high, x_low, x_high = (t.expand(shape) for t in (y_low, y_high, x_low, x_high))
    value = (
        ((hy * hx)[..., None] * at(y_low, x_low) + (hy * lx)[..., None] * at(y_low, x_high))
        + (ly * hx)[..., None] * at(y_high, x_low)
    ) + (ly * lx)[..., None] * at(y_high, x_high)
    return value, inside


def roi_align(
    input: torch.Tensor,
    rois: torch.Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """RoI Align (He et al., Mask R-CNN, 2017) as torchvision computes it:
    ``[K, C, pooled_height, pooled_width]`` in the dtype of ``input``."""
    acc = compute_dtype(input.dtype)
    features = input.to(acc)
    boxes = rois.to(acc)
    n, c, height, width = features.shape
    k = boxes.shape[0]
    image, valid = _batch_index(boxes, n)
    offset = 0.5 if aligned else 0.0
    start_x = boxes[:, 1] * spatial_scale - offset
    start_y = boxes[:, 2] * spatial_scale - offset
    roi_w = (boxes[:, 3] * spatial_scale - offset) - start_x
    roi_h = (boxes[:, 4] * spatial_scale - offset) - start_y
    if not aligned:
        roi_w, roi_h = roi_w.clamp_min(1), roi_h.clamp_min(1)
    bin_h, bin_w = roi_h / pooled_height, roi_w / pooled_width
    finite = torch.isfinite(boxes[:, 1:]).all(dim=1) & torch.isfinite(bin_h) & torch.isfinite(bin_w)

    def samples(bin_size):
        if sampling_ratio > 0:
            count = torch.full_like(bin_size, sampling_ratio, dtype=torch.long)
        else:
            adaptive = torch.ceil(torch.nan_to_num(bin_size, nan=0.0))
            count = adaptive.clamp(0, MAX_ADAPTIVE_SAMPLES).long()
        return torch.where(finite, count, 0)

    samples_y, samples_x = samples(bin_h), samples(bin_w)
    count = (samples_y * samples_x).clamp_min(1).to(acc)
    if k == 0 or height == 0 or width == 0:
        # Zeros that stay connected to the graph, so that the gradient is zeros.
        zeros = input.sum(dim=(0, 2, 3)).mul(0)[None, :, None, None]
        return zeros.expand(k, c, pooled_height, pooled_width).contiguous(
            memory_format=roi_memory_format([input])
        )
    max_y, max_x = int(samples_y.max()), int(samples_x.max())
    y, mask_y = _sample_grid(start_y, bin_h, samples_y, pooled_height, max(max_y, 1))
    x, mask_x = _sample_grid(start_x, bin_w, samples_x, pooled_width, max(max_x, 1))
    y, mask_y = y[:, :, :, None, None], mask_y[:, :, :, None, None]
    x, mask_x = x[:, None, None, :, :], mask_x[:, None, None, :, :]
    value, inside = _bilinear(features[image], y, x, height, width)
    keep = (inside & mask_y & mask_x)[..., None]
    total = torch.where(keep, value, 0).sum(dim=(2, 4))  # [K, ph, pw, C]
    output = (total / count[:, None, None, None]).permute(0, 3, 1, 2)
    output = torch.where(valid[:, None, None, None], output, 0)
    return output.to(input.dtype).contiguous(memory_format=roi_memory_format([input]))


def multi_scale_roi_align(
    features: list[torch.Tensor],
    rois: torch.Tensor,
    levels: torch.Tensor,
    spatial_scales: list[float],
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """roi_align of each RoI on the feature map its ``levels`` entry names, with
    that level's spatial scale."""
    output = None
    for level, (feature, scale) in enumerate(zip(features, spatial_scales, strict=True)):
        on_level = roi_align(
            feature, rois, scale, pooled_height, pooled_width, sampling_ratio, aligned
        )
        chosen = (levels == level)[:, None, None, None]
        output = (
            torch.where(chosen, on_level, 0)
            if output is None
            else torch.where(chosen, on_level, output)
        )
    return output.contiguous(memory_format=roi_memory_format(features))


def roi_pool(
    input: torch.Tensor,
    rois: torch.Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoI max pooling (Girshick, Fast R-CNN, 2015) as torchvision computes it:
    ``(output [K, C, ph, pw], argmax int32)``, argmax ``h * W + w`` or -1 for an
    empty bin (output 0). The maximum is the first largest value in raster
    order; a NaN wins."""
    acc = compute_dtype(input.dtype)
    features = input.to(acc)
    boxes = rois.to(acc)
    n, c, height, width = features.shape
    k = boxes.shape[0]
    image, valid = _batch_index(boxes, n)
    finite = torch.isfinite(boxes[:, 1:]).all(dim=1)

    def corner(v):  # round half away from zero, clamped as the kernels do
        v = torch.nan_to_num(v * spatial_scale, nan=0.0)
        whole = torch.trunc(v)
        rounded = whole + torch.where((v - whole).abs() >= 0.5, torch.sign(v), 0)
        return rounded.clamp(-(2**30), 2**30).long()

    x1, y1, x2, y2 = (corner(boxes[:, i]) for i in range(1, 5))
    roi_w = (x2 - x1 + 1).clamp_min(1).to(acc)
    roi_h = (y2 - y1 + 1).clamp_min(1).to(acc)
    bin_h, bin_w = roi_h / pooled_height, roi_w / pooled_width

    def window(start, bin_size, pooled, size):
        p = torch.arange(pooled, device=input.device, dtype=acc)[None, :]
        begin = torch.floor(p * bin_size[:, None]).long() + start[:, None]
        end = torch.ceil((p + 1) * bin_size[:, None]).long() + start[:, None]
        return begin.clamp(0, size), end.clamp(0, size)  # [K, pooled]

    h_begin, h_end = window(y1, bin_h, pooled_height, height)
    w_begin, w_end = window(x1, bin_w, pooled_width, width)
    if k == 0:
        return input.new_zeros(0, c, pooled_height, pooled_width), torch.zeros(
            0, c, pooled_height, pooled_width, dtype=torch.int32, device=input.device
        )
    span_h = int((h_end - h_begin).max().clamp_min(1))
    span_w = int((w_end - w_begin).max().clamp_min(1))
    rows = h_begin[:, :, None] + torch.arange(span_h, device=input.device)  # [K, ph, SH]
    cols = w_begin[:, :, None] + torch.arange(span_w, device=input.device)  # [K, pw, SW]
    row_ok = rows < h_end[:, :, None]
    col_ok = cols < w_end[:, :, None]
    rows_c = rows.clamp(0, max(height - 1, 0))[:, :, :, None, None]
    cols_c = cols.clamp(0, max(width - 1, 0))[:, None, None, :, :]
    kk = torch.arange(k, device=input.device)[:, None, None, None, None]
    if height == 0 or width == 0:
        values = features.new_zeros(k, pooled_height, span_h, pooled_width, span_w, c)
    else:
        values = features[image][kk, :, rows_c, cols_c]  # [K, ph, SH, pw, SW, C]
    ok = (row_ok[:, :, :, None, None] & col_ok[:, None, None, :, :])[..., None]
    values = torch.where(ok, values, -torch.inf)
    # Raster order within a bin: (row, column) flattened.
    flat = values.permute(0, 5, 1, 3, 2, 4).reshape(k, c, pooled_height, pooled_width, -1)
    best, where = torch.max(flat, dim=-1)  # [K, C, ph, pw]
    row = h_begin[:, None, :, None] + where // span_w
    col = w_begin[:, None, None, :] + where % span_w
    empty = (
        ~valid[:, None, None]
        | ~finite[:, None, None]
        | (h_end <= h_begin)[:, :, None]
        | (w_end <= w_begin)[:, None, :]
    )[:, None]
    output = torch.where(empty, 0, best).to(input.dtype)
    argmax = torch.where(empty, -1, row * width + col).to(torch.int32)
    layout = roi_memory_format([input])
    return output.contiguous(memory_format=layout), argmax.contiguous(memory_format=layout)
