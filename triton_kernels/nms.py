"""Triton box IoU, NMS (plain, batched, padded) and soft-NMS.

Same algorithm as the CUDA kernels (csrc/cuda/nms.cu): a 64x64-tile
suppression bit mask of the boxes in score order (grouped by class for
batched NMS, tiles past the row block's class skipped), then one program that
walks the 64-box blocks in order, resolving each block's kept set and OR-ing
the kept rows into the `removed` words of later blocks. IoU follows
csrc/ops/box_iou_math.h operation for operation, with correctly rounded
division (`div_rn`) and no fused multiply-adds (`enable_fp_fusion=False`), so
suppression decisions equal the C++ backends'.

Shapes: boxes ``[N, 4]`` (x1, y1, x2, y2), scores ``[N]``, idxs ``[N]``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastops._poison import empty_output
from fastops.triton_kernels._launch import accumulate_dtype, compute_dtype, interpreting

_BOXES_PER_BLOCK = 64


@triton.jit
def _larger(a, b):
    return tl.where(a < b, b, a)


@triton.jit
def _smaller(a, b):
    return tl.where(b < a, b, a)


@triton.jit
def _iou(ax1, ay1, ax2, ay2, a_area, bx1, by1, bx2, by2, b_area):
    """IoU of (broadcast) boxes a and b, as box_iou_math.h computes it."""
    w = _smaller(ax2, bx2) - _larger(ax1, bx1)
    h = _smaller(ay2, by2) - _larger(ay1, by1)
    inter = _larger(w, 0.0) * _larger(h, 0.0)
    union = (a_area + b_area) - inter
    # Correctly rounded division, as C++'s: float64 `/` already is; float32 `/` is not.
    if inter.dtype == tl.float64:
        iou = inter / union
    else:
        iou = tl.math.div_rn(inter, union)
    return iou


@triton.jit
def _load_boxes(boxes_ptr, rows, valid, COMPUTE_DTYPE: tl.constexpr):
    x1 = tl.load(boxes_ptr + rows * 4 + 0, mask=valid, other=0).to(COMPUTE_DTYPE)
    y1 = tl.load(boxes_ptr + rows * 4 + 1, mask=valid, other=0).to(COMPUTE_DTYPE)
    x2 = tl.load(boxes_ptr + rows * 4 + 2, mask=valid, other=0).to(COMPUTE_DTYPE)
    y2 = tl.load(boxes_ptr + rows * 4 + 3, mask=valid, other=0).to(COMPUTE_DTYPE)
    return x1, y1, x2, y2, (x2 - x1) * (y2 - y1)


@triton.jit
def _mask_kernel(
    boxes_ptr,
    classes_ptr,
    col_end_ptr,
    mask_ptr,
    threshold_ptr,
    n,
    col_blocks,
    HAS_CLASSES: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
):
    """Tile (row block, column block) of the suppression mask, one word per row."""
    row_block = tl.program_id(1).to(tl.int64)
    col_block = tl.program_id(0).to(tl.int64)
    last_block = col_blocks - 1
    if HAS_CLASSES:
        last_block = tl.load(col_end_ptr + row_block)
    if (col_block >= row_block) & (col_block <= last_block):
        offsets = tl.arange(0, 64).to(tl.int64)
        rows = row_block * 64 + offsets
        cols = col_block * 64 + offsets
        row_valid = rows < n
        col_valid = cols < n
        rx1, ry1, rx2, ry2, r_area = _load_boxes(boxes_ptr, rows, row_valid, COMPUTE_DTYPE)
        cx1, cy1, cx2, cy2, c_area = _load_boxes(boxes_ptr, cols, col_valid, COMPUTE_DTYPE)
        iou = _iou(
            rx1[:, None], ry1[:, None], rx2[:, None], ry2[:, None], r_area[:, None],
            cx1[None, :], cy1[None, :], cx2[None, :], cy2[None, :], c_area[None, :],
        )  # fmt: skip
        threshold = tl.load(threshold_ptr)  # in the compute dtype, as the C++ kernels compare
        hit = (iou > threshold) & col_valid[None, :] & (cols[None, :] > rows[:, None])
        if HAS_CLASSES:
            row_class = tl.load(classes_ptr + rows, mask=row_valid, other=-1)
            col_class = tl.load(classes_ptr + cols, mask=col_valid, other=-2)
            hit = hit & (row_class[:, None] == col_class[None, :])
        bits = tl.sum(tl.where(hit, tl.full((64, 64), 1, tl.int64) << offsets[None, :], 0), axis=1)
        tl.store(mask_ptr + rows * col_blocks + col_block, bits, mask=row_valid)


@triton.jit
def _or(a, b):
    return a | b


@triton.jit
def _scan_kernel(
    mask_ptr,
    col_end_ptr,
    removed_ptr,
    positions_ptr,
    count_ptr,
    n,
    col_blocks,
    max_output,
    HAS_CLASSES: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    """One program: walks the 64-box blocks in order (see the module docstring)."""
    offsets = tl.arange(0, 64).to(tl.int64)
    count = tl.zeros((), tl.int64)
    for b in range(col_blocks):
        if count < max_output:
            rows = b * 64 + offsets
            row_valid = rows < n
            diagonal = tl.load(mask_ptr + rows * col_blocks + b, mask=row_valid, other=0)
            gone = tl.load(removed_ptr + b)
            kept = tl.zeros((), tl.int64)
            block_count = tl.zeros((), tl.int64)
            for r in tl.static_range(64):
                take = (
                    (((gone >> r) & 1) == 0) & (b * 64 + r < n) & (count + block_count < max_output)
                )
                row_word = tl.sum(tl.where(offsets == r, diagonal, 0), axis=0)
                tl.store(positions_ptr + count + block_count, b * 64 + r, mask=take)
                kept = kept | tl.where(take, tl.full((), 1, tl.int64) << r, 0)
                gone = gone | tl.where(take, row_word, 0)
                block_count += take.to(tl.int64)
            if kept != 0:
                last = col_blocks - 1
                if HAS_CLASSES:
                    last = tl.load(col_end_ptr + b)
                kept_rows = ((kept >> offsets) & 1) != 0
                for j0 in range(b + 1, last + 1, BLOCK_J):
                    js = j0 + tl.arange(0, BLOCK_J)
                    words = tl.load(
                        mask_ptr + rows[:, None] * col_blocks + js[None, :],
                        mask=kept_rows[:, None] & (js[None, :] <= last),
                        other=0,
                    )
                    merged = tl.reduce(words, 0, _or)
                    old = tl.load(removed_ptr + js, mask=js <= last, other=0)
                    tl.store(removed_ptr + js, old | merged, mask=js <= last)
            count += block_count
    tl.store(count_ptr, count)


def nms_sorted(
    boxes: torch.Tensor, classes: torch.Tensor | None, iou_threshold: float, max_output: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy suppression of boxes in order (grouped by class when given):
    kept positions, ascending, padded with -1 to max_output, and their count."""
    n = boxes.shape[0]
    col_blocks = triton.cdiv(n, _BOXES_PER_BLOCK)
    mask = torch.empty(n * col_blocks, dtype=torch.int64, device=boxes.device)
    col_end = None
    if classes is not None:
        # Last column block holding the class of each row block's last box.
        last_rows = torch.clamp(torch.arange(col_blocks, device=boxes.device) * 64 + 63, max=n - 1)
        col_end = (torch.searchsorted(classes, classes[last_rows], right=True) - 1) // 64
    threshold = torch.tensor(
        [iou_threshold], dtype=accumulate_dtype(boxes.dtype), device=boxes.device
    )
    _mask_kernel[(col_blocks, col_blocks)](
        boxes, classes, col_end, mask, threshold, n, col_blocks,
        HAS_CLASSES=classes is not None, COMPUTE_DTYPE=compute_dtype(boxes.dtype), enable_fp_fusion=False,
    )  # fmt: skip
    removed = torch.zeros(col_blocks, dtype=torch.int64, device=boxes.device)
    positions = torch.full((max_output,), -1, dtype=torch.int64, device=boxes.device)
    count = torch.zeros((), dtype=torch.int64, device=boxes.device)
    _scan_kernel[(1,)](
        mask, col_end, removed, positions, count, n, col_blocks, max_output,
        HAS_CLASSES=classes is not None, BLOCK_J=64,
    )  # fmt: skip
    return positions, count


