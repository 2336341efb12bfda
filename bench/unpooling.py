"""Benchmark cases of max-unpooling and max-pooling with int8 window offsets.

Shapes: the SegNet decoder (batch 4, 360x480 CamVid input, 2x2/2 ceil-mode
pools; pooled 512@12x15, 512@23x30, 256@45x60, 128@90x120, 64@180x240) and the
original U-Net's pooled maps (batch 1, 572x572 input, valid convolutions:
64@284, 128@140, 256@68, 512@32).

Byte model (e: element size, L pooled elements, P unpooled elements, i: index
size, 8 for int64 positions and 1 for int8 offsets):
  max_unpool forward     L*e + L*i read, P*e written
  max_unpool backward    L*i + P*e read (a gather touches every sector of
                         grad_output for 2x2 windows), L*e written
  max_pool forward       P*e read, L*e + L*i written
  max_pool backward      L*e + L*i read, P*e written
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fastops
from bench.cases import Case, forward_backward

FAMILY = "unpooling"

# (name, channels, pooled height, pooled width, unpooled height, unpooled width)
SEGNET = [
    ("SegNet up5", 512, 12, 15, 23, 30),
    ("SegNet up4", 512, 23, 30, 45, 60),
    ("SegNet up3", 256, 45, 60, 90, 120),
    ("SegNet up2", 128, 90, 120, 180, 240),
    ("SegNet up1", 64, 180, 240, 360, 480),
]
UNET = [
    ("U-Net up4", 512, 32, 32, 64, 64),
    ("U-Net up3", 256, 68, 68, 136, 136),
    ("U-Net up2", 128, 140, 140, 280, 280),
    ("U-Net up1", 64, 284, 284, 568, 568),
]


def _shapes(quick: bool):
    if quick:
        return [
            (name, 1, c, h, w, oh, ow)
            for name, c, h, w, oh, ow in (SEGNET[0], SEGNET[2], SEGNET[4])
        ]
    return [(name, 4, *rest) for name, *rest in SEGNET] + [(name, 1, *rest) for name, *rest in UNET]


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    dtypes = [torch.float32] if quick else [torch.float32, torch.bfloat16]
    result = []
    for name, batch, c, h, w, oh, ow in _shapes(quick):
        for dtype in dtypes:
            x = torch.randn(batch, c, oh, ow, device=device).to(dtype)
            values, positions = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
            _, offsets = fastops.ops.max_pool2d_with_offsets(x, 2, 2, ceil_mode=True)
            grad_out = torch.randn_like(x)
            grad_pooled = torch.randn_like(values)
            e = x.element_size()
            pooled, plane = values.numel(), x.numel()
            shape = f"{batch}x{c}x{h}x{w} -> {oh}x{ow}"
            size = (oh, ow)

            def torch_unpool(v, i=positions, size=size):
                return F.max_unpool2d(v, i, 2, 2, output_size=size)

            for variant, indices, index_bytes in (
                ("int64 indices", positions, 8),
                ("int8 offsets", offsets, 1),
            ):

                def ours_unpool(v, i=indices, size=size):
                    return fastops.ops.max_unpool2d(v, i, 2, 2, output_size=size)

                common = dict(
                    family=FAMILY,
                    op="max_unpool2d",
                    name=name,
                    shape=shape,
                    dtype=dtype,
                    variant=variant,
                )
                forward_bytes = pooled * (e + index_bytes) + plane * e
                backward_bytes = pooled * index_bytes + plane * e + pooled * e
                result.append(
                    Case(
                        **common,
                        direction="forward",
                        min_bytes=forward_bytes,
                        reference=lambda v=values, f=torch_unpool: f(v),
                        reference_name="F.max_unpool2d (int64)",
                        run=lambda v=values, f=ours_unpool: f(v),
                        graph=forward_bytes < 64 * 2**20,
                    )
                )
                result.append(
                    Case(
                        **common,
                        direction="forward+backward",
                        min_bytes=forward_bytes + backward_bytes,
                        reference=forward_backward(torch_unpool, values, grad_out),
                        reference_name="F.max_unpool2d (int64)",
                        run=forward_backward(ours_unpool, values, grad_out),
                    )
                )

            common = dict(
                family=FAMILY,
                op="max_pool2d_with_offsets",
                name=name.replace("up", "pool"),
                shape=f"{batch}x{c}x{oh}x{ow} -> {h}x{w}",
                dtype=dtype,
                variant="int8 offsets",
            )
            pool_forward_bytes = plane * e + pooled * (e + 1)
            result.append(
                Case(
                    **common,
                    direction="forward",
                    min_bytes=pool_forward_bytes,
                    reference=lambda x=x: F.max_pool2d(
                        x, 2, 2, ceil_mode=True, return_indices=True
                    ),
                    reference_name="F.max_pool2d (return_indices)",
                    run=lambda x=x: fastops.ops.max_pool2d_with_offsets(x, 2, 2, ceil_mode=True),
                )
            )
            result.append(
                Case(
                    **common,
                    direction="forward+backward",
                    min_bytes=pool_forward_bytes + pooled * (e + 1) + plane * e,
                    reference=forward_backward(
                        lambda x: F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)[0],
                        x,
                        grad_pooled,
                    ),
                    reference_name="F.max_pool2d (return_indices)",
                    run=forward_backward(
                        lambda x: fastops.ops.max_pool2d_with_offsets(x, 2, 2, ceil_mode=True)[0],
                        x,
                        grad_pooled,
                    ),
                )
            )
    return result
