"""
Tests of finetune.py (Sec. 4.2): mixup/cutmix targets, layer-wise lr decay, the schedule, the linear probe with a
frozen encoder, finetuning with resume, loading pretrained encoders, the random encoder of --checkpoint none (its
init, the same on two Gloo ranks), the augmentation per mode, and the start-up errors. CPU, tiny shapes, no network.

    python -m pytest -q tests/test_finetune.py
"""
import json
import math
import os
import socket
from dataclasses import asdict

import av
import numpy as np
import pytest
import torch

import finetune as FT
import model as M
import weights

# a tiny encoder: 4 frames of 32x32 -> grid (2, 2, 2), N = 8 tokens
TINY = dict(depth=2, img_size=32, num_frames=4)
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]  # class k is tinted COLOURS[k]


# -----------------------------------------------------------------------------
# helpers shared with tests/test_evaluate.py

def write_video(path, frames):
    """uint8 (T, H, W, 3) -> a lossless H.264 (libx264rgb, crf 0) file: decoded pixels equal the array exactly."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264rgb", rate=25)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = "rgb24"
        s.options = {"crf": "0", "g": "8", "bf": "0"}
        for a in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(a), format="rgb24")))
        c.mux(s.encode())


def write_colour_dataset(folder, per_class, seed, num_classes=len(COLOURS), frames=24, size=(32, 48)):
    """A list file of videos whose class is their tint (plus noise and a moving square): learnable from frozen
    random features, so a probe on them must beat chance. -> path of the list (relative paths, root = folder)."""
    rng = np.random.default_rng(seed)
    lines = []
    for k in range(num_classes):
        for j in range(per_class):
            x = rng.normal(0, 25, size=(frames, *size, 3)) + np.array(COLOURS[k]) * rng.uniform(0.7, 1.0)
            for f in range(frames):                            # a grey square drifting right, as a distractor
                x[f, 8:16, (f + j) % 40:(f + j) % 40 + 8] = 128
            rel = f"v{seed}_{k}_{j}.mp4"
            write_video(os.path.join(folder, rel), np.clip(x, 0, 255).astype(np.uint8))
            lines.append(f"{rel} {k}\n")
    path = os.path.join(folder, f"list{seed}.txt")
    with open(path, "w") as f:
        f.writelines(lines)
    return path


def save_pretrain_checkpoint(path, seed=0, **cfg_overrides):
    """A checkpoint as pretrain.py writes it (VideoMAE state dict + model_cfg + args) -> the VideoMAE."""
    torch.manual_seed(seed)
    cfg = M.make_config("vit_tiny", **{**TINY, **cfg_overrides})
    mae = M.VideoMAE(cfg)
    with torch.no_grad():                                      # non-trivial norms and biases, so nothing hides
        for p in mae.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    M.save_checkpoint(path, {"model": mae.state_dict(), "model_cfg": asdict(cfg), "optimizer": {}, "step": 1, "epoch": 1,
                             "head": "contrastive",
                             "args": {"clip_model": "ViT-B-32-quickgelu", "clip_pretrained": "none", "mask": "tube",
                                      "ratio": 0.75, "sampling_rate": 2}})
    return mae


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    train = write_colour_dataset(folder, 6, seed=1)
    # the same list with its last video swapped for an empty file: 24 lines, so batches of 8 drop none
    (folder / "broken.mp4").write_bytes(b"")
    with open(train) as f:
        lines = f.readlines()[:-1] + ["broken.mp4 0\n"]
    with open(folder / "with_bad.txt", "w") as f:
        f.writelines(lines)
    return dict(root=str(folder), train=train, val=write_colour_dataset(folder, 3, seed=2), with_bad=str(folder / "with_bad.txt"))


def run_args(colour_data, out, *extra, train="train"):
    return FT.parse_args(["--data", colour_data[train], "--val-data", colour_data["val"], "--root", colour_data["root"],
                                 "--sampling-rate", "2", "--num-workers", "0", "--output-dir", str(out), *extra])


def read_log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


# -----------------------------------------------------------------------------
# mixup / cutmix

@pytest.mark.parametrize("mixup,cutmix", [(0.8, 1.0), (0.8, 0.0), (0.0, 1.0), (0.0, 0.0)])
def test_mixup_cutmix_targets_sum_to_one_and_match_the_pixels(mixup, cutmix):
    """Each clip is a constant 1 + i: after mixing, the share of a clip's own pixels is its target weight."""
    B, K = 4, 6
    y = torch.tensor([0, 3, 1, 5])
    for seed in range(20):
        x = (1.0 + torch.arange(B, dtype=torch.float32)).view(B, 1, 1, 1, 1).expand(B, 3, 4, 16, 24).clone()
        xm, target = FT.mixup_cutmix(x, y, K, mixup, cutmix, 0.5, smoothing=0.0, rng=np.random.default_rng(seed))
        torch.testing.assert_close(target.sum(1), torch.ones(B))
        own, other = 1.0 + torch.arange(B), (1.0 + torch.arange(B)).flip(0)
        for i in range(B):
            if own[i] == other[i]:
                continue
            # mixup: every pixel is lam*own + (1-lam)*other; cutmix: a fraction lam of pixels is own
            share = ((xm[i] - other[i]) / (own[i] - other[i])).mean()
            assert abs(share.item() - target[i, y[i]].item()) < 1e-5
        if mixup == 0 and cutmix == 0:
            assert torch.equal(xm, x) and torch.equal(target, torch.nn.functional.one_hot(y, K).float())


