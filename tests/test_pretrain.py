"""
Tests of pretrain.py (Sec. 3.5, 4.2): every mask with and without the contrastive loss, two Gloo processes,
exact resume, a planted NaN, start-up checks. CPU, tiny model and a tiny random CLIP, the demo videos.

    python -m pytest -q tests/test_pretrain.py
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import demo as D
import model as M
import pretrain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

@pytest.fixture(scope="module")
def tiny_clip(tiny_clip_config):
    return tiny_clip_config  # conftest's tiny random CLIP, as a --clip-model config file


@pytest.fixture(scope="module")
def small_list(demo, tmp_path_factory):
    """32 demo videos (4 per class): 4 steps per epoch at batch 8."""
    lines = open(demo["train"]).read().splitlines()
    path = tmp_path_factory.mktemp("lists") / "small.txt"
    path.write_text("\n".join(lines[:: len(lines) // 32][:32]) + "\n")
    return str(path)


def flags(demo, clip, out, data=None):
    return ["--data", data or demo["train"], "--root", demo["root"], "--captions", demo["captions"],
            "--model", "vit_tiny", "--num-frames", "4", "--input-size", "32", "--batch-size", "8",
            "--epochs", "2", "--warmup-epochs", "0", "--blr", "0.02", "--num-workers", "0", "--precision", "fp32",
            "--clip-model", clip, "--clip-pretrained", "none", "--log-interval", "1", "--output-dir", str(out)]


def out_flag(path):
    return ["--output-dir", str(path)]


def read_log(out):
    return [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]


@pytest.mark.parametrize("mask,extra", [
    ("random", []),
    ("tube", ["--contrastive"]),
    ("mgm", []),
    ("tgm", ["--contrastive", "--tgm-features", "dense"]),
    ("tgm", ["--tgm-features", "patch", "--tgm-order", "bottom"]),
])
def test_each_mask_trains(demo, tiny_clip, tiny_clip_dim, tmp_path, mask, extra):
    args = pretrain.parse_args(flags(demo, tiny_clip, tmp_path) + ["--mask", mask, "--max-steps", "8"] + extra)
    pretrain.main(args)
    log = read_log(tmp_path)
    assert [r["step"] for r in log] == list(range(1, 9))
    for field in ("step", "epoch", "loss_mse", "loss_nce", "lr", "data_ms", "step_ms", "clips_per_s"):
        assert field in log[0]
    assert all(torch.isfinite(torch.tensor([r["loss_mse"], r["loss_nce"]])).all() for r in log)
    first, last = sum(r["loss_mse"] for r in log[:3]) / 3, sum(r["loss_mse"] for r in log[-3:]) / 3
    assert last < first
    assert log[0]["nce_optimised"] == ("--contrastive" in extra)  # Fig. 4: logged either way
    assert os.path.isfile(tmp_path / "masks.png") and os.path.isfile(tmp_path / "ckpt.pt")
    ckpt = M.load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["step"] == 8 and M.config_from_checkpoint(ckpt).head_out_dim == tiny_clip_dim


def test_resume_is_exact(demo, tiny_clip, small_list, tmp_path):
    common = flags(demo, tiny_clip, None, small_list) + ["--mask", "tube", "--contrastive", "--num-workers", "2"]
    pretrain.main(pretrain.parse_args(common + out_flag(tmp_path / "straight")))
    # the same run stopped mid-epoch (step 3 of 8), then resumed
    pretrain.main(pretrain.parse_args(common + out_flag(tmp_path / "resumed") + ["--max-steps", "3"]))
    assert M.load_checkpoint(tmp_path / "resumed" / "ckpt.pt")["step"] == 3
    pretrain.main(pretrain.parse_args(common + out_flag(tmp_path / "resumed") + ["--resume", "auto"]))
    a = M.load_checkpoint(tmp_path / "straight" / "ckpt.pt")
    b = M.load_checkpoint(tmp_path / "resumed" / "ckpt.pt")
    assert a["step"] == b["step"] == 8
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_planted_nan_stops_and_keeps_last_checkpoint(demo, tiny_clip, small_list, tmp_path, monkeypatch):
    calls = []
    original = M.VideoMAE.forward_loss

    def poisoned(self, video, pred, mask):
        calls.append(1)
        loss = original(self, video, pred, mask)
        return loss * float("nan") if len(calls) == 6 else loss   # the 6th step (step 5), in epoch 1

    monkeypatch.setattr(M.VideoMAE, "forward_loss", poisoned)
    args = pretrain.parse_args(flags(demo, tiny_clip, tmp_path, small_list) + ["--mask", "tube", "--save-every", "1"])
    with pytest.raises(SystemExit, match="at step 5"):
        pretrain.main(args)
    assert M.load_checkpoint(tmp_path / "ckpt.pt")["step"] == 4     # the end of epoch 0, intact


def test_two_processes_see_the_global_batch(demo, tiny_clip, small_list, tmp_path):
    common = flags(demo, tiny_clip, None, small_list) + ["--mask", "tube", "--contrastive", "--max-steps", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           os.path.join(ROOT, "pretrain.py")] + common + out_flag(tmp_path / "ddp")
    cmd[cmd.index("--batch-size") + 1] = "4"                         # 2 x 4 = the same global batch of 8
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert os.listdir(tmp_path / "ddp") and M.load_checkpoint(tmp_path / "ddp" / "ckpt.pt")["step"] == 2
    pretrain.main(pretrain.parse_args(common + out_flag(tmp_path / "one")))
    ddp, one = read_log(tmp_path / "ddp"), read_log(tmp_path / "one")
    # step 1: same weights, same 8 clips, masks and captions, split over two ranks: the same global InfoNCE
    assert ddp[0]["loss_nce"] == pytest.approx(one[0]["loss_nce"], rel=1e-4)


@pytest.mark.parametrize("bad,message", [
    (["--ratio", "1.2"], "strictly between 0 and 1"),
    (["--num-frames", "5"], "multiple of the tubelet"),
    (["--input-size", "40"], "multiple of the patch"),
    (["--mse-weight", "0"], "add --contrastive"),
])
def test_bad_flags_stop_with_a_sentence(demo, bad, message):
    with pytest.raises(SystemExit, match=message):
        pretrain.parse_args(["--data", demo["train"], "--mask", "tube"] + bad)


def test_tgm_without_captions_says_how_to_fix(demo):
    with pytest.raises(SystemExit, match="pass --captions"):
        pretrain.parse_args(["--data", demo["train"], "--mask", "tgm"])
    with pytest.raises(SystemExit, match="pass --captions"):
        pretrain.parse_args(["--data", demo["train"], "--mask", "tube", "--contrastive"])


def test_tgm_on_real_data_asks_for_maps_or_online_features(demo):
    real = ["--data", demo["train"], "--captions", demo["captions"], "--mask", "tgm"]
    with pytest.raises(SystemExit, match="maps.py"):
        pretrain.parse_args(real)
    assert pretrain.parse_args(real + ["--tgm-features", "dense"]).tgm_maps is None  # online, when asked for
    with pytest.raises(SystemExit, match="drop --tgm-features"):
        pretrain.parse_args(real + ["--tgm-maps", "m", "--tgm-features", "patch"])


@pytest.fixture(scope="module")
def small_maps(demo, tiny_clip, small_list, tmp_path_factory):
    """TGM maps of small_list's videos, made with the tiny random CLIP: (folder, the small list's captions file)."""
    import data
    import frozen_clip
    import maps
    clip, tokenizer = frozen_clip.load_clip(tiny_clip, "none")
    items = data.read_list(small_list, demo["root"])
    rels = [os.path.relpath(p, demo["root"]) for p, _ in items]
    captions = data.read_captions(demo["captions"])
    folder = str(tmp_path_factory.mktemp("maps"))
    maps.make_maps(clip, tokenizer, [(p, r) for (p, _), r in zip(items, rels)], captions, folder,
                   maps.maps_identity("tgm-test-tiny", "none", captions, rels), cells=2, frame_stride=4)
    return folder


def test_tgm_from_maps_trains_and_refuses_maps_of_other_captions(demo, tiny_clip, small_list, small_maps, tmp_path):
    common = flags(demo, tiny_clip, None, small_list) + ["--mask", "tgm", "--tgm-maps", small_maps, "--contrastive",
                                                         "--max-steps", "8", "--epochs", "3"]
    pretrain.main(pretrain.parse_args(common + out_flag(tmp_path / "run")))
    log = read_log(tmp_path / "run")
    assert [r["step"] for r in log] == list(range(1, 9)) and log[0]["nce_optimised"]
    assert sum(r["loss_mse"] for r in log[-3:]) < sum(r["loss_mse"] for r in log[:3])
    assert log[-1]["bad_videos"] == 0  # every video found its map
    # the same maps with one caption of a listed video changed: refused at start-up, in one sentence
    changed = open(small_list).readline().split()[0]
    records = [json.loads(line) for line in open(demo["captions"])]
    for r in records:
        if r["video"] == changed:
            r["captions"][0] = "a caption the maps were not made from"
    other = tmp_path / "other_captions.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = common + out_flag(tmp_path / "stale")
    args[args.index("--captions") + 1] = str(other)
    with pytest.raises(SystemExit, match="made with other captions"):
        pretrain.main(pretrain.parse_args(args))


def test_demo_defaults_fill_only_untyped_flags(demo, monkeypatch):
    monkeypatch.setenv("TGM_CACHE", os.path.dirname(demo["root"]))  # the demo dataset the session built
    none = ["--clip-pretrained", "none"]                       # typed: no demo CLIP to train
    args = pretrain.parse_args(["--mask", "tgm", "--epochs", "7"] + none)
    assert args.epochs == 7 and args.model == "vit_tiny" == D.FLAGS["pretrain"]["model"]
    assert (args.data, args.captions) == (demo["pretrain"], demo["captions"]) and args.tgm_features == "dense"
    # a flag typed with the very value of the paper's default is still the user's: the demo does not override it
    assert pretrain.parse_args(["--mask", "tgm", "--model", "vit_base"] + none).model == "vit_base"
    # real data: the paper's values (Sec. 4.2), none of the demo's
    real = pretrain.parse_args(["--data", demo["train"], "--captions", demo["captions"], "--mask", "tgm", "--tgm-maps", "m"])
    assert (real.model, real.num_frames, real.input_size, real.epochs, real.blr, real.ratio) == \
        ("vit_base", 16, 224, 200, 1.5e-4, 0.6)


def test_nce_probe_trains_the_head_and_leaves_the_encoder_alone():
    """Fig. 4 without --contrastive: the head learns from latent.detach(); the encoder's and decoder's gradients
    equal those of L_MSE alone, and an optimizer step changes the head."""
    import torch.nn.functional as F
    from test_model import fixed_count_mask, tiny_cfg
    torch.manual_seed(0)
    mae = M.VideoMAE(tiny_cfg()).train()
    video, mask = torch.randn(4, 3, 4, 32, 32), fixed_count_mask(4, 8, 6)
    text, ids = F.normalize(torch.randn(4, 16), dim=-1), torch.arange(4)

    def grads(text, ids):
        mae.zero_grad(set_to_none=True)
        loss, loss_mse, loss_nce = pretrain.pretraining_loss(mae, video, mask, text, ids, probe=True)
        (loss if loss_nce is None else loss + loss_nce).backward()  # L, and the probe's loss apart (backward_and_clip)
        return {n: (p.grad.clone() if p.grad is not None else None) for n, p in mae.named_parameters()}, loss_nce

    with_probe, loss_nce = grads(text, ids)
    without, none = grads(None, None)
    assert none is None and loss_nce.item() > 0
    for name, g in without.items():
        if not name.startswith("projector."):
            torch.testing.assert_close(with_probe[name], g, rtol=0, atol=0, msg=name)  # not a bit of L_NCE
        else:
            assert g is None and with_probe[name].abs().sum() > 0, name   # only the probe moves the head
    before = {n: p.detach().clone() for n, p in mae.projector.named_parameters()}
    opt = torch.optim.AdamW(M.param_groups(mae, 0.05), lr=1e-3)
    grads(text, ids)
    opt.step()
    assert all(not torch.equal(before[n], p) for n, p in mae.projector.named_parameters())
    # the head has optimizer groups of its own
    head = {id(p) for p in mae.projector.parameters()}
    assert all(all(id(p) in head for p in g["params"]) or not any(id(p) in head for p in g["params"])
               for g in opt.param_groups)


def test_two_ranks_where_one_lacks_captions_finish(demo, tiny_clip, small_list, tmp_path):
    """A pure-MAE run given --captions, where one video on rank 1's first batch has no caption and rank 0's all
    do: both ranks still enter the head's collectives (the run used to hang here)."""
    from torch.utils.data import DistributedSampler
    items = [line.split()[0] for line in open(small_list).read().splitlines()]
    sampler = DistributedSampler(range(len(items)), num_replicas=2, rank=1, shuffle=True, seed=0, drop_last=True)
    sampler.set_epoch(0)
    uncaptioned = items[list(sampler)[0]]                      # in rank 1's first batch
    captions = tmp_path / "captions.jsonl"
    with open(captions, "w") as f:
        for line in open(demo["captions"]):
            if json.loads(line)["video"] != uncaptioned:
                f.write(line)
    common = flags(demo, tiny_clip, None, small_list) + ["--mask", "tube", "--max-steps", "2", "--batch-size", "4"]
    common[common.index("--captions") + 1] = str(captions)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29518",
           os.path.join(ROOT, "pretrain.py")] + common + out_flag(tmp_path / "ddp")
    res = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    log = read_log(tmp_path / "ddp")
    assert [r["step"] for r in log] == [1, 2] and all(r["loss_nce"] > 0 and not r["nce_optimised"] for r in log)
    assert M.load_checkpoint(tmp_path / "ddp" / "ckpt.pt")["head"] == "probe"


