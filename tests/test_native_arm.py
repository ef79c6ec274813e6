"""The native arm of the mask tests (tests/test_masks.py runs every test on the C kernel and on
the torch path) must not be skipped silently: where a C compiler exists and ``MAXQ_NATIVE`` does
not turn the kernel off, the library must build and load, else this test fails (CI included).
Without a compiler the kit falls back to the torch path (tested here once, in a subprocess
with an empty ``PATH``)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from maxq import native

ROOT = Path(__file__).resolve().parents[1]


def test_the_native_arm_runs_where_a_compiler_exists():
    if not native.enabled():
        pytest.skip("MAXQ_NATIVE turns the C kernel off: the native arm is not wanted")
    if native._compiler() is None:
        pytest.skip("no C compiler ($CC, cc, gcc, clang): the native arm is skipped")
    assert native.lib() is not None, f"a compiler exists but the C kernel failed: {native.error()}"


def test_no_compiler_falls_back_to_the_torch_path(tmp_path):
    """Without a C compiler the native library is not built (one warning) and the masks come
    from the torch path, still equal to the reference."""
    code = (
        "import sys, warnings, torch\n"
        f"sys.path[:0] = [{str(ROOT)!r}]\n"
        "from maxq.mask_reference import reference_maxq_mask\n"
        "from maxq import native, masks\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    assert native.lib() is None\n"
        "assert 'no C compiler' in native.error(), native.error()\n"
        "assert any('torch path' in str(c.message) for c in caught)\n"
        "w = torch.randn(8, 16, 3, 3)\n"
        "assert torch.equal(masks.maxq_mask(w, 2, 4), reference_maxq_mask(w, 2, 4))\n"
        "print('ok')\n")
    env = {"PATH": str(tmp_path), "MAXQ_NATIVE_CACHE": str(tmp_path / "cache"),
           "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
