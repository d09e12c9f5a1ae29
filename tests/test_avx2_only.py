"""tools/avx2-only: a process on this x86 CPU that sees AVX2 but no AVX-512, VNNI or AMX.

The tool is how x86-avx2 figures (the saturating INT8 kernel, its speed) are measured on VNNI
machines, so what it claims is tested here: onnxruntime really switches to the saturating
kernel, numpy and /proc/cpuinfo agree, the CPU label says it was masked, and a real crash
still crashes. Optional: it needs x86_64, gcc and CPUID faulting (skipped, with the reason,
elsewhere).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "avx2-only"


def _unavailable() -> str | None:
    if platform.machine() != "x86_64":
        return f"x86_64 only (this is {platform.machine()})"
    if shutil.which("gcc") is None:
        return "gcc is not installed (Debian: apt-get install gcc)"
    if "cpuid_fault" not in Path("/proc/cpuinfo").read_text():
        return "this CPU/kernel has no CPUID faulting (no cpuid_fault flag in /proc/cpuinfo)"
    return None


pytestmark = pytest.mark.skipif(_unavailable() is not None, reason=_unavailable() or "")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """The environment every masked command runs in: one cache, so the library is built once."""
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("avx2-only-cache"))}


def masked(code: str, env: dict[str, str], *, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(TOOL), sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_onnxruntime_takes_the_saturating_kernel_and_every_view_agrees(env):
    out = masked(
        "from numpy._core._multiarray_umath import __cpu_features__ as f\n"
        "from edge_runtime._device import detect, match_profile\n"
        "from edge_runtime._int8_probe import probe_int8_gemm\n"
        "d = detect()\n"
        "print(probe_int8_gemm(), f['AVX2'], f['AVX512F'], f['AVX512VNNI'])\n"
        "print(sorted(x for x in d.isa_features if x.startswith(('avx512', 'amx', 'avx_vnni'))))\n"
        "print(d.cpu_model)\n"
        "print(match_profile(d)[0])\n",
        env,
    ).stdout.splitlines()
    assert out[0] == "s16-pairs True False False", out
    assert out[1] == "[]", out
    assert out[2].endswith("[CPUID masked: AVX2]"), out
    assert out[3] == "x86-avx2", out


def test_cpuinfo_keeps_its_shape(env):
    """Every processor block survives (blank-line separated) with its other flags."""
    text = masked("print(open('/proc/cpuinfo').read(), end='')", env).stdout
    real = Path("/proc/cpuinfo").read_text()
    assert text.count("\nprocessor") == real.count("\nprocessor")
    assert text.count("\n\n") == real.count("\n\n")
    real_flags = set(next(line for line in real.splitlines() if line.startswith("flags")).split(":")[1].split())
    seen_flags = set(next(line for line in text.splitlines() if line.startswith("flags")).split(":")[1].split())
    hidden = real_flags - seen_flags
    assert all(f.startswith(("avx512", "amx", "avx_vnni", "avx_ifma", "avx_ne_convert", "avx10")) for f in hidden), hidden
    assert hidden == {f for f in real_flags if f.startswith(("avx512", "amx", "avx_vnni", "avx10"))} | (
        real_flags & {"avx_ifma", "avx_ne_convert"})
    assert {"avx2", "fma", "sse4_2"} <= seen_flags


def test_a_real_crash_still_crashes(env):
    """The CPUID trap handler passes real faults on (here to Python's faulthandler)."""
    result = masked("import faulthandler, ctypes; faulthandler.enable(); ctypes.string_at(0)", env, check=False)
    assert result.returncode == -11, (result.returncode, result.stderr[-2000:])
    assert "Fatal Python error: Segmentation fault" in result.stderr


def test_check_mode(env):
    result = subprocess.run([str(TOOL), "--check"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "profile: x86-avx2" in result.stdout


@pytest.mark.slow
def test_saturating_kernel_cases_run_natively_under_the_mask(env):
    """Tests that need the x86-avx2 profile's own (saturating) INT8 kernel, run with it on any
    x86 CPU with CPUID faulting: the exact reference, the pair-limited weights' premise, and the golden
    check that catches a VNNI artifact on AVX2 (skipped in the main run on VNNI machines)."""
    tests = ["tests/test_exact_arithmetic.py::test_matmul_integer_rewrite_is_exact_where_this_cpu_saturates",
             "tests/test_exact_arithmetic.py::test_u8u8_kernel_is_exact_here",
             "tests/test_exact_arithmetic.py::test_the_integer_gemm_probe_can_say_no",
             "tests/test_exact_arithmetic.py::test_u8_weight_rewrite_is_exact_for_every_weight_form",
             "tests/test_exact_arithmetic.py::test_pair_limited_weights_are_exact_on_every_kernel",
             "tests/test_golden_teeth.py::test_saturating_kernel_fails_the_golden_check_natively"]
    result = subprocess.run([str(TOOL), sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *tests],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert result.returncode == 0 and f"{len(tests)} passed" in result.stdout, result.stdout[-4000:]


def test_programs_that_install_their_own_segv_handler_keep_the_mask(env, tmp_path):
    """gcc's cc1 calls signal(SIGSEGV, ...) and runs CPUID afterwards: the mask must survive
    (signal() does not go through sigaction's symbol), so builds under the mask work too; and a
    thread that blocks every signal must not be killed by its CPUID (the kernel forces a blocked
    fault signal to its default action)."""
    source = tmp_path / "probe.c"
    source.write_text(
        "#include <cpuid.h>\n#include <signal.h>\n#include <stdio.h>\n#include <stdlib.h>\n"
        "static void crash(int s) { (void)s; puts(\"handler\"); exit(3); }\n"
        "int main(void) { unsigned a, b, c, d; sigset_t all; signal(SIGSEGV, crash);\n"
        "  sigfillset(&all); sigprocmask(SIG_BLOCK, &all, NULL);\n"
        "  __cpuid_count(7, 0, a, b, c, d); printf(\"avx512f %u avx2 %u\\n\", (b >> 16) & 1, (b >> 5) & 1); return 0; }\n"
    )
    binary = tmp_path / "probe"
    built = subprocess.run([str(TOOL), "gcc", "-O1", "-o", str(binary), str(source)], capture_output=True, text=True,
                           env=env, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    ran = subprocess.run([str(TOOL), str(binary)], capture_output=True, text=True, env=env, timeout=60)
    assert (ran.returncode, ran.stdout.strip()) == (0, "avx512f 0 avx2 1"), (ran.returncode, ran.stdout, ran.stderr)