def test_label_smoothing_spreads_mass_and_keeps_sum():
    y = torch.tensor([2, 0])
    t = FT.smooth_one_hot(y, 5, 0.1)
    torch.testing.assert_close(t.sum(1), torch.ones(2))
    assert t[0, 2] == t.max() and torch.allclose(t[0, [0, 1, 3, 4]], torch.full((4,), 0.1 / 5))


# -----------------------------------------------------------------------------
# the optimiser: layer-wise lr decay and the schedule

def test_layer_decay_gives_expected_lr_per_block():
    """One AdamW step from zero moments moves every weight by lr * g / (|g| + eps) = lr of its group (wd 0, eps
    negligible), so the measured step size per parameter is the lr it trains at: lr * decay^(depth+1-layer)."""
    depth, decay, lr = 3, 0.75, 1e-3
    torch.manual_seed(0)
    clf = M.VideoClassifier(M.make_config("vit_tiny", depth=depth, img_size=32, num_frames=4), 5, drop_path=0.0)
    opt = torch.optim.AdamW(M.param_groups(clf, 0.0, decay), lr=lr, eps=1e-30)
    M.set_lr(opt, lr)
    before = {n: p.detach().clone() for n, p in clf.named_parameters()}
    clf(torch.randn(2, 3, 4, 32, 32)).square().sum().backward()
    opt.step()

    def layer(name):
        if name.startswith("encoder.patch_embed"):
            return 0
        if name.startswith("encoder.blocks."):
            return int(name.split(".")[2]) + 1
        return depth + 1                                       # fc_norm and head: the top
    for n, p in clf.named_parameters():
        moved = (p.detach() - before[n]).abs()
        moved = moved[p.grad.abs() > 1e-12]                    # parameters with a gradient
        if moved.numel():
            torch.testing.assert_close(moved.max(), torch.tensor(lr * decay ** (depth + 1 - layer(n))), rtol=1e-3, atol=0)
    # the head trains at the full lr, the patch embedding at the most decayed one
    assert {g["lr"] for g in opt.param_groups} >= {lr, lr * decay ** (depth + 1)}


