"""GPUs through nvidia-ml-py (pynvml), when there are any; zeros and no error when not."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GpuInfo:
    name: str
    vram_bytes: float


@dataclass(frozen=True)
class GpuLive:
    utilization: float
    free_vram_bytes: float


class GpuProbe:
    """NVML, initialised once; `present` is False on a machine without an NVIDIA GPU."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nvml: Any = None
        self._handles: list[Any] = []
        try:
            import pynvml  # type: ignore[import-untyped]

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._nvml = pynvml
        except Exception:  # noqa: BLE001 — no driver, no library, no GPU: all mean "none"
            self._handles = []

    @property
    def present(self) -> bool:
        return bool(self._handles)

    def devices(self) -> list[GpuInfo]:
        found: list[GpuInfo] = []
        with self._lock:
            for handle in self._handles:
                try:
                    name = self._nvml.nvmlDeviceGetName(handle)
                    memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                except Exception:  # noqa: BLE001, S112 — a GPU that stops answering is skipped
                    continue
                text = name.decode() if isinstance(name, bytes) else str(name)
                found.append(GpuInfo(text, float(memory.total)))
        return found

    def live(self) -> list[GpuLive]:
        found: list[GpuLive] = []
        with self._lock:
            for handle in self._handles:
                try:
                    rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                    memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                except Exception:  # noqa: BLE001, S112
                    continue
                found.append(GpuLive(float(rates.gpu) / 100.0, float(memory.free)))
        return found

    def process_memory(self, pid: int) -> float:
        """GPU memory used by process `pid` across all GPUs, in bytes (0 when unknown)."""
        total = 0.0
        with self._lock:
            for handle in self._handles:
                try:
                    processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
                except Exception:  # noqa: BLE001, S112
                    continue
                for process in processes:
                    if process.pid == pid and process.usedGpuMemory:
                        total += float(process.usedGpuMemory)
        return total
