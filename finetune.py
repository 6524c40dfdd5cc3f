"""
Sec. 4.2, 4.5: transfer of a pretrained encoder to action recognition. Finetuning (Tables 1, 2, 4 "FT"), VideoMAE's
recipe [38]: all tokens, mean pool -> LayerNorm -> Linear; layer-wise lr decay, drop path, RandAugment, random erasing,
mixup / cutmix. Linear probe (Tables 1-4 "LP"), MAE's: frozen mean-pooled features -> BatchNorm1d -> Linear.

    python finetune.py --checkpoint runs/pretrain/ckpt.pt --mode linear     # the built-in demo, one CPU process
    torchrun --nproc_per_node=8 finetune.py --checkpoint runs/k400_tgm/ckpt.pt --data k400/train.csv \\
        --val-data k400/val.csv --root /data/k400     # K400 (docs/transfer.md: every dataset, then evaluate.py)
"""
import argparse
import math
import os
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

import data
import model as M
import weights

# -----------------------------------------------------------------------------
# Flags: the defaults are the paper's finetuning recipe (VideoMAE's); --mode linear takes MAE's probe recipe, LINEAR

def get_parser():
    p = argparse.ArgumentParser(description="Finetuning and linear probe (Sec. 4.2)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = p.add_argument
    # data
    add("--data", help="training list, 'path label' per line (VideoMAE's format); none: the built-in demo dataset")
    add("--root", default="", help="folder prefixed to every path of the list files")
    add("--val-data", help="validation list for the per-epoch one-view top-1; none: no validation")
    add("--class-names", help="class names, line i = label i; only sets the number of classes K")
    add("--num-classes", type=int, help="K; none: from --class-names, else 1 + the largest label of the lists")
    add("--num-frames", type=int, help="T frames per clip; none: the checkpoint's, else 16")
    add("--sampling-rate", type=int, default=4, help="frame stride; paper: 4 (K400, UCF101, HMDB51; SSv2: --tsn)")
    add("--input-size", type=int, help="H = W; none: the checkpoint's, else 224")
    add("--tsn", action="store_true", help="TSN sampling, one frame per segment (VideoMAE's SSv2 setting)")
    add("--no-flip", action="store_true", help="no horizontal flip; paper: off for SSv2, whose labels say left/right")
    add("--repeat-aug", type=int, default=1, help="clips per decoded video (VideoMAE num_sample): 2 K400/UCF/HMDB")
    add("--num-workers", type=int, default=min(8, os.cpu_count() or 1), help="loader processes per process")
    # model
    add("--checkpoint", help="pretrain.py ckpt, VideoMAE weights (.pth / HF folder), or 'none': a random encoder")
    add("--mode", default="finetune", choices=["finetune", "linear"], help="full finetuning (FT) or linear probe (LP)")
    add("--model", choices=list(M.MODEL_SIZES), help="size for VideoMAE weights or --checkpoint none; none: vit_base")
    add("--drop-path", type=float, default=0.1, help="stochastic depth rate (FT; VideoMAE ViT-B)")
    # optimisation
    add("--epochs", type=int, default=100, help="VideoMAE: 100 K400, 50 SSv2, 100 UCF101, 50 HMDB51; LP: 90 (MAE)")
    add("--batch-size", type=int, default=8, help="videos per process per step; paper: 8 x 64 GPUs; LP: 128")
    add("--blr", type=float, default=1e-3, help="base lr; lr = blr * global batch / 256; VideoMAE: "
                                               "1e-3 (ViT-B K400; 5e-4 SSv2, UCF101); LP: 0.1 (MAE)")
    add("--min-blr", type=float, default=1e-6, help="base lr at the cosine's end (FT); LP goes to 0, as MAE")
    add("--warmup-epochs", type=int, default=5, help="linear warmup from 0; LP: 10 (MAE)")
    add("--weight-decay", type=float, default=0.05, help="AdamW's (FT); LP: 0 (MAE)")
    add("--layer-decay", type=float, default=0.75, help="block i gets lr * decay^(depth+1-i) (FT); 0.7 UCF/HMDB")
    add("--betas", type=float, nargs=2, default=(0.9, 0.999), help="AdamW betas (FT)")
    add("--mixup", type=float, default=0.8, help="mixup alpha (FT); 0 turns it off")
    add("--cutmix", type=float, default=1.0, help="cutmix alpha (FT); 0 turns it off")
    add("--mixup-switch-prob", type=float, default=0.5, help="chance of cutmix over mixup when both are on")
    add("--smoothing", type=float, default=0.1, help="label smoothing (FT)")
    add("--randaug-n", type=int, default=4, help="RandAugment ops per clip, one draw for all frames (FT; VideoMAE's "
                                                 "rand-m7-n4); 0: off; all n apply (timm's each at 0.5: 2 = its mean)")
    add("--randaug-m", type=int, default=7, help="RandAugment magnitude, 0..10 (FT)")
    add("--reprob", type=float, default=0.25, help="random erasing chance per clip, one box in all frames (FT); 0: off")
    add("--precision", default="bf16", choices=["bf16", "fp32"], help="autocast dtype; bf16: fp32 on GPUs without it")
    # output
    add("--output-dir", default="runs/finetune", help="ckpt.pt (every epoch, atomic) and log.jsonl go here")
    add("--resume", help="a finetune ckpt.pt to continue, or 'auto': output-dir/ckpt.pt if it exists")
    add("--log-interval", type=int, default=10, help="steps between log lines")
    add("--seed", type=int, default=0)
    return p


LINEAR = dict(epochs=90, batch_size=128, blr=0.1, warmup_epochs=10, weight_decay=0.0)  # MAE's linear probe


def parse_args(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    data.check_flags("finetune.py", args)  # what was typed, before the demo is built
    if args.mode == "linear":
        parser.set_defaults(**LINEAR)
        args = parser.parse_args(argv)
    if args.data is None:
        import demo  # the built-in demo's lists and sizes become the defaults; typed flags win
        args = demo.fill(parser, argv, args.mode)
    return args


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


# -----------------------------------------------------------------------------
# Validation, and the draws of an epoch

@torch.no_grad()
def validate(model, loader, device, amp):
    """One-view top-1 / top-5 over this process's share of the val list -> (correct1, correct5, count) sums."""
    model.eval()
    c1 = c5 = 0
    for batch in loader:
        video, y = batch["video"].to(device, non_blocking=True), batch["label"].to(device)
        with amp:
            logits = model(video).float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (B, 5)
        c1 += (top[:, 0] == y).sum().item()
        c5 += (top == y[:, None]).any(1).sum().item()
    return c1, c5, len(loader.dataset)                         # no drop_last: every video of the share counted


def seed_epoch(seed, rank, epoch):
    """(seed, rank, epoch) -> the mixup / cutmix rng; torch seeded too (drop path, shuffle, workers): exact resume."""
    torch.manual_seed(hash((seed, rank, epoch)) % 2**63)
    return np.random.default_rng([seed, rank, epoch])


def main(args):
    rank, world, device = M.setup_distributed()
    state, enc_sd, cfg = starting_point(args, device)          # fills args' None defaults
    train_ds, train_loader, val_loader, K = make_loaders(args, state, rank, world, device)

    # one seed on every rank: every rank starts from the same weights (the linear probe's frozen encoder too)
    torch.manual_seed(args.seed)
    model = build_model(args, cfg, K).to(device)
    torch.manual_seed(args.seed + rank)                        # then the draws that must differ (drop path) per rank
    if enc_sd is not None:
        missing = load_encoder(model.encoder, enc_sd, args.checkpoint)
        if args.mode == "linear" and missing:
            M.print0(f"note: {args.checkpoint} has no final LayerNorm (finetuned?): the probe sees raw features")
        M.print0(f"loaded the pretrained encoder from {args.checkpoint}")
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    M.print0(f"{args.mode}: {cfg.embed_dim}-wide encoder, depth {cfg.depth}, grid {cfg.grid}, K={K}, "
             f"{n_train:,} trained parameters")
    # DDP syncs the gradients of what trains: the whole classifier, or the probe (the frozen encoder has none)
    trained = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model

    # optimizer and schedule: the lr scales with the global batch (VideoMAE's linear scaling rule)
    global_batch = args.batch_size * world
    lr, min_lr = args.blr * global_batch / 256, args.min_blr * global_batch / 256
    if args.mode == "finetune":
        optimizer = torch.optim.AdamW(M.param_groups(model, args.weight_decay, args.layer_decay), lr=lr,
                                      betas=tuple(args.betas))
    else:
        # NOTE: differs from MAE, whose probe uses LARS: LARS's layer-wise trust ratio exists for MAE's batch of
        # 16384; with one Linear layer and batches of hundreds it only rescales the lr, so SGD with momentum (as
        # DINO's eval_linear) is the same method. wd 0 and a cosine to 0, as MAE.
        optimizer = torch.optim.SGD(model.probe.parameters(), lr=lr, momentum=0.9, weight_decay=args.weight_decay)
        min_lr = 0.0
    steps_per_epoch = len(train_loader)
    total_steps, warmup_steps = args.epochs * steps_per_epoch, args.warmup_epochs * steps_per_epoch
    amp = M.autocast(device, args.precision)

    start_epoch, best = 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best = state["epoch"], state.get("best_top1", 0.0)
        M.print0(f"resumed at epoch {start_epoch}")
    os.makedirs(args.output_dir, exist_ok=True)
    log_path = os.path.join(args.output_dir, "log.jsonl")

    # -----------------------------------------------------------------------------
    # the loop: Sec. 4.2, VideoMAE's finetuning (mixup / cutmix, soft targets) or MAE's linear probe
    bad_total, t_start = 0, time.time()
    for epoch in range(start_epoch, args.epochs):
        train_ds.set_epoch(epoch)  # new crops, flips, offsets (data.py seeds per epoch; workers are not persistent)
        mix_rng = seed_epoch(args.seed, rank, epoch)
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        model.train()
        if args.mode == "linear":
            model.encoder.eval()                               # frozen features: no drop path, as at test time
        loss_sum, n_seen, bad_epoch, t0 = 0.0, 0, 0, time.time()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=rank != 0, leave=False)
        for i, batch in enumerate(bar):
            step = epoch * steps_per_epoch + i
            M.set_lr(optimizer, M.lr_at(step, total_steps, warmup_steps, lr, min_lr))
            video, y = batch["video"].to(device, non_blocking=True), batch["label"].to(device)
            bad_epoch += len(batch["bad"])
            if args.mode == "finetune":                        # y becomes (B, K) soft targets: mixed clips, smoothed
                video, y = mixup_cutmix(video, y, K, args.mixup, args.cutmix, args.mixup_switch_prob, args.smoothing,
                                        mix_rng)
            with amp:
                logits = trained(video)                        # (B, K)
            loss = F.cross_entropy(logits.float(), y)          # labels (LP) or soft targets (FT: timm's soft CE)
            if not torch.isfinite(loss):
                raise SystemExit(f"finetune.py: non-finite loss {loss.item()} at epoch {epoch + 1} step {i}; the last "
                                 f"good checkpoint is {args.output_dir}/ckpt.pt (try a lower --blr)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum, n_seen = loss_sum + loss.item(), n_seen + 1
            if i % args.log_interval == 0:
                cur_lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0)
                rate = n_seen * global_batch * args.repeat_aug / (time.time() - t0)
                M.log(log_path, dict(epoch=epoch + 1, step=step, loss=loss.item(), lr=cur_lr, clips_per_s=rate),
                      tqdm.write)

        # end of epoch: validation summed over ranks, then an atomic checkpoint
        stats = torch.tensor([loss_sum, n_seen, bad_epoch, 0, 0, 0], dtype=torch.float64, device=device)
        if val_loader is not None:
            stats[3:] = torch.tensor(validate(model, val_loader, device, amp), dtype=torch.float64)
        if world > 1:
            dist.all_reduce(stats)
        bad_total += int(stats[2])
        record = dict(epoch=epoch + 1, train_loss=(stats[0] / stats[1]).item(), bad_videos=int(stats[2]),
                      epoch_s=time.time() - t0)
        if val_loader is not None:  # val_top1: the centre view of each video (evaluate.py: every view)
            top1, top5 = (100.0 * stats[3] / stats[5]).item(), (100.0 * stats[4] / stats[5]).item()
            best = max(best, top1)
            record.update(val_top1=top1, val_top5=top5, val_videos=int(stats[5]))
        M.log(log_path, record, tqdm.write)
        if rank == 0:
            M.save_checkpoint(os.path.join(args.output_dir, "ckpt.pt"), {
                "model": model.state_dict(), "model_cfg": M.model_config_dict(cfg), "num_classes": K, "mode": args.mode,
                "args": vars(args), "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "best_top1": best})

    M.log(log_path, dict(done=True, mode=args.mode, epochs=args.epochs,
                         best_val_top1=best if val_loader is not None else None, bad_videos=bad_total,
                         train_s=time.time() - t_start))
    M.print0(f"multi-view test: python evaluate.py --checkpoint {args.output_dir}/ckpt.pt")
    if world > 1:
        dist.destroy_process_group()


# -----------------------------------------------------------------------------
# The set-up of main, in the order it runs: where the run starts (resume / checkpoint / none), the args, the data

def starting_point(args, device):
    """Where the run starts -> (resume state or None, pretrained encoder state dict or None, the ModelConfig); fills
    args' None defaults (the checkpoint's shape when it stores one, else the paper's) and stops on flags that clash."""
    resume = M.resume_path(args.resume, args.output_dir, device)
    def fail(msg):
        raise data.UsageError(f"finetune.py: {msg}")
    try:
        state = M.load_checkpoint(resume) if resume else None
        enc_sd = pretrained_cfg = None
        if state is not None:
            pretrained_cfg = M.config_from_checkpoint(state)
        elif args.checkpoint not in (None, "none"):
            _, enc_sd, pretrained_cfg = read_pretrained(args.checkpoint)
    except M.CheckpointError as e:
        raise SystemExit(f"finetune.py: {e}")
    if state is not None and "num_classes" not in state:
        fail(f"--resume {resume}: not a finetune.py checkpoint (no 'num_classes'); pass it as --checkpoint")
    if state is not None and state["mode"] != args.mode:
        fail(f"--resume {resume} is a --mode {state['mode']} run: add --mode {state['mode']}, or start a new run in "
             "another --output-dir")
    if state is None and args.checkpoint is None:
        fail("needs --checkpoint: a pretrain.py checkpoint (e.g. runs/pretrain/ckpt.pt), VideoMAE weights (.pth or a "
             "Hugging Face folder), or 'none' for a random encoder")
    if pretrained_cfg is not None:
        M.check_shape_flags(pretrained_cfg, args.num_frames, args.input_size)
        args.num_frames, args.input_size = pretrained_cfg.num_frames, pretrained_cfg.img_size
        size = M.MODEL_SIZES.get(args.model, {})
        if any(size[k] != getattr(pretrained_cfg, k) for k in ("embed_dim", "depth") if k in size):
            fail(f"--model {args.model} does not fit {resume or args.checkpoint}, a {pretrained_cfg.embed_dim}-wide, "
                 f"{pretrained_cfg.depth}-block encoder: drop --model (the checkpoint stores its own config)")
    if state is not None:
        M.print0(f"resuming from {resume}")
    for k, v in dict(model="vit_base", num_frames=16, input_size=224).items():  # the paper's, where nothing says
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.data is not None and args.val_data is None:
        M.print0("no --val-data: training without per-epoch validation")
    if not 0 <= args.randaug_m <= 10:
        fail(f"--randaug-m {args.randaug_m}: RandAugment's magnitude runs from 0 to 10 (VideoMAE: 7)")
    if args.mode == "linear" and args.batch_size * args.repeat_aug < 2:
        fail("--mode linear needs at least 2 clips per step (its BatchNorm normalises over the batch); raise "
             "--batch-size")
    if args.epochs <= args.warmup_epochs:
        M.print0(f"note: --warmup-epochs {args.warmup_epochs} >= --epochs {args.epochs}: the lr never reaches its peak")
    if args.checkpoint == "none" and state is None:
        M.print0(f"--checkpoint none: the encoder starts from random weights ({args.model}), the from-scratch baseline")
    cfg = pretrained_cfg or M.make_config(args.model, num_frames=args.num_frames, img_size=args.input_size)
    return state, enc_sd, cfg


def read_pretrained(path):
    """-> (ckpt dict or None, encoder state dict with keys relative to the Encoder, stored ModelConfig or None).
    Published VideoMAE weights store no ModelConfig: their shape comes from --model / --num-frames / --input-size."""
    ckpt = M.load_checkpoint(path) if os.path.isfile(path) else None
    if ckpt is not None and "model_cfg" in ckpt:
        sd, cfg = ckpt["model"], M.config_from_checkpoint(ckpt)
    else:
        sd, cfg, ckpt = weights.videomae_state_dict(path), None, None
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


def make_loaders(args, state, rank, world, device):
    """Random-resized crops to train, the centre view to validate -> (train set, its loader, val loader or None, K)."""
    try:  # a missing list, or a malformed line (file:line: reason), stops here and not mid-run
        clip = {k: getattr(args, k) for k in ("num_frames", "sampling_rate", "input_size", "tsn")}  # both lists
        # RandAugment and random erasing only when finetuning: MAE's linear probe trains on plain crops
        aug = {k: getattr(args, k) for k in ("randaug_n", "randaug_m", "reprob")} if args.mode == "finetune" else {}
        train_ds = data.VideoDataset(args.data, args.root, mode="finetune", repeat_aug=args.repeat_aug,
                                     flip=not args.no_flip, seed=args.seed + rank, **clip, **aug)
        val_ds = data.VideoDataset(args.val_data, args.root, mode="val", **clip) if args.val_data else None
        class_names = data.read_class_names(args.class_names) if args.class_names else None
    except (ValueError, OSError) as e:
        raise SystemExit(f"finetune.py: {e}")
    max_label = max(lbl for ds in (train_ds, val_ds) if ds is not None for _, lbl in ds.items)
    K = (state or {}).get("num_classes") or args.num_classes or (len(class_names) if class_names else max_label + 1)
    if max_label >= K:
        raise SystemExit(f"label {max_label} in a list, but only {K} classes; fix --num-classes / --class-names")
    if len(train_ds) < args.batch_size * world:
        raise SystemExit(f"{args.data} has {len(train_ds)} videos, fewer than one global batch of "
                         f"{args.batch_size * world}; lower --batch-size")
    sampler = DistributedSampler(train_ds, world, rank, seed=args.seed) if world > 1 else None
    loader_kw = dict(num_workers=args.num_workers, collate_fn=data.collate, pin_memory=device.type == "cuda")
    train_loader = DataLoader(train_ds, args.batch_size, shuffle=sampler is None, sampler=sampler, drop_last=True,
                              **loader_kw)
    val_loader = None
    if val_ds is not None:  # every rank takes every world-th video: no padding, so the summed counts are exact
        val_loader = DataLoader(Subset(val_ds, range(rank, len(val_ds), world)), args.batch_size, **loader_kw)
    return train_ds, train_loader, val_loader, K


if __name__ == "__main__":
    main(parse_args())