# -----------------------------------------------------------------------------
# faults of a long run (docs/pretraining.md "Faults"): a rank killed under torchrun's restart, a rank that fails at
# start-up, a Fig. 4 probe that diverges

def test_a_killed_rank_restarts_under_torchrun_and_ends_as_the_uninterrupted_run(demo, tiny_clip, small_list, tmp_path):
    from conftest import killed_rank_script, torchrun
    common = flags(demo, tiny_clip, None, small_list) + ["--mask", "tube", "--save-every", "1"]
    common[common.index("--batch-size") + 1] = "4"                   # 2 ranks x 4: 4 steps an epoch
    del common[common.index("--captions"):common.index("--captions") + 2]  # no captions: no CLIP to load in its three starts
    res = torchrun(os.path.join(ROOT, "pretrain.py"), common + out_flag(tmp_path / "straight"))
    assert res.returncode == 0, res.stderr[-3000:]
    killed = tmp_path / "killed"
    script = killed_rank_script(tmp_path / "killed.py", "pretrain", "DataLoader", killed / "ckpt.pt",
                                "stage.parse_args()")  # one loader per epoch
    res = torchrun(script, common + out_flag(killed), "--max-restarts=1")  # no --resume typed
    assert res.returncode == 0, res.stderr[-3000:]
    assert "torchrun restart 1: resuming from the run's last checkpoint" in res.stdout
    assert "resumed from" in res.stdout and "at step 4" in res.stdout
    a, b = M.load_checkpoint(tmp_path / "straight" / "ckpt.pt"), M.load_checkpoint(killed / "ckpt.pt")
    assert a["step"] == b["step"] == 8
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@pytest.fixture(scope="module")
def two_node_runs(demo, tiny_clip, small_list, tmp_path_factory):
    """The uninterrupted run (3 epochs of 4 steps on two ranks) and a checkpoint at step 4 for --resume PATH."""
    from conftest import torchrun
    tmp = tmp_path_factory.mktemp("two_nodes")
    common = flags(demo, tiny_clip, None, small_list) + ["--mask", "tube", "--save-every", "1", "--epochs", "3"]
    common[common.index("--batch-size") + 1] = "4"                   # 2 ranks x 4: 4 steps an epoch
    del common[common.index("--captions"):common.index("--captions") + 2]  # no captions: no CLIP to load
    for out, extra in ((tmp / "straight", []), (tmp / "start", ["--max-steps", "4"])):
        res = torchrun(os.path.join(ROOT, "pretrain.py"), common + extra + out_flag(out))
        assert res.returncode == 0, res.stderr[-3000:]
    return common, M.load_checkpoint(tmp / "straight" / "ckpt.pt"), str(tmp / "start" / "ckpt.pt")