def _suppress(boxes, scores, idxs, iou_threshold: float, padded_length: int):
    """The device-independent steps of csrc/ops/nms.cpp, with nms_sorted."""
    n = boxes.shape[0]
    order = torch.sort(scores, stable=True, descending=True).indices
    if idxs is None:
        positions, count = nms_sorted(boxes[order].contiguous(), None, iou_threshold, padded_length)
        return torch.where(positions >= 0, order[positions.clamp(min=0)], -1), count
    classes_by_score = idxs.long()[order]
    by_class = torch.sort(classes_by_score, stable=True).indices
    sorted_boxes = boxes[order[by_class]].contiguous()
    positions, count = nms_sorted(
        sorted_boxes, classes_by_score[by_class].contiguous(), iou_threshold, n
    )
    ranks = torch.where(positions >= 0, by_class[positions.clamp(min=0)], n)
    ranks = torch.sort(ranks).values
    kept = torch.where(ranks < n, order[ranks.clamp(max=n - 1)], -1)
    return kept[:padded_length], count.clamp(max=padded_length)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    kept, count = _suppress(boxes, scores, None, iou_threshold, boxes.shape[0])
    return kept[: int(count)]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    kept, count = _suppress(boxes, scores, idxs, iou_threshold, boxes.shape[0])
    return kept[: int(count)]


