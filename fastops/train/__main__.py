"""``python -m fastops.train MODEL [options]``: train a reference model on the
synthetic shapes, report mIoU (segmentation) or mAP@0.5 (detection) on a
held-out split, and write ``OUTPUT_DIR/MODEL.pt`` and
``OUTPUT_DIR/MODEL_predictions.png``.

    python -m fastops.train unet
    python -m fastops.train fasterrcnn --steps 200 --backend reference
    torchrun --nproc_per_node 2 -m fastops.train segnet   # data-parallel (gloo on CPU)
"""

from __future__ import annotations

import argparse
import json
import sys

from fastops.models.operators import OPERATOR_SETS
from fastops.train.recipes import RECIPES
from fastops.train.trainer import TrainConfig, train


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(
        prog="python -m fastops.train", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("model", choices=sorted(RECIPES))
    parser.add_argument("--steps", type=int, help="optimiser steps (default: the recipe's)")
    parser.add_argument("--batch-size", type=int, help="global batch size (default: the recipe's)")
    parser.add_argument("--learning-rate", "--lr", type=float, help="peak AdamW learning rate")
    parser.add_argument("--image-size", type=int, help="side of the square synthetic images")
    parser.add_argument("--num-classes", type=int, default=3, help="shape classes (1-5)")
    parser.add_argument("--train-samples", type=int, default=4000)
    parser.add_argument("--val-samples", type=int, default=200)
    parser.add_argument(
        "--time-limit", type=float, help="stop training after this many seconds (then evaluate)"
    )
    parser.add_argument(
        "--backend",
        choices=["auto", "cuda", "triton", "cpu", "reference"],
        help="fastops backend for every operator (default: FASTOPS_BACKEND or auto)",
    )
    parser.add_argument(
        "--operators",
        choices=OPERATOR_SETS,
        default="fastops",
        help='"torch" builds the model on the PyTorch/torchvision operators instead',
    )
    parser.add_argument("--device", default="cpu", help='"cpu" or "cuda"')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes")
    parser.add_argument("--output-dir", default="runs")
    args = parser.parse_args(argv)
    return TrainConfig(**{k: v for k, v in vars(args).items()})


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    result = train(config)
    if result.checkpoint is None:  # a torchrun worker other than rank 0
        return 0
    print(
        f"{result.model}: {result.steps} steps in {result.train_seconds:.0f} s, "
        f"final loss {result.final_loss:.4f}, {result.metric_name} {result.metric:.4f}"
    )
    print("per class:", json.dumps([round(v, 4) for v in result.per_class]))
    print(f"checkpoint: {result.checkpoint}")
    print(f"predictions: {result.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