@pytest.mark.parametrize("rdzv", ["c10d", "static"])
@pytest.mark.parametrize("typed", [False, True])
def test_a_killed_worker_of_two_nodes_restarts_and_ends_as_the_uninterrupted_run(two_node_runs, tmp_path, rdzv, typed):
    """Two torchrun agents (two nodes), the worker of rank 1 SIGKILLed after the first checkpoint, --max-restarts 2:
    every rank resumes from the run's newest checkpoint (with --resume PATH typed at launch too, whose step 4 it must
    not redo) in a store every node agrees on, and the run ends with the uninterrupted run's weights."""
    from conftest import killed_rank_script, torchrun_two_nodes
    common, straight, start = two_node_runs
    out = tmp_path / "killed"
    script = killed_rank_script(tmp_path / "killed.py", "pretrain", "DataLoader", out / "ckpt.pt", "stage.parse_args()")
    codes, log = torchrun_two_nodes(script, common + out_flag(out) + (["--resume", start] if typed else []), rdzv)
    assert codes == [0, 0], log[-3000:]
    assert os.path.exists(out / "ckpt.pt.killed") and "resuming from the run's last checkpoint" in log
    assert f"at step {8 if typed else 4}" in log                       # the newest checkpoint, not --resume's
    got = M.load_checkpoint(out / "ckpt.pt")
    assert got["step"] == straight["step"] == 12
    for k in straight["model"]:
        assert torch.equal(straight["model"][k], got["model"][k]), k


