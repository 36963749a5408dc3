"""Device-agnostic timing for the benchmarks: CUDA events on a GPU, the wall clock on a CPU; and
the JSON file every benchmark writes with --json.

    elapsed_ms = timed(fn, device)  # -> (fn's output, milliseconds)
"""
import json
import os
import time

import torch

ALLOCATOR_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")


def timed(fn, device: torch.device):
    """Run fn() once; returns (its output, elapsed milliseconds). On CUDA the time is measured
    between two events recorded on the current stream, after a synchronisation that ends it."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        return out, start.elapsed_time(end)
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1e3


def machine(device: torch.device) -> dict:
    """What a figure was measured on: device, threads, torch, load average, glibc allocator settings."""
    info = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_average": os.getloadavg(),
            "allocator": {k: os.environ[k] for k in ALLOCATOR_VARIABLES if k in os.environ} or "default"}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def describe(info: dict) -> str:
    load = ", ".join(f"{v:.2f}" for v in info["load_average"])
    gpu = f" ({info['gpu']})" if "gpu" in info else ""
    return (f"{info['device']}{gpu}, {info['threads']} threads, load average {load}, "
            f"allocator {info['allocator']}")


def write_results(results: dict, path, indent: int = 2):
    """The --json file of a benchmark: `results` as indented JSON at `path` (nothing when path is None)."""
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=indent)
