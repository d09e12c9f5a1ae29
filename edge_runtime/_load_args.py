"""load()'s keyword arguments, checked before anything is read: a wrong type or value is an
InputError naming the parameter, never a silent default (a string spinning="no" is truthy and
would have turned spinning on; device_cache="" would have written caches into the working
directory)."""

from __future__ import annotations

import logging
import operator
import os
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime._errors import InputError
from edge_runtime._select import max_threads, usable_cpus

__all__ = ["EMPTY_DIRECTORY", "cache_dirs", "check_options", "check_threads", "no_backend_message", "threads_problem"]

log = logging.getLogger("edge_runtime")

# What to install, by the packages' own names (the device wheel is a file, not a PyPI name: its
# extras are named as the wheel's, with the packages they bring).
_EXTRAS = {"onnx": "onnxruntime (the device wheel's [onnx] extra)",
           "tflite": "ai-edge-litert (the device wheel's [tflite] extra)"}


# The commands' error for an empty DIR argument: Path("") is the working directory, whose
# subdirectories a multi-target message would then list, never what was meant.
EMPTY_DIRECTORY = ("the artifact directory argument is empty (''); name an edge-convert output "
                   "directory, e.g. out/auto")


# Strings a caller means as a bool (device_cache="no" from a config file), never as a directory.
_FLAG_WORDS = {"no", "yes", "true", "false", "off", "on", "0", "1"}


def check_options(verify: Any, spinning: Any, tune: Any, memory_budget_mb: Any) -> None:
    if not (isinstance(verify, bool) or verify == "full"):  # 0 / 1 are not flags here
        raise InputError(f'verify must be True, False or "full", got {verify!r}')
    for name, value in (("spinning", spinning), ("tune", tune)):
        if value is not None and not isinstance(value, (bool, np.bool_)):  # numpy's bool too
            raise InputError(f"{name} must be True, False or None, got {value!r}")
    check_memory_budget(memory_budget_mb)


def check_memory_budget(value: Any, name: str = "memory_budget_mb") -> float | None:
    """load()'s memory_budget_mb, also when set later as Model.memory_budget_mb (`name`): a
    finite number of megabytes > 0 (numpy's numbers too) or None; else InputError."""
    if value is not None and (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not 0 < value < float("inf")  # also refuses NaN
    ):
        raise InputError(f"{name} must be a finite number of megabytes > 0 or None (no limit but "
                         f"the memory available), got {value!r}")
    return None if value is None else float(value)


def check_threads(threads: Any) -> int | None:
    """load()'s `threads` as an int (any integer type, numpy's too; not bool, a float or a string),
    or InputError (also above _select.max_threads); a warning when it exceeds the CPUs this
    process may use."""
    if threads is None:
        return None
    message = f"threads must be an integer >= 0 (0: this device's physical cores), got {threads!r}"
    if isinstance(threads, (bool, np.bool_)):
        raise InputError(message)
    try:
        threads = operator.index(threads)
    except TypeError:
        raise InputError(message) from None
    if threads < 0:
        raise InputError(message)
    if threads > max_threads():
        raise InputError(f"threads={threads_problem(threads)}")
    if threads > usable_cpus():
        log.warning("threads=%d is more than the %d CPUs this process may use: runs get slower, not "
                    "faster, and loading takes longer", threads, usable_cpus())
    return threads


def threads_problem(threads: int) -> str:
    """Why the thread count `threads` (an int) is refused, "" when it is not, without naming the
    parameter: load() says `threads`, edge-run and edge-serve their --threads (a usage error)."""
    if threads < 0:
        return f"must be >= 0 (0: this device's physical cores), got {threads}"
    if threads > max_threads():
        return (f"{threads} is more than {max_threads()} (8x the {usable_cpus()} CPUs this process "
                "may use, at least 64): every thread costs memory and start-up time; 0 takes this "
                "device's physical cores")
    return ""


def cache_dirs(device_cache: Any, default: Path) -> tuple[dict[str, Path], Path | None]:
    """(each backend's device-cache directory, where verification records go) for load()'s
    device_cache: True -> under `default`, False/None -> none, a path -> that directory."""
    if device_cache is True:
        return {"tflite": default / "xnnpack", "onnx": default / "onnxruntime"}, default
    if device_cache is False or device_cache is None:
        return {}, None
    if not isinstance(device_cache, (str, os.PathLike)) or not str(os.fspath(device_cache)):
        raise InputError(f"device_cache must be True, False or a directory path, got {device_cache!r}")
    if isinstance(device_cache, str) and device_cache.strip().lower() in _FLAG_WORDS:
        # A switch read from a config file or environment as text: "no" would create ./no
        raise InputError(f"device_cache={device_cache!r} reads as a switch, not a directory: pass True or "
                         f"False (a bool); a directory of that name as Path({device_cache!r}) or "
                         f"'./{device_cache}'")
    path = Path(device_cache)  # one directory: entries of the two backends are named apart
    return {"tflite": path, "onnx": path}, path


def check_cache_outside(cache: Path | None, root: Path, explicit: bool, kind: str = "device cache",
                        option: str = "device_cache") -> None:
    """InputError when a cache (`kind`; `option` when the caller named it, `explicit`) would be
    written inside the artifact directory `root`, which edge_runtime never writes: a signed
    directory would then fail its next verification (files added), and a directory copied to
    another device would carry this one's caches."""
    if cache is None:
        return
    inner, outer = os.path.realpath(cache), os.path.realpath(root)
    if os.path.commonpath([inner, outer]) != outer:
        return
    where = option if explicit else f"the default {kind} (XDG_CACHE_HOME)"
    raise InputError(f"{where} {cache} is inside the artifact directory {root}, which edge_runtime never "
                     "writes (a signed directory would no longer verify): choose a directory outside it")


def no_backend_message(root: Path, formats: list[str]) -> str:
    install = " or ".join(_EXTRAS.get(fmt, f"a {fmt} backend") for fmt in formats)
    backend = f"an {formats[0]}" if len(formats) == 1 and formats[0][:1] in "aeiou" else f"a {' or '.join(formats)}"
    return f"none of the artifacts in {root} can run here: they need {backend} backend; install {install}"


def nothing_runs_message(root: Path, manifest: dict[str, Any], skipped: dict[str, str]) -> str:
    """Why no artifact of `root` is tried here (`skipped`: selection's reasons): only missing
    backends -> what to install; else each artifact with its reason (too old a runtime, wrong
    arithmetic, a pruned twin)."""
    from edge_runtime import backends

    formats = sorted({entry["format"] for entry in manifest["artifacts"]})
    if not any(backends.backend_available(fmt) for fmt in formats):
        return no_backend_message(root, formats)
    return f"none of the artifacts in {root} can run here:\n" + "\n".join(
        f"  {name}: {why}" for name, why in skipped.items())
