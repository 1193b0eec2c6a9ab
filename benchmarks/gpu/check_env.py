"""What this Python can run of peftkit's GPU check: versions against pyproject's ranges, the carried wheels' own
requirements, and the imports the GPU tests and benchmark need. Step 2 of benchmarks/gpu/run.sh.

    python benchmarks/gpu/check_env.py [--json OUT/env.json]

Prints one line per package and per import. A version outside pyproject's range is a warning (the device image's
torch cannot travel, for one); an import that fails is an error, and the exit status is 1, because the tests would
all fail the same way.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import re
import sys
import traceback
from importlib.metadata import PackageNotFoundError, distribution, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

# Modules the GPU tests and bench.py import, in the order a failure is easiest to read.
IMPORTS = (
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "datasets",
    "pydantic",
    "peftkit.config",
    "peftkit.training.loop",
    "peftkit.inference.bank",
    "peftkit.export",
    "tests.gpu_models",
    "pytest",
)
# pyproject dependencies the GPU path never imports: missing is fine.
NOT_NEEDED = {"gguf", "fastapi", "uvicorn", "evaluate", "matplotlib"}


def pyproject_requirements() -> list[str]:
    import tomllib

    with open(REPO / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]["dependencies"]


def carried() -> list[str]:
    lines = (REPO / "benchmarks/gpu/wheels.txt").read_text().splitlines()
    return [n for n in (line.split("#")[0].strip() for line in lines) if n]


def check_requirement(text: str) -> tuple[str, str | None, bool | None]:
    """(name, installed version or None, satisfied or None when unknown)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # packaging comes with every torch / transformers install; be safe anyway
        name = re.split(r"[<>=!~; \[]", text, maxsplit=1)[0]
        try:
            return name, version(name), None
        except PackageNotFoundError:
            return name, None, False
    req = Requirement(text)
    try:
        have = version(req.name)
    except PackageNotFoundError:
        return req.name, None, False
    return req.name, have, req.specifier.contains(have, prereleases=True)


def wheel_requirements(name: str) -> list[str]:
    """An installed distribution's own Requires-Dist lines that apply here (extras skipped)."""
    try:
        reqs = distribution(name).requires or []
    except PackageNotFoundError:
        return []
    out = []
    for text in reqs:
        if "extra ==" in text:
            continue
        try:
            from packaging.requirements import Requirement

            marker = Requirement(text).marker
            if marker is not None and not marker.evaluate():
                continue
        except ImportError:
            pass
        out.append(text)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, help="write the findings here too")
    a = p.parse_args(argv)
    report: dict = {"python": platform.python_version(), "packages": {}, "warnings": [], "errors": []}

    print(f"check_env: python {report['python']} ({sys.executable})")
    for text in pyproject_requirements():
        name, have, ok = check_requirement(text)
        report["packages"][name] = have
        status = "ok" if ok else ("missing" if have is None else "outside the range")
        if not ok and name not in NOT_NEEDED:
            report["warnings"].append(f"{name} {have or ''}: {status} ({text})")
        note = " (not needed here)" if name in NOT_NEEDED else ""
        print(f"check_env:   {text:<40} {have or '-':<14} {status}{note}")
    for name in carried():
        for text in wheel_requirements(name):
            dep, have, ok = check_requirement(text)
            if ok is False:
                report["warnings"].append(f"{name} wants {text}; here: {dep} {have or 'missing'}")
    for line in report["warnings"]:
        print(f"check_env: warning: {line}")

    for module in IMPORTS:
        try:
            mod = importlib.import_module(module)
        except Exception as exc:  # recorded with its cause, the exit status says so; the rest are still tried
            tail = traceback.format_exc().strip().splitlines()[-1]
            report["errors"].append(f"import {module}: {tail}")
            print(f"check_env: import {module}: FAILED: {type(exc).__name__}: {exc}")
        else:
            where = Path(getattr(mod, "__file__", "") or "?").parent
            print(f"check_env: import {module}: ok ({where})")
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        report["torch_cuda"] = torch.version.cuda
        report["cuda_available"] = torch.cuda.is_available()
        if report["cuda_available"]:
            report["gpu"] = torch.cuda.get_device_name(0)
        cuda = f"available: {report['gpu']}" if report["cuda_available"] else "not available"
        print(f"check_env: torch {torch.__version__}, CUDA {cuda}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=1) + "\n")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
