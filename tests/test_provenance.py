"""Issue 27, part 2: every run says which machine made it (maxq/provenance.py): CPU model and
vector flags, the torch build's BLAS/oneDNN/MKL, thread counts, versions, the kit's commit and
dirty flag, a hash of the host name; shown in every report (``Made on:``) and in the robustness
section (``Machines compared:``). Runs recorded before provenance existed still load."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maxq import provenance, records, results

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run trained for real (one epoch of 32 FashionMNIST images, 1 thread)."""
    run_dir = tmp_path_factory.mktemp("prov") / "runs" / "prov" / "r-SoftMaxQConv2DBN-s0"
    done = subprocess.run([sys.executable, "-m", "maxq", "train", "--set", "FashionMNIST", "-a",
                           "mobilenet_v1", "--image-size", "16", "--train-subset", "32",
                           "--val-subset", "32", "-b", "32", "--epochs", "1",
                           "--increase-start", "0", "--increase-end", "1", "--device", "cpu",
                           "--workers", "0", "--no-progress", "--N", "2", "--M", "4",
                           "--save_dir", str(run_dir)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def test_config_json_says_which_machine_made_the_run(run):
    text = (run / records.CONFIG).read_text()
    prov = json.loads(text)["provenance"]
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.lower().startswith("model name")), None)
    if model:
        assert prov["cpu"]["model"] == model
    flags = next((set(line.split(":", 1)[1].split()) for line in cpuinfo.splitlines()
                  if line.startswith("flags")), set())
    assert set(prov["cpu"]["flags"]) == flags & set(provenance.VECTOR_FLAGS)
    soft = prov["software"]
    assert soft["torch"] == torch.__version__ and soft["python"] == sys.version.split()[0]
    shown = torch.__config__.show()
    if "BLAS_INFO=" in shown:
        assert f"BLAS_INFO={soft['build']['blas']}," in shown
    if "MKL-DNN v" in shown:
        assert f"MKL-DNN v{soft['build']['onednn']}" in shown
    assert prov["threads"]["intra_op"] == 1 and prov["threads"]["OMP_NUM_THREADS"] == "1"
    assert prov["threads"]["inter_op"] >= 1
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    assert prov["git"]["commit"] == head and isinstance(prov["git"]["dirty"], bool)
    assert prov["host_sha256"] == hashlib.sha256(socket.gethostname().encode()).hexdigest()
    assert f'"{socket.gethostname()}"' not in text            # the name itself is not stored


def test_reports_name_the_machine_and_old_runs_still_load(run, tmp_path):
    """A run recorded before provenance (no ``provenance`` table, ``device.host`` as older
    kits wrote it) loads beside a new one; the report's note lists both machines."""
    root = tmp_path / "runs"
    shutil.copytree(run.parent, root / "prov")
    old = root / "prov" / "r-SoftMaxQConv2DBN-s1"
    shutil.copytree(run, old)
    config = json.loads((old / records.CONFIG).read_text())
    del config["provenance"]
    config["device"] = {"type": "cpu", "threads": 2, "host": "old-box", "cpu": "x86_64"}
    config["args"]["seed"] = 1
    (old / records.CONFIG).write_text(json.dumps(config))
    res = results.load("prov", root)
    assert list(res.runs["run"]) == ["r-SoftMaxQConv2DBN-s0", "r-SoftMaxQConv2DBN-s1"]
    new_label, old_label = res.runs["machine"]
    assert old_label == (f"x86_64 host {hashlib.sha256(b'old-box').hexdigest()[:8]} "
                         f"(no provenance record), 2 threads")
    prov = json.loads((run / records.CONFIG).read_text())["provenance"]
    assert new_label.startswith(prov["cpu"]["model"]) and prov["host_sha256"][:8] in new_label
    assert f"torch {torch.__version__}" in new_label
    note = results.runs_note(res, root)
    assert f"Made on: {new_label} (1 run); {old_label} (1 run)." in note
    commit = provenance.git_state()["commit"]
    assert f"Rendered by the kit at commit `{commit[:7]}`" in note
    # the commit that trained each run: the new run's, from its provenance; the old one has none
    trained = prov["git"]
    label = trained["commit"][:7] + (" with uncommitted changes" if trained["dirty"] else "")
    assert list(res.runs["commit"]) == [label, "commit not recorded"]
    shown = f"`{label[:7]}`{label[7:]}"
    assert f"Trained by the kit at: {shown} (1 run); commit not recorded (1 run)." in note
    assert provenance.commit_label({"provenance": {"git": {"commit": "a0b0f7e99", "dirty": True}}}
                                   ) == "a0b0f7e with uncommitted changes"
    assert results.commits_markdown(res.runs.iloc[:0]) == ""
    assert results.rendered_markdown({"commit": "0123456789ab", "dirty": True}) == (
        "Rendered by the kit at commit `0123456` with uncommitted changes to the kit.\n")
    assert "no commit known" in results.rendered_markdown({"commit": None, "dirty": None})
    compared = results.machines_markdown(res.runs[res.runs["seed"] == 0],
                                         res.runs[res.runs["seed"] == 1])
    assert compared.startswith(f"Machines compared: reference runs on {new_label} (1 run); "
                               f"re-run on {old_label} (1 run).")


def test_dirty_means_the_kit_changed_not_its_committed_records(tmp_path):
    """A re-made sample run or a re-rendered report (tracked records) leaves the flag clean; a
    changed tracked file of the kit sets it; untracked files never do."""
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True,
                       env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})

    for name in ("maxq/train.py", "samples/sample/r/result.json", "reports/cpu/report.html",
                 "runs/README.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("v1\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "c")
    assert provenance.git_state(tmp_path)["dirty"] is False
    for name in ("samples/sample/r/result.json", "reports/cpu/report.html", "runs/README.md"):
        (tmp_path / name).write_text("v2\n")
    (tmp_path / "untracked.py").write_text("x\n")
    assert provenance.git_state(tmp_path / "maxq")["dirty"] is False    # from a subfolder too
    (tmp_path / "maxq" / "train.py").write_text("v2\n")
    state = provenance.git_state(tmp_path)
    assert state["dirty"] is True and len(state["commit"]) == 40
