"""RoI feature extraction: roi_align and roi_pool, drop-ins for
``torchvision.ops.roi_align`` / ``roi_pool`` (same arguments, defaults and
values), plus the multi-level roi_align behind
:class:`fastops.nn.MultiScaleRoIAlign`.

Beyond torchvision: bfloat16 kernels (float32 accumulation), channels_last
input without a layout copy (the output is then channels_last), multi-threaded
CPU kernels, a deterministic backward under
``torch.use_deterministic_algorithms(True)`` that needs no memory beyond the
gradient, and one launch for all pyramid levels with no host synchronisation.
Where torchvision's behaviour is undefined fastops defines it (rules in
``csrc/ops/roi_align_math.h``, ``roi_pool_math.h``): non-finite coordinates
give zeros; a batch index outside [0, N) raises ``IndexError``.

Under ``torch.autocast`` boxes and features of different dtypes are pooled in
float32 and the result returned in the features' dtype, as torchvision's
autocast kernels do (outside autocast they must share one dtype).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fastops import backends, reference

_FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _op(name: str, backend: str):
    suffix = "_triton" if backend == "triton" else ""
    return getattr(torch.ops.fastops, name + suffix)


def _pair(output_size, api: str) -> tuple[int, int]:
    if isinstance(output_size, int) and not isinstance(output_size, bool):
        size = (output_size, output_size)
    elif (
        isinstance(output_size, Sequence)
        and len(output_size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) for s in output_size)
    ):
        size = (output_size[0], output_size[1])
    else:
        raise TypeError(f"{api}: output_size must be an int or a pair of ints, got {output_size!r}")
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"{api}: output_size must be positive, got {output_size!r}")
    return size


def _check_input(input, api: str) -> None:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{api}: input must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() != 4:
        raise ValueError(f"{api}: input must be [N, C, H, W], got shape {tuple(input.shape)}")
    if input.dtype not in _FLOATING:
        raise TypeError(
            f"{api}: input must be float16, bfloat16, float32 or float64, got {input.dtype}"
        )


def convert_boxes_to_roi_format(boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """A list of per-image ``[L_i, 4]`` boxes to ``[sum L_i, 5]`` rois whose first
    column is the image index (torchvision's conversion)."""
    if len(boxes) == 0:
        raise ValueError("boxes: an empty list names no image; pass a [0, 5] tensor instead")
    rows = [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)]
    return torch.cat(rows, dim=0)


def _as_rois(input: torch.Tensor, boxes, api: str) -> torch.Tensor:
    if isinstance(boxes, torch.Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(
                f"{api}: boxes must be a [K, 5] tensor (batch index, x1, y1, x2, y2) or a list "
                f"of [L, 4] tensors, got shape {tuple(boxes.shape)}"
            )
        rois = boxes
    elif isinstance(boxes, list | tuple):
        for i, b in enumerate(boxes):
            if not isinstance(b, torch.Tensor) or b.dim() != 2 or b.shape[1] != 4:
                shape = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
                raise ValueError(f"{api}: boxes[{i}] must be an [L, 4] tensor, got {shape}")
        if len(boxes) > input.shape[0]:
            raise IndexError(
                f"{api}: boxes is a list of {len(boxes)} tensors for a batch of {input.shape[0]} images"
            )
        dtypes = {b.dtype for b in boxes}
        if len(dtypes) > 1:
            raise TypeError(f"{api}: the tensors of boxes must share one dtype, got {dtypes}")
        rois = convert_boxes_to_roi_format(boxes)
    else:
        raise TypeError(
            f"{api}: boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}"
        )
    if rois.dtype != input.dtype and not torch.is_autocast_enabled(input.device.type):
        raise TypeError(f"{api}: boxes ({rois.dtype}) must have the dtype of input ({input.dtype})")
    if rois.device != input.device:
        raise RuntimeError(
            f"{api}: boxes must be on the device of input ({input.device}), got {rois.device}"
        )
    return rois


def _check_batch_indices(rois: torch.Tensor, batch_size: int, api: str) -> None:
    """Raises when a batch index is outside [0, N) (after truncation toward zero),
    for the reference backend; the C++ and Triton ops check in their kernels.
    Skipped while compiling (a data-dependent branch)."""
    if torch.compiler.is_compiling() or rois.shape[0] == 0:
        return
    batch = rois[:, 0]
    bad = ~((batch > -1) & (batch < batch_size))
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        raise IndexError(
            f"{api}: rois[{k}, 0] is not a batch index of the input: it must lie in "
            f"[0, {batch_size}) (it is truncated toward zero)"
        )


def _check_scale(spatial_scale, api: str) -> float:
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, int | float):
        raise TypeError(
            f"{api}: spatial_scale must be a number, got {type(spatial_scale).__name__}"
        )
    if not (math.isfinite(spatial_scale) and spatial_scale > 0):
        raise ValueError(f"{api}: spatial_scale must be finite and positive, got {spatial_scale}")
    return float(spatial_scale)


