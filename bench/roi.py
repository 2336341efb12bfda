"""Benchmark cases of roi_align, MultiScaleRoIAlign and roi_pool against
torchvision, on Faster R-CNN / Mask R-CNN shapes.

An 800x1216 image pair (batch 2) through an FPN at 256 channels: P2 200x304,
P3 100x152, P4 50x76, P5 25x38; 1000 RoIs per image (2000 in all), boxes of
16-512 px. The box head pools 7x7 with sampling_ratio 2 (torchvision's
MultiScaleRoIAlign), the mask head 14x14, detectron2 7x7 with aligned=True and
adaptive sampling. roi_pool runs on Fast R-CNN's VGG16 conv5 (512 channels,
1/16). bfloat16 rows compare with torchvision in float16 on the GPU (it has no
bfloat16 kernel) and in float32 on the CPU.

Floor: the output must be written (K x C x 7 x 7: 100 MB in float32 for the
box head) and, with the backward, the output gradient read and the feature-map
gradient written.
"""

from __future__ import annotations

import torch
import torchvision

import fastops
from bench.cases import Case, forward_backward

FAMILY = "roi"
IMAGE = (800, 1216)
PYRAMID = {"0": (200, 304), "1": (100, 152), "2": (50, 76), "3": (25, 38)}
CHANNELS = 256
BATCH = 2
ROIS_PER_IMAGE = 1000


def proposal_boxes(device, dtype, largest: float = 512.0) -> list[torch.Tensor]:
    """Per image, 1000 boxes of 16 to `largest` px (log-uniform), inside the image."""
    boxes = []
    for _ in range(BATCH):
        size = 16 * torch.exp(torch.rand(ROIS_PER_IMAGE, 2) * torch.log(torch.tensor(largest / 16)))
        corner = torch.rand(ROIS_PER_IMAGE, 2) * (torch.tensor([IMAGE[1], IMAGE[0]]) - size)
        boxes.append(torch.cat([corner, corner + size], 1).to(device, dtype))
    return boxes


def as_rois(boxes: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)])


def deterministic(fn):
    """``fn`` under ``torch.use_deterministic_algorithms(True)``."""

    def run():
        torch.use_deterministic_algorithms(True)
        try:
            return fn()
        finally:
            torch.use_deterministic_algorithms(False)

    return run


def reference_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    if dtype != torch.bfloat16:
        return dtype
    return torch.float16 if device.type == "cuda" else torch.float32


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    dtypes = [torch.float32] if quick else [torch.float32, torch.bfloat16]
    result = []
    for dtype in dtypes:
        ref_dtype = reference_dtype(dtype, device)
        p2 = torch.randn(BATCH, CHANNELS, *PYRAMID["0"], device=device, dtype=dtype)
        p2_ref = p2.to(ref_dtype)
        rois = as_rois(proposal_boxes(device, dtype, largest=224.0))
        rois_ref = rois.to(ref_dtype)
        heads = [
            ("Faster R-CNN box head, P2", 7, 2, False),
            ("Mask R-CNN mask head, P2", 14, 2, False),
            ("detectron2 box head, P2", 7, 0, True),
        ]
        if quick:
            heads = heads[:1]
        for name, size, ratio, aligned in heads:
            for channels_last in (
                (False, True) if dtype == torch.float32 and not quick else (False,)
            ):
                x = p2.contiguous(memory_format=torch.channels_last) if channels_last else p2
                x_ref = (
                    p2_ref.contiguous(memory_format=torch.channels_last)
                    if channels_last
                    else p2_ref
                )
                out_bytes = rois.shape[0] * CHANNELS * size * size * x.element_size()
                variant = f"{size}x{size}, sr {ratio}{', aligned' if aligned else ''}" + (
                    ", channels_last" if channels_last else ""
                )
                common = dict(
                    family=FAMILY,
                    op="roi_align",
                    name=name,
                    shape=f"{BATCH}x{CHANNELS}x200x304, {rois.shape[0]} RoIs",
                    dtype=dtype,
                    variant=variant,
                    reference_name=f"torchvision.ops.roi_align ({str(ref_dtype).removeprefix('torch.')})",
                )

                def fastops_call(t, r=rois, s=size, q=ratio, a=aligned):
                    return fastops.ops.roi_align(t, r, s, 0.25, q, a)

                def torchvision_call(t, r=rois_ref, s=size, q=ratio, a=aligned):
                    return torchvision.ops.roi_align(t, r, s, 0.25, q, a)

                result.append(
                    Case(
                        **common,
                        direction="forward",
                        min_bytes=out_bytes,
                        reference=lambda t=x_ref, f=torchvision_call: f(t),
                        run=lambda t=x, f=fastops_call: f(t),
                    )
                )
                grad = torch.randn(rois.shape[0], CHANNELS, size, size, device=device, dtype=dtype)
                grad_ref = grad.to(ref_dtype)
                result.append(
                    Case(
                        **common,
                        direction="forward+backward",
                        min_bytes=2 * out_bytes + x.numel() * x.element_size(),
                        reference=forward_backward(torchvision_call, x_ref, grad_ref),
                        run=forward_backward(fastops_call, x, grad),
                    )
                )
                if device.type == "cuda" and size == 7 and not aligned and not channels_last:
                    result.append(
                        Case(
                            **(common | {"variant": variant + ", deterministic backward"}),
                            direction="forward+backward",
                            min_bytes=2 * out_bytes + x.numel() * x.element_size(),
                            reference=forward_backward(torchvision_call, x_ref, grad_ref),
                            run=deterministic(forward_backward(fastops_call, x, grad)),
                        )
                    )
        result += _multi_scale_cases(device, dtype, ref_dtype, quick)
        if not quick:
            result += _roi_pool_cases(device, dtype, ref_dtype)
    return result


