"""A user's mistakes, across the stage scripts: each stops before any work with one sentence naming the flag or
file, exit code 2 (a command line that cannot work), no traceback, and no file written or changed.
Run: python -m pytest -q tests/test_mistakes.py"""
import os
import subprocess
import sys

import pytest
import torch

import evaluate
import finetune
import maps
import masking
import model as M
import pretrain
from conftest import ROOT


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A list file, a captions file, a pretrain.py checkpoint (vit_tiny, tgm, ratio 0.6) and a finetune.py one
    (vit_tiny, finetune), and a picture that must not change, in a fresh working folder; TGM_CACHE empty."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TGM_CACHE", str(tmp_path / "cache"))
    open("list.txt", "w").write("a.mp4 0\n")
    open("caps.jsonl", "w").write('{"video": "a.mp4", "captions": ["a red circle"]}\n')
    cfg = M.model_config_dict(M.make_config("vit_tiny", num_frames=4, img_size=32))
    torch.save({"args": {"model": "vit_tiny", "mask": "tgm", "ratio": 0.6}, "model_cfg": cfg}, "pre.pt")
    torch.save({"args": {}, "model_cfg": cfg, "mode": "finetune", "num_classes": 2}, "ft.pt")
    open("mask.png", "wb").write(b"an earlier picture")
    return tmp_path


def listing(folder):
    return sorted((os.path.relpath(os.path.join(d, f), folder), os.path.getmtime(os.path.join(d, f)))
                  for d, _, names in os.walk(folder) for f in names)


CASES = [  # (stage, argv, the sentence)
    (pretrain.parse_args, ["--resume", "nope.pt"], "pretrain.py: --resume nope.pt: no such file"),
    (pretrain.parse_args, ["--ratio", "1.5"], "pretrain.py: --ratio 1.5: the share of tokens hidden lies strictly"),
    (pretrain.parse_args, ["--batch-size", "0"], "pretrain.py: --batch-size 0: it must be at least 1"),
    (pretrain.parse_args, ["--data", "list.txt", "--mask", "tgm", "--captions", "caps.jsonl", "--tgm-features", "dense",
                           "--resume", "pre.pt", "--model", "vit_small"],
     "pretrain.py: --model is vit_small, but pre.pt was made with vit_tiny"),
    (pretrain.parse_args, ["--data", "list.txt", "--mask", "tube", "--resume", "pre.pt", "--model", "vit_tiny"],
     "pretrain.py: --mask is tube, but pre.pt was made with tgm"),
    (finetune.parse_args, ["--checkpoint", "nope.pt"], "finetune.py: --checkpoint nope.pt: no such file"),
    (finetune.parse_args, ["--checkpoint", "none", "--epochs", "0"], "finetune.py: --epochs 0: it must be at least 1"),
    (finetune.parse_args, ["--checkpoint", "none", "--resume", "nope.pt"], "finetune.py: --resume nope.pt: no such"),
    (lambda argv: finetune.main(finetune.parse_args(argv)), ["--data", "list.txt", "--resume", "ft.pt", "--model",
                                                             "vit_small"], "finetune.py: --model vit_small does not fit"),
    (lambda argv: finetune.main(finetune.parse_args(argv)), ["--data", "list.txt", "--resume", "ft.pt", "--mode",
                                                             "linear"], "finetune.py: --resume ft.pt is a --mode finetune"),
    (evaluate.parse_args, ["--checkpoint", "nope.pt"], "evaluate.py: --checkpoint nope.pt: no such file"),
    (evaluate.parse_args, ["--checkpoint", "pre.pt", "--visualize", "--ratio", "1.5"], "evaluate.py: --ratio 1.5"),
    (masking.parse_args, ["--ratio", "1.5"], "masking.py: --ratio 1.5: the share of tokens hidden"),
    (maps.parse_args, ["--out-dir", "maps", "--data", "nope.txt", "--captions", "caps.jsonl"],
     "maps.py: --data nope.txt: no such file"),
]


@pytest.mark.parametrize("stage, argv, sentence", CASES, ids=[" ".join(c[1][:4]) for c in CASES])
def test_a_mistake_stops_with_one_sentence_and_writes_nothing(files, capsys, stage, argv, sentence):
    before = listing(files)
    with pytest.raises(SystemExit) as stop:
        stage(argv)
    assert stop.value.code == 2                                      # a command line that cannot work, as argparse's
    err = capsys.readouterr().err
    assert err.startswith(sentence) and err.count("\n") == 1, err    # one sentence, one line, nothing else
    assert listing(files) == before                                  # no demo built, no picture or checkpoint touched


def test_pretrain_ratio_refused_in_seconds_on_an_empty_cache_without_a_traceback(files):
    # the whole process, as a user runs it: before this check, the demo was written and its CLIP trained first
    run = subprocess.run([sys.executable, os.path.join(ROOT, "pretrain.py"), "--ratio", "1.5"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.startswith("pretrain.py: --ratio 1.5") and not os.path.exists(files / "cache")


def test_warmup_longer_than_the_run_is_a_note(files, capsys):
    args = pretrain.parse_args(["--data", "list.txt", "--mask", "tube", "--epochs", "1"])
    assert args.warmup_epochs == 40
    assert "note: --warmup-epochs 40 >= --epochs 1: the lr never reaches its peak" in capsys.readouterr().out