def nms_padded(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor | None,
    iou_threshold: float,
    max_output: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    padded = torch.full((max_output,), -1, dtype=torch.int64, device=boxes.device)
    if boxes.shape[0] == 0 or max_output == 0:
        return padded, torch.zeros((), dtype=torch.int64, device=boxes.device)
    kept, count = _suppress(boxes, scores, idxs, iou_threshold, min(max_output, boxes.shape[0]))
    padded[: kept.shape[0]] = kept
    return padded, count


@triton.jit
def _soft_nms_kernel(
    boxes_ptr,
    score_ptr,
    alive_ptr,
    kept_ptr,
    kept_score_ptr,
    count_ptr,
    params_ptr,
    n,
    LINEAR: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program: each round keeps the highest alive score (NaN first, ties
    to the lower index) and decays the others, as csrc/cuda/nms.cu."""
    # iou_threshold, sigma, score_threshold in the compute dtype.
    iou_threshold = tl.load(params_ptr)
    sigma = tl.load(params_ptr + 1)
    score_threshold = tl.load(params_ptr + 2)
    big = n + 1
    count = tl.zeros((), tl.int64)
    done = tl.zeros((), tl.int1)
    for _ in range(n):
        if done == 0:
            nan_index = tl.full((), big, tl.int64)
            best = tl.full((), float("-inf"), COMPUTE_DTYPE)
            any_alive = tl.zeros((), tl.int1)
            for k0 in range(0, n, BLOCK):
                ks = k0 + tl.arange(0, BLOCK).to(tl.int64)
                alive = tl.load(alive_ptr + ks, mask=ks < n, other=0) != 0
                s = tl.load(score_ptr + ks, mask=alive, other=float("-inf"))
                is_nan = alive & (s != s)
                nan_index = tl.minimum(nan_index, tl.min(tl.where(is_nan, ks, big), axis=0))
                best = tl.maximum(best, tl.max(tl.where(alive & ~is_nan, s, float("-inf")), axis=0))
                any_alive = any_alive | (tl.max(alive.to(tl.int32), axis=0) != 0)
            best_index = tl.full((), big, tl.int64)
            for k0 in range(0, n, BLOCK):
                ks = k0 + tl.arange(0, BLOCK).to(tl.int64)
                alive = tl.load(alive_ptr + ks, mask=ks < n, other=0) != 0
                s = tl.load(score_ptr + ks, mask=alive, other=float("-inf"))
                hit = alive & (s == best)
                best_index = tl.minimum(best_index, tl.min(tl.where(hit, ks, big), axis=0))
            chosen = tl.where(nan_index < big, nan_index, best_index)
            chosen_score = tl.load(score_ptr + tl.minimum(chosen, n - 1))
            take = any_alive & (chosen < big) & ~(chosen_score < score_threshold)
            if take:
                tl.store(alive_ptr + chosen, 0)
                tl.store(kept_ptr + count, chosen)
                tl.store(kept_score_ptr + count, chosen_score)
                count += 1
                bx1, by1, bx2, by2, b_area = _load_boxes(boxes_ptr, chosen, True, COMPUTE_DTYPE)
                for k0 in range(0, n, BLOCK):
                    ks = k0 + tl.arange(0, BLOCK).to(tl.int64)
                    alive = tl.load(alive_ptr + ks, mask=ks < n, other=0) != 0
                    x1, y1, x2, y2, area = _load_boxes(boxes_ptr, ks, alive, COMPUTE_DTYPE)
                    iou = _iou(bx1, by1, bx2, by2, b_area, x1, y1, x2, y2, area)
                    if LINEAR:
                        weight = tl.where(iou > iou_threshold, 1.0 - iou, 1.0)
                    else:
                        weight = tl.exp(-(iou * iou) / sigma)
                    s = tl.load(score_ptr + ks, mask=alive, other=0)
                    tl.store(score_ptr + ks, s * weight, mask=alive)
            done = done | (take == 0)
    tl.store(count_ptr, count)


def soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    sigma: float,
    score_threshold: float,
    method: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device), scores.new_empty(0)
    acc = accumulate_dtype(boxes.dtype)
    score = scores.to(acc).contiguous().clone()
    params = torch.tensor([iou_threshold, sigma, score_threshold], dtype=acc, device=boxes.device)
    alive = torch.ones(n, dtype=torch.uint8, device=boxes.device)
    kept = torch.empty(n, dtype=torch.int64, device=boxes.device)
    kept_score = torch.empty(n, dtype=acc, device=boxes.device)
    count = torch.zeros((), dtype=torch.int64, device=boxes.device)
    _soft_nms_kernel[(1,)](
        boxes.contiguous(), score, alive, kept, kept_score, count, params, n,
        LINEAR=method == 1, COMPUTE_DTYPE=compute_dtype(boxes.dtype), BLOCK=min(1024, triton.next_power_of_2(n)),
        enable_fp_fusion=False,
    )  # fmt: skip
    k = int(count)
    return kept[:k].clone(), kept_score[:k].to(scores.dtype)


@triton.jit
def _box_iou_kernel(
    a_ptr,
    b_ptr,
    out_ptr,
    n,
    m,
    COMPUTE_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    ax1, ay1, ax2, ay2, a_area = _load_boxes(a_ptr, rows, rows < n, COMPUTE_DTYPE)
    bx1, by1, bx2, by2, b_area = _load_boxes(b_ptr, cols, cols < m, COMPUTE_DTYPE)
    iou = _iou(
        ax1[:, None], ay1[:, None], ax2[:, None], ay2[:, None], a_area[:, None],
        bx1[None, :], by1[None, :], bx2[None, :], by2[None, :], b_area[None, :],
    )  # fmt: skip
    valid = (rows[:, None] < n) & (cols[None, :] < m)
    tl.store(
        out_ptr + rows[:, None] * m + cols[None, :], iou.to(out_ptr.dtype.element_ty), mask=valid
    )


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    n, m = boxes1.shape[0], boxes2.shape[0]
    out = empty_output((n, m), dtype=boxes1.dtype, device=boxes1.device)
    if out.numel() == 0:
        return out
    # The interpreter pays per program: bigger tiles there.
    block_n, block_m = (128, 128) if interpreting() else (32, 64)
    _box_iou_kernel[(triton.cdiv(n, block_n), triton.cdiv(m, block_m))](
        boxes1.contiguous(), boxes2.contiguous(), out, n, m,
        COMPUTE_DTYPE=compute_dtype(boxes1.dtype), BLOCK_N=block_n, BLOCK_M=block_m, enable_fp_fusion=False,
    )  # fmt: skip
    return out
