"""
Sec. 4.2, 4.5: transfer of a pretrained encoder to action recognition, by full finetuning or by a linear probe.

Finetune (Tables 1, 2, 4 "FT"): VideoMAE's recipe [38] (run_class_finetuning.py): the encoder over all tokens, mean
pool -> LayerNorm -> Linear, layer-wise lr decay, drop path, RandAugment, random erasing, mixup / cutmix. Linear probe
(Tables 1-4 "LP", Sec. 4.5): MAE's protocol (main_linprobe.py): the encoder frozen, mean-pooled features ->
BatchNorm1d(affine=False) -> Linear. The flags' help and docs/transfer.md give every value. Each epoch ends with a
one-view validation top-1 in the log; the multi-view test is evaluate.py's.

One CPU process on the built-in demo (minutes; a random encoder unless you pass a pretrain.py checkpoint):
    python finetune.py --checkpoint none --output-dir runs/demo_ft_scratch
    python finetune.py --checkpoint runs/demo_pretrain/ckpt.pt --output-dir runs/demo_ft
    python finetune.py --checkpoint runs/demo_pretrain/ckpt.pt --mode linear --output-dir runs/demo_lp
The paper's runs (VideoMAE's scripts; --batch-size is per process, global batch = batch x processes x nodes):
    torchrun --nproc_per_node=8 --nnodes=8 ... finetune.py --checkpoint runs/k400_tgm/ckpt.pt \\
        --data lists/k400/train.csv --val-data lists/k400/val.csv --root /data/k400 --output-dir runs/k400_ft \\
        --batch-size 8 --lr 1e-3 --epochs 100 --sampling-rate 4
    torchrun --nproc_per_node=8 --nnodes=8 ... finetune.py --checkpoint runs/ssv2_tgm/ckpt.pt \\
        --data lists/ssv2/train.csv --val-data lists/ssv2/val.csv --root /data/ssv2 --output-dir runs/ssv2_ft \\
        --batch-size 8 --lr 5e-4 --epochs 50 --tsn --no-flip
    torchrun --nproc_per_node=8 finetune.py --mode linear --checkpoint runs/k400_tgm/ckpt.pt \\
        --data lists/ucf101/train_split1.csv --val-data lists/ucf101/test_split1.csv --output-dir runs/ucf_lp
Published VideoMAE weights (official .pth or a Hugging Face folder) work too: --checkpoint PATH --model vit_base.
Then: python evaluate.py --checkpoint runs/k400_ft/ckpt.pt --data lists/k400/val.csv --root /data/k400
Tests: python -m pytest -q tests/test_finetune.py
"""
import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import data
import model as M

# -----------------------------------------------------------------------------
# Arguments. A default of None is filled in by `resolve_args`: the pretraining checkpoint's own value, else the paper's.

