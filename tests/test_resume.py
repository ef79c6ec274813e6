"""``--resume`` after ``kill -9`` mid-epoch ends exactly where an uninterrupted run ends (CPU).

Two real ``python -m maxq train`` processes start together: one runs to the end, the other is
killed with SIGKILL in the middle of epoch 1 (after checkpoint.pth of epoch 0 was written), then
resumed in a new process. Metrics, layer statistics, mask snapshots, result.json and the final
weights must be equal (timings aside). A resume with another configuration is refused first and
changes nothing.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from maxq import cli, records

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TIMING = ("seconds", "images_per_s", "step_seconds")
ARGS = ["--set", "FashionMNIST", "-a", "mobilenet_v3_small", "--train-subset", "128",
        "--val-subset", "64", "-b", "32", "--epochs", "3", "--increase-end", "2", "--lr", "0.05",
        "--workers", "0", "--print-freq", "1", "--snapshot-epochs", "1", "--no-progress"]


def _maxq(*args: str, base: list[str] = ARGS) -> list[str]:
    return [sys.executable, "-m", "maxq", "train", *base, *args]


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every record file; not the lock file the killed process left, which any later command on
    the run directory takes over and removes (it records nothing)."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != records.LOCK}


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended (rc {proc.returncode}) before {text!r}")
        time.sleep(0.05)
    raise AssertionError(f"{text!r} did not appear in {path}")


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.e2e
@pytest.mark.parametrize("interval", ["1", "3"])
def test_resume_after_kill_9_equals_uninterrupted_run(tmp_path, capsys, interval):
    """Also with masks refreshed every 3rd step: 4 steps per epoch, so the resumed epoch starts
    mid-interval (step 4: the masks of step 3 are kept)."""
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    args = [*ARGS, "--mask-interval", interval]
    full = subprocess.Popen(_maxq("--save_dir", str(full_dir), base=args), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(_maxq("--save_dir", str(killed_dir), base=args), env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(killed_dir / records.LOG, "Epoch: [1][2/4]", victim)   # mid-epoch 1
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL

    ckpt = torch.load(killed_dir / records.CHECKPOINT, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0
    assert (killed_dir / records.LOCK).read_text().startswith(f"pid {victim.pid} ")
    assert not (killed_dir / records.RESULT).exists()

    # a resume with another configuration is refused, one line, and changes nothing
    before = _snapshot(killed_dir)
    assert cli.main(["train", *args, "--save_dir", str(killed_dir), "--resume",
                     "--lr", "0.02"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "another configuration" in err and "lr 0.05 there, 0.02 now" in err
    assert _snapshot(killed_dir) == before

    # the same command without --resume is refused too, with a hint
    assert cli.main(["train", *args, "--save_dir", str(killed_dir)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert _snapshot(killed_dir) == before

    # --resume CHECKPOINT: save_dir defaults to the checkpoint's folder
    resumed = subprocess.run(_maxq("--resume", str(killed_dir / records.CHECKPOINT), base=args),
                             env=ENV,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in (killed_dir / records.LOG).read_text()
    assert full.wait(timeout=600) == 0, full.stderr.read()[-2000:]

    a, b = records.read_run(full_dir), records.read_run(killed_dir)
    assert [r["epoch"] for r in b["metrics"]] == [0, 1, 2]
    assert _strip(a["metrics"]) == _strip(b["metrics"])
    assert a["layers"] == b["layers"]
    assert a["mask_epochs"] == b["mask_epochs"] == [0, 1, 2]
    for epoch in a["mask_epochs"]:
        ma, mb = records.load_mask_snapshot(full_dir, epoch), records.load_mask_snapshot(
            killed_dir, epoch)
        assert all((ma[k]["soft"] == mb[k]["soft"]).all() for k in ma)
    for key in ("best_top1", "best_top5", "best_epoch", "last_top1", "last_top5", "epochs",
                "mask_checksums"):
        assert a["result"][key] == b["result"][key], key
    final_a = torch.load(full_dir / records.CHECKPOINT, map_location="cpu", weights_only=True)
    final_b = torch.load(killed_dir / records.CHECKPOINT, map_location="cpu", weights_only=True)
    assert all(torch.equal(final_a["state_dict"][k], final_b["state_dict"][k])
               for k in final_a["state_dict"])
