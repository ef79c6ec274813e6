"""Optional fused CPU passes of the MaxQ mask (``maxq/_native.c``), compiled on first use.

The C file has no dependency beyond the C library: :func:`lib` compiles it once per source,
compiler and CPU with the system C compiler (``$CC``, else ``cc``/``gcc``/``clang``) into
``$MAXQ_NATIVE_CACHE`` (default ``~/.cache/maxq``), loads it with ctypes and returns it; calls
release the GIL, so the layers' masks are still computed side by side on threads. Without a
compiler, on a failed build, or with ``MAXQ_NATIVE=0`` it returns None and :mod:`maxq.masks`
uses its pure-torch path, which gives the same masks (both are ``torch.equal`` to the sort-based
reference; the tests check both).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("_native.c")
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared",
         "-std=c11"]

_LOCK = threading.Lock()
_LIB: ctypes.CDLL | None = None
_TRIED = False
_ERROR: str | None = None

_i64, _i32, _f32, _p = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p
_SIGNATURES = {
    "maxq_block_keep": (_i32, [_p, _i64, _i64, _i64, _i32, _i32, _p, _p]),
    "maxq_select_rows": (_i64, [_p, _i64, _i64, _i64, _i32, _p, _p, _p]),
    "maxq_select_cols": (_i64, [_p, _i64, _i64, _i64, _i32, _p, _p, _p, _p]),
    "maxq_compose": (None, [_p, _i64, _i64, _i64, _p, _p, _p, _p, _p, _f32, _i32, _p, _p, _p]),
    "maxq_finish": (None, [_p, _p, _p, _p, _i64]),
}


def enabled() -> bool:
    """Whether the environment allows the native path (``MAXQ_NATIVE`` not 0/false/no/off)."""
    return os.environ.get("MAXQ_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc and shutil.which(cc.split()[0]):
        return cc
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return name
    return None


def _cpu_id() -> str:
    """What -march=native depends on: the CPU model and flags (Linux), else the platform."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _build(cc: str) -> Path:
    source = SOURCE.read_bytes()
    version = subprocess.run([*cc.split(), "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), version.encode(),
                                     _cpu_id().encode()])).hexdigest()[:16]
    cache = Path(os.environ.get("MAXQ_NATIVE_CACHE") or Path.home() / ".cache" / "maxq")
    target = cache / f"maxq_native_{key}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
    os.close(fd)
    try:
        proc = subprocess.run([*cc.split(), *FLAGS, str(SOURCE), "-o", tmp, "-lm"],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode:
            raise RuntimeError(f"{cc} failed: {proc.stderr.strip()[-2000:]}")
        os.replace(tmp, target)            # atomic: concurrent builders write the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def lib() -> ctypes.CDLL | None:
    """The loaded library, or None (disabled, no compiler, or the build failed: warned once)."""
    global _LIB, _TRIED, _ERROR
    if not enabled():
        return None
    if _TRIED:
        return _LIB
    with _LOCK:
        if not _TRIED:
            try:
                cc = _compiler()
                if cc is None:
                    raise RuntimeError("no C compiler found (set CC)")
                so = ctypes.CDLL(str(_build(cc)))
                for name, (restype, argtypes) in _SIGNATURES.items():
                    fn = getattr(so, name)
                    fn.restype, fn.argtypes = restype, argtypes
                _LIB = so
            except Exception as exc:  # noqa: BLE001 - any failure means: use the torch path
                _ERROR = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"maxq: native mask kernels unavailable, using the torch path "
                              f"({_ERROR})", RuntimeWarning, stacklevel=2)
            _TRIED = True
    return _LIB


def error() -> str | None:
    """Why :func:`lib` returned None after trying (None if it loaded or was not tried)."""
    return _ERROR
