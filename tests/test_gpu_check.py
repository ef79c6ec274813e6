"""scripts/gpu_check.py: without CUDA it says so in one line and exits 0; ``--cpu`` runs its CPU-side
parts (the same code at toy sizes: train steps with bf16 CPU autocast and channels_last, the
DataLoader side of the data check, the eligible 2:4 layers, a 1-process gloo DDP step, a short
``maxq train`` run exported to ONNX and checked in onnxruntime) and prints the one table."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_so_and_exits_0():
    done = subprocess.run([sys.executable, str(SCRIPT)], env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "no CUDA device" in done.stdout and "|" not in done.stdout
    assert len(done.stdout.strip().splitlines()) == 1


@pytest.mark.e2e
def test_cpu_side_parts_run_and_fill_the_table(tmp_path):
    out = tmp_path / "table.md"
    done = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--out", str(out)], env=ENV,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = out.read_text()
    assert table in done.stdout + "\n"
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 7 and cells[0] not in ("check", "-----"):
            rows.setdefault(cells[0], []).append(cells)
    assert set(rows) == {"masks", "no host sync", "train step", "mask refresh", "data",
                         "2:4 kernels", "DDP", "train", "ONNX"}
    assert rows["masks"][0][6] == "n/a (needs CUDA)"
    assert rows["no host sync"][0][6] == "n/a (needs CUDA)"
    assert "convs" in rows["mask refresh"][0][1] and rows["mask refresh"][0][3].endswith(" ms")
    fp16, bf16 = rows["train step"]
    assert "fp16" in fp16[1] and fp16[6] == "n/a (fp16 needs CUDA)"
    assert "bf16 channels_last" in bf16[1]
    assert bf16[2].startswith("dense ") and bf16[3].startswith("MaxQ ") and float(bf16[4]) > 0
    assert rows["data"][0][2].startswith("DataLoader ") and "img/s" in rows["data"][0][2]
    assert "eligible layers" in rows["2:4 kernels"][0][1]
    assert int(rows["2:4 kernels"][0][1].split(": ")[1].split()[0]) > 0
    assert rows["DDP"][0][1].startswith("1-process gloo") and rows["DDP"][0][6] == "ok"
    assert rows["train"][0][6] == "ok"
    assert rows["ONNX"][0][6] == "ok" and float(rows["ONNX"][0][3].split()[-1]) < 1e-3
