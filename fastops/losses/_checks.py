"""Argument checks shared by the segmentation losses.

Value checks on labels and probabilities (ranges) read the tensor's data: on
a GPU that is one synchronisation, so they run in eager mode only. While
torch.compile traces or a CUDA graph is captured they are skipped, and the
kernels give such values a defined meaning instead (documented per function).
"""

from __future__ import annotations

import torch


def can_check_values(tensor: torch.Tensor) -> bool:
    """Whether reading ``tensor``'s values on the host is allowed now."""
    if torch.compiler.is_compiling():
        return False
    return not (tensor.is_cuda and torch.cuda.is_current_stream_capturing())


def check_floating(name: str, tensor: torch.Tensor) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {tensor.dtype}")


def as_labels(name: str, labels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``labels`` as int64 on ``like``'s device, or a TypeError/ValueError naming it."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise TypeError(f"{name} must have an integer (or bool) dtype, got {labels.dtype}")
    if labels.device != like.device:
        raise ValueError(f"{name} is on {labels.device} but the predictions are on {like.device}")
    return labels.long()


def check_label_values(
    name: str, labels: torch.Tensor, allowed: str, low: int, high: int, ignore: int | None
) -> None:
    """Every label not equal to ``ignore`` lies in [low, high]."""
    if labels.numel() == 0 or not can_check_values(labels):
        return
    checked = labels if ignore is None else labels[labels != ignore]
    if checked.numel() == 0:
        return
    smallest, largest = torch.aminmax(checked)
    smallest, largest = int(smallest), int(largest)
    if smallest < low or largest > high:
        bad = smallest if smallest < low else largest
        suffix = "" if ignore is None else f" or the ignore value {ignore}"
        raise ValueError(f"{name} must be {allowed}{suffix}; found {bad}")


def check_probabilities(name: str, probas: torch.Tensor) -> None:
    """Values in [0, 1] (NaN allowed: it propagates), else a hint to pass logits."""
    if probas.numel() == 0 or not can_check_values(probas):
        return
    finite = probas.detach().nan_to_num(0.5)
    smallest, largest = torch.aminmax(finite)
    if float(smallest) < 0 or float(largest) > 1:
        raise ValueError(
            f"{name} must be probabilities in [0, 1], found values in "
            f"[{float(smallest):g}, {float(largest):g}]; pass from_logits=True for logits"
        )


def check_same_batch(name: str, tensor: torch.Tensor, predictions: torch.Tensor) -> None:
    if tensor.dim() == 0 or tensor.shape[0] != predictions.shape[0]:
        raise ValueError(
            f"{name} must have the batch size of the predictions ({predictions.shape[0]}), "
            f"got shape {tuple(tensor.shape)}"
        )


def check_classes_list(name: str, classes, num_classes: int) -> list[int]:
    if isinstance(classes, torch.Tensor):
        classes = classes.tolist()
    if isinstance(classes, str) or not hasattr(classes, "__iter__"):
        raise TypeError(f"{name} must be a list of class indices, got {classes!r}")
    classes = list(classes)
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, int):
            raise TypeError(f"{name} must hold ints, got {c!r}")
        if not 0 <= c < num_classes:
            raise ValueError(f"{name}: class {c} is out of range for {num_classes} classes")
    return classes


def check_optional_int(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"{name} must be an int or None, got {value!r}")
