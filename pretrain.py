"""
Sec. 3.5, 4.2: self-supervised pretraining of the text-guided video MAE.

loss = L_MSE (Sec. 3.1, masked-token reconstruction) + lambda * L_NCE (Sec. 3.4, Eq. 4, with --contrastive),
with the mask from random (ST-MAE), tube (VideoMAE), motion-guided (MGM) or text-guided masking (TGM, Sec. 3.3).

One CPU process, the built-in demo dataset (demo-sized defaults are filled in and printed):
    python pretrain.py --mask tgm --ratio 0.6 --contrastive
One node with 8 GPUs, Kinetics-400 (the paper's TGM run; the README lists the others):
    torchrun --nproc_per_node=8 pretrain.py --data k400/train.txt --root k400/ --captions k400_captions.jsonl \
        --mask tgm --ratio 0.6 --contrastive --batch-size 32 --epochs 200 --output-dir runs/k400_tgm
Several nodes: the same with torchrun --nnodes=N --node_rank=i --rdzv-endpoint=HOST:PORT.
Resume: add --resume auto (or a path): optimizer, schedule, step, sampler position and RNG states continue.
"""
import argparse
import copy
import json
import os
import random
import signal
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import data
import masking
import model as M

# -----------------------------------------------------------------------------
# Flags. Defaults are the paper's (Sec. 4.2, VideoMAE's recipe); with no --data the demo values below apply.


def get_parser():
    parser = argparse.ArgumentParser(description="TGM pretraining (Sec. 3.5)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # data
    parser.add_argument("--data", default=None, help="list file 'path label' per line; none: the built-in demo dataset")
    parser.add_argument("--root", default="", help="folder prefixed to every path of the list")
    parser.add_argument("--captions", default=None, help="captions JSONL from caption.py (needed by tgm and --contrastive)")
    parser.add_argument("--num-frames", type=int, default=16, help="T, frames per clip; paper: 16")
    parser.add_argument("--sampling-rate", type=int, default=4, help="temporal stride; paper: 4 on K400, 2 on SSv2")
    parser.add_argument("--input-size", type=int, default=224, help="H = W after the crop; paper: 224")
    parser.add_argument("--no-flip", action="store_true", help="no horizontal flip; paper: off for SSv2 (left/right labels)")
    parser.add_argument("--repeat-aug", type=int, default=1, help="clips cut from each decoded video (ST-MAE/MGMAE repeated augmentation)")
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1), help="loader processes per rank")
    # masking
    parser.add_argument("--mask", choices=["random", "tube", "mgm", "tgm"], default="tgm", help="mask generator eta (Sec. 3.1, 3.3)")
    parser.add_argument("--ratio", type=float, default=None, help="mask ratio gamma; paper: 0.9 tube/random, 0.75 mgm, 0.6 tgm (Table 5a)")
    parser.add_argument("--tgm-order", choices=["top", "bottom"], default="top", help="mask the top-k or bottom-k tokens by text similarity (Table 5b)")
    parser.add_argument("--tgm-features", choices=["patch", "dense"], default=None, help="patch: CLIP per 16x16 patch (paper; the default); "
                        "dense: one CLIP pass per frame (fast; the demo's default with a full-size CLIP)")
    parser.add_argument("--clip-model", default="ViT-B-32-quickgelu", help="open_clip model of the mask and the text tower; paper: ViT-B/32")
    parser.add_argument("--clip-pretrained", default="openai", help="openai | a local weights file | demo (a small CLIP trained on the demo data; "
                        "the demo's default when openai's cannot be had) | none (random CLIP: masks mean nothing)")
    # model
    parser.add_argument("--model", default="vit_base", choices=list(M.MODEL_SIZES), help="encoder size; paper: ViT-B")
    parser.add_argument("--no-norm-pix-loss", action="store_true", help="regress [0, 1] pixels instead of per-patch normalised ones")
    # contrastive (Sec. 3.4)
    parser.add_argument("--contrastive", action="store_true", help="add the masked video-text InfoNCE loss (Sec. 3.4)")
    parser.add_argument("--tau", type=float, default=0.07, help="InfoNCE temperature tau, Eq. (4)")
    parser.add_argument("--nce-weight", type=float, default=1.0, help="lambda in L_MSE + lambda L_NCE; paper: 1 (Sec. 3.5)")
    parser.add_argument("--mse-weight", type=float, default=1.0, help="weight of L_MSE; 0 = pure contrastive (Table 2 rows 'V->T' only)")
    # optimisation
    parser.add_argument("--epochs", type=int, default=200, help="paper: 200 (Tables 1-6)")
    parser.add_argument("--batch-size", type=int, default=32, help="clips per process per step (repeated copies included)")
    parser.add_argument("--blr", type=float, default=1.5e-4, help="base lr; lr = blr * global_batch / 256 (paper: 1.5e-4)")
    parser.add_argument("--min-blr", type=float, default=1e-5, help="cosine floor, also scaled by global_batch / 256")
    parser.add_argument("--warmup-epochs", type=float, default=40, help="linear warmup from 0 (VideoMAE: 40)")
    parser.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (none on biases, norms, mask_token)")
    parser.add_argument("--clip-grad", type=float, default=None, help="max gradient norm; VideoMAE pretraining: none")
    # system
    parser.add_argument("--output-dir", default="runs/pretrain", help="ckpt.pt, log.jsonl and masks.png go here")
    parser.add_argument("--resume", default=None, help="a checkpoint path, or 'auto' for output-dir/ckpt.pt if it exists")
    parser.add_argument("--save-every", type=int, default=20, help="epochs between checkpoints (and one at the end)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop (with a checkpoint) after this many steps; "
                        "the schedule still spans --epochs, so --resume continues the same run")
    parser.add_argument("--log-interval", type=int, default=20, help="steps between log lines (also the NCE probe without --contrastive)")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16", help="autocast dtype; bf16 falls back to fp32 where unsupported")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    return parser