def test_schedule_warms_up_linearly_then_cosine_to_min_lr():
    total, warm, lr, min_lr = 100, 10, 1.0, 0.01
    lrs = [M.lr_at(s, total, warm, lr, min_lr) for s in range(total + 1)]
    assert lrs[0] == 0 and lrs[warm] == pytest.approx(lr)
    assert np.allclose(np.diff(lrs[:warm + 1]), lr / warm)     # linear ramp
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1:]))  # then never rises
    assert lrs[total] == pytest.approx(min_lr)
    assert lrs[warm + (total - warm) // 2] == pytest.approx((lr + min_lr) / 2)  # cosine midpoint


# -----------------------------------------------------------------------------
# loading pretrained encoders: pretrain.py checkpoints and published VideoMAE weights

def check_encoder_equals(encoder, mae, with_norm):
    src = {k[len("encoder."):]: v for k, v in mae.state_dict().items() if k.startswith("encoder.")}
    got = encoder.state_dict()
    assert set(got) == {k for k in src if with_norm or not k.startswith("norm.")}
    for k in got:
        torch.testing.assert_close(got[k], src[k], rtol=0, atol=0)


def test_loads_pretrain_checkpoint_into_classifier_and_probe(tmp_path):
    mae = save_pretrain_checkpoint(tmp_path / "ckpt.pt")
    ckpt, enc_sd, cfg = FT.read_pretrained(str(tmp_path / "ckpt.pt"))
    assert cfg == mae.cfg                                      # the model is rebuilt from the checkpoint alone
    for mode in ("finetune", "linear"):
        args = FT.parse_args(["--mode", mode])
        model = FT.build_model(args, cfg, 7)
        encoder = model.encoder
        assert FT.load_encoder(encoder, enc_sd, "ckpt.pt") == []
        # finetune: VideoMAE drops the pretrained final norm for fc_norm; the probe reads the normed features
        check_encoder_equals(encoder, mae, with_norm=mode == "linear")


def test_loads_videomae_weights_official_and_hugging_face(tmp_path):
    from transformers import VideoMAEConfig, VideoMAEForPreTraining

    cfg = M.make_config("vit_tiny", **TINY)
    hf_cfg = VideoMAEConfig(image_size=32, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=cfg.embed_dim,
                            num_hidden_layers=2, num_attention_heads=cfg.num_heads, intermediate_size=4 * cfg.embed_dim,
                            decoder_hidden_size=cfg.decoder_embed_dim, decoder_num_hidden_layers=1,
                            decoder_num_attention_heads=cfg.decoder_num_heads, decoder_intermediate_size=4 * cfg.decoder_embed_dim,
                            use_mean_pooling=False, layer_norm_eps=1e-6)
    torch.manual_seed(0)
    hf = VideoMAEForPreTraining(hf_cfg)
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path / "hf")
    reference = M.VideoMAE(cfg)                                # the importer of weights.py is the reference here
    weights.load_videomae_weights(reference, tmp_path / "hf")
    torch.save({"model": reference.state_dict()}, tmp_path / "official.pth")  # the official repo's format
    for path in (tmp_path / "hf", tmp_path / "official.pth"):
        ckpt, enc_sd, stored_cfg = FT.read_pretrained(str(path))
        assert ckpt is None and stored_cfg is None             # no stored config: --model / flags give the shape
        clf = M.VideoClassifier(cfg, 3)
        FT.load_encoder(clf.encoder, enc_sd, str(path))
        check_encoder_equals(clf.encoder, reference, with_norm=False)
    # and a mismatched --model says so instead of a traceback
    with pytest.raises(M.CheckpointError, match="check --model"):
        FT.load_encoder(M.Encoder(M.make_config("vit_small", **TINY)), enc_sd, "official.pth")


