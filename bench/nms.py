"""Benchmark cases of nms, batched_nms and nms_padded against torchvision.

Boxes are detector-like proposals: jittered copies of N/10 objects of sizes
8-160 px in a 400x400 image plus their spread, scores a random permutation (no
ties), threshold 0.5 (0.7 is the RPN's; 0.5 the detection head's).

NMS moves little data (N boxes in, K indices out) and does O(N^2 / 2) IoUs on
the GPU (O(N * K) on the CPU), so rows carry no byte floor; what matters is
the time against torchvision's. torchvision's CPU nms takes over 10 s at 100k
boxes, so on the CPU the single-class sizes stop at 30k.
"""

from __future__ import annotations

import torch
import torchvision

import fastops
from bench.cases import Case

FAMILY = "nms"
NMS_SIZES = [1_000, 5_000, 10_000, 30_000, 100_000]
BATCHED = [(80, 5_000), (80, 20_000), (80, 100_000), (1200, 5_000), (1200, 20_000), (1200, 100_000)]
THRESHOLD = 0.5


def proposals(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    objects = max(1, n // 10)
    centre = torch.rand(objects, 2) * 400
    size = torch.exp(torch.rand(objects, 2) * 3) * 8
    which = torch.randint(0, objects, (n,))
    c = centre[which] + torch.randn(n, 2) * size[which] * 0.15
    s = size[which] * torch.exp(torch.randn(n, 2) * 0.15)
    boxes = torch.cat([c - s / 2, c + s / 2], dim=1)
    scores = (torch.randperm(n).float() + 1) / (n + 1)
    return boxes.to(device), scores.to(device)


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    sizes = NMS_SIZES if device.type == "cuda" else [n for n in NMS_SIZES if n <= 30_000]
    batched = BATCHED
    if quick:
        sizes, batched = sizes[:2], batched[:1]
    result = []
    for n in sizes:
        boxes, scores = proposals(n, device)
        common = dict(
            family=FAMILY, name=f"{n} boxes", shape=f"{n}x4", dtype=boxes.dtype, min_bytes=0
        )
        result.append(
            Case(
                **common,
                op="nms",
                direction="forward",
                variant="1 class",
                reference=lambda b=boxes, s=scores: torchvision.ops.nms(b, s, THRESHOLD),
                reference_name="torchvision.ops.nms",
                run=lambda b=boxes, s=scores: fastops.ops.nms(b, s, THRESHOLD),
            )
        )
        if n <= 10_000:
            result.append(
                Case(
                    **common,
                    op="nms_padded",
                    direction="forward",
                    variant="1 class, max_output 300",
                    reference=lambda b=boxes, s=scores: torchvision.ops.nms(b, s, THRESHOLD)[:300],
                    reference_name="torchvision.ops.nms",
                    run=lambda b=boxes, s=scores: fastops.ops.nms_padded(b, s, THRESHOLD, 300),
                    graph=True,
                )
            )
    for classes, n in batched:
        boxes, scores = proposals(n, device)
        idxs = torch.randint(0, classes, (n,), device=device)
        result.append(
            Case(
                family=FAMILY,
                op="batched_nms",
                name=f"{n} boxes",
                shape=f"{n}x4",
                dtype=boxes.dtype,
                direction="forward",
                variant=f"{classes} classes",
                min_bytes=0,
                reference=lambda b=boxes, s=scores, i=idxs: torchvision.ops.batched_nms(
                    b, s, i, THRESHOLD
                ),
                reference_name="torchvision.ops.batched_nms",
                run=lambda b=boxes, s=scores, i=idxs: fastops.ops.batched_nms(b, s, i, THRESHOLD),
            )
        )
    return result