parser = argparse.ArgumentParser(description="Finetuning and linear probe (Sec. 4.2)",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
# data
parser.add_argument("--data", default=None, help="training list file, 'path label' per line (VideoMAE format); none: the built-in demo dataset")
parser.add_argument("--root", default="", help="folder prefixed to every path of the list files")
parser.add_argument("--val-data", default=None, help="validation list for the per-epoch one-view top-1; none: no validation")
parser.add_argument("--class-names", default=None, help="class names, line i = label i; only sets the number of classes K")
parser.add_argument("--num-classes", type=int, default=None, help="K; default: from --class-names, else 1 + the largest label of the lists")
parser.add_argument("--num-frames", type=int, default=None, help="T frames per clip; default: the checkpoint's (paper: 16)")
parser.add_argument("--sampling-rate", type=int, default=None, help="frame stride; paper: 4 for K400 and the small datasets (SSv2 uses --tsn)")
parser.add_argument("--input-size", type=int, default=None, help="H = W; default: the checkpoint's (paper: 224)")
parser.add_argument("--tsn", action="store_true", help="TSN sampling, one frame per segment (VideoMAE's SSv2 setting)")
parser.add_argument("--no-flip", action="store_true", help="no horizontal flip; paper: flip off for SSv2, whose labels say left/right")
parser.add_argument("--repeat-aug", type=int, default=1, help="augmented clips per decoded video (VideoMAE's num_sample): 2 for K400/UCF101/HMDB51, 1 for SSv2")
parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1), help="data loader processes per training process")
# model
parser.add_argument("--checkpoint", default=None, help="pretrain.py checkpoint, published VideoMAE weights (.pth / HF folder), or 'none' for a random encoder (the from-scratch baseline)")
parser.add_argument("--mode", default="finetune", choices=["finetune", "linear"], help="full finetuning (FT) or linear probe on the frozen encoder (LP)")
parser.add_argument("--model", default=None, help="size for VideoMAE weights or --checkpoint none: vit_small|vit_base|vit_large (paper: vit_base)")
parser.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate, finetune only; paper (VideoMAE ViT-B): 0.1")
# optimisation
parser.add_argument("--epochs", type=int, default=None, help="paper (VideoMAE): 100 K400, 50 SSv2, 100 UCF101, 50 HMDB51 (FT); 90 (LP, MAE)")
parser.add_argument("--batch-size", type=int, default=None, help="videos per process per step; paper: 8 per GPU x 64 GPUs (FT), 16384 global (LP, MAE)")
parser.add_argument("--lr", type=float, default=None, help="base lr per 256 videos, lr = base * global_batch / 256; paper: 1e-3 FT (VideoMAE ViT-B K400; 5e-4 SSv2, UCF101), 0.1 LP (MAE)")
parser.add_argument("--min-lr", type=float, default=1e-6, help="base lr at the end of the cosine, per 256 videos; VideoMAE: 1e-6 (FT); LP goes to 0 as MAE")
parser.add_argument("--warmup-epochs", type=int, default=None, help="linear warmup from 0; paper: 5 FT (VideoMAE), 10 LP (MAE)")
parser.add_argument("--weight-decay", type=float, default=None, help="paper: 0.05 FT (AdamW), 0 LP (MAE)")
parser.add_argument("--layer-decay", type=float, default=None, help="layer-wise lr decay, block i gets lr * decay^(depth+1-i); paper: 0.75 (VideoMAE; 0.7 UCF101/HMDB51)")
parser.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.999), help="AdamW betas (FT); paper: 0.9 0.999")
parser.add_argument("--mixup", type=float, default=None, help="mixup alpha (FT); paper: 0.8; 0 turns it off")
parser.add_argument("--cutmix", type=float, default=None, help="cutmix alpha (FT); paper: 1.0; 0 turns it off")
parser.add_argument("--mixup-switch-prob", type=float, default=0.5, help="chance of cutmix instead of mixup when both are on; paper: 0.5")
parser.add_argument("--smoothing", type=float, default=0.1, help="label smoothing (FT); paper: 0.1")
parser.add_argument("--randaug-n", type=int, default=None, help="RandAugment ops per clip, one draw for all its frames (FT only); VideoMAE: 4 (--aa rand-m7-n4-mstd0.5-inc1); 0 turns it off. torchvision applies all n, timm each with chance 0.5: 2 matches timm's mean")
parser.add_argument("--randaug-m", type=int, default=7, help="RandAugment magnitude, 0..10 (FT only); VideoMAE: 7")
parser.add_argument("--reprob", type=float, default=None, help="random erasing probability per clip, the same box in every frame (FT only); VideoMAE: 0.25 (--remode pixel); 0 turns it off")
parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"], help="autocast dtype; bf16 falls back to fp32 on GPUs without it (as pretrain.py)")
# output
parser.add_argument("--output-dir", default="runs/finetune", help="ckpt.pt (every epoch, atomic) and log.jsonl go here")
parser.add_argument("--resume", default=None, help="a finetune ckpt.pt to continue, or 'auto': output-dir/ckpt.pt if it exists")
parser.add_argument("--log-interval", type=int, default=10, help="steps between log lines")
parser.add_argument("--seed", type=int, default=0)