def test_rank_0_failing_to_load_clip_stops_both_ranks_at_once(demo, tiny_clip, small_list, tmp_path):
    import time
    from conftest import torchrun
    argv = flags(demo, tiny_clip, tmp_path, small_list) + ["--mask", "tube"]
    argv[argv.index("--clip-pretrained") + 1] = str(tmp_path / "no_such_weights.safetensors")
    t0 = time.time()
    res = torchrun(os.path.join(ROOT, "pretrain.py"), argv, timeout=120)
    assert res.returncode != 0 and time.time() - t0 < 60           # not the process group's 30-minute timeout
    sentence = "pretrain.py: --clip-pretrained"
    assert (res.stdout + res.stderr).count(sentence) == 1, res.stderr[-3000:]
    # rank 1 stopped on rank 0's word, not on a broken connection (a barrier's error; on GPUs, a hang)
    assert "[rank1]" not in res.stderr, res.stderr[-3000:]


def test_the_probe_is_clipped_apart_and_a_bad_probe_step_is_dropped():
    """--clip-grad 0.1 with the Fig. 4 probe: after backward_and_clip the encoder's and decoder's gradients equal
    those of the same step without captions, bit for bit (fp32); a probe loss that is not finite drops the probe's
    step alone."""
    import torch.nn.functional as F
    from test_model import fixed_count_mask, tiny_cfg
    torch.manual_seed(0)
    mae = M.VideoMAE(tiny_cfg()).train()
    video, mask = torch.randn(4, 3, 4, 32, 32), fixed_count_mask(4, 8, 6)
    text, ids = F.normalize(torch.randn(4, 16), dim=-1) * 30, torch.arange(4)  # a large probe gradient
    optimizer = torch.optim.AdamW(M.param_groups(mae, 0.05), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def step(text, poison=1.0):
        optimizer.zero_grad(set_to_none=True)
        loss, _, loss_nce = pretrain.pretraining_loss(mae, video, mask, text, ids, probe=True)
        dropped = pretrain.backward_and_clip(loss, None if text is None else loss_nce * poison, mae, optimizer, scaler, 0.1)
        return {n: None if p.grad is None else p.grad.clone() for n, p in mae.named_parameters()}, dropped

    without, _ = step(None)
    with_probe, dropped = step(text)
    assert not dropped
    head = [g for n, g in with_probe.items() if n.startswith("projector.")]
    assert torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in head])) <= 0.1 + 1e-6  # its own clip
    for n, g in without.items():
        if not n.startswith("projector."):
            assert torch.equal(with_probe[n], g), n
    poisoned, dropped = step(text, float("nan"))
    assert dropped and all(poisoned[n] is None for n in poisoned if n.startswith("projector."))
    for n, g in without.items():
        if not n.startswith("projector."):
            assert torch.equal(poisoned[n], g), n