def roi_align(
    input: torch.Tensor,
    boxes: torch.Tensor | list[torch.Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> torch.Tensor:
    """RoI Align (He et al., Mask R-CNN, 2017), as ``torchvision.ops.roi_align``.

    ``input [N, C, H, W]``; ``boxes`` a ``[K, 5]`` tensor of (batch index, x1, y1,
    x2, y2) or a list of ``[L_i, 4]`` tensors (one per image), in input-image
    coordinates, of the dtype of ``input``; ``output_size`` (h, w) or an int;
    ``spatial_scale`` maps box to feature coordinates; ``sampling_ratio`` sample
    points per bin and axis (``<= 0``: ``ceil(bin size)``, adaptive);
    ``aligned=True`` shifts by half a pixel (Detectron2). Returns
    ``[K, C, h, w]`` in the dtype and layout of ``input``.
    """
    api = "roi_align"
    _check_input(input, api)
    rois = _as_rois(input, boxes, api)
    pooled_h, pooled_w = _pair(output_size, api)
    spatial_scale = _check_scale(spatial_scale, api)
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int):
        raise TypeError(f"{api}: sampling_ratio must be an int, got {sampling_ratio!r}")
    if not isinstance(aligned, bool):
        raise TypeError(f"{api}: aligned must be a bool, got {aligned!r}")
    if rois.dtype != input.dtype:  # mixed under autocast: torchvision computes in float32
        return roi_align(
            input.float(), rois.float(), output_size, spatial_scale, sampling_ratio, aligned
        ).to(input.dtype)
    backend = backends.select("roi_align", input.device)
    if backend == "reference":
        _check_batch_indices(rois, input.shape[0], api)
        return reference.roi_align(
            input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned
        )
    return _op("roi_align", backend)(
        input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned
    )


def roi_pool(
    input: torch.Tensor,
    boxes: torch.Tensor | list[torch.Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> torch.Tensor:
    """RoI max pooling (Girshick, Fast R-CNN, 2015), as ``torchvision.ops.roi_pool``.

    Arguments as :func:`roi_align`. Box corners are rounded to feature pixels;
    each bin is the maximum of its window (0 for an empty window). A NaN in a
    window is its maximum (torchvision skips NaN). Returns ``[K, C, h, w]``.
    """
    api = "roi_pool"
    _check_input(input, api)
    rois = _as_rois(input, boxes, api)
    pooled_h, pooled_w = _pair(output_size, api)
    spatial_scale = _check_scale(spatial_scale, api)
    if input.shape[2] * input.shape[3] > 2**31 - 1:
        raise ValueError(
            f"{api}: input planes of more than 2^31 - 1 elements do not fit the int32 argmax"
        )
    if rois.dtype != input.dtype:  # mixed under autocast: torchvision computes in float32
        return roi_pool(input.float(), rois.float(), output_size, spatial_scale).to(input.dtype)
    backend = backends.select("roi_pool", input.device)
    if backend == "reference":
        _check_batch_indices(rois, input.shape[0], api)
        return reference.roi_pool(input, rois, spatial_scale, pooled_h, pooled_w)[0]
    return _op("roi_pool", backend)(input, rois, spatial_scale, pooled_h, pooled_w)[0]


def multi_scale_roi_align(
    features: Sequence[torch.Tensor],
    rois: torch.Tensor,
    levels: torch.Tensor,
    spatial_scales: Sequence[float],
    output_size: int | tuple[int, int],
    sampling_ratio: int,
    aligned: bool = False,
) -> torch.Tensor:
    """roi_align of each RoI on the feature map ``levels[k]`` names, with that
    level's scale, for all levels in one kernel launch and without host
    synchronisation (:class:`fastops.nn.MultiScaleRoIAlign` computes the levels).

    ``features``: 1 to 8 maps ``[N, C, H_l, W_l]`` of one dtype and device;
    ``rois [K, 5]``; ``levels`` int64 ``[K]`` in ``[0, len(features))``.
    """
    api = "multi_scale_roi_align"
    if not isinstance(features, list | tuple) or not features:
        raise TypeError(f"{api}: features must be a non-empty list of tensors")
    for f in features:
        _check_input(f, api)
    if len(features) > 8:
        raise ValueError(f"{api}: at most 8 feature maps, got {len(features)}")
    rois = _as_rois(features[0], rois, api)
    if len(spatial_scales) != len(features):
        raise ValueError(
            f"{api}: one spatial_scale per feature map, got {len(spatial_scales)} for {len(features)}"
        )
    scales = [_check_scale(s, api) for s in spatial_scales]
    if (
        not isinstance(levels, torch.Tensor)
        or levels.dtype != torch.int64
        or levels.shape != (rois.shape[0],)
    ):
        raise TypeError(f"{api}: levels must be an int64 tensor [K] for rois [K, 5]")
    pooled_h, pooled_w = _pair(output_size, api)
    if rois.dtype != features[0].dtype:  # mixed under autocast: computed in float32
        return multi_scale_roi_align(
            [f.float() for f in features],
            rois.float(),
            levels,
            scales,
            output_size,
            sampling_ratio,
            aligned,
        ).to(features[0].dtype)
    backend = backends.select("multi_scale_roi_align", features[0].device)
    if backend == "reference":
        return reference.multi_scale_roi_align(
            list(features), rois, levels, scales, pooled_h, pooled_w, sampling_ratio, aligned
        )
    return _op("multi_scale_roi_align", backend)(
        list(features), rois, levels, scales, pooled_h, pooled_w, sampling_ratio, aligned
    )