def _multi_scale_cases(device, dtype, ref_dtype, quick) -> list[Case]:
    features = {
        k: torch.randn(BATCH, CHANNELS, h, w, device=device, dtype=dtype)
        for k, (h, w) in PYRAMID.items()
    }
    features_ref = {k: v.to(ref_dtype) for k, v in features.items()}
    boxes = proposal_boxes(device, dtype)
    boxes_ref = [b.to(ref_dtype) for b in boxes]
    shapes = [IMAGE] * BATCH
    names = list(PYRAMID)
    ours = fastops.nn.MultiScaleRoIAlign(names, 7, 2)
    theirs = torchvision.ops.MultiScaleRoIAlign(names, 7, 2)
    k = sum(len(b) for b in boxes)
    out_bytes = k * CHANNELS * 49 * features["0"].element_size()
    common = dict(
        family=FAMILY,
        op="MultiScaleRoIAlign",
        name="Faster R-CNN box head, P2-P5",
        shape=f"{BATCH}x{CHANNELS}x(200x304 .. 25x38), {k} RoIs",
        dtype=dtype,
        variant="7x7, sr 2",
        reference_name=f"torchvision.ops.MultiScaleRoIAlign ({str(ref_dtype).removeprefix('torch.')})",
    )
    cases = [
        Case(
            **common,
            direction="forward",
            min_bytes=out_bytes,
            reference=lambda: theirs(features_ref, boxes_ref, shapes),
            run=lambda: ours(features, boxes, shapes),
        )
    ]
    if dtype == torch.float32 and not quick:
        leaves = {key: v.detach().requires_grad_() for key, v in features.items()}
        leaves_ref = {key: v.detach().requires_grad_() for key, v in features_ref.items()}
        grad = torch.randn(k, CHANNELS, 7, 7, device=device, dtype=dtype)

        def backward(module, inputs, box_list, g):
            def run():
                for v in inputs.values():
                    v.grad = None
                module(inputs, box_list, shapes).backward(g)

            return run

        feature_bytes = sum(v.numel() * v.element_size() for v in features.values())
        cases.append(
            Case(
                **common,
                direction="forward+backward",
                min_bytes=2 * out_bytes + feature_bytes,
                reference=backward(theirs, leaves_ref, boxes_ref, grad.to(ref_dtype)),
                run=backward(ours, leaves, boxes, grad),
            )
        )
    return cases


def _roi_pool_cases(device, dtype, ref_dtype) -> list[Case]:
    conv5 = torch.randn(BATCH, 512, 50, 76, device=device, dtype=dtype)
    conv5_ref = conv5.to(ref_dtype)
    rois = as_rois(proposal_boxes(device, dtype))
    rois_ref = rois.to(ref_dtype)
    out_bytes = rois.shape[0] * 512 * 49 * conv5.element_size()
    common = dict(
        family=FAMILY,
        op="roi_pool",
        name="Fast R-CNN, VGG16 conv5",
        shape=f"{BATCH}x512x50x76, {rois.shape[0]} RoIs",
        dtype=dtype,
        variant="7x7",
        reference_name=f"torchvision.ops.roi_pool ({str(ref_dtype).removeprefix('torch.')})",
    )

    def ours(t):
        return fastops.ops.roi_pool(t, rois, 7, 1 / 16)

    def theirs(t):
        return torchvision.ops.roi_pool(t, rois_ref, 7, 1 / 16)

    grad = torch.randn(rois.shape[0], 512, 7, 7, device=device, dtype=dtype)
    return [
        Case(
            **common,
            direction="forward",
            min_bytes=out_bytes,
            reference=lambda: theirs(conv5_ref),
            run=lambda: ours(conv5),
        ),
        Case(
            **common,
            direction="forward+backward",
            min_bytes=2 * out_bytes + conv5.numel() * conv5.element_size(),
            reference=forward_backward(theirs, conv5_ref, grad.to(ref_dtype)),
            run=forward_backward(ours, conv5, grad),
        ),
    ]
