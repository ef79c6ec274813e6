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

import torch

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


# ----------------------------------------------------------------------------------------------
# the masks by the fused passes (called by maxq.masks on the CPU)
# ----------------------------------------------------------------------------------------------
def _ptr(t):
    return None if t is None else t.data_ptr()


def _buffer(cache, name, shape, dtype=None):
    """Scratch tensor; reused from ``cache`` between calls (saves page faults), else new."""
    dtype = dtype or torch.float32
    if cache is None:
        return torch.empty(shape, dtype=dtype)
    ws = cache.setdefault("workspace", {})
    buf = ws.get(name)
    if buf is None or buf.shape != torch.Size(shape) or buf.dtype != dtype:
        buf = ws[name] = torch.empty(shape, dtype=dtype)
    return buf


def _input(weight, M: int):
    """(library, contiguous float32 weight, Co, Ci, P) when the C kernel applies (a CPU weight,
    M <= 64, at most 64 kernel positions, the library built and enabled), else None."""
    if weight.device.type != "cpu" or M > 64:
        return None
    P = weight.shape[2] * weight.shape[3] if weight.dim() == 4 else 1
    if P > 64:
        return None
    so = lib()
    if so is None:
        return None
    w = weight.detach()
    if w.dtype != torch.float32:
        w = w.float()
    return so, w.contiguous(), weight.shape[0], weight.shape[1], P


def block_keep(weight, n_keep: int, M: int, cache=None, l1=None):
    """B (uint8 0/1, weight's shape) by the C pass (and the block L1 norms into ``l1``), or None
    where it does not apply."""
    got = _input(weight, M)
    if got is None:
        return None
    so, w, Co, Ci, P = got
    B = _buffer(cache, "native B", weight.shape, torch.uint8)
    so.maxq_block_keep(w.data_ptr(), Co, Ci, P, M, n_keep, B.data_ptr(), _ptr(l1))
    return B


def maxq_mask(weight, N, M, rho, tau, axis, selection, progressive, generator, cache):
    """maxq_mask by the fused C passes (same result as the torch path), or None where they do not
    apply (then the torch path runs).

    One pass gives B (and the block L1 norms when dense blocks are picked by L1), one pass per
    axis verifies the warm window of every row and extracts x(k), x(k+1) from the entries inside
    (an exact quickselect where a window misses, and cold), one pass writes both axes' terms
    before the sigmoid ((x - thr) / tau where B and H, else -inf), torch applies the sigmoid to
    each whole tensor (as the reference), and one pass writes S = (Q_f + B) + Q_k. State per layer
    in ``cache["native"]``: each row's statistics, spacing and recent shift of thr."""
    from maxq import mask_blocks as mm

    got = _input(weight, M)
    if got is None:
        return None
    so, w, Co, Ci, P = got
    if cache is not None:
        signature = (tuple(weight.shape), N, M)
        if cache.get("signature") != signature:
            cache.clear()
            cache["signature"] = signature
    shape, n = weight.shape, w.numel()
    st = {} if cache is None else cache.setdefault("native", {})
    G = n // M
    n_keep = M - mm._floor((M - N) * (1.0 - rho)) if progressive else N
    n_dense = 0 if progressive else min(G, mm._floor(rho * G))
    l1 = _buffer(cache, "native l1", (G,)) if n_dense and selection != "random" else None
    B = block_keep(w.view(shape), n_keep, M, cache, l1)
    if n_dense:
        dense = mm.dense_blocks(l1 if l1 is not None else w.view(-1)[:G], n_dense, selection,
                                generator)
        B5 = mm._blocks5(B.view(1, Co, Ci, P), M)
        B = mm._apply_dense(B5, dense.view(1, G)).view(shape)
    if axis == "none":
        return B.to(weight.dtype)
    B = B.contiguous().to(torch.uint8)
    S = torch.empty(shape, dtype=torch.float32)
    kernel = w.dim() == 4 and P > 1
    Yk = _buffer(cache, "native Yk", shape) if kernel else None
    fstate = st.get("filter")
    warm = fstate is not None
    if not warm:
        fstate = st["filter"] = torch.zeros(Co, 4)
    fneed = _buffer(cache, "native fneed", (Co,), torch.int32)
    L = Ci * P
    scratch = _buffer(cache, "native row", (L + 16,))
    missed = so.maxq_select_rows(w.data_ptr(), Co, L, mm.query_k(L, N, M), int(warm),
                                 fstate.data_ptr(), fneed.data_ptr(), scratch.data_ptr())
    if missed < 0:                                    # NaN: the torch path decides
        st.clear()
        return None
    st["filter missed"] = missed
    kstate = kneed = kcount = None
    if kernel:
        kstate = st.get("kernel")
        warm = kstate is not None
        if not warm:
            kstate = st["kernel"] = torch.zeros(P, 4)
        kneed = _buffer(cache, "native kneed", (P,), torch.int32)
        kcount = _buffer(cache, "native kcount", (2 * P,), torch.int64)
        missed = so.maxq_select_cols(w.data_ptr(), Co * Ci, P, mm.query_k(Co * Ci, N, M),
                                     int(warm), kstate.data_ptr(), kneed.data_ptr(),
                                     Yk.data_ptr(), kcount.data_ptr())
        if missed < 0:
            st.clear()
            return None
        st["kernel missed"] = missed
    hard = axis == "hard"
    so.maxq_compose(w.data_ptr(), Co, Ci, P, B.data_ptr(), fstate.data_ptr(), fneed.data_ptr(),
                    _ptr(kstate), _ptr(kneed), float(tau), int(hard), S.data_ptr(), _ptr(Yk),
                    _ptr(kcount))
    if not hard:
        S.sigmoid_()
        if kernel:
            Yk.sigmoid_()
    so.maxq_finish(S.data_ptr(), B.data_ptr(), _ptr(Yk), S.data_ptr(), n)
    return S.to(weight.dtype)
