"""Which machine and which software made a run: the ``provenance`` table of ``config.json``.

Two runs of the same study cell on two machines can differ by points (CPU vector units, the
torch build's BLAS and oneDNN, thread counts all change the floating-point order). A record that
says only ``cpu: x86_64`` cannot show why, so every run stores:

``cpu``       model name, logical cores, and the vector-relevant flags (``avx2``, ``avx512f``,
              ``amx_tile``, ``fma``, ...) from ``/proc/cpuinfo`` (``platform`` elsewhere)
``torch``     versions of python, torch, torchvision, numpy; the build's BLAS, LAPACK, oneDNN
              (MKL-DNN), MKL, OpenMP and CPU capability lines of ``torch.__config__.show()``
``threads``   ``torch.get_num_threads()``, ``torch.get_num_interop_threads()`` and the
              ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` of the process
``git``       the kit's commit and whether the work tree had uncommitted changes
``host``      SHA-256 of the host name (never the name): equal hashes, same machine

:func:`machine_label` turns a stored table into the short text the reports print.
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

#: /proc/cpuinfo flags that change which kernels torch and oneDNN pick
VECTOR_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw",
                "avx512vl", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16",
                "amx_int8", "asimd", "sve", "sve2")
#: the lines of ``torch.__config__.show()`` kept (by their leading words)
_CONFIG_KEYS = {"blas": r"BLAS_INFO=(\S+?),", "lapack": r"LAPACK_INFO=(\S+?),",
                "mkl": r"Intel\(R\) (?:oneAPI )?Math Kernel Library Version ([^\n]+)",
                "onednn": r"(?:Intel\(R\) )?MKL-DNN v([0-9.]+[^\n]*)",
                "openmp": r"OpenMP (\d+)", "cpu_capability": r"CPU capability usage: (\S+)",
                "cudnn": r"CUDNN_VERSION=(\S+?),",
                "compiler": r"(?m)^\s*- ((?:GCC|clang|MSVC)[^\n]*)"}


def cpu_info(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> dict[str, Any]:
    """Model name, logical core count and the :data:`VECTOR_FLAGS` this CPU has."""
    model, flags = None, set()
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if model is None and key in ("model name", "hardware", "cpu model"):
            model = value.strip() or None
        elif not flags and key in ("flags", "features"):
            flags = set(value.split())
    return {"model": model or platform.processor() or platform.machine(),
            "machine": platform.machine(), "logical_cores": os.cpu_count(),
            "flags": [f for f in VECTOR_FLAGS if f in flags]}


def torch_build(show: str | None = None) -> dict[str, Any]:
    """Versions and the build's math libraries (from ``torch.__config__.show()``)."""
    import numpy
    import torch
    import torchvision

    text = torch.__config__.show() if show is None else show
    build = {}
    for key, pattern in _CONFIG_KEYS.items():
        match = re.search(pattern, text)
        build[key] = match.group(1).strip() if match else None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": numpy.__version__,
            "cuda": torch.version.cuda, "build": build}


def thread_info() -> dict[str, Any]:
    import torch

    return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS")}


#: tracked folders of records, not of the kit: a change there (a re-made sample run, a re-rendered
#: report) does not make the code that trains a run differ from its commit
RECORD_FOLDERS = ("runs", "reports", "samples")


def git_state(root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The kit's commit and dirty flag (tracked files changed outside :data:`RECORD_FOLDERS`);
    ``None``s outside a checkout."""
    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    exclude = [f":(top,exclude){folder}" for folder in RECORD_FOLDERS]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no",
                                     "--", ":(top)", *exclude],
                                    cwd=root, capture_output=True, text=True,
                                    timeout=10).stdout.strip()) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty}


def host_hash(name: str | None = None) -> str:
    """SHA-256 (hex) of the host name: tells machines apart without naming them."""
    return hashlib.sha256((socket.gethostname() if name is None else name).encode()).hexdigest()


def provenance() -> dict[str, Any]:
    """Everything above, as stored in ``config.json`` under ``provenance``."""
    return {"cpu": cpu_info(), "software": torch_build(), "threads": thread_info(),
            "git": git_state(), "host_sha256": host_hash(), "platform": sys.platform}


def commit_label(config: dict[str, Any]) -> str:
    """The kit's commit that trained a run, from its ``config.json``: ``"0526048"``,
    ``"a0b0f7e with uncommitted changes"``, or ``"commit not recorded"`` (runs made before the
    kit recorded it, or outside a git checkout)."""
    prov = config.get("provenance") if isinstance(config, dict) else None
    state = (prov.get("git") or {}) if isinstance(prov, dict) else {}
    if not state.get("commit"):
        return "commit not recorded"
    changed = " with uncommitted changes" if state.get("dirty") else ""
    return f"{str(state['commit'])[:7]}{changed}"


def machine_label(config: dict[str, Any]) -> str:
    """A run's machine in one short phrase, from its ``config.json`` (``provenance`` when
    present, else the older ``device`` table): ``"<cpu model> [avx2 avx512f] host 3f2a9c1b,
    torch 2.5.1 (mkl, oneDNN 3.5.3), 2 threads"``."""
    prov = config.get("provenance") if isinstance(config, dict) else None
    device = (config.get("device") or {}) if isinstance(config, dict) else {}
    if not isinstance(prov, dict):
        host = device.get("host")
        tag = host_hash(str(host))[:8] if host else "?"
        return (f"{device.get('cpu', '?')} host {tag} (no provenance record), "
                f"{_threads(device.get('threads'))}")
    cpu, soft = prov.get("cpu") or {}, prov.get("software") or {}
    build, threads = soft.get("build") or {}, prov.get("threads") or {}
    flags = [f for f in cpu.get("flags") or [] if f.startswith(("avx", "amx", "sve"))]
    libs = ", ".join(x for x in (build.get("blas"),
                                 f"oneDNN {build['onednn'].split()[0]}" if build.get("onednn")
                                 else None) if x)
    return (f"{cpu.get('model', '?')} [{' '.join(flags) or 'no avx'}] host "
            f"{str(prov.get('host_sha256', '?'))[:8]}, torch {soft.get('torch', '?')}"
            f"{f' ({libs})' if libs else ''}, {_threads(threads.get('intra_op'))}")


def _threads(count: Any) -> str:
    return f"{count if count is not None else '?'} thread{'' if count == 1 else 's'}"
