"""The training loop behind ``python -m fastops.train``: data, losses,
optimisation, distributed data parallelism, evaluation, checkpoint and figure."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import fastops
from fastops.data import SyntheticShapes, detection_collate, segmentation_collate
from fastops.losses import lovasz_softmax, soft_dice_loss
from fastops.train.figures import save_detection_figure, save_segmentation_figure
from fastops.train.metrics import ConfusionMatrix, mean_average_precision
from fastops.train.recipes import DETECTION, RECIPES, Recipe


@dataclass
class TrainConfig:
    """One run; ``None`` means the recipe's value."""

    model: str
    steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    image_size: int | None = None
    num_classes: int = 3
    train_samples: int = 4000
    val_samples: int = 200
    time_limit: float | None = None
    backend: str | None = None
    operators: str = "fastops"
    device: str = "cpu"
    seed: int = 0
    workers: int = 0
    output_dir: str = "runs"
    figure_images: int = 6


@dataclass
class TrainResult:
    model: str
    steps: int
    train_seconds: float
    final_loss: float
    metric_name: str
    metric: float
    per_class: list[float]
    checkpoint: str | None
    figure: str | None


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment, (0, 1, 0) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def _batches(loader: torch.utils.data.DataLoader) -> Iterator:
    epoch = 0
    while True:
        sampler = loader.sampler
        if isinstance(sampler, torch.utils.data.distributed.DistributedSampler):
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _out_of_time(start: float, limit: float, world: int) -> bool:
    """Whether the time limit has passed; with several processes, whether it has
    for any of them (they must stop at the same step, or DDP waits forever)."""
    over = torch.tensor(float(time.perf_counter() - start > limit))
    if world > 1:
        dist.all_reduce(over, op=dist.ReduceOp.MAX)
    return bool(over)


def _to(targets: list[dict[str, torch.Tensor]], device: torch.device) -> list[dict]:
    return [{k: v.to(device) for k, v in t.items()} for t in targets]


def segmentation_loss(
    logits: torch.Tensor, labels: torch.Tensor, lovasz_phase: bool
) -> torch.Tensor:
    """Cross-entropy − ln(soft Dice) (the multi-class form of BCE − ln Dice);
    in the fine-tuning phase, the Lovász-softmax loss alone."""
    if lovasz_phase:
        return lovasz_softmax(logits, labels, from_logits=True)
    dice = soft_dice_loss(logits, labels, mode="multiclass", log_loss=True, smooth=1.0)
    return F.cross_entropy(logits, labels) + dice