def test_loads_a_checkpoint_written_by_pretrain_py(colour_data, tiny_clip_config, tmp_path):
    """pretrain.py itself, one step with a tiny model (a tiny random CLIP for the contrastive loss): its checkpoint
    rebuilds the encoder from its stored config, into the classifier and into the probe."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(tmp_path / "captions.jsonl", "w") as f, open(colour_data["val"]) as lst:
        for line in lst:
            f.write(json.dumps({"video": line.split()[0], "captions": ["a tinted clip"]}) + "\n")
    out = tmp_path / "pre"
    cmd = [sys.executable, "pretrain.py", "--data", colour_data["val"], "--root", colour_data["root"],
           "--captions", str(tmp_path / "captions.jsonl"), "--clip-model", tiny_clip_config, "--clip-pretrained", "none",
           "--contrastive", "--mask", "tube", "--model", "vit_tiny", "--num-frames", "4", "--input-size", "32",
           "--sampling-rate", "2", "--batch-size", "4", "--epochs", "1", "--max-steps", "1", "--num-workers", "0",
           "--output-dir", str(out)]
    run = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    written = M.load_checkpoint(out / "ckpt.pt")
    mae = M.VideoMAE(M.config_from_checkpoint(written))
    mae.load_state_dict(written["model"])
    ckpt, enc_sd, cfg = FT.read_pretrained(str(out / "ckpt.pt"))
    assert cfg == mae.cfg and ckpt["args"]["mask"] == "tube"
    for mode in ("finetune", "linear"):
        model = FT.build_model(FT.parse_args(["--mode", mode]), cfg, 4)
        encoder = model.encoder
        assert FT.load_encoder(encoder, enc_sd, "ckpt.pt") == []
        check_encoder_equals(encoder, mae, with_norm=mode == "linear")


# -----------------------------------------------------------------------------
# whole runs: the linear probe and finetuning, with resume

def test_linear_probe_learns_above_chance_and_the_encoder_stays_frozen(colour_data, tmp_path):
    mae = save_pretrain_checkpoint(tmp_path / "pre.pt")
    out = tmp_path / "lp"
    FT.main(run_args(colour_data, out, "--checkpoint", str(tmp_path / "pre.pt"), "--mode", "linear", "--epochs", "3",
                     "--batch-size", "8", "--blr", "16", "--warmup-epochs", "1"))
    log = read_log(out)
    epochs = [r for r in log if "val_top1" in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]   # one validation line per epoch
    chance = 100.0 / len(COLOURS)
    assert epochs[-1]["val_top1"] >= 2 * chance, epochs        # 12 val videos of 4 classes
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    ckpt = M.load_checkpoint(out / "ckpt.pt")
    assert ckpt["mode"] == "linear" and ckpt["num_classes"] == len(COLOURS)
    src = mae.state_dict()
    for k, v in ckpt["model"].items():                         # frozen: bit-identical to the pretrained encoder
        if k.startswith("encoder."):
            assert torch.equal(v, src[k]), k
    torch.manual_seed(0)
    fresh = M.LinearProbe(mae.cfg.embed_dim, len(COLOURS))
    assert not torch.equal(ckpt["model"]["probe.head.weight"], fresh.head.weight)  # the probe did train


def test_finetune_skips_a_bad_video_logs_validation_and_resumes(colour_data, tmp_path):
    save_pretrain_checkpoint(tmp_path / "pre.pt")
    out = tmp_path / "ft"
    common = ["--checkpoint", str(tmp_path / "pre.pt"), "--batch-size", "8", "--warmup-epochs", "1"]
    FT.main(run_args(colour_data, out, *common, "--epochs", "1", train="with_bad"))
    first = M.load_checkpoint(out / "ckpt.pt")
    assert first["epoch"] == 1 and first["mode"] == "finetune"
    FT.main(run_args(colour_data, out, *common, "--epochs", "2", "--resume", "auto", train="with_bad"))
    second = M.load_checkpoint(out / "ckpt.pt")
    assert second["epoch"] == 2
    log = read_log(out)
    assert [r["epoch"] for r in log if "val_top1" in r] == [1, 2]  # epoch 1 not repeated
    assert [r["bad_videos"] for r in log if "val_top1" in r] == [1, 1]  # the empty file, skipped once an epoch
    assert log[-1]["done"] and log[-1]["bad_videos"] == 1
    assert any(not torch.equal(second["model"][k], first["model"][k]) for k in first["model"])
    # the stored config rebuilds the classifier without the pretraining checkpoint
    clf = M.VideoClassifier(M.config_from_checkpoint(second), second["num_classes"])
    clf.load_state_dict(second["model"])


# -----------------------------------------------------------------------------
# --checkpoint none: the pretraining model's init, the same encoder on every rank; augmentation per mode

def check_videomae_init(encoder):
    """VideoMAE's init (model.init_weights): xavier-uniform Linear weights, zero biases, LayerNorm (1, 0). PyTorch's
    default Linear init (bound 1/sqrt(fan_in), non-zero biases) fails it: every layer here is large enough for its
    largest weight to reach within 5 % of the xavier bound, which lies above the default's. -> the Linear layers
    checked, by name."""
    checked = []
    for name, m in encoder.named_modules():
        if isinstance(m, torch.nn.Linear):
            bound = math.sqrt(6 / (m.in_features + m.out_features))
            w = m.weight.detach().abs()
            assert w.max() <= bound and w.max() > 0.95 * bound > 1 / math.sqrt(m.in_features), name
            assert m.bias is None or not m.bias.any(), name
            checked.append(name)
        elif isinstance(m, torch.nn.LayerNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any(), name
    for blk in encoder.blocks:                                 # the attention's own q and v biases start at zero too
        assert not blk.attn.q_bias.any() and not blk.attn.v_bias.any()
    return checked


@pytest.mark.parametrize("mode", ["finetune", "linear"])
def test_random_encoder_has_the_pretraining_init(mode):
    cfg = M.make_config("vit_tiny", **TINY)
    model = FT.build_model(FT.parse_args(["--mode", mode, "--checkpoint", "none"]), cfg, 4)
    checked = check_videomae_init(model.encoder)
    torch.manual_seed(0)
    reference = check_videomae_init(M.VideoMAE(cfg).encoder)  # what pretrain.py starts from
    # every Linear of the encoder passed, and they are the pretraining encoder's layers: 4 per block
    assert checked == reference and len(checked) == 4 * cfg.depth, checked


def _rank_worker(rank, world, port, argv, out):
    """One torchrun process: finetune.main with the model it builds recorded, then this rank's weights saved."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    built, build = [], FT.build_model
    FT.build_model = lambda *a: built.append(build(*a)) or built[-1]  # this forked process only
    FT.main(FT.parse_args(argv))
    torch.save(built[0].state_dict(), os.path.join(out, f"rank{rank}.pt"))