# With no --data, flags the user did not type get these, so the demo finishes in minutes on a CPU.
DEMO_DEFAULTS = dict(model="vit_tiny", num_frames=8, sampling_rate=4, input_size=64, batch_size=16, epochs=4,
                     warmup_epochs=1, blr=1e-2, save_every=1, log_interval=5, num_workers=1)


def user_flags(parser, argv):
    """The dests of the flags typed on the command line (not left at their default)."""
    probe = copy.deepcopy(parser)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def parse_args(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    args.demo = args.data is None
    if args.demo:
        typed = user_flags(parser, argv)
        filled = {k: v for k, v in DEMO_DEFAULTS.items() if k not in typed}
        for k, v in filled.items():
            setattr(args, k, v)
        args.demo_filled = filled
    args.clip_pretrained_typed = args.data is not None or "clip_pretrained" in user_flags(parser, argv)
    if args.ratio is None:
        args.ratio = masking.PAPER_RATIO[args.mask]
    check_args(args)
    return args


def check_args(args):
    """Flag combinations that cannot work stop here, with one sentence saying how to fix them."""
    def fail(msg):
        raise SystemExit(f"pretrain.py: {msg}")
    if not 0 < args.ratio < 1:
        fail(f"--ratio {args.ratio} must lie strictly between 0 and 1 (paper: 0.6 for tgm, 0.75 mgm, 0.9 tube)")
    cfg = M.make_config(args.model, img_size=args.input_size, num_frames=args.num_frames)
    if args.num_frames % cfg.tubelet_size:
        fail(f"--num-frames {args.num_frames} must be a multiple of the tubelet size {cfg.tubelet_size}")
    if args.input_size % cfg.patch_size:
        fail(f"--input-size {args.input_size} must be a multiple of the patch size {cfg.patch_size}")
    if args.data is not None and (args.mask == "tgm" or args.contrastive) and not args.captions:
        what = "--mask tgm" if args.mask == "tgm" else "--contrastive"
        fail(f"{what} needs a caption per video: pass --captions FILE (make one with caption.py)")
    if args.data is not None and not os.path.isfile(args.data):
        fail(f"--data {args.data}: no such list file")
    if args.captions and not os.path.isfile(args.captions):
        fail(f"--captions {args.captions}: no such file (make one with caption.py)")
    if args.mse_weight == 0 and not args.contrastive:
        fail("--mse-weight 0 leaves no loss: add --contrastive for pure contrastive pretraining")
    if args.batch_size % args.repeat_aug:
        fail(f"--batch-size {args.batch_size} must be a multiple of --repeat-aug {args.repeat_aug}")


# -----------------------------------------------------------------------------
# Small helpers of the loop

def print0(*a, **kw):
    if int(os.environ.get("RANK", 0)) == 0:
        print(*a, **kw, flush=True)


def autocast_for(device, precision):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def rng_states():
    """Every generator this process draws from, as tensors and plain numbers (a weights_only checkpoint)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(s):
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    keys, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if s["cuda"]:
        torch.cuda.set_rng_state_all(s["cuda"])


class SkipSampler(torch.utils.data.Sampler):
    """The rank's share of one epoch's shuffled order, from a position on: resuming mid-epoch draws the same
    clips the stopped run would have drawn next."""

    def __init__(self, sampler, skip):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return iter(list(self.sampler)[self.skip:])

    def __len__(self):
        return len(self.sampler) - self.skip


def pick_captions(captions, indices, seed, step):
    """Sec. 3.2: one of the video's captions at random, per sample; it serves the mask and the loss alike.
    Seeded by (seed, step, video index), so a resumed run draws the same captions."""
    # a video without captions (None) only arrives here when nothing but the NCE probe needs its text
    return [caps[random.Random(hash((seed, step, i))).randrange(len(caps))] if caps else None
            for caps, i in zip(captions, indices.tolist())]


def text_targets(embed_text, captions, caption_ids, dim, device):
    """The text side of Eq. (4) for one batch: captions (B,), str or None -> (t (B, E) L2-normalised CLIP text
    embeddings, ids (B,) each caption's index in the run's caption list).

    A clip without a caption (possible only in a pure-MAE run given --captions) gets a zero row and id -1, which
    info_nce leaves out. Every rank then still runs the head and the loss's collectives every step: a rank that
    skipped them would leave the others waiting forever.
    """
    t = torch.zeros(len(captions), dim, device=device)
    have = [i for i, c in enumerate(captions) if c is not None]
    if have:
        t[have] = embed_text([captions[i] for i in have])
    return t, torch.tensor([caption_ids.get(c, -1) for c in captions], device=device)


def pretraining_loss(mae, raw_model, video, mask, text, text_ids, args):
    """Sec. 3.5: L = L_MSE + lambda * L_NCE -> (L, L_MSE, L_NCE or None when the run has no text).

    mae is the model as trained (DDP-wrapped or not), raw_model the bare VideoMAE (its head).
    video (B, C, T, H, W); mask (B, N) bool, True = masked; text (B, E) and text_ids (B,) from text_targets.
    """
    loss_mse, _, latent = mae(video, mask)                     # Sec. 3.1, Eq. (3): E = phi(V_vis), V' = xi(E, ...)
    if text is None:
        return args.mse_weight * loss_mse, loss_mse, None
    # Without --contrastive the head is Fig. 4's online probe: it learns from a stop-gradient copy of the
    # latent, so L_NCE is measured as the encoder learns ("even for pure MAE, the contrastive loss naturally
    # decreases", Sec. 5) but none of its gradient reaches the encoder.
    v = raw_model.video_embedding(latent if args.contrastive else latent.detach())  # (B, E) L2-normalised
    loss_nce = M.info_nce(v, text, args.tau, text_ids)         # Sec. 3.4, Eq. (4)
    nce_weight = args.nce_weight if args.contrastive else 1.0  # the probe's own loss: lambda is for the encoder
    return args.mse_weight * loss_mse + nce_weight * loss_nce, loss_mse, loss_nce


def main(args):
    # -------------------------------------------------------------------------
    # distributed setup: torchrun sets RANK; a plain `python pretrain.py` is one process
    ddp = "RANK" in os.environ
    if args.device:
        device = torch.device(args.device)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if ddp:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
    else:
        rank, world = 0, 1
    master = rank == 0
    # the same seed on every rank: the model (and a random CLIP) start identical everywhere; the data draws are
    # seeded per (seed, epoch, video) in data.py, and the tgm tie-breaks per (seed, step, rank) below
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    if args.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        print0("this GPU has no bf16: training in fp32 (pass --precision fp16 for half precision)")
        args.precision = "fp32"
    if args.precision == "fp16" and device.type == "cpu":
        raise SystemExit("pretrain.py: --precision fp16 needs a GPU; use bf16 or fp32 on a CPU")
    if args.demo:
        print0("no --data: pretraining on the built-in demo dataset with demo-sized defaults: "
               + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in args.demo_filled.items()))

    # -------------------------------------------------------------------------
    # data
    if args.demo:
        demo = data.demo_dataset() if master else None
        if ddp:
            dist.barrier()
        demo = demo or data.demo_dataset()
        args.data, args.root, args.captions = demo["train"], demo["root"], demo["captions"]
    cfg = M.make_config(args.model, img_size=args.input_size, num_frames=args.num_frames,
                        norm_pix_loss=not args.no_norm_pix_loss)
    mask_fn = {"random": masking.RandomMasker, "tube": masking.TubeMasker, "mgm": masking.MotionMasker}.get(args.mask)
    try:
        dataset = data.VideoDataset(
            args.data, args.root, captions=args.captions, mode="pretrain", num_frames=args.num_frames,
            sampling_rate=args.sampling_rate, input_size=args.input_size, repeat_aug=args.repeat_aug,
            flip=not args.no_flip, motion=args.mask == "mgm", seed=args.seed,
            # decode no larger than the smallest crop needs (a no-op for 224 crops of 320p Kinetics)
            short_side=data.multiscale_short_side(args.input_size),
            require_captions=args.mask == "tgm" or args.contrastive,
            mask_fn=mask_fn(cfg.grid, args.ratio) if mask_fn else None)
    except ValueError as e:  # a malformed list or captions line: file, line and reason
        raise SystemExit(f"pretrain.py: {e}")
    videos_per_step = args.batch_size // args.repeat_aug
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True)
    steps_per_epoch = len(sampler) // videos_per_step
    if steps_per_epoch == 0:
        raise SystemExit(f"pretrain.py: {len(dataset)} videos over {world} ranks give no full batch of "
                         f"{videos_per_step} videos: lower --batch-size")
    total_steps = steps_per_epoch * args.epochs

    # -------------------------------------------------------------------------
    # CLIP (for tgm masks and the text side of L_NCE), model, optimizer and schedule
    # captions feed the tgm mask, L_NCE, and the NCE probe logged for pure MAE (Fig. 4) when there are captions
    need_text = args.mask == "tgm" or args.contrastive or bool(args.captions)
    embed_text, tgm = None, None
    if need_text:
        # on the demo, unless --clip-pretrained was typed, the demo CLIP stands in for weights that cannot be had;
        # rank 0 loads first (it may train the demo CLIP, about a minute) while the others wait, as for the demo data
        fallback = demo if args.demo and not args.clip_pretrained_typed else None
        try:
            got = masking.load_clip_for(args.clip_model, args.clip_pretrained, device, fallback) if master else None
            if ddp:
                dist.barrier()
            got = got or masking.load_clip_for(args.clip_model, args.clip_pretrained, device, fallback)
        except masking.ClipWeightsError as e:
            raise SystemExit(f"pretrain.py: {e}")
        clip, tokenizer, args.clip_model, args.clip_pretrained = got  # the checkpoint records the CLIP it used
        embed_text = masking.TextEmbedder(clip, tokenizer)
        # Every distinct caption of the list is embedded once, up front, in a fixed order and fixed chunks: a text
        # target then never depends on which captions shared its CLIP batch (bit for bit, so --resume is exact).
        # The cache holds E floats per caption on the CPU (K400, 3 captions per video: about 1.5 GB).
        distinct = sorted({c for rel in dataset.rel for c in dataset.captions.get(rel, [])})
        caption_ids = {c: i for i, c in enumerate(distinct)}  # info_nce tells same-caption pairs apart by these
        for i in tqdm(range(0, len(distinct), 256), desc="embedding captions", disable=not master, leave=False):
            with autocast_for(device, args.precision):  # CLIP in --precision too (bf16: ~3x faster on a CPU)
                embed_text(distinct[i:i + 256])
        # the head's output E must be CLIP's text width (512 for ViT-B/32), so video and text meet in one space
        cfg.head_out_dim = embed_text(["a video"]).shape[1]
        if args.mask == "tgm":
            # The paper's patch features, except on the demo with a full-size CLIP: ViT-B/32 on each of a step's
            # 2,048 patches would take minutes on a CPU. The demo CLIP is small enough for them, and only they follow
            # its words (benchmarks/bench_demo_clip.py: its dense features find the salient object, not the named one).
            if args.tgm_features is None:
                args.tgm_features = "dense" if args.demo and args.clip_pretrained != "demo" else "patch"
            print0(f"text-guided masks from the {args.tgm_features} features of CLIP {args.clip_model} ({args.clip_pretrained})")
            tgm = masking.TextGuidedMasker(clip, args.tgm_features, args.ratio, args.tgm_order, cfg.patch_size,
                                           cfg.tubelet_size)
    mae = M.VideoMAE(cfg).to(device)
    raw_model = mae
    # with no captions at all the head never runs: freeze it, so DDP does not wait for gradients that never come
    raw_model.projector.requires_grad_(need_text)
    if args.compile:
        mae = torch.compile(mae)
    if ddp:
        mae = DDP(mae, device_ids=[device.index] if device.type == "cuda" else None)
    global_batch = args.batch_size * world
    lr, min_lr = args.blr * global_batch / 256, args.min_blr * global_batch / 256
    # fused: one kernel for all parameters (2-3x faster than the per-tensor loop on a CPU, and on GPUs)
    optimizer = torch.optim.AdamW(M.param_groups(raw_model, args.weight_decay), lr=lr, betas=(0.9, 0.95), fused=True)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")

    # -------------------------------------------------------------------------
    # resume
    os.makedirs(args.output_dir, exist_ok=True)
    ckpt_path = os.path.join(args.output_dir, "ckpt.pt")
    step = 0
    resume = ckpt_path if args.resume == "auto" and os.path.isfile(ckpt_path) else (
        None if args.resume in (None, "auto") else args.resume)
    if resume:
        ckpt = M.load_checkpoint(resume)
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        step = ckpt["step"]
        set_rng_states(ckpt["rng"][rank] if rank < len(ckpt["rng"]) else ckpt["rng"][0])
        print0(f"resumed from {resume} at step {step} (epoch {step // steps_per_epoch})")

    def save(step):
        states = [None] * world
        if ddp:
            dist.all_gather_object(states, rng_states())
        else:
            states = [rng_states()]
        if master:
            M.save_checkpoint(ckpt_path, {
                "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "step": step, "epoch": step // steps_per_epoch, "model_cfg": M.model_config_dict(cfg),
                # what trained the video-text head: L_NCE, the Fig. 4 probe, or nothing (no captions)
                "head": "contrastive" if args.contrastive else ("probe" if need_text else None),
                "args": {k: v for k, v in vars(args).items() if k != "demo_filled"}, "rng": states})

    # -------------------------------------------------------------------------
    # the loop
    log_file = open(os.path.join(args.output_dir, "log.jsonl"), "a") if master else None
    # SIGTERM (a preempted job) or Ctrl-C: finish the step, save, and exit; --resume continues mid-epoch
    stop_signal = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop_signal.append(signum))
    bad_videos, mask_fallbacks = 0, 0
    nce_last = None
    mae.train()
    start_epoch = step // steps_per_epoch
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        skip = (step - epoch * steps_per_epoch) * videos_per_step
        loader = DataLoader(dataset, batch_size=videos_per_step, sampler=SkipSampler(sampler, skip),
                            num_workers=args.num_workers, collate_fn=data.collate, drop_last=True,
                            pin_memory=device.type == "cuda", persistent_workers=False)
        bar = tqdm(loader, desc=f"epoch {epoch}", disable=not master, leave=False, dynamic_ncols=True)
        t_data = time.perf_counter()
        stop = torch.tensor(0.0)
        for batch in bar:
            data_ms = (time.perf_counter() - t_data) * 1e3
            t_step = time.perf_counter()
            for param_group in optimizer.param_groups:
                param_group["lr"] = M.lr_at(step, total_steps, args.warmup_epochs * steps_per_epoch, lr, min_lr)
            bad_videos += len(batch["bad"])
            for path, reason in batch["bad"]:
                print0(f"skipped bad video {path}: {reason}")
            video = batch["video"].to(device, non_blocking=True)                      # (B, C, T, H, W)
            text = text_ids = None
            if need_text:
                captions = pick_captions(batch["captions"], batch["index"], args.seed, step)
                text, text_ids = text_targets(embed_text, captions, caption_ids, cfg.head_out_dim, device)  # (B, E)
            if tgm is not None:
                gen = torch.Generator().manual_seed(hash((args.seed, step, rank)) % 2**63)
                with autocast_for(device, args.precision):
                    mask = tgm(video, text, generator=gen)                             # (B, N), True = masked
            else:
                mask = batch["mask"].to(device, non_blocking=True)                    # made in the loader workers
                mask_fallbacks += sum(batch.get("mask_fallback", []))
            if step == 0 and master:
                masking.save_mask_picture(batch["video"], mask.cpu(), cfg, os.path.join(args.output_dir, "masks.png"),
                                          titles=[c or "" for c in captions] if need_text else ())

            with autocast_for(device, args.precision):
                loss, loss_mse, loss_nce = pretraining_loss(mae, raw_model, video, mask, text, text_ids, args)
            if not torch.isfinite(loss):
                raise SystemExit(f"pretrain.py: the loss is {loss.item()} at step {step} (epoch {epoch}); stopping. "
                                 f"The last good checkpoint is {ckpt_path}" + (" (none saved yet)" if not os.path.isfile(ckpt_path) else ""))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if args.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), args.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            step += 1

            if step % args.log_interval == 0 or step == total_steps:
                nce_value = loss_nce.item() if text is not None else None  # no captions: nothing to measure
                nce_last = nce_value
                if device.type == "cuda":
                    torch.cuda.synchronize()
                step_ms = (time.perf_counter() - t_step) * 1e3
                rec = {"step": step, "epoch": epoch, "loss_mse": loss_mse.item(), "loss_nce": nce_value,
                       "nce_optimised": args.contrastive, "lr": optimizer.param_groups[0]["lr"],
                       "data_ms": round(data_ms, 1), "step_ms": round(step_ms, 1),
                       "clips_per_s": round(global_batch / ((data_ms + step_ms) / 1e3), 2),
                       "bad_videos": bad_videos, "mask_fallbacks": mask_fallbacks}
                if master:
                    bar.write(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rec.items()))
                    log_file.write(json.dumps(rec) + "\n")
                    log_file.flush()
            if master:
                bar.set_postfix(loss=f"{loss.item():.4f}")
            stop = torch.tensor(float(bool(stop_signal) or step == args.max_steps), device=device)
            if ddp:  # every rank must stop at the same step, or the collectives would hang
                dist.all_reduce(stop, op=dist.ReduceOp.MAX)
            if stop.item():
                break
            t_data = time.perf_counter()
        bar.close()
        if stop.item():
            save(step)
            print0(f"stopped at step {step}; continue with --resume {ckpt_path}")
            break
        if (epoch + 1) % args.save_every == 0 or epoch + 1 == args.epochs:
            save(step)

    # -------------------------------------------------------------------------
    # final summary
    nce_text = "none (no captions)" if nce_last is None else f"{nce_last:.4f}"
    print0(f"done: {step} steps, last loss_nce {nce_text}, {bad_videos} bad videos skipped, "
           f"{mask_fallbacks} mgm masks fell back to tube; checkpoint {ckpt_path}")
    if log_file:
        log_file.close()
    if ddp:
        dist.destroy_process_group()
    return step


if __name__ == "__main__":
    main(parse_args())
