#!/usr/bin/env python3
"""Does an artifact directory run on the oldest backend its manifest allows?

    python tools/check_min_runtime.py DIR [--artifact NAME ...] [--python PYTHON]

Every artifact's manifest entry names the oldest backend release it runs on (`min_runtime`, e.g.
{"onnxruntime": "1.23"}); a device with that release or newer loads it, an older one is refused
before the load with an upgrade hint (edge_runtime/_compat.py). That promise is only as good as a
run on that very release: this builds one virtualenv per distinct minimum (under the user cache,
reused), installs exactly the lowest release the minimum allows ("1.23" -> 1.23.0) with numpy,
psutil and tokenizers, and loads each artifact there through this checkout's edge_runtime with
`verify="full"`: every file hash and every golden sample the converter recorded. Exit 0 when each
passes, 1 when one fails (named, with the backend's own message), 2 on bad arguments.

Needs PyPI (pip install). The first run per release takes ~30 s to set up; later runs reuse it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-runtime-tools" / "min-runtime"

# onnxruntime 1.17's wheels do not bound numpy below 2 yet fail to import with it; so do
# tflite-runtime 2.14's (tools/build_runtime_wheel.py says the same for the device wheel).
_OLD_NUMPY = {"onnxruntime": (1, 18), "tflite-runtime": (2, 15)}

# Runs in the old release's virtualenv: argv = artifact directory, artifact name.
_CHILD = r"""
import json, sys
import edge_runtime
model = edge_runtime.load(sys.argv[1], artifact=sys.argv[2], verify="full", weight_cache=False)
session = model._session
print("RESULT " + json.dumps({"backend": session.backend_name, "version": session.backend_version}))
"""


def release(minimum: str) -> str:
    """The lowest release a minimum allows: "1.23" -> "1.23.0", "2.3" -> "2.3.0", "1.17.3" as is."""
    parts = minimum.split(".")
    return ".".join(parts + ["0"] * (3 - len(parts))) if len(parts) < 3 else minimum


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def requirements(package: str, version: str) -> list[str]:
    wanted = [f"{package}=={version}", "psutil", "tokenizers"]
    old = _OLD_NUMPY.get(package)
    wanted.append("numpy<2" if old and _numbers(version) < old else "numpy")
    return wanted


def environment(package: str, version: str, python: str) -> Path:
    """A virtualenv with exactly `package==version`, made once and reused (a marker file is
    written last, so an interrupted set-up is made again)."""
    home = CACHE / f"{package}-{version}-py{_python_tag(python)}"
    marker = home / "ready.json"
    if marker.is_file():
        return home
    print(f"setting up {package} {version} in {home} (pip; ~30 s)", file=sys.stderr, flush=True)
    if python == sys.executable:
        venv.EnvBuilder(with_pip=True, clear=True).create(home)
    else:
        subprocess.run([python, "-m", "venv", "--clear", str(home)], check=True)
    pip = [str(home / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run(pip + requirements(package, version), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"could not install {package}=={version}: {done.stderr.strip()[-800:]}")
    marker.write_text(json.dumps({"package": package, "version": version}))
    return home


def _python_tag(python: str) -> str:
    out = subprocess.run([python, "-c", "import sys; print('%d%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def check(directory: Path, entry: dict, python: str) -> tuple[bool, str]:
    """(passed, one line) for one artifact on each release its min_runtime names."""
    lines, passed = [], True
    for package, minimum in sorted((entry.get("min_runtime") or {}).items()):
        version = release(str(minimum))
        home = environment(package, version, python)
        with tempfile.TemporaryDirectory(prefix="min-runtime-cache-") as cache:
            env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": cache}
            done = subprocess.run([str(home / "bin" / "python"), "-c", _CHILD, str(directory), entry["name"]],
                                  capture_output=True, text=True, env=env)
        results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not results:
            passed = False
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            lines.append(f"{package} {version}: FAILED: {last}")
            continue
        ran = json.loads(results[-1][len("RESULT "):])
        if ran["version"] != version:
            passed = False
            lines.append(f"{package} {version}: FAILED: ran {ran['backend']} {ran['version']} instead")
            continue
        lines.append(f"{package} {version}: loaded, hashes and golden samples passed")
    if not lines:
        return True, "no min_runtime recorded: nothing to check"
    return passed, "; ".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="an edge-convert output directory (manifest.json)")
    parser.add_argument("--artifact", action="append", help="only this artifact (repeatable); default: all")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter for the virtualenvs (e.g. python3.10 for a JetPack 6 device)")
    args = parser.parse_args(argv)
    manifest_path = args.directory / "manifest.json"
    if not manifest_path.is_file():
        parser.error(f"{args.directory} has no manifest.json: give an edge-convert output directory")
    entries = json.loads(manifest_path.read_text())["artifacts"]
    names = [e["name"] for e in entries]
    unknown = sorted(set(args.artifact or []) - set(names))
    if unknown:
        parser.error(f"no artifact {', '.join(unknown)} in {manifest_path}; it has: {', '.join(names)}")
    failed = []
    for entry in entries:
        if args.artifact and entry["name"] not in args.artifact:
            continue
        ok, line = check(args.directory.resolve(), entry, args.python)
        print(f"{entry['name']:<24} {'ok    ' if ok else 'FAILED'} {line}", flush=True)
        if not ok:
            failed.append(entry["name"])
    if failed:
        print(f"{len(failed)} artifact(s) do not run on the oldest release their manifest allows: "
              f"{', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
