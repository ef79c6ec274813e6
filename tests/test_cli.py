"""The ``maxq`` command line: seed flags, the seed's two example commands, bad input."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from maxq import cli, records
from maxq.data import write_imagefolder

# The seed README's two command lines (pruning_train.py -> maxq train), with its glued
# "[SAVE_DIR]--warmup-length" written apart.
SEED_TRAIN = ("{data} --set ImageNet -a {arch} --no-bn-decay True --save_dir {save_dir} "
              "--warmup-length 0 --N 1 --M 16 --decay 0.0002 --conv-bn-type SoftMaxQConv2DBN "
              "--weight-decay 0.0001 --nesterov False --workers 16 --increase-start 0 "
              "--increase-end 90")
SEED_TEST = SEED_TRAIN + " --pretrained {pretrained} --evaluate"
SEED_FLAGS = ("--save_dir", "--arch", "-a", "--conv-bn-type", "--set", "--evaluate",
              "--pretrained", "--N", "--M", "--decay", "--decay-type", "--increase-start",
              "--increase-end", "--tau", "--prune-schedule", "--no-bn-decay", "--warmup-length",
              "--weight-decay", "--nesterov", "--workers", "--epochs", "--batch-size", "--lr",
              "--seed", "--resume", "--momentum")
TINY = ["--set", "FashionMNIST", "-a", "mobilenet_v3_small", "--train-subset", "32",
        "--val-subset", "32", "-b", "32", "--epochs", "1", "--increase-end", "1", "--workers",
        "0", "--no-progress"]


def _parse(argv):
    parser = cli.build_parser("train")
    argv = cli.split_glued_flags(argv, parser.subcommand_parsers["train"])
    return cli.config_from_args(parser.parse_args(argv))


def _run(capsys, argv):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _files(path):
    return {str(p.relative_to(path)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- parsing
def test_help_is_complete(capsys):
    assert cli.main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in SEED_FLAGS:
        assert f"{flag} " in text or f"{flag}," in text, flag
    for word in ("SoftMaxQConv2DBN", "resnet50", "FashionMNIST", "GLOBAL batch", "cubic"):
        assert word in text


def test_python_dash_m_maxq_lists_the_subcommands():
    out = subprocess.run([sys.executable, "-m", "maxq", "--help"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0
    for name in ("train", "batch", "report", "export"):
        assert name in out.stdout


def test_seed_training_line_parses_with_its_meaning(tmp_path):
    argv = SEED_TRAIN.format(data=tmp_path, arch="resnet50", save_dir=tmp_path / "run").split()
    cfg = _parse(["train", *argv])
    assert (cfg.data, cfg.set, cfg.arch, cfg.save_dir) == (
        str(tmp_path), "ImageNet", "resnet50", str(tmp_path / "run"))
    assert (cfg.no_bn_decay, cfg.nesterov, cfg.warmup_length, cfg.N, cfg.M) == (
        True, False, 0, 1, 16)
    assert (cfg.decay, cfg.weight_decay, cfg.workers, cfg.increase_start, cfg.increase_end) == (
        0.0002, 0.0001, 16, 0, 90)
    assert (cfg.conv_bn_type, cfg.evaluate, cfg.epochs, cfg.batch_size, cfg.lr) == (
        "SoftMaxQConv2DBN", False, 120, 256, 0.1)
    cfg.validate()
    # the README's glued form "--save_dir [SAVE_DIR]--warmup-length 0" is split as meant
    glued = SEED_TRAIN.replace("{save_dir} --warmup", "{save_dir}--warmup")
    assert _parse(["train", *glued.format(data=tmp_path, arch="resnet50",
                                          save_dir=tmp_path / "run").split()]) == cfg


@pytest.mark.parametrize("text, value", [("True", True), ("false", False), ("1", True),
                                         ("0", False), ("yes", True), ("No", False)])
def test_boolean_seed_flags_take_values(text, value):
    cfg = _parse(["train", "--set", "FashionMNIST", "--no-bn-decay", text, "--nesterov", text])
    assert cfg.no_bn_decay is value and cfg.nesterov is value
    assert _parse(["train", "--nesterov"]).nesterov is True


def test_kit_flags():
    cfg = _parse(["train", "--snapshot-epochs", "0,5,9", "--resume", "--overwrite",
                  "--amp", "off", "--sync-bn", "False", "--study", "s", "--row", "r"])
    assert cfg.snapshot_epochs == [0, 5, 9] and cfg.resume is True and cfg.overwrite
    assert (cfg.amp, cfg.sync_bn, cfg.study, cfg.row) == ("off", False, "s", "r")
    assert _parse(["train", "--snapshot-epochs", "10"]).snapshot_epochs == 10
    assert _parse(["train", "--resume", "x/checkpoint.pth"]).resume == "x/checkpoint.pth"


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("argv, message", [
    (["--N", "5", "--M", "4"], "N must be <= M"),
    (["-a", "resnet9"], "unknown --arch 'resnet9'"),
    (["--set", "MNIST"], "unknown --set 'MNIST'"),
    (["--conv-bn-type", "MaxQConv"], "unknown --conv-bn-type 'MaxQConv'"),
    (["--increase-end", "5", "--epochs", "3"], "--increase-end (5) must be <= --epochs (3)"),
    (["--nesterov", "maybe"], "expected True or False"),
    (["--epochs", "two"], "invalid int value"),
    (["--amp", "fp16", "--device", "cpu"], "--amp fp16 needs CUDA"),
    (["--mask-interval", "0"], "--mask-interval must be an integer >= 1; got 0"),
])
def test_bad_flags_give_one_error_line(capsys, tmp_path, argv, message):
    save_dir = tmp_path / "run"
    code, out, err = _run(capsys, ["train", "--set", "FashionMNIST", "--save_dir",
                                   str(save_dir), *argv])
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not save_dir.exists()


def test_missing_and_empty_data_directories(capsys, tmp_path):
    save_dir = tmp_path / "run"
    code, _, err = _run(capsys, ["train", str(tmp_path / "nowhere"), "--save_dir",
                                 str(save_dir)])
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = _run(capsys, ["train", str(tmp_path / "empty"), "--save_dir", str(save_dir)])
    assert code == 2 and err.count("\n") == 1 and "missing train directory" in err
    code, _, err = _run(capsys, ["train", "--save_dir", str(save_dir)])  # ImageNet needs DATA
    assert code == 2 and "DATA" in err
    assert not save_dir.exists()


def test_corrupt_image_is_one_error_line(capsys, tmp_path):
    tree = write_imagefolder(tmp_path / "tree", n_train_per_class=2, n_val_per_class=1)
    bad = sorted((tree / "train").rglob("*.jpg"))[3]
    bad.write_bytes(b"not a jpeg at all")
    code, _, err = _run(capsys, ["train", str(tree), "--set", "ImageNet", "-a",
                                 "mobilenet_v3_small", "--image-size", "16", "-b", "20",
                                 "--epochs", "1", "--increase-end", "1", "--workers", "0",
                                 "--no-progress", "--save_dir", str(tmp_path / "run")])
    assert code == 2 and err.count("\n") == 1 and bad.name in err, err


def test_finished_run_is_refused_and_left_untouched(capsys, tmp_path):
    run = tmp_path / "run"
    records.write_json(run / records.CONFIG, {"args": {}})
    records.append_jsonl(run / records.METRICS, [{"epoch": 0, "val_top1": 50.0}])
    records.write_json(run / records.RESULT, {"best_top1": 50.0})
    before = _files(run)
    for extra in ([], ["--resume"]):
        code, _, err = _run(capsys, ["train", *TINY, "--save_dir", str(run), *extra])
        assert code == 2 and err.count("\n") == 1 and "finished run" in err
        assert "--overwrite" in err
        assert _files(run) == before


def test_unfinished_run_needs_resume_or_overwrite(capsys, tmp_path):
    run = tmp_path / "run"
    records.write_json(run / records.CONFIG, {"args": {}})
    records.save_torch(run / records.CHECKPOINT, {"epoch": 0})
    before = _files(run)
    code, _, err = _run(capsys, ["train", *TINY, "--save_dir", str(run)])
    assert code == 2 and err.count("\n") == 1 and "--resume" in err and "--overwrite" in err
    assert _files(run) == before


def test_overwrite_replaces_only_the_run_records(capsys, tmp_path):
    run = tmp_path / "run"
    records.write_json(run / records.RESULT, {"best_top1": -1.0})
    (run / "notes.txt").write_text("mine")
    code, out, _ = _run(capsys, ["train", *TINY, "--save_dir", str(run), "--overwrite"])
    assert code == 0 and "best top-1" in out and str(run) in out
    assert (run / "notes.txt").read_text() == "mine"
    assert records.read_json(run / records.RESULT)["best_top1"] >= 0


# ----------------------------------------------------------------------------- the seed's lines
@pytest.mark.filterwarnings("ignore:dense because M=16")
def test_seed_commands_train_then_evaluate(capsys, tmp_path):
    tree = write_imagefolder(tmp_path / "tree", n_train_per_class=2, n_val_per_class=2)
    run = tmp_path / "run"
    fields = dict(data=tree, arch="mobilenet_v3_small", save_dir=run)
    small = ["--epochs", "1", "--increase-end", "1", "-b", "20", "--image-size", "16",
             "--workers", "0", "--no-progress"]  # seconds instead of days
    code, out, err = _run(capsys, ["train", *SEED_TRAIN.format(**fields).split(), *small])
    assert code == 0, err
    result = records.read_json(run / records.RESULT)
    assert records.read_json(run / records.CONFIG)["args"]["M"] == 16
    code, out, err = _run(capsys, ["train", *SEED_TEST.format(
        **fields, pretrained=run / records.BEST).split(), *small])
    assert code == 0, err
    assert f"Prec@1 {result['best_top1']:.3f} Prec@5 {result['best_top5']:.3f}" in out
    assert records.read_json(run / records.RESULT) == result       # evaluate writes no records