def test_a_diverging_probe_leaves_the_mae_run_as_it_was(demo, tiny_clip, small_list, tmp_path, monkeypatch):
    common = flags(demo, tiny_clip, None, small_list) + ["--mask", "tube", "--clip-grad", "0.1", "--max-steps", "6"]
    pretrain.main(pretrain.parse_args(common + out_flag(tmp_path / "healthy")))
    info_nce, calls = M.info_nce, []

    def diverging(*a, **kw):   # the probe's loss blows up from the 3rd step on: inf, then NaN
        calls.append(1)
        loss = info_nce(*a, **kw)
        return loss if len(calls) < 3 else loss * (float("inf") if len(calls) % 2 else float("nan"))

    monkeypatch.setattr(M, "info_nce", diverging)
    pretrain.main(pretrain.parse_args(common + out_flag(tmp_path / "diverged")))
    healthy, diverged = read_log(tmp_path / "healthy"), read_log(tmp_path / "diverged")
    assert [r["loss_mse"] for r in diverged] == [r["loss_mse"] for r in healthy] and len(diverged) == 6
    assert [r["probe_skips"] for r in diverged] == [0, 0, 1, 2, 3, 4] and healthy[-1]["probe_skips"] == 0
    a, b = M.load_checkpoint(tmp_path / "healthy" / "ckpt.pt"), M.load_checkpoint(tmp_path / "diverged" / "ckpt.pt")
    for k in a["model"]:
        if not k.startswith("projector."):
            assert torch.equal(a["model"][k], b["model"][k]), k


def test_fig4_control_trains_the_probe_on_an_encoder_that_never_trains(demo, tiny_clip, small_list, tmp_path):
    """--mse-weight 0 without --contrastive: the MAE's weights after 4 steps are those after 1 (frozen: not even
    weight decay moves them), the probe's head moves, and the log holds the probe's loss_nce at every line, as a
    pure-MAE run's does (Fig. 4's control curve)."""
    common = flags(demo, tiny_clip, None, small_list) + ["--mask", "tube", "--mse-weight", "0", "--weight-decay", "0.5"]
    for steps in (1, 4):
        pretrain.main(pretrain.parse_args(common + out_flag(tmp_path / f"s{steps}") + ["--max-steps", str(steps)]))
    one, four = (torch.load(tmp_path / f"s{n}" / "ckpt.pt", weights_only=True) for n in (1, 4))
    moved = [n for n, w in four["model"].items() if not torch.equal(w, one["model"][n])]
    assert moved and all(n.startswith("projector.") for n in moved), moved
    assert four["head"] == "probe" and all(r["loss_nce"] is not None for r in read_log(tmp_path / "s4"))