def _learning_rate(step: int, steps: int, base: float, recipe: Recipe, task: str) -> float:
    """Linear warm-up over 5% of the steps, then cosine decay; the Lovász
    fine-tune of segmentation runs at a tenth of the base rate."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return base * (step + 1) / warmup
    if task != DETECTION and step >= steps * (1 - recipe.lovasz_fraction):
        return base * 0.1
    progress = (step - warmup) / max(1, steps - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: SyntheticShapes,
    task: str,
    num_classes: int,
    device: torch.device,
    batch_size: int,
) -> tuple[float, list[float], tuple]:
    """(mIoU or mAP@0.5, per-class values, first batch's images/truths/predictions)."""
    model.eval()
    collate = detection_collate if task == DETECTION else segmentation_collate
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    first = None
    if task == DETECTION:
        detections, truths = [], []
        for images, targets in loader:
            found = [{k: v.cpu() for k, v in d.items()} for d in model(images.to(device))]
            detections += found
            truths += targets
            first = first or (images, targets, found)
        value, per_class = mean_average_precision(detections, truths, num_classes)
    else:
        confusion = ConfusionMatrix(num_classes)
        for images, labels in loader:
            predicted = model(images.to(device)).argmax(1).cpu()
            confusion.update(predicted, labels)
            first = first or (images, labels, predicted)
        value, per_class = confusion.mean_iou(), confusion.iou().tolist()
    return value, per_class, first


def train(config: TrainConfig) -> TrainResult:
    """Trains ``config.model`` (one of :data:`RECIPES`), evaluates it on a held-out
    synthetic split, saves a checkpoint and a PNG under ``config.output_dir``.
    Under ``torchrun`` every process trains on its share of each batch through
    DistributedDataParallel (gloo on CPU, NCCL on CUDA); rank 0 evaluates and
    writes."""
    if config.model not in RECIPES:
        raise ValueError(f"unknown model {config.model!r}; choose one of {sorted(RECIPES)}")
    recipe = RECIPES[config.model]
    steps = config.steps if config.steps is not None else recipe.steps
    batch_size = config.batch_size or recipe.batch_size
    base_lr = config.learning_rate or recipe.learning_rate
    image_size = config.image_size or recipe.image_size
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")

    rank, world, local_rank = _distributed()
    device = torch.device(config.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        else:
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if batch_size % world:
        raise ValueError(f"batch size {batch_size} is not divisible by {world} processes")
    if config.backend is not None:
        fastops.set_backend(config.backend)

    torch.manual_seed(config.seed)  # same initial weights in every process
    train_set = SyntheticShapes(
        config.train_samples,
        image_size,
        config.num_classes,
        recipe.max_objects,
        split="train",
        seed=config.seed,
    )
    val_set = SyntheticShapes(
        config.val_samples,
        image_size,
        config.num_classes,
        recipe.max_objects,
        split="val",
        seed=config.seed,
    )
    num_classes = len(train_set.class_names)
    model = recipe.build(num_classes, config.operators).to(device)
    trained = model
    if world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=recipe.task == DETECTION,
        )
    sampler = (
        torch.utils.data.distributed.DistributedSampler(train_set, world, rank, seed=config.seed)
        if world > 1
        else torch.utils.data.RandomSampler(
            train_set, generator=torch.Generator().manual_seed(config.seed)
        )
    )
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=batch_size // world,
        sampler=sampler,
        collate_fn=detection_collate if recipe.task == DETECTION else segmentation_collate,
        drop_last=True,
        num_workers=config.workers,
        persistent_workers=config.workers > 0,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=base_lr, weight_decay=recipe.weight_decay)

    out_dir = Path(config.output_dir)
    progress = tqdm(
        total=steps, desc=f"train {config.model}", disable=rank != 0, dynamic_ncols=True
    )
    batches = _batches(loader)
    start = time.perf_counter()
    smoothed = float("nan")
    done = 0
    model.train()
    for step in range(steps):
        if config.time_limit is not None and _out_of_time(start, config.time_limit, world):
            break
        lr = _learning_rate(step, steps, base_lr, recipe, recipe.task)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, targets = next(batches)
        images = images.to(device)
        if recipe.task == DETECTION:
            losses = trained(images, _to(targets, device))
            loss = sum(losses.values())
        else:
            lovasz_phase = step >= steps * (1 - recipe.lovasz_fraction)
            loss = segmentation_loss(trained(images), targets.to(device), lovasz_phase)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        smoothed = value if smoothed != smoothed else 0.9 * smoothed + 0.1 * value
        progress.set_postfix(loss=f"{smoothed:.3f}", lr=f"{lr:.1e}")
        progress.update()
        done += 1
    progress.close()
    train_seconds = time.perf_counter() - start

    result = TrainResult(
        model=config.model,
        steps=done,
        train_seconds=train_seconds,
        final_loss=smoothed,
        metric_name="mAP@0.5" if recipe.task == DETECTION else "mIoU",
        metric=float("nan"),
        per_class=[],
        checkpoint=None,
        figure=None,
    )
    if rank == 0:
        metric, per_class, (images, truths, predictions) = evaluate(
            model, val_set, recipe.task, num_classes, device, batch_size
        )
        result.metric, result.per_class = metric, per_class
        out_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = out_dir / f"{config.model}.pt"
        torch.save(
            {
                "model": config.model,
                "state_dict": model.state_dict(),
                "num_classes": num_classes,
                "config": asdict(config),
                "result": asdict(result),
            },
            checkpoint,
        )
        figure = out_dir / f"{config.model}_predictions.png"
        shown = config.figure_images
        if recipe.task == DETECTION:
            save_detection_figure(
                figure, images[:shown], truths[:shown], predictions[:shown], val_set.class_names
            )
        else:
            save_segmentation_figure(
                figure, images[:shown], truths[:shown], predictions[:shown], val_set.class_names
            )
        result.checkpoint, result.figure = str(checkpoint), str(figure)
    if world > 1:
        with contextlib.suppress(Exception):
            dist.barrier()
        dist.destroy_process_group()
    return result