def test_linear_probe_from_scratch_probes_one_encoder_on_two_ranks(colour_data, tmp_path):
    """--mode linear --checkpoint none under torchrun (two Gloo ranks): the frozen random encoder is not in DDP, so
    only building it under one seed on every rank makes the ranks probe the same encoder."""
    with socket.socket() as s:                                 # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["--data", colour_data["train"], "--root", colour_data["root"], "--sampling-rate", "2", "--num-workers", "0",
            "--mode", "linear", "--checkpoint", "none", "--model", "vit_tiny", "--num-frames", "4", "--input-size", "32",
            "--batch-size", "2", "--epochs", "1", "--output-dir", str(tmp_path / "lp")]
    # fork: the ranks inherit the imports
    torch.multiprocessing.start_processes(_rank_worker, args=(2, port, argv, str(tmp_path)), nprocs=2, start_method="fork")
    one, two = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert set(one) == set(two) and any(k.startswith("encoder.") for k in one)
    for k in one:  # after an epoch: the frozen encoder and the DDP-synced probe; BatchNorm's running stats are per rank
        assert "running_" in k or "num_batches" in k or torch.equal(one[k], two[k]), k


@pytest.mark.parametrize("mode", ["finetune", "linear"])
def test_augmentation_only_when_finetuning(colour_data, tmp_path, monkeypatch, mode):
    """Finetuning trains on RandAugment + random erasing at VideoMAE's values; the linear probe on plain crops
    (MAE's); validation never augments."""
    made = []

    class Recorded(FT.data.VideoDataset):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)
    monkeypatch.setattr(FT.data, "VideoDataset", Recorded)
    FT.main(run_args(colour_data, tmp_path, "--checkpoint", "none", "--model", "vit_tiny", "--num-frames", "4",
                     "--input-size", "32", "--mode", mode, "--batch-size", "2", "--epochs", "1"))
    train, val = made
    assert val.randaug is None and val.erase is None
    if mode == "linear":
        assert train.randaug is None and train.erase is None
    else:
        assert (train.randaug.num_ops, train.randaug.magnitude, train.erase.p) == (4, 7, 0.25)


