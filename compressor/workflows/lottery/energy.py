"""Energy and CO2 of a training run: measured where the machine can, declared otherwise.

Sources, in the order "auto" tries them:
- codecarbon (when installed): its tracker's energy for the window (RAPL/NVML/its own
  tables); CO2 uses the configured intensity, not codecarbon's country table, so every
  source converts energy to CO2 the same way;
- NVML on a GPU server or tegrastats on a Jetson (deploy/machine/power.py): the board's
  measured power, on a GPU server of the GPU the cell trains on (`physical_gpu_index`);
- declared: `power_watts` the user states for the device, times the time. This is an
  estimate and every result says so.

The average power of the measured window is applied to the training seconds the trainer
reports (`energy_kwh = avg_power_w * train_seconds`), so a run resumed in several processes
still gets the energy of all its epochs, and evaluation between epochs is not counted.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from compressor.errors import InputError
from compressor.recipe.experiment import WORLD_G_CO2_PER_KWH, check_energy_settings
from deploy.errors import DeployError
from deploy.machine.power import energy_from_trace


@dataclass(frozen=True)
class EnergyReading:
    avg_power_w: float
    energy_kwh: float
    co2_g: float
    g_co2_per_kwh: float
    method: str  # "codecarbon:gpu3", "nvml:gpu3", "tegrastats:VDD_IN" or "declared 30 W"
    estimate: bool  # True when power was declared, not measured

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EnergyMeter:
    """`with EnergyMeter(...) as meter: train(...)`, then `meter.reading(train_seconds)`.

    A source that is asked for by name and cannot run is an error before training starts;
    "auto" falls back quietly to the next source and, last, to the declared power (None
    when no power is declared: the result then has no energy, and says why).

    `gpu_index` is the physical GPU (NVML's numbering, `physical_gpu_index`) the training
    runs on: NVML and codecarbon then read that GPU alone, not GPU 0 or every GPU of a
    machine whose other GPUs train other cells at the same time.
    """

    def __init__(
        self,
        source: str = "auto",
        power_watts: float | None = None,
        g_co2_per_kwh: float = WORLD_G_CO2_PER_KWH,
        gpu_index: int | None = None,
    ) -> None:
        check_energy_settings(source, power_watts, g_co2_per_kwh)
        self.source, self.power_watts, self.g_co2_per_kwh = source, power_watts, g_co2_per_kwh
        self.gpu_index = gpu_index
        self._tracker: Any = None
        self._sampler: Any = None
        self._started = 0.0
        self._measured: tuple[float, float, str] | None = None  # (avg W, g/kWh, method)

    def __enter__(self) -> EnergyMeter:
        self._started = time.monotonic()
        if self.source in ("auto", "codecarbon"):
            self._tracker = self._codecarbon()
            if self._tracker is not None:
                return self
        if self.source in ("auto", "nvml", "tegrastats"):
            from deploy.machine.power import open_power_sampler

            try:
                self._sampler = open_power_sampler(
                    self.source, device_index=self.gpu_index or 0, interval_s=0.1
                )
                if self._sampler is not None:
                    self._sampler.start()
            except DeployError as exc:
                if self.source != "auto":
                    raise InputError(f"experiment.energy_source {self.source!r}: {exc}") from exc
                self._sampler = None
        return self

    def _codecarbon(self) -> Any:
        try:
            from codecarbon import OfflineEmissionsTracker
        except ImportError as exc:
            if self.source == "codecarbon":
                raise InputError(
                    "experiment.energy_source 'codecarbon': codecarbon is not installed; "
                    "pip install codecarbon, or use 'auto'"
                ) from exc
            return None
        gpus = {} if self.gpu_index is None else {"gpu_ids": [self.gpu_index]}
        tracker = OfflineEmissionsTracker(
            country_iso_code="USA",
            save_to_file=False,
            log_level="error",
            measure_power_secs=1,
            **gpus,
        )
        tracker.start()
        return tracker

    def __exit__(self, *exc: object) -> None:
        seconds = max(time.monotonic() - self._started, 1e-9)
        if self._tracker is not None:
            self._tracker.stop()
            data = self._tracker.final_emissions_data
            kwh = float(getattr(data, "energy_consumed", 0.0) or 0.0)
            if kwh > 0:  # its energy; the intensity stays the configured one, as elsewhere
                gpu = "" if self.gpu_index is None else f":gpu{self.gpu_index}"
                method = f"codecarbon{gpu}"
                self._measured = (kwh * 3.6e6 / seconds, self.g_co2_per_kwh, method)
        elif self._sampler is not None:
            trace = self._sampler.stop()
            if trace.watts or trace.counter_energy_j:
                energy = energy_from_trace(trace, inferences=1)
                self._measured = (energy.avg_power_w, self.g_co2_per_kwh, energy.source)

    def reading(self, train_seconds: float) -> EnergyReading | None:
        """Energy of `train_seconds` of training at the window's power; None: nothing known."""
        if self._measured is not None:
            watts, intensity, method = self._measured
            estimate = False
        elif self.power_watts is not None:
            watts, intensity = float(self.power_watts), self.g_co2_per_kwh
            method, estimate = f"declared {self.power_watts:g} W", True
        else:
            return None
        kwh = watts * train_seconds / 3.6e6
        return EnergyReading(watts, kwh, kwh * intensity, intensity, method, estimate)


def physical_gpu_index(device: Any) -> int | None:
    """NVML's index of the GPU torch calls `device` (None on the CPU or when unknown).

    torch numbers the GPUs CUDA_VISIBLE_DEVICES lets it see (Ray sets it for each task), in
    CUDA's order (fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID); NVML numbers every GPU
    of the machine by PCI bus. So the GPU is looked up by its UUID in NVML; without NVML (or
    a UUID) the visible list is mapped by position, which is right when all GPUs are of
    one model. None when neither works: the meter then reads GPU 0 and says so.
    """
    if getattr(device, "type", None) != "cuda":
        return None
    by_uuid = _nvml_index_of(device)
    if by_uuid is not None:
        return by_uuid
    ordinal = device.index or 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        return ordinal
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    if ordinal >= len(entries) or not entries[ordinal].isdigit():
        return None
    return int(entries[ordinal])


def _nvml_index_of(device: Any) -> int | None:
    try:
        import torch

        from deploy.machine.nvml import import_nvml

        uuid = str(torch.cuda.get_device_properties(device).uuid)
        nvml = import_nvml("the energy of one GPU")
        nvml.nvmlInit()
        name = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
        return int(nvml.nvmlDeviceGetIndex(nvml.nvmlDeviceGetHandleByUUID(name)))
    except Exception:  # no GPU, no NVML, an old torch without .uuid: map by position
        return None


def device_kind(device: Any) -> str:
    """What a cell trained on, by kind: the GPU's name or the CPU's model, never its index
    (every Ray task sees its GPU as cuda:0; eight H200s are one kind, an H200 and an A100
    two), so the summary can say when cells' times and energy are not comparable."""
    if getattr(device, "type", None) == "cuda":
        import torch

        return f"cuda: {torch.cuda.get_device_name(device)}"
    from deploy.machine.fingerprint import cpu_model

    return f"cpu: {cpu_model()}"


def energy_method_kind(method: str) -> str:
    """An energy method without the GPU it read ("nvml:gpu3" -> "nvml"): cells measured the
    same way on different GPUs of a machine are comparable."""
    return method.split(":gpu")[0]
