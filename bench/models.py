"""End-to-end benchmark cases of the reference models: the same network, with
the same weights, built on the fastops operators (``operators="fastops"``,
timed on each fastops backend) and on the PyTorch/torchvision operators it
replaces (``operators="torch"``), in eval-mode forward and as a training step
(forward, loss, backward).

The fastops operators are a part of each network (convolutions, batch norm and
the GEMMs of the heads are PyTorch's in both), so these rows show how much of
an operator's speed-up reaches a whole model; the per-operator rows show the
operators alone. There is no byte floor for a whole network (min_bytes 0).

Shapes: SegNet at CamVid's 360x480 and U-Net at 512x512 with the papers'
widths, Faster/Mask R-CNN on a ResNet-18-width FPN at 512x512 on a GPU; on the
CPU the widths and sizes of ``python -m fastops.train``'s recipes, a little
larger, so that a round takes seconds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.cases import Case
from fastops.data import SyntheticShapes, detection_collate

FAMILY = "models"
NUM_CLASSES = 4  # background and three shapes


def _segmentation_models(gpu: bool) -> list[tuple[str, str, int, int, int, dict]]:
    """(model class, case name, batch, height, width, constructor arguments)."""
    if gpu:
        return [
            ("SegNet", "CamVid", 4, 360, 480, {"base_channels": 64}),
            ("UNet", "512x512", 4, 512, 512, {"base_channels": 64}),
        ]
    return [
        ("SegNet", "synthetic", 8, 96, 128, {"base_channels": 16}),
        ("UNet", "synthetic", 8, 128, 128, {"base_channels": 16}),
    ]


def _detection_models(gpu: bool) -> list[tuple[str, str, int, int, dict]]:
    """(model class, case name, batch, image size, constructor arguments)."""
    if gpu:
        wide = {"backbone_widths": (64, 128, 256, 512), "backbone_blocks": (2, 2, 2, 2)}
        return [
            ("FasterRCNN", "ResNet-18 FPN", 4, 512, wide),
            ("MaskRCNN", "ResNet-18 FPN", 4, 512, wide),
        ]
    return [("FasterRCNN", "synthetic", 4, 128, {}), ("MaskRCNN", "synthetic", 4, 128, {})]


def _twins(cls, device, **kwargs) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The model on fastops operators and the same weights on PyTorch's."""
    ours = cls(NUM_CLASSES, operators="fastops", **kwargs).to(device)
    theirs = cls(NUM_CLASSES, operators="torch", **kwargs).to(device)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _forward(model: torch.nn.Module, *inputs):
    """Eval-mode forward without autograd."""

    def run():
        with torch.no_grad():
            model.eval()
            return model(*inputs)

    return run


def _training_step(model: torch.nn.Module, loss_of):
    """Train-mode forward, ``loss_of(model)`` and its backward."""

    def run():
        model.train()
        model.zero_grad(set_to_none=True)
        loss_of(model).backward()

    return run


def _model_cases(
    model_name: str, case_name: str, shape: str, ours, theirs, inputs, loss_of, loss_name: str
) -> list[Case]:
    """The forward and training-step rows of one model (a function, so that every
    closure binds this model's tensors)."""
    common = dict(
        family=FAMILY,
        op=model_name,
        name=case_name,
        shape=shape,
        dtype=torch.float32,
        min_bytes=0,
        reference_name=f"{model_name}(operators='torch')",
        runs=20,
    )
    return [
        Case(
            **common,
            direction="forward",
            variant="eval",
            reference=_forward(theirs, *inputs),
            run=_forward(ours, *inputs),
        ),
        Case(
            **common,
            direction="training step",
            variant=f"{loss_name}, forward+backward",
            reference=_training_step(theirs, loss_of),
            run=_training_step(ours, loss_of),
        ),
    ]


def _segmentation_cases(device: torch.device, quick: bool) -> list[Case]:
    from fastops.models import segmentation

    result = []
    for model_name, case_name, n, h, w, kwargs in _segmentation_models(device.type == "cuda"):
        ours, theirs = _twins(getattr(segmentation, model_name), device, **kwargs)
        images = torch.rand(n, 3, h, w, device=device)
        labels = torch.randint(0, NUM_CLASSES, (n, h, w), device=device)

        def loss_of(model, images=images, labels=labels):
            return F.cross_entropy(model(images), labels)

        shape = f"{n}x3x{h}x{w}"
        result += _model_cases(
            model_name, case_name, shape, ours, theirs, (images,), loss_of, "cross-entropy"
        )
        if quick:
            break
    return result


def _detection_cases(device: torch.device, quick: bool) -> list[Case]:
    from fastops.models import detection

    result = []
    for model_name, case_name, n, size, kwargs in _detection_models(device.type == "cuda"):
        ours, theirs = _twins(getattr(detection, model_name), device, **kwargs)
        data = SyntheticShapes(n, size, NUM_CLASSES - 1, max_objects=6, split="test")
        images, targets = detection_collate([data[i] for i in range(n)])
        images = images.to(device)
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]

        def loss_of(model, images=images, targets=targets):
            return sum(model(images, targets).values())

        shape = f"{n}x3x{size}x{size}"
        result += _model_cases(
            model_name, case_name, shape, ours, theirs, (images,), loss_of, "sum of losses"
        )
        if quick:
            break
    return result


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    return _segmentation_cases(device, quick) + _detection_cases(device, quick)