# -----------------------------------------------------------------------------
# start-up errors: one sentence, before any training

def test_bad_flag_combinations_stop_with_a_sentence(colour_data, tmp_path):
    save_pretrain_checkpoint(tmp_path / "pre.pt")
    cases = [
        ([], "needs --checkpoint"),
        (["--checkpoint", str(tmp_path / "pre.pt"), "--num-frames", "8"], "differs from the checkpoint"),
        (["--checkpoint", str(tmp_path / "pre.pt"), "--mode", "linear", "--batch-size", "1"], "at least 2 clips"),
        (["--checkpoint", str(tmp_path / "pre.pt"), "--num-classes", "2"], "only 2 classes"),
        (["--checkpoint", str(tmp_path / "pre.pt"), "--batch-size", "64"], "fewer than one global batch"),
        (["--checkpoint", str(tmp_path / "pre.pt"), "--randaug-m", "11"], "from 0 to 10"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit, match=message):
            FT.main(run_args(colour_data, tmp_path / "bad", *extra))
    # list files: a malformed line names the file and line; a missing file says so
    (tmp_path / "malformed.txt").write_text("v1_0_0.mp4 0\nv1_0_1.mp4\n")
    for val, message in ((tmp_path / "malformed.txt", "malformed.txt:2: expected"), (tmp_path / "missing.txt", "no such file")):
        with pytest.raises(SystemExit, match=message):
            FT.main(run_args(colour_data, tmp_path / "bad", "--checkpoint", str(tmp_path / "pre.pt"), "--val-data", str(val)))
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="finetune.py: .*broken.pt: cannot be read"):  # a sentence, not a traceback
        FT.main(run_args(colour_data, tmp_path / "bad", "--checkpoint", str(tmp_path / "broken.pt")))


def test_a_killed_rank_restarts_under_torchrun_and_ends_as_the_uninterrupted_run(colour_data, tmp_path):
    """Rank 1 SIGKILLed at the start of epoch 2, after the first checkpoint, under torchrun --max-restarts 1 and no
    --resume: the restarted group goes on from that checkpoint, and every weight ends as the uninterrupted run's."""
    from conftest import ROOT, killed_rank_script, torchrun
    argv = ["--data", colour_data["train"], "--root", colour_data["root"], "--sampling-rate", "2", "--num-workers", "0",
            "--checkpoint", "none", "--model", "vit_tiny", "--num-frames", "4", "--input-size", "32",
            "--batch-size", "4", "--epochs", "2", "--warmup-epochs", "1"]
    res = torchrun(os.path.join(ROOT, "finetune.py"), argv + ["--output-dir", str(tmp_path / "straight")])
    assert res.returncode == 0, res.stderr[-3000:]
    killed = tmp_path / "killed"
    script = killed_rank_script(tmp_path / "killed.py", "finetune", "seed_epoch", killed / "ckpt.pt", "stage.parse_args()")
    res = torchrun(script, argv + ["--output-dir", str(killed)], "--max-restarts=1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "torchrun restart 1: resuming from the run's last checkpoint" in res.stdout and "resumed at epoch 1" in res.stdout
    a, b = M.load_checkpoint(tmp_path / "straight" / "ckpt.pt"), M.load_checkpoint(killed / "ckpt.pt")
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
