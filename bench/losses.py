"""Benchmark cases of the segmentation losses, forward + backward, against the
implementations they replace, in the same run:

- lovasz_softmax (from logits, ignore 255): Berman's reference functions
  (segmentation_models_pytorch's copy, on softmax probabilities), per batch
  and per image, and a vectorised single-sort PyTorch version (below); the
  measured floor is one torch.sort of as many (error, index) pairs.
- soft_dice_loss (multiclass, from logits): segmentation_models_pytorch's
  DiceLoss. bce_dice_loss (multilabel): the plain PyTorch composition.

Shapes: Cityscapes 8x19x512x1024, Pascal VOC 16x21x512x512 and (Lovász)
ADE20K 16x150x512x512 on a GPU; on the CPU the batch and the resolution are
cut (same class counts) so that the Python-loop references finish.

Byte floor of Dice fwd+bwd: read logits and targets twice, write the gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.cases import Case, forward_backward, on_backend
from fastops import losses, reference

FAMILY = "losses"
IGNORE = 255
GPU_SHAPES = [
    ("Cityscapes", 8, 19, 512, 1024),
    ("Pascal VOC", 16, 21, 512, 512),
    ("ADE20K", 16, 150, 512, 512),
]
CPU_SHAPES = [
    ("Cityscapes /4", 2, 19, 128, 256),
    ("Pascal VOC /4", 2, 21, 128, 128),
    ("ADE20K /4", 1, 150, 128, 128),
]


def lovasz_softmax_vectorised(logits, labels, per_image=False, ignore=None):
    """Lovász-softmax ('present') with every (unit, class) segment sorted by one
    batched torch.sort: the fastest plain-PyTorch form we know (baseline (c) of
    notes/losses.md, with the per-class foreground the reference uses)."""
    n, c = logits.shape[:2]
    probas = logits.softmax(1).permute(0, 2, 3, 1).reshape(n if per_image else 1, -1, c)
    labels = labels.reshape(probas.shape[:2])
    valid = torch.ones_like(labels, dtype=torch.bool) if ignore is None else labels != ignore
    fg = F.one_hot(torch.where(valid, labels, 0), c).to(probas.dtype) * valid.unsqueeze(-1)
    errors = torch.where(valid.unsqueeze(-1), (fg - probas).abs(), -1.0)
    errors_sorted, order = torch.sort(errors.transpose(1, 2), dim=-1, descending=True)
    fg_sorted = torch.gather(fg.transpose(1, 2), -1, order)
    total = fg_sorted.sum(-1, keepdim=True)
    intersection = total - fg_sorted.cumsum(-1)
    union = total + (1 - fg_sorted).cumsum(-1)
    jaccard = 1 - intersection / union
    gradient = torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], -1)
    class_losses = (errors_sorted.clamp_min(0) * gradient).sum(-1)
    present = (total[..., 0] > 0).to(class_losses.dtype)
    unit_losses = (class_losses * present).sum(-1) / present.sum(-1).clamp_min(1)
    return unit_losses.mean()


def bce_dice_composed(logits, target, dice_weight=1.0, smooth=1.0):
    """BCE − ln(Dice) as a user writes it in PyTorch (fastops.losses.bce_dice_loss's definition)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    dims = (0, 2, 3)
    dice = (2 * (p * target).sum(dims) + smooth) / (p.sum(dims) + target.sum(dims) + smooth)
    return bce - dice_weight * torch.log(dice).mean()


def _labels(n, c, h, w, device):
    """Blocky labels (regions of 16x16 pixels) with 5% ignored: every class present."""
    coarse = torch.randint(0, c, (n, (h + 15) // 16, (w + 15) // 16), device=device)
    labels = coarse.repeat_interleave(16, 1).repeat_interleave(16, 2)[:, :h, :w].contiguous()
    labels[torch.rand(labels.shape, device=device) < 0.05] = IGNORE
    return labels


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    gpu = device.type == "cuda"
    shapes = GPU_SHAPES if gpu else CPU_SHAPES
    dtypes = [torch.float32, torch.bfloat16]
    if quick:
        shapes, dtypes = shapes[:1], dtypes[:1]
    result = []
    for name, n, c, h, w in shapes:
        labels = _labels(n, c, h, w, device)
        for dtype in dtypes:
            result += _shape_cases(
                name, labels, torch.randn(n, c, h, w, device=device, dtype=dtype)
            )
    return result


def _shape_cases(name: str, labels: torch.Tensor, logits: torch.Tensor) -> list[Case]:
    """The Lovász, Dice and BCE − ln(Dice) rows of one shape and dtype (a function, so
    that every closure binds this shape's tensors)."""
    try:
        from segmentation_models_pytorch.losses import DiceLoss as SmpDiceLoss
        from segmentation_models_pytorch.losses.lovasz import (
            _lovasz_softmax as berman_lovasz_softmax,
        )

        smp_found = True
    except ImportError:
        # The GPU machine has no network to install it: fall back to the plain-PyTorch
        # references, which follow the same per-class loop and one-hot sums (named in the rows).
        smp_found = False
        berman_lovasz_softmax = reference.lovasz_softmax

        def SmpDiceLoss(mode):
            return lambda x, y: on_backend("reference", lambda: losses.soft_dice_loss(x, y, mode))()

    n, c, h, w = logits.shape
    device, dtype = logits.device, logits.dtype
    gpu = device.type == "cuda"
    common = dict(
        family=FAMILY,
        name=name,
        shape=f"{n}x{c}x{h}x{w}",
        dtype=dtype,
        direction="forward+backward",
    )
    elements = logits.numel()
    sort_keys = torch.rand(elements, device=device)
    result = []
    for per_image in (False, True):

        def ours(x, per_image=per_image):
            return losses.lovasz_softmax(x, labels, "present", per_image, IGNORE, from_logits=True)

        # Both run in float32: the reference's float32 Lovász gradient cannot be
        # dotted with bfloat16 errors, and bfloat16 cumsums stop counting at 256.
        def berman(x, per_image=per_image):
            return berman_lovasz_softmax(x.float().softmax(1), labels, "present", per_image, IGNORE)

        def vectorised(x, per_image=per_image):
            return lovasz_softmax_vectorised(x.float(), labels, per_image, IGNORE)

        result.append(
            Case(
                **common,
                op="lovasz_softmax",
                variant=f"per_image={per_image}, from logits",
                min_bytes=0,
                reference=forward_backward(berman, logits, None),
                reference_name=(
                    "Berman lovasz_softmax (smp copy)"
                    if smp_found
                    else "per-class loop (fastops.reference)"
                )
                + " / vectorised single sort",
                references={
                    "berman": forward_backward(berman, logits, None),
                    "vectorised": forward_backward(vectorised, logits, None),
                },
                floors={"torch.sort": lambda: torch.sort(sort_keys, descending=True)},
                run=forward_backward(ours, logits, None),
                # The per-class Python loops take seconds at ADE20K's 150 classes.
                runs=(5 if c > 100 else 10) if gpu else None,
            )
        )
    if c > 100:
        return result  # Dice rows: Cityscapes and VOC
    dice_ours = losses.DiceLoss("multiclass")
    dice_smp = SmpDiceLoss("multiclass")
    clean_labels = torch.where(labels == IGNORE, 0, labels)
    result.append(
        Case(
            **common,
            op="soft_dice_loss",
            variant="multiclass, from logits",
            min_bytes=3 * elements * dtype.itemsize + 2 * n * h * w * 8,
            reference=forward_backward(lambda x: dice_smp(x, clean_labels), logits, None),
            reference_name="smp DiceLoss" if smp_found else "one-hot reference (fastops.reference)",
            run=forward_backward(lambda x: dice_ours(x, clean_labels), logits, None),
        )
    )
    target = (torch.rand(n, c, h, w, device=device) < 0.3).to(dtype)
    result.append(
        Case(
            **common,
            op="bce_dice_loss",
            variant="multilabel",
            min_bytes=5 * elements * dtype.itemsize,
            reference=forward_backward(lambda x: bce_dice_composed(x, target), logits, None),
            reference_name="PyTorch composition",
            run=forward_backward(lambda x: losses.bce_dice_loss(x, target), logits, None),
        )
    )
    return result
