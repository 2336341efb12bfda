"""Timing: CPU with torch.utils.benchmark, GPU with CUDA events (L2 flushed
between runs, median of many) and a CUDA-graph variant for launch-bound calls."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.benchmark import Timer

# Bigger than the L2 of any current GPU (H100: 50 MB, H200: 60 MB, B200: 126 MB).
_L2_FLUSH_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    runs: int


def _summary(times_ms: list[float]) -> Timing:
    times_ms = sorted(times_ms)
    quantiles = statistics.quantiles(times_ms, n=10) if len(times_ms) > 1 else [times_ms[0]] * 9
    return Timing(statistics.median(times_ms), quantiles[1], quantiles[7], len(times_ms))


def time_cpu(fn: Callable[[], object], min_run_time: float = 0.5) -> Timing:
    """Blocks of calls until ``min_run_time`` seconds have run; per-call times of the blocks."""
    fn()  # warm-up (allocator, lazy initialisation)
    measurement = Timer(
        stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()
    ).blocked_autorange(min_run_time=min_run_time)
    return _summary([t * 1e3 for t in measurement.times])


def time_cuda(fn: Callable[[], object], warmup: int = 10, runs: int = 100) -> Timing:
    """Each call between two CUDA events, the L2 cache flushed before each."""
    flush = torch.empty(_L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    for _ in range(warmup):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    torch.cuda.synchronize()
    for start, end in zip(starts, ends, strict=True):
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return _summary([s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)])


def time_cuda_graph(fn: Callable[[], object], replays: int = 200) -> Timing | None:
    """The call captured in a CUDA graph and replayed back to back (L2 warm):
    what it costs without host overhead. ``None`` if it cannot be captured."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    except RuntimeError:
        torch.cuda.synchronize()
        return None
    for _ in range(10):
        graph.replay()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays // 5):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / (replays // 5))
    return _summary(times)


def copy_bandwidth_gbps(device: torch.device) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written:
    the yardstick for memory-bound kernels on this device."""
    nbytes = 512 * 1024 * 1024 if device.type == "cuda" else 128 * 1024 * 1024
    source = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    timing = (
        time_cuda(lambda: target.copy_(source), runs=20)
        if device.type == "cuda"
        else time_cpu(lambda: target.copy_(source))
    )
    return 2 * nbytes / (timing.median_ms * 1e-3) / 1e9