# The paper's values of the flags whose default is None, per mode (with no --data, demo.py fills them first).
PAPER = {
    "finetune": dict(epochs=100, batch_size=8, lr=1e-3, warmup_epochs=5, weight_decay=0.05, layer_decay=0.75, mixup=0.8,
                     cutmix=1.0, randaug_n=4, reprob=0.25),
    "linear": dict(epochs=90, batch_size=128, lr=0.1, warmup_epochs=10, weight_decay=0.0),
}
PAPER_SHAPE = dict(model="vit_base", num_frames=16, input_size=224, sampling_rate=4)


# -----------------------------------------------------------------------------
# The pretrained encoder: from a pretrain.py checkpoint (its stored config) or from published VideoMAE weights

def read_pretrained(path):
    """-> (ckpt dict or None, encoder state dict with keys relative to the Encoder, stored ModelConfig or None).
    Published VideoMAE weights store no ModelConfig: their shape comes from --model / --num-frames / --input-size."""
    ckpt = M.load_checkpoint(path) if os.path.isfile(path) else None
    if ckpt is not None and "model_cfg" in ckpt:
        sd, cfg = ckpt["model"], M.config_from_checkpoint(ckpt)
    else:
        sd, cfg, ckpt = M.videomae_state_dict(path), None, None
    enc = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    if not enc:
        raise M.CheckpointError(f"{path}: no encoder weights ('encoder.*' keys) in this checkpoint")
    return ckpt, enc, cfg


def load_encoder(encoder, enc_sd, path):
    """Copy pretrained weights into an Encoder; every parameter must come from the checkpoint but the final 'norm.*',
    which the finetuning classifier drops (VideoMAE: fc_norm after pooling) and the linear probe keeps (MAE)."""
    try:
        missing, _ = encoder.load_state_dict(enc_sd, strict=False)
    except RuntimeError as e:
        raise M.CheckpointError(f"{path}: encoder weights do not fit the model ({str(e).splitlines()[-1].strip()}); "
                                "check --model for VideoMAE weights") from None
    if [k for k in missing if not k.startswith("norm.")]:
        raise M.CheckpointError(f"{path}: the checkpoint lacks encoder weights {missing[:4]}...; check --model")
    return missing  # at most the final norm: a finetuned checkpoint, which has fc_norm instead


def build_model(args, cfg, num_classes):
    """-> the module that trains: a VideoClassifier (finetune), or a ProbeClassifier (linear: frozen encoder, probe)."""
    if args.mode == "finetune":
        return M.VideoClassifier(cfg, num_classes, drop_path=args.drop_path)
    return M.ProbeClassifier(cfg, num_classes)


def resolve_args(args, pretrained_cfg=None):
    """Fill the None defaults (checkpoint / demo / paper) and reject flag combinations that cannot work."""
    if pretrained_cfg is not None:
        M.check_shape_flags(pretrained_cfg, args.num_frames, args.input_size)
        args.num_frames, args.input_size = pretrained_cfg.num_frames, pretrained_cfg.img_size
        if args.model is not None:
            M.print0(f"--model {args.model} is ignored: the checkpoint stores its own model config")
    if args.data is None:
        import demo  # the built-in demo's lists and sizes, for what was not typed
        demo.fill(args, args.mode)
    for k, v in {**PAPER[args.mode], **PAPER_SHAPE}.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.data is not None and args.val_data is None:
        M.print0("no --val-data: training without per-epoch validation")
    if not 0 <= args.randaug_m <= 10:
        raise SystemExit(f"--randaug-m {args.randaug_m}: RandAugment's magnitude runs from 0 to 10 (VideoMAE: 7)")
    if args.mode == "linear" and args.batch_size * args.repeat_aug < 2:
        raise SystemExit("--mode linear needs at least 2 clips per step (its BatchNorm normalises over the batch); raise --batch-size")
    if args.epochs <= args.warmup_epochs and args.epochs > 0:
        M.print0(f"note: --warmup-epochs {args.warmup_epochs} >= --epochs {args.epochs}: the lr never reaches its peak")


