"""What a device's sensors say right now: temperatures, CPU frequencies and the Raspberry Pi
firmware's throttling flags. Read fresh at every call (edge-bench records them around each
measurement); detection of what the device *is* lives in _device.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edge_runtime._device import _int
from edge_runtime._sysfs import read_int as _read_int
from edge_runtime._sysfs import read_text as _read

__all__ = ["PLACEHOLDER_ZONES", "hottest", "sensors"]

# Thermal zones that report a fixed value, not a temperature: the PMIC-Die zone of Jetson Nano,
# TX2 and Xavier reads 100.0 deg C always (NVIDIA's L4T documentation; a review found every
# pre-Orin Jetson's bench saying "max temperature 100.0"). Kept in the JSON as read; left out of
# the hottest zone a report shows.
PLACEHOLDER_ZONES = frozenset({"PMIC-Die"})


def hottest(temperatures: dict[str, float]) -> float | None:
    """The highest reading among zones that measure something (not PLACEHOLDER_ZONES; a second
    zone of a type is named "TYPE-2"), None when none does."""
    real = [value for name, value in temperatures.items()
            if name.rsplit("-", 1)[0] not in PLACEHOLDER_ZONES and name not in PLACEHOLDER_ZONES]
    return max(real) if real else None

# The Raspberry Pi firmware's throttling word (vcgencmd get_throttled; documented in
# raspberrypi.com/documentation/computers/os.html#get_throttled).
_THROTTLE_BITS = {
    0: "under_voltage",
    1: "arm_frequency_capped",
    2: "throttled",
    3: "soft_temperature_limit",
    16: "under_voltage_occurred",
    17: "arm_frequency_capped_occurred",
    18: "throttled_occurred",
    19: "soft_temperature_limit_occurred",
}


def _throttled(root: Path) -> dict[str, Any] | None:
    base = root / "sys/devices/platform"
    if not base.is_dir():
        return None
    # Pi 4: soc/soc:firmware/get_throttled; Pi 5: soc@107c000000/soc@107c000000:firmware/...
    candidates = sorted(base.glob("*/*firmware/get_throttled")) + sorted(
        base.glob("*firmware/get_throttled")
    )
    for path in candidates:
        try:
            raw = int(path.read_text().strip(), 16)
        except (OSError, ValueError):
            continue
        decoded: dict[str, Any] = {"raw": f"{raw:#x}"}
        decoded.update({name: bool(raw >> bit & 1) for bit, name in _THROTTLE_BITS.items()})
        return decoded
    return None


def sensors(root: str | os.PathLike = "/") -> dict[str, Any]:
    """Temperatures (deg C by thermal zone type), current CPU frequencies (kHz by "cpuN") and the
    Raspberry Pi firmware's throttling flags (None elsewhere). Read fresh at every call."""
    path = Path(root)
    temperatures: dict[str, float] = {}
    thermal = path / "sys/class/thermal"
    zones = (
        sorted(thermal.glob("thermal_zone*"), key=lambda p: _int(p.name[12:]) or 0)
        if thermal.is_dir()
        else []
    )
    for zone in zones:
        kind = (_read(zone, "type") or zone.name).strip() or zone.name
        milli = _read_int(zone, "temp")
        if milli is None:
            continue
        name, n = kind, 1
        while name in temperatures:  # two zones of one type (acpitz) keep both
            n += 1
            name = f"{kind}-{n}"
        temperatures[name] = milli / 1000.0
    frequencies: dict[str, int] = {}
    cpu_dir = path / "sys/devices/system/cpu"
    cpus = (
        [p for p in cpu_dir.glob("cpu[0-9]*") if p.name[3:].isdigit()] if cpu_dir.is_dir() else []
    )
    for cpu in sorted(cpus, key=lambda p: int(p.name[3:])):
        khz = _read_int(cpu, "cpufreq/scaling_cur_freq")
        if khz is not None:
            frequencies[cpu.name] = khz
    return {
        "temperature_c": temperatures,
        "cpufreq_khz": frequencies,
        "throttled": _throttled(path),
    }
