"""The package's top level: every name in ``__all__`` resolves, and ``import peftkit`` alone does not load torch."""

from __future__ import annotations

import subprocess
import sys


def _fresh(code: str) -> str:
    """Run `code` in a new interpreter (this one has torch loaded already) and return its stdout."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_star_import_gives_every_public_name():
    out = _fresh(
        "from peftkit import *; print(AdapterBank.__name__, Predictor.__name__, load.__name__, train.__name__)"
    )
    assert out == "AdapterBank Predictor load train"


def test_importing_peftkit_is_cheap():
    assert _fresh("import sys, peftkit; print('torch' in sys.modules)") == "False"
