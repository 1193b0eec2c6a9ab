"""What `peftkit compare` measures besides quality: the device's matmul peak, training FLOP/s, peak memory and
inference speed. Each function is a measurement taken in the process that trains, so figures share one machine state.

Training FLOP/s on real tokens (docs/compare.md writes the formula out):

    achieved = factor * N * real_tokens / train_seconds
    factor   = 2 (forward) + 2 (backward to the activations)
               + 2 if the base's weights train (full fine-tuning: their gradients)
               + 2 if gradient checkpointing recomputes the forward

N is the base's non-embedding parameter count: an embedding lookup is a gather, not a matmul. With a frozen base an
adapter's own FLOPs are under 1% of N and are left out, as in the usual 6·N·D accounting. Computed FLOP/s use the
padded token count instead: the work the machine did, useful or not.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import time
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def matmul_peak(device: str, dtype, repeats: int = 5) -> dict:
    """Best FLOP/s of square matmuls in `dtype` on `device`: the denominator of the FLOP/s ratio.

    Several sizes, each timed `repeats` times after a warm-up; the best single timing counts (the peak, not the mean).
    """
    import torch

    sizes = (1024, 2048) if device == "cpu" else (4096, 8192)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        torch.matmul(a, b)  # warm-up: kernel selection, caches
        _sync(device)
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(a, b)
            _sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return {
        "flops": best,
        "dtype": str(dtype).removeprefix("torch."),
        "sizes": list(sizes),
        "threads": _threads(),
    }


def native_dtypes(device: str) -> list[str]:
    """The dtypes this device's matrix units multiply natively: float32 always, bfloat16 on a CUDA GPU that supports
    it or a CPU with AMX-BF16 / AVX512-BF16. Elsewhere bf16 runs through a slow fallback (a 2048² matmul takes about a
    minute on AVX2), so timing it would cost much and say nothing."""
    import torch

    from peftkit.models import cpu_bf16_units

    bf16 = torch.cuda.is_bf16_supported() if device.startswith("cuda") else bool(cpu_bf16_units())
    return ["float32", "bfloat16"] if bf16 else ["float32"]


def best_matmul_peak(device: str, used: dict) -> dict:
    """The machine's best matmul peak over its native dtypes, reusing `used` (the run's own dtype's peak): the FLOP/s
    share against it shows the headroom a float32 run leaves on bf16 hardware."""
    import torch

    peaks = [used] + [
        matmul_peak(device, getattr(torch, d)) for d in native_dtypes(device) if d != used["dtype"]
    ]
    return max(peaks, key=lambda p: p["flops"])


def non_embedding_params(model) -> int:
    """Parameters of the base that take part in matmuls: all but embedding tables (and a tied output copy)."""
    from torch import nn

    embedding = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or id(p) in embedding:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def frozen_matmul_params(model) -> int:
    """The frozen base's non-embedding parameters: the matmuls every token passes through (adapters left out)."""
    from torch import nn

    embedding = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if not p.requires_grad and id(p) not in embedding)


def flop_factor(*, base_trains: bool, gradient_checkpointing: bool) -> int:
    return 4 + (2 if base_trains else 0) + (2 if gradient_checkpointing else 0)


def training_flops(n_params: int, factor: int, tokens: int, seconds: float) -> float:
    return factor * n_params * tokens / seconds if seconds > 0 else 0.0


class PeakMemory:
    """Peak memory of one phase of this process: CUDA max allocated on GPU, peak resident set size (RSS) on CPU.

    On Linux the RSS high-water mark can be reset (``/proc/self/clear_refs``, value 5), so the training phase's peak
    is measured apart from the imports before it; elsewhere ``ru_maxrss`` (the whole process so far) is reported.
    """

    def __init__(self, device: str):
        self.device = device
        self.kind = "cuda_max_allocated" if device.startswith("cuda") else "cpu_peak_rss"

    def reset(self) -> None:
        if self.kind == "cuda_max_allocated":
            import torch

            torch.cuda.reset_peak_memory_stats()
        elif _CLEAR_REFS.exists():
            # Some sandboxes forbid it; the process-wide peak is then reported, a true (larger) peak.
            with contextlib.suppress(OSError):
                _CLEAR_REFS.write_text("5")

    def current(self) -> int:
        if self.kind == "cuda_max_allocated":
            import torch

            return int(torch.cuda.memory_allocated())
        return _status_kb("VmRSS") * 1024

    def peak(self) -> int:
        if self.kind == "cuda_max_allocated":
            import torch

            return int(torch.cuda.max_memory_allocated())
        hwm = _status_kb("VmHWM")
        return hwm * 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def inference_speed(predict, texts: list[str], *, single: int = 32, batch_rows: int = 256) -> dict:
    """Latency of one-row requests (p50, p90) and batched throughput, through the same predictor users call."""
    predict(texts[:2])  # warm-up
    singles = []
    for text in texts[:single]:
        start = time.perf_counter()
        predict([text])
        singles.append(time.perf_counter() - start)
    rows = texts[:batch_rows]
    start = time.perf_counter()
    predict(rows)
    batch_seconds = time.perf_counter() - start
    q = statistics.quantiles(singles, n=10) if len(singles) >= 2 else singles * 9
    return {
        "latency_ms_p50": 1000 * statistics.median(singles),
        "latency_ms_p90": 1000 * q[8],
        "latency_rows": len(singles),
        "throughput_rows_per_second": len(rows) / batch_seconds,
        "throughput_rows": len(rows),
    }


def _status_kb(field: str) -> int:
    if not _STATUS.exists():
        return 0
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _threads() -> int:
    import torch

    return torch.get_num_threads()
