"""The machine's rows: package versions, the lock, the device, and whether ``--quant 8bit`` can run here."""

from __future__ import annotations

import importlib.util
import os
import sys

from peftkit.doctor.check import FAIL, OK, WARN, Check, Facts, one_line
from peftkit.errors import PeftkitError

# Required packages: missing one means `peftkit train` cannot start. bitsandbytes is only needed for --quant 8bit.
_REQUIRED = ("torch", "transformers", "peft", "accelerate", "datasets")
_OPTIONAL = ("bitsandbytes",)


def check_versions() -> Check:
    """Python and the stack's versions, against the ranges peftkit's own package metadata declares."""
    from peftkit.artifacts.manifest import package_versions

    installed = package_versions()
    found = {name: installed[name] for name in (*_REQUIRED, *_OPTIONAL) if name in installed}
    missing_required = [name for name in _REQUIRED if name not in found]
    missing_optional = [name for name in _OPTIONAL if name not in found]
    python = ".".join(map(str, sys.version_info[:3]))
    out_of_range = _out_of_range(found, python)
    # no peftkit version when run from a checkout without `pip install -e .`
    own = f"peftkit {installed['peftkit']}, " if "peftkit" in installed else ""
    detail = f"{own}python {python}, " + ", ".join(f"{k} {v}" for k, v in found.items())
    if missing_optional:
        detail += f"; not installed: {', '.join(missing_optional)} (only --quant 8bit needs it)"
    if missing_required:
        return Check(
            "versions",
            FAIL,
            f"{detail}; missing: {', '.join(missing_required)}",
            f"pip install {' '.join(missing_required)} (or reinstall peftkit)",
        )
    if out_of_range:
        return Check(
            "versions",
            WARN,
            f"{detail}; outside peftkit's declared ranges: {', '.join(out_of_range)}",
            "install the declared versions (pip install -e . in the repo) before trusting results",
        )
    return Check("versions", OK, detail)


def _out_of_range(found: dict[str, str], python: str) -> list[str]:
    """``["peft 0.22.0 (wants <0.22,>=0.21.2)"]``; empty when peftkit is not installed as a package (no metadata)."""
    from importlib.metadata import PackageNotFoundError, metadata, requires

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    try:
        wanted = [Requirement(r) for r in requires("peftkit") or []]
        python_spec = metadata("peftkit").get("Requires-Python")
    except PackageNotFoundError:
        return []
    out = []
    if python_spec and not SpecifierSet(python_spec).contains(python, prereleases=True):
        out.append(f"python {python} (wants {python_spec})")
    for req in wanted:
        if (
            req.marker is None
            and req.name in found
            and not req.specifier.contains(found[req.name], prereleases=True)
        ):
            out.append(f"{req.name} {found[req.name]} (wants {req.specifier})")
    return out


def check_lock() -> Check:
    """Installed versions against the lock the tests passed on (lock/requirements.txt)."""
    from peftkit.lock import drift

    result = drift()
    if result.lock is None:
        return Check("lock", WARN, "no lock file beside this install: versions cannot be compared", "")
    if result.matches:
        return Check("lock", OK, f"all {result.checked} locked packages at their locked versions")
    return Check(
        "lock",
        WARN,
        f"{len(result.differs)} of {result.checked} packages differ from the lock: {result.summary()}",
        "make setup installs the locked versions (or: pip install --no-deps --require-hashes -r "
        f"{result.lock}); results made on other versions may differ",
    )


def check_device() -> Check:
    """Where training will run: the first CUDA device if torch sees one, else the CPU (as `models.default_device`)."""
    import torch

    if not torch.cuda.is_available():
        build = (
            "CPU-only build of torch"
            if torch.version.cuda is None
            else f"torch built for CUDA {torch.version.cuda}"
        )
        return Check(
            "device",
            OK,
            f"cpu, {os.cpu_count()} cores (no CUDA device visible; {build}): training runs on the CPU",
        )
    major, minor = torch.cuda.get_device_capability(0)
    return Check(
        "device",
        OK,
        f"cuda: {torch.cuda.get_device_name(0)} (compute capability {major}.{minor}), torch {torch.__version__}",
    )


def check_quant(facts: Facts) -> Check:
    """``--quant 8bit``: bitsandbytes installed, a GPU new enough, and its int8 matmul really runs on the device."""
    cfg = facts.cfg
    if cfg.model.quant != "8bit":
        from peftkit.models import resolve_dtype

        dtype, why = resolve_dtype(cfg.model.dtype, facts.device, cfg.model.quant, cfg.method.name)
        return Check("quant", OK, f"none, base in {dtype} ({why}): bitsandbytes not needed")
    from peftkit.models import int8_config

    try:
        # The very rule loading applies (bitsandbytes present; CUDA compute capability >= 7.5), so the verdicts match.
        int8_config(facts.device)
    except PeftkitError as exc:
        fix = (
            "pip install 'bitsandbytes>=0.47', or use --quant none"
            if importlib.util.find_spec("bitsandbytes") is None
            else "run on a Turing (7.5) or newer GPU, or use --quant none"
        )
        return Check("quant", FAIL, one_line(exc), fix)
    from importlib.metadata import version

    problem = int8_smoke_test(facts.device)
    bnb = f"bitsandbytes {version('bitsandbytes')}"
    if problem:
        return Check(
            "quant",
            FAIL,
            f"8bit: {bnb} is installed but its int8 matmul does not work on {facts.device}: {problem}",
            "reinstall bitsandbytes for this platform (pip install --force-reinstall 'bitsandbytes>=0.47'), or use --quant none",
        )
    return Check("quant", OK, f"8bit: {bnb}, int8 matmul checked on {facts.device}")


def int8_smoke_test(device: str) -> str | None:
    """Run one tiny LLM.int8 layer on `device` and compare it with the float matmul: None if it works, else why not.

    Importing bitsandbytes succeeds even when its native library for this platform is missing or broken; only a
    real int8 matmul shows whether 8-bit loading will train.
    """
    import torch

    try:
        import bitsandbytes as bnb

        gen = torch.Generator().manual_seed(0)  # own generator: leave the global RNG as the caller had it
        weight, x = torch.randn(8, 16, generator=gen), torch.randn(4, 16, generator=gen)
        layer = bnb.nn.Linear8bitLt(16, 8, bias=False, has_fp16_weights=False)
        layer.weight = bnb.nn.Int8Params(weight.clone(), requires_grad=False, has_fp16_weights=False)
        layer = layer.to(device)  # quantises the weight
        with torch.no_grad():
            got = layer(x.to(device=device, dtype=torch.float16)).float().cpu()
    except Exception as exc:
        return f"{type(exc).__name__}: {one_line(exc, 200)}"
    want = x @ weight.T
    error = float((got - want).abs().max() / want.abs().max())
    if not torch.isfinite(got).all() or error > 0.1:
        return f"wrong results (relative error {error:.2f} on a 16x8 layer)"
    return None
