"""Describe this machine as a profile, by measuring it, so estimates can be checked here.

``measure_host(threads)`` times a large fp32 matmul (peak GFLOP/s with torch at ``threads``)
and a large array copy (GB/s, bytes read plus written). The result plugs into
``estimate(..., target=host)`` like a phone profile: its CPU is priced with the unit-wide
CPU overheads fitted on the phones, against the *measured* peak and bandwidth taken as fully
achievable (efficiency 1: they are achieved rates, not spec-sheet peaks).
"""

from __future__ import annotations

import logging
import os
import platform as _platform
import time
from dataclasses import dataclass, field
from typing import Any

from mobilekit.errors import ConfigError
from mobilekit.estimation.devices import DeviceSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class HostTarget:
    """A Target-like profile of this machine, measured rather than read from a spec sheet.

    Attributes:
        name: ``host``.
        display_name: CPU description.
        platform: ``host`` (its family falls back to the unit-wide CPU fit).
        threads: threads the numbers were measured with.
        matmul_gflops: measured fp32 matmul throughput (GFLOP/s).
        bandwidth_gbps: measured copy bandwidth (GB/s, read + write).
        default_recipe: recipe used when no format is given.
        measurements: raw timings (s) behind the numbers.
        measured: True: the estimator prices ops against these achieved rates with efficiency 1,
            keeping the fitted per-op and per-inference overheads and depthwise factor.
    """

    name: str = "host"
    display_name: str = ""
    platform: str = "host"
    threads: int = 1
    matmul_gflops: float = 0.0
    bandwidth_gbps: float = 0.0
    default_recipe: str = "executorch-xnnpack-fp32"
    measurements: dict[str, Any] = field(default_factory=dict)
    measured: bool = True

    def device_spec(self) -> DeviceSpec:
        """The roofline numbers: cpu fp32 = measured; fp16 = fp32 (no fp16 ALUs used); int8 = 2 × fp32 (assumed)."""
        peaks = {"cpu.fp32": self.matmul_gflops, "cpu.fp16": self.matmul_gflops, "cpu.int8": 2 * self.matmul_gflops}
        return DeviceSpec(name=self.name, platform=self.platform, year=time.gmtime().tm_year,
                          bandwidth_gbps=self.bandwidth_gbps, peaks=peaks,
                          sources={"cpu.fp32": "measured", "cpu.fp16": "measured", "cpu.int8": "imputed",
                                   "bw": "measured"})

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"name": self.name, "display_name": self.display_name, "platform": self.platform,
                "threads": self.threads, "matmul_gflops": self.matmul_gflops, "bandwidth_gbps": self.bandwidth_gbps,
                "measurements": self.measurements}


def _best(fn: Any, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_host(threads: int | None = None, *, n: int = 1024, copy_mib: int = 256, repeats: int = 7) -> HostTarget:
    """Measure this machine's fp32 matmul peak and memory bandwidth.

    Args:
        threads: torch intra-op threads (default: all cores torch would use).
        n: matmul size (n × n by n × n).
        copy_mib: size of the copied array (MiB); well above any cache.
        repeats: timing repeats; the best is kept.

    Returns:
        A HostTarget usable as ``estimate(..., target=host)``.

    Raises:
        ConfigError: ``threads`` or a size is not positive.

    Example:
        >>> host = measure_host(threads=1)
        >>> host.matmul_gflops > 0
        True
    """
    import torch

    for key, val in (("threads", threads if threads is not None else 1), ("n", n), ("copy_mib", copy_mib),
                     ("repeats", repeats)):
        if int(val) <= 0:
            raise ConfigError(f"{key} must be positive, got {val}", where=f"measure_host({key}=)")
    old = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(int(threads))
        used = torch.get_num_threads()
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        torch.mm(a, b, out=out)  # warm-up
        t_mm = _best(lambda: torch.mm(a, b, out=out), repeats)
        elems = copy_mib * 1024 * 1024 // 4
        src, dst = torch.ones(elems), torch.empty(elems)
        dst.copy_(src)
        t_cp = _best(lambda: dst.copy_(src), repeats)
    finally:
        torch.set_num_threads(old)
    gflops = 2.0 * n ** 3 / t_mm / 1e9
    gbps = 2.0 * elems * 4 / t_cp / 1e9
    logger.info("host: %.1f GFLOP/s fp32 matmul, %.1f GB/s copy at %d threads", gflops, gbps, used)
    return HostTarget(display_name=_platform.processor() or _platform.machine(), threads=used,
                      matmul_gflops=gflops, bandwidth_gbps=gbps,
                      measurements={"matmul_s": t_mm, "matmul_n": n, "copy_s": t_cp, "copy_mib": copy_mib,
                                    "cpu_count": os.cpu_count()})