# -----------------------------------------------------------------------------
# Sec. 4.2 (VideoMAE): mixup / cutmix with label smoothing, as timm's Mixup in 'batch' mode

def smooth_one_hot(y, num_classes, smoothing):
    """(B,) labels -> (B, K) targets: 1 - smoothing + smoothing/K on the label, smoothing/K elsewhere (sum 1)."""
    off = smoothing / num_classes
    return torch.full((y.shape[0], num_classes), off, device=y.device).scatter_(1, y[:, None], 1.0 - smoothing + off)


def mixup_cutmix(x, y, num_classes, mixup=0.8, cutmix=1.0, switch_prob=0.5, smoothing=0.1, rng=None):
    """Mix each clip with the batch's reversed order. x (B, C, T, H, W), y (B,) -> (x mixed, targets (B, K)).
    One lam per batch (timm's mode='batch'): with both on, cutmix with chance switch_prob, else mixup. Cutmix pastes
    the same box into every frame (a spatial tube); lam becomes the exact unpasted area after the box is clipped at the
    frame border (timm's correct_lam). Targets: lam * smooth(y) + (1 - lam) * smooth(y reversed), each row sums to 1."""
    rng = rng if rng is not None else np.random.default_rng()
    lam = 1.0
    if mixup > 0 or cutmix > 0:
        if cutmix > 0 and (mixup <= 0 or rng.random() < switch_prob):
            lam = rng.beta(cutmix, cutmix)
            H, W = x.shape[-2:]
            cut_h, cut_w = int(H * math.sqrt(1 - lam)), int(W * math.sqrt(1 - lam))  # box area (1 - lam) H W
            cy, cx = rng.integers(H), rng.integers(W)          # centre anywhere: the box may leave the frame
            y0, y1 = np.clip(cy - cut_h // 2, 0, H), np.clip(cy + cut_h // 2, 0, H)
            x0, x1 = np.clip(cx - cut_w // 2, 0, W), np.clip(cx + cut_w // 2, 0, W)
            x = x.clone()
            x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]  # same box in every frame
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (H * W)        # what is left of the clip's own pixels
        else:
            lam = rng.beta(mixup, mixup)
            x = x * lam + x.flip(0) * (1 - lam)
    t = smooth_one_hot(y, num_classes, smoothing)
    return x, lam * t + (1 - lam) * t.flip(0)


def soft_cross_entropy(logits, target):
    """Cross entropy against (B, K) soft targets (timm's SoftTargetCrossEntropy)."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


# -----------------------------------------------------------------------------
# Schedule: model.lr_at (linear warmup, per-step cosine, shared with pretrain.py), scaled per layer group

def set_lr(optimizer, lr):
    """Layer-wise decay: every group runs at lr * its lr_scale (model.param_groups; 1 where absent)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


@torch.no_grad()
def validate(model, loader, device, amp):
    """One-view top-1 / top-5 over this process's share of the val list -> (correct1, correct5, count) sums."""
    model.eval()
    c1 = c5 = n = 0
    for batch in loader:
        video, y = batch["video"].to(device, non_blocking=True), batch["label"].to(device)
        with amp:
            logits = model(video).float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (B, 5)
        c1 += (top[:, 0] == y).sum().item()
        c5 += (top == y[:, None]).any(1).sum().item()
        n += y.shape[0]
    return c1, c5, n


def seed_epoch(seed, rank, epoch):
    """The epoch's draws from (seed, rank, epoch) alone -> the mixup / cutmix generator; torch's (drop path, the
    loader's shuffle and workers) seeded too. A run resumed at an epoch's start (--resume, or a torchrun restart)
    then draws what the uninterrupted run drew."""
    torch.manual_seed(hash((seed, rank, epoch)) % 2**63)
    return np.random.default_rng([seed, rank, epoch])


def main(args):
    rank, world, device = M.setup_distributed()
    state, enc_sd, cfg = starting_point(args)                  # fills args' None defaults
    train_ds, train_loader, val_loader, K = make_loaders(args, state, rank, world, device)
    model = make_model(args, cfg, K, enc_sd, rank).to(device)
    # DDP syncs the gradients of what trains: the whole classifier, or the probe (the frozen encoder has none)
    trained = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    global_batch = args.batch_size * world
    optimizer, lr, min_lr = make_optimizer(args, model, global_batch)
    amp = M.autocast(device, args.precision)
    start_epoch, best = 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best = state["epoch"], state.get("best_top1", 0.0)
        M.print0(f"resumed at epoch {start_epoch}")
    steps_per_epoch = len(train_loader)
    total_steps, warmup_steps = args.epochs * steps_per_epoch, args.warmup_epochs * steps_per_epoch
    os.makedirs(args.output_dir, exist_ok=True)
    log_path = os.path.join(args.output_dir, "log.jsonl")

    # -----------------------------------------------------------------------------
    # the loop: Sec. 4.2, VideoMAE's finetuning (mixup / cutmix, soft targets) or MAE's linear probe
    bad_total, t_start = 0, time.time()
    for epoch in range(start_epoch, args.epochs):
        train_ds.set_epoch(epoch)  # new crops, flips and temporal offsets every epoch (data.py seeds per epoch)
        mix_rng = seed_epoch(args.seed, rank, epoch)
        if isinstance(train_loader.sampler, torch.utils.data.DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        model.train()
        if args.mode == "linear":
            model.encoder.eval()                               # frozen features: no drop path, as at test time
        loss_sum, n_seen, bad_epoch, t0 = 0.0, 0, 0, time.time()
        for i, batch in enumerate(tqdm(train_loader, desc=f"epoch {epoch}", disable=rank != 0, leave=False)):
            step = epoch * steps_per_epoch + i
            set_lr(optimizer, M.lr_at(step, total_steps, warmup_steps, lr, min_lr))
            video, y = batch["video"].to(device, non_blocking=True), batch["label"].to(device)
            bad_epoch += len(batch["bad"])
            if args.mode == "finetune":                        # soft targets of mixed clips, smoothed labels
                video, target = mixup_cutmix(video, y, K, args.mixup, args.cutmix, args.mixup_switch_prob, args.smoothing, mix_rng)
            with amp:
                logits = trained(video)                        # (B, K)
            loss = soft_cross_entropy(logits, target) if args.mode == "finetune" else F.cross_entropy(logits.float(), y)
            if not torch.isfinite(loss):
                raise SystemExit(f"non-finite loss {loss.item()} at epoch {epoch} step {i}; the last good checkpoint "
                                 f"is {args.output_dir}/ckpt.pt (try a lower --lr)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum, n_seen = loss_sum + loss.item(), n_seen + 1
            if i % args.log_interval == 0:
                cur_lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0)
                rate = n_seen * global_batch * args.repeat_aug / (time.time() - t0)
                log(log_path, dict(epoch=epoch, step=step, loss=loss.item(), lr=cur_lr, clips_per_s=rate),
                    f"epoch {epoch} | step {step} | loss {loss.item():.4f} | lr {cur_lr:.2e} | {rate:.1f} clips/s")

        # end of epoch: validation summed over ranks, then an atomic checkpoint
        stats = torch.tensor([loss_sum, n_seen, bad_epoch, 0, 0, 0], dtype=torch.float64)
        if val_loader is not None:
            stats[3:] = torch.tensor(validate(model, val_loader, device, amp), dtype=torch.float64)
        if world > 1:
            stats = stats.to(device)
            dist.all_reduce(stats)
            stats = stats.cpu()
        bad_total += int(stats[2])
        record = dict(epoch=epoch + 1, train_loss=(stats[0] / stats[1]).item(), bad_videos=int(stats[2]),
                      epoch_s=time.time() - t0)
        line = f"epoch {epoch + 1}/{args.epochs} | train loss {record['train_loss']:.4f}"
        if val_loader is not None:
            top1, top5 = (100.0 * stats[3] / stats[5]).item(), (100.0 * stats[4] / stats[5]).item()
            best = max(best, top1)
            record.update(val_top1=top1, val_top5=top5, val_videos=int(stats[5]))
            line += f" | val top-1 {top1:.2f} | top-5 {top5:.2f} (one view, {int(stats[5])} videos)"
        log(log_path, record, line + f" | bad videos {int(stats[2])} | {record['epoch_s']:.0f}s")
        if rank == 0:
            M.save_checkpoint(os.path.join(args.output_dir, "ckpt.pt"), {
                "model": model.state_dict(), "model_cfg": M.model_config_dict(cfg), "num_classes": K, "mode": args.mode,
                "args": vars(args), "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "best_top1": best})

    if rank == 0:
        summary = dict(done=True, mode=args.mode, epochs=args.epochs, best_val_top1=best if val_loader is not None else None,
                       bad_videos=bad_total, train_s=time.time() - t_start)
        with open(log_path, "a") as f:
            f.write(json.dumps(summary) + "\n")
        print(f"done: {args.mode}, {args.epochs} epochs, best one-view val top-1 {best:.2f}, bad videos skipped {bad_total}, "
              f"checkpoint {args.output_dir}/ckpt.pt; multi-view test: python evaluate.py --checkpoint {args.output_dir}/ckpt.pt")
    if world > 1:
        dist.destroy_process_group()


# -----------------------------------------------------------------------------
# The set-up of main, in the order it runs

def starting_point(args):
    """Where the run starts -> (resume state or None, pretrained encoder state dict or None, the ModelConfig); fills
    args' None defaults (resolve_args). The config comes from the checkpoint when it stores one."""
    resume = M.resume_on_restart(args.resume)
    if resume == "auto":
        resume = os.path.join(args.output_dir, "ckpt.pt")
        resume = resume if os.path.isfile(resume) else None
    state = M.load_checkpoint(resume) if resume else None
    if state is not None and "num_classes" not in state:
        raise SystemExit(f"--resume {resume} is not a finetune.py checkpoint (no 'num_classes'); pass it as --checkpoint")
    enc_sd = pretrained_cfg = None
    if state is not None:
        args.mode = state["mode"]
        M.print0(f"resuming from {resume}")
        pretrained_cfg = M.config_from_checkpoint(state)
    elif args.checkpoint is None:
        raise SystemExit("finetune.py needs --checkpoint: a pretrain.py checkpoint (e.g. runs/pretrain/ckpt.pt), published "
                         "VideoMAE weights (.pth or a Hugging Face folder), or 'none' for a randomly initialised encoder")
    elif args.checkpoint != "none":
        _, enc_sd, pretrained_cfg = read_pretrained(args.checkpoint)
    resolve_args(args, pretrained_cfg)
    if args.checkpoint == "none" and state is None:
        M.print0(f"--checkpoint none: the encoder starts from random weights ({args.model}), the from-scratch baseline")
    return state, enc_sd, pretrained_cfg or M.make_config(args.model, num_frames=args.num_frames, img_size=args.input_size)


def make_loaders(args, state, rank, world, device):
    """Random-resized-crop clips to train (finetuning: with RandAugment and random erasing), one centre view per
    video to validate -> (train dataset, train loader, val loader or None, K classes)."""
    try:  # a missing list, or a malformed line (file:line: reason), stops here and not mid-run
        # RandAugment and random erasing only when finetuning: MAE's linear probe trains on plain crops
        aug = dict(randaug_n=args.randaug_n, randaug_m=args.randaug_m, reprob=args.reprob) if args.mode == "finetune" else {}
        train_ds = data.VideoDataset(args.data, args.root, mode="finetune", num_frames=args.num_frames,
                                     sampling_rate=args.sampling_rate, input_size=args.input_size, repeat_aug=args.repeat_aug,
                                     flip=not args.no_flip, tsn=args.tsn, seed=args.seed + rank, **aug)
        val_ds = None
        if args.val_data:
            val_ds = data.VideoDataset(args.val_data, args.root, mode="val", num_frames=args.num_frames,
                                       sampling_rate=args.sampling_rate, input_size=args.input_size, tsn=args.tsn)
        class_names = data.read_class_names(args.class_names) if args.class_names else None
    except (ValueError, OSError) as e:
        raise SystemExit(f"finetune.py: {e}")
    max_label = max(lbl for ds in (train_ds, val_ds) if ds is not None for _, lbl in ds.items)
    K = (state or {}).get("num_classes") or args.num_classes or (len(class_names) if class_names else max_label + 1)
    if max_label >= K:
        raise SystemExit(f"a list has label {max_label} but there are only {K} classes; fix --num-classes / --class-names")
    if len(train_ds) < args.batch_size * world:
        raise SystemExit(f"{args.data} has {len(train_ds)} videos, fewer than one global batch of "
                         f"{args.batch_size * world}; lower --batch-size")
    sampler = torch.utils.data.DistributedSampler(train_ds, world, rank, shuffle=True, seed=args.seed) if world > 1 else None
    loader_kw = dict(num_workers=args.num_workers, collate_fn=data.collate, pin_memory=device.type == "cuda",
                     persistent_workers=False)  # workers must see each epoch's train_ds.set_epoch
    train_loader = torch.utils.data.DataLoader(train_ds, args.batch_size, shuffle=sampler is None, sampler=sampler,
                                               drop_last=True, **loader_kw)
    val_loader = None
    if val_ds is not None:
        # every rank takes every world-th video: no padding, so the summed counts are exact
        val_loader = torch.utils.data.DataLoader(torch.utils.data.Subset(val_ds, range(rank, len(val_ds), world)),
                                                 args.batch_size, **loader_kw)
    return train_ds, train_loader, val_loader, K


def make_model(args, cfg, K, enc_sd, rank):
    """The classifier, built under one seed on every rank, so every rank starts from the same weights (the linear
    probe's frozen encoder too); then a seed per rank for the draws that must differ between ranks (drop path)."""
    torch.manual_seed(args.seed)
    model = build_model(args, cfg, K)
    torch.manual_seed(args.seed + rank)
    if enc_sd is not None:
        missing = load_encoder(model.encoder, enc_sd, args.checkpoint)
        if args.mode == "linear" and missing:
            M.print0(f"note: {args.checkpoint} has no final encoder LayerNorm (a finetuned model?): the probe sees "
                     "un-normalised features")
        M.print0(f"loaded the pretrained encoder from {args.checkpoint}")
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    M.print0(f"{args.mode}: {cfg.embed_dim}-wide encoder, depth {cfg.depth}, grid {cfg.grid}, K={K}, "
             f"{n_train:,} trained parameters")
    return model


def make_optimizer(args, model, global_batch):
    """-> (optimizer, peak lr, final lr): the lr scales with the global batch (VideoMAE's linear scaling rule)."""
    lr, min_lr = args.lr * global_batch / 256, args.min_lr * global_batch / 256
    if args.mode == "finetune":
        return torch.optim.AdamW(M.param_groups(model, args.weight_decay, args.layer_decay), lr=lr,
                                 betas=tuple(args.betas)), lr, min_lr
    # NOTE: differs from MAE, whose probe uses LARS: LARS's layer-wise trust ratio exists for MAE's batch of
    # 16384; with one Linear layer and batches of hundreds it only rescales the lr, so SGD with momentum (as
    # DINO's eval_linear) is the same method. wd 0 and a cosine to 0, as MAE.
    return torch.optim.SGD(model.probe.parameters(), lr=lr, momentum=0.9, weight_decay=args.weight_decay), lr, 0.0


def log(path, record, line):
    """One line above the progress bar and the same fields appended to log.jsonl (rank 0 only)."""
    if int(os.environ.get("RANK", 0)) == 0:
        tqdm.write(line)
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main(parser.parse_args())
