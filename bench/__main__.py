"""``python -m bench``: time every fastops operator against the implementation it
replaces, on the devices present, print one table and write
``bench/results/<device>.{json,md}`` plus a plot per family.

    python -m bench                 # everything, CPU and (if present) GPU
    python -m bench --quick         # a few shapes, one dtype (results get a -quick suffix)
    python -m bench --op max_unpool2d --device cuda
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch
from tqdm import tqdm

import fastops
from bench.cases import Case, on_backend
from bench.timing import copy_bandwidth_gbps, time_cpu, time_cuda, time_cuda_graph

FAMILIES = ["unpooling", "nms", "roi", "conv_transpose", "losses", "models"]
RESULTS = Path(__file__).resolve().parent / "results"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        )
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def backends_for(device: torch.device) -> list[str]:
    wanted = ["cuda", "triton"] if device.type == "cuda" else ["cpu"]
    return [b for b in wanted if b in fastops.available_backends(device=device.type)]


def run_case(case: Case, device: torch.device, backends: list[str], quick: bool) -> dict:
    """Times the reference and every backend. On CPU they are timed in turns,
    three rounds, and each keeps its best round: this machine's speed drifts
    (other tenants, frequency), and interleaving keeps a drift from favouring
    whichever ran at the better moment."""
    references = case.references or {"": case.reference}
    calls = {("reference", name): fn for name, fn in references.items()}
    calls |= {("floor", name): fn for name, fn in (case.floors or {}).items()}
    calls |= {b: on_backend(b, case.run) for b in backends}
    if device.type == "cuda":
        runs = case.runs or (30 if quick else 100)
        times = {name: time_cuda(fn, runs=runs).median_ms for name, fn in calls.items()}
    else:
        rounds = 3
        min_run_time = (0.2 if quick else 0.6) / rounds
        times = {name: float("inf") for name in calls}
        for _ in range(rounds):
            for name, fn in calls.items():
                times[name] = min(times[name], time_cpu(fn, min_run_time=min_run_time).median_ms)
    reference_times = {
        k[1]: t for k, t in times.items() if isinstance(k, tuple) and k[0] == "reference"
    }
    fastest_reference = min(reference_times, key=reference_times.get)
    row = {
        "family": case.family,
        "op": case.op,
        "case": case.name,
        "shape": case.shape,
        "dtype": str(case.dtype).removeprefix("torch."),
        "direction": case.direction,
        "variant": case.variant,
        "min_bytes": case.min_bytes,
        "reference_name": case.reference_name
        + (f" [{fastest_reference} faster]" if fastest_reference else ""),
        "reference_ms": reference_times[fastest_reference],
        "fastops_ms": {b: times[b] for b in backends},
    }
    if len(reference_times) > 1:
        row["reference_ms_each"] = reference_times
    if case.floors:
        row["floor_ms_each"] = {
            k[1]: t for k, t in times.items() if isinstance(k, tuple) and k[0] == "floor"
        }
    if device.type == "cuda" and case.graph:
        reference_graph = time_cuda_graph(case.reference)
        row["reference_graph_ms"] = reference_graph.median_ms if reference_graph else None
        row["fastops_graph_ms"] = {}
        for backend in backends:
            graph = time_cuda_graph(on_backend(backend, case.run))
            row["fastops_graph_ms"][backend] = graph.median_ms if graph else None
    best = min(row["fastops_ms"].values())
    row["best_backend"] = min(row["fastops_ms"], key=row["fastops_ms"].get)
    row["speedup"] = row["reference_ms"] / best
    # Ops without a byte floor (compute- or latency-bound) have min_bytes 0.
    row["fastops_gbps"] = case.min_bytes / (best * 1e-3) / 1e9 if case.min_bytes else None
    row["flops"] = case.flops
    row["fastops_tflops"] = case.flops / (best * 1e-3) / 1e12 if case.flops else None
    row["reference_tflops"] = (
        case.flops / (row["reference_ms"] * 1e-3) / 1e12 if case.flops else None
    )
    return row


def markdown(meta: dict, rows: list[dict]) -> str:
    backends = sorted(
        {b for r in rows for b in r["fastops_ms"]}, key=["cuda", "triton", "cpu"].index
    )
    graphs = any("reference_graph_ms" in r for r in rows)
    flops = any(r.get("fastops_tflops") for r in rows)
    lines = [
        f"# fastops benchmarks on {meta['device']}",
        "",
        f"- torch {meta['torch']}, triton {meta['triton']}, CUDA {meta['cuda']}, fastops commit {meta['commit']}, "
        f"{meta['date']}{' (--quick)' if meta['quick'] else ''}",
        f"- measured copy bandwidth (read + write): {meta['copy_gbps']:.1f} GB/s in the latest run; a row's floor "
        "= its minimal bytes / the bandwidth measured in the run that timed it",
        f"- timing: {meta['timing']}",
        "",
    ]
    header = [
        "op",
        "case",
        "shape",
        "dtype",
        "direction",
        "variant",
        "MB",
        "floor ms",
        "reference ms",
    ]
    header += [f"{b} ms" for b in backends] + ["speedup", "GB/s", "% of copy"]
    if flops:
        header += ["TFLOP/s", "reference TFLOP/s"]
    if graphs:
        header += ["reference graph ms"] + [f"{b} graph ms" for b in backends]
    each = any("reference_ms_each" in r or "floor_ms_each" in r for r in rows)
    if each:
        header += ["each reference ms", "measured floor ms"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        floored = r["fastops_gbps"] is not None
        copy_gbps = r.get("copy_gbps", meta["copy_gbps"])
        floor_ms = r["min_bytes"] / (copy_gbps * 1e9) * 1e3
        cells = [
            r["op"],
            r["case"],
            r["shape"],
            r["dtype"],
            r["direction"],
            r["variant"],
            f"{r['min_bytes'] / 1e6:.1f}" if floored else "",
            f"{floor_ms:.3f}" if floored else "",
            f"{r['reference_ms']:.3f}",
        ]
        cells += [f"{r['fastops_ms'][b]:.3f}" if b in r["fastops_ms"] else "" for b in backends]
        cells += [f"{r['speedup']:.2f}x"]
        if floored:
            cells += [
                f"{r['fastops_gbps']:.1f}",
                f"{100 * r['fastops_gbps'] / copy_gbps:.0f}%",
            ]
        else:
            cells += ["", ""]
        if flops:
            cells += (
                [f"{r['fastops_tflops']:.3f}", f"{r['reference_tflops']:.3f}"]
                if r.get("fastops_tflops")
                else ["", ""]
            )
        if graphs:
            graph_ms = r.get("fastops_graph_ms", {})
            reference_graph = r.get("reference_graph_ms")
            cells += [f"{reference_graph:.4f}" if reference_graph else ""]
            cells += [f"{graph_ms[b]:.4f}" if graph_ms.get(b) else "" for b in backends]
        if each:
            cells += [
                "; ".join(f"{k}: {v:.3f}" for k, v in r.get(key, {}).items())
                for key in ("reference_ms_each", "floor_ms_each")
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "reference ms: the implementation replaced (PyTorch or torchvision, named per row in the JSON); "
        "int8-offset rows compare against "
        "it with int64 indices. speedup: reference / the fastest fastops backend. GB/s: minimal bytes / fastops time "
        "(empty for operators bound by compute or latency, such as NMS). TFLOP/s: useful floating-point "
        "operations / time, for compute-bound operators (conv_transpose). A reference named with "
        "'[layout faster]' was timed in several layouts and the fastest counts. each reference ms: every "
        "implementation replaced, timed in the same run (the fastest is 'reference ms'); measured floor ms: a "
        "call that bounds the op from below (the losses: a key-value sort of as many elements).",
    ]
    return "\n".join(lines) + "\n"


def plot(meta: dict, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['op']} {r['case']} {r['dtype']} {r['direction']} {r['variant']}" for r in rows]
    speedups = [r["speedup"] for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(rows) + 1.5))
    ax.barh(
        range(len(rows)), speedups, color=["tab:green" if s >= 1 else "tab:red" for s in speedups]
    )
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speedup over the implementation replaced (higher is better)")
    ax.set_title(f"fastops {rows[0]['family']} on {meta['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge_into_existing(
    path: Path, rows: list[dict], meta: dict, selected: list[str]
) -> tuple[list[dict], dict]:
    """With --op, the rows of the other operators are kept from the existing
    results file; every row names the commit that measured it, and the meta
    lists the commits per family."""
    if not path.exists():
        return rows, meta
    old = json.loads(path.read_text())
    kept = [r for r in old["rows"] if r["op"] not in selected and r["family"] not in selected]
    if not kept:
        return rows, meta
    for r in kept:
        r.setdefault("commit", old["meta"]["commit"])
        r.setdefault("copy_gbps", old["meta"]["copy_gbps"])
    order = {family: i for i, family in enumerate(FAMILIES)}
    merged = sorted(kept + rows, key=lambda r: order.get(r["family"], len(order)))
    families_by_commit: dict[str, list[str]] = {}
    for r in merged:
        names = families_by_commit.setdefault(r["commit"], [])
        if r["family"] not in names:
            names.append(r["family"])
    meta = meta | {
        "commit": "; ".join(f"{c} ({', '.join(f)})" for c, f in families_by_commit.items())
    }
    return merged, meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few shapes and one dtype")
    parser.add_argument("--op", action="append", help="only this operator or family (repeatable)")
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], action="append", help="only this device (repeatable)"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="where to write results (default bench/results)"
    )
    args = parser.parse_args(argv)

    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU here")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for device_type in devices:
        device = torch.device(device_type)
        name = device_name(device)
        backends = backends_for(device)
        meta = {
            "device": name,
            "torch": torch.__version__,
            "triton": _version("triton"),
            "cuda": torch.version.cuda,
            "commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "quick": args.quick,
            "backends": backends,
            "timing": (
                "CUDA events, L2 flushed before each run, median of 100 (graph: replays of a captured call, L2 warm)"
                if device_type == "cuda"
                else "torch.utils.benchmark blocked_autorange, median per call; implementations timed in turns, "
                "best of 3 rounds"
            ),
            "copy_gbps": copy_bandwidth_gbps(device),
        }
        all_cases = [
            case
            for family in FAMILIES
            for case in importlib.import_module(f"bench.{family}").cases(device, quick=args.quick)
            if not args.op or case.op in args.op or case.family in args.op
        ]
        rows = [
            run_case(case, device, backends, args.quick)
            for case in tqdm(all_cases, desc=f"bench on {name}", unit="case", file=sys.stderr)
        ]
        for row in rows:
            row["commit"] = meta["commit"]
            row["copy_gbps"] = meta["copy_gbps"]
        stem = slug(name) + ("-quick" if args.quick else "")
        if args.op:
            rows, meta = merge_into_existing(args.out / f"{stem}.json", rows, meta, args.op)
        (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        table = markdown(meta, rows)
        (args.out / f"{stem}.md").write_text(table)
        for family in sorted({r["family"] for r in rows}):
            plot(
                meta, [r for r in rows if r["family"] == family], args.out / f"{stem}-{family}.png"
            )
        print(table)
        print(f"written: {args.out / stem}.{{json,md}} and {stem}-<family>.png", file=sys.stderr)
    return 0


def _version(module: str) -> str:
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
