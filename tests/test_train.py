"""The training script: its metrics against hand-computed values, the command
line end to end (checkpoint, figure, metric), and data-parallel training under
torchrun with gloo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastops.train import ConfusionMatrix, average_precision, mean_average_precision

ROOT = Path(__file__).resolve().parents[1]


# --- metrics --------------------------------------------------------------------------------


def test_confusion_matrix_iou_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 0]])
    prediction = torch.tensor([[0, 1, 1, 1], [2, 2, 0, 0]])
    confusion = ConfusionMatrix(4)
    confusion.update(prediction, target)
    # class 0: TP 2 (both (0,0) and (1,3)), FP 1 ((1,2)), FN 1 ((0,1)) -> 2/4
    # class 1: TP 2, FP 1, FN 0 -> 2/3;  class 2: TP 2, FP 0, FN 1 -> 2/3;  class 3 absent
    iou = confusion.iou()
    torch.testing.assert_close(iou[:3], torch.tensor([0.5, 2 / 3, 2 / 3], dtype=torch.float64))
    assert torch.isnan(iou[3])
    assert confusion.mean_iou() == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    assert confusion.pixel_accuracy() == pytest.approx(6 / 8)


def test_confusion_matrix_accumulates_and_ignores():
    confusion = ConfusionMatrix(3, ignore_index=255)
    labels = torch.randint(0, 3, (2, 5, 7))
    labels[0, 0, :3] = 255
    confusion.update(labels.clone(), labels)
    confusion.update(labels.clone(), labels)
    assert confusion.matrix.sum() == 2 * (labels != 255).sum()
    assert confusion.mean_iou() == 1.0
    with pytest.raises(ValueError, match="shape"):
        confusion.update(labels[0], labels)


def _image(boxes, labels, scores=None):
    result = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }
    if scores is not None:
        result["scores"] = torch.tensor(scores, dtype=torch.float32)
    return result


def test_average_precision_by_hand():
    truth = _image([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1])
    found = _image(
        [[0, 0, 10, 10], [50, 50, 60, 60], [21, 21, 30, 30], [0, 0, 10, 10]],
        [1, 1, 1, 1],
        [0.9, 0.8, 0.7, 0.6],  # TP, FP, TP (IoU 0.81), duplicate of the first: FP
    )
    # precision 1, 1/2, 2/3, 1/2 at recall 1/2, 1/2, 1, 1: envelope 1, 2/3, 2/3
    assert average_precision([found], [truth], 1) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert average_precision([found], [truth], 1, iou_threshold=0.9) == pytest.approx(0.5)


def test_average_precision_ranks_across_images_and_classes():
    truths = [_image([[0, 0, 10, 10]], [1]), _image([[0, 0, 10, 10]], [2])]
    found = [
        _image([[0, 0, 10, 10], [0, 0, 10, 10]], [1, 2], [0.3, 0.9]),  # class 2 here is a FP
        _image([[0, 0, 10, 10]], [2], [0.5]),
    ]
    value, per_class = mean_average_precision(found, truths, num_classes=4)
    # class 1: one TP -> 1; class 2: FP (0.9) then TP (0.5) -> 1/2; class 3: no truth -> NaN
    assert per_class[0] == pytest.approx(1.0)
    assert per_class[1] == pytest.approx(0.5)
    assert per_class[2] != per_class[2]
    assert value == pytest.approx(0.75)
    assert mean_average_precision([_image([], [], [])], [_image([[0, 0, 1, 1]], [1])], 2)[0] == 0


# --- the command line -----------------------------------------------------------------------


def _run(args: list[str], tmp_path: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FASTOPS_BACKEND": "cpu"}
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run(
        args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )


SMALL_RUN = [
    "--steps",
    "4",
    "--batch-size",
    "4",
    "--train-samples",
    "16",
    "--val-samples",
    "4",
]


@pytest.mark.parametrize(
    ("model", "image_size"), [("unet", 32), ("segnet", 32), ("fasterrcnn", 64), ("ssd", 64)]
)
def test_command_line_trains_evaluates_and_writes(tmp_path, model, image_size):
    out = tmp_path / "out"
    run = _run(
        [
            sys.executable,
            "-m",
            "fastops.train",
            model,
            *SMALL_RUN,
            "--image-size",
            str(image_size),
            "--output-dir",
            str(out),
        ],
        tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "mIoU" in run.stdout or "mAP@0.5" in run.stdout
    checkpoint = torch.load(out / f"{model}.pt", weights_only=False)
    assert checkpoint["model"] == model
    assert checkpoint["result"]["steps"] == 4
    metric = checkpoint["result"]["metric"]
    assert 0.0 <= metric <= 1.0
    assert (out / f"{model}_predictions.png").stat().st_size > 1000


def test_command_line_rejects_unknown_model(tmp_path):
    run = _run([sys.executable, "-m", "fastops.train", "alexnet"], tmp_path)
    assert run.returncode != 0
    assert "invalid choice" in run.stderr


@pytest.mark.slow
def test_torchrun_data_parallel_gloo(tmp_path):
    """Two processes under torchrun (gloo): each takes half of every batch,
    DDP averages the gradients, rank 0 alone evaluates and writes."""
    out = tmp_path / "out"
    run = _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "fastops.train",
            "unet",
            *SMALL_RUN,
            "--image-size",
            "32",
            "--output-dir",
            str(out),
        ],
        tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    checkpoint = torch.load(out / "unet.pt", weights_only=False)
    assert checkpoint["result"]["steps"] == 4
    assert run.stdout.count("mIoU") == 1  # only rank 0 reports
