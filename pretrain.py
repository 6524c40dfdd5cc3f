"""
Sec. 3.5, 4.2: self-supervised pretraining, L = L_MSE (Sec. 3.1) + lambda * L_NCE (Sec. 3.4, Eq. 4, --contrastive),
with the mask of random (ST-MAE), tube (VideoMAE), motion-guided (MGM) or text-guided masking (TGM, Sec. 3.3).

    python pretrain.py --mask tgm --ratio 0.6 --contrastive        # the built-in demo, one CPU process
    torchrun --nproc_per_node=8 pretrain.py --data k400/train.txt --root k400/ --captions k400_captions.jsonl \
        --tgm-maps maps/k400 --mask tgm --ratio 0.6 --contrastive  # Kinetics-400 (docs/pretraining.md: the rest)
"""
import argparse
import contextlib
import os
import random
import signal
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import data
import frozen_clip
import maps
import masking
import model as M

# -----------------------------------------------------------------------------
# Flags: the defaults are the paper's (Sec. 4.2, VideoMAE's recipe); with no --data the demo sets its own first

def get_parser():
    p = argparse.ArgumentParser(description="TGM pretraining (Sec. 3.5)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = p.add_argument
    # data
    add("--data", help="list file, 'path label' per line; none: the built-in demo dataset")
    add("--root", default="", help="folder prefixed to every path of the list")
    add("--captions", help="captions JSONL from caption.py (needed by tgm and --contrastive)")
    add("--num-frames", type=int, default=16, help="T, frames per clip")
    add("--sampling-rate", type=int, default=4, help="temporal stride; paper: 4 on K400, 2 on SSv2")
    add("--input-size", type=int, default=224, help="H = W after the crop")
    add("--no-flip", action="store_true", help="no horizontal flip; paper: off for SSv2 (left/right labels)")
    add("--repeat-aug", type=int, default=1, help="clips cut from each decoded video (ST-MAE/MGMAE)")
    add("--num-workers", type=int, default=min(8, os.cpu_count() or 1), help="loader processes per rank")
    # masking
    add("--mask", choices=["random", "tube", "mgm", "tgm"], default="tgm", help="mask generator eta (Sec. 3.1, 3.3)")
    add("--ratio", type=float, help="mask ratio gamma; none: paper's, 0.6 tgm (Table 5a), 0.75 mgm, 0.9 tube/random")
    add("--tgm-order", choices=["top", "bottom"], default="top", help="mask the top-k or bottom-k (Table 5b)")
    add("--tgm-maps", help="folder of CLIP similarity maps made once by maps.py: TGM masks made in the loader workers")
    add("--tgm-features", choices=["patch", "dense"], help="CLIP in the step instead of --tgm-maps: patch, CLIP per "
                                                           "16x16 patch (the paper's); dense, one CLIP pass per frame")
    add("--clip-model", default="ViT-B-32-quickgelu", help="open_clip model of the mask and the text tower")
    add("--clip-pretrained", default="openai", help="openai | a local weights file | demo (a small CLIP trained on the "
                                                    "demo data) | none (random CLIP: masks mean nothing)")
    # model
    add("--model", default="vit_base", choices=list(M.MODEL_SIZES), help="encoder size")
    add("--no-norm-pix-loss", action="store_true", help="regress [0, 1] pixels, not per-patch normalised ones")
    # contrastive (Sec. 3.4)
    add("--contrastive", action="store_true", help="add the masked video-text InfoNCE loss (Sec. 3.4)")
    add("--tau", type=float, default=0.07, help="InfoNCE temperature tau, Eq. (4)")
    add("--nce-weight", type=float, default=1.0, help="lambda in L_MSE + lambda L_NCE (Sec. 3.5)")
    add("--mse-weight", type=float, default=1.0, help="weight of L_MSE; 0: pure contrastive (Table 2's 'V->T' rows); "
                                                      "0 with captions, no --contrastive: Fig. 4's control")
    # optimisation
    add("--epochs", type=int, default=200, help="paper: 200 (Tables 1-6)")
    add("--batch-size", type=int, default=32, help="clips per process per step (repeated copies included)")
    add("--blr", type=float, default=1.5e-4, help="base lr; lr = blr * global_batch / 256")
    add("--min-blr", type=float, default=1e-5, help="cosine floor, also scaled by global_batch / 256")
    add("--warmup-epochs", type=float, default=40, help="linear warmup from 0 (VideoMAE)")
    add("--weight-decay", type=float, default=0.05, help="AdamW weight decay (none on biases, norms, mask_token)")
    add("--clip-grad", type=float, help="max gradient norm; VideoMAE pretraining: none")
    # system
    add("--output-dir", default="runs/pretrain", help="ckpt.pt, log.jsonl and masks.png go here")
    add("--resume", help="a checkpoint path, or 'auto': output-dir/ckpt.pt if it exists")
    add("--save-every", type=int, default=20, help="epochs between checkpoints (and one at the end)")
    add("--max-steps", type=int, help="stop with a checkpoint after this many steps; the schedule still spans --epochs")
    add("--log-interval", type=int, default=20, help="steps between log lines")
    add("--precision", choices=["bf16", "fp16", "fp32"], default="bf16", help="autocast dtype; bf16 falls back to fp32")
    add("--compile", action="store_true", help="torch.compile the model")
    add("--seed", type=int, default=0)
    add("--device", help="cuda | cpu; none: cuda when available")
    return p


def parse_args(argv=None):
    """The flags; combinations that cannot work stop here, before any work, with one sentence."""
    parser = get_parser()
    args = parser.parse_args(argv)
    data.check_flags("pretrain.py", args)  # what was typed, before the demo is built: a mistake costs seconds
    if args.data is None or args.clip_pretrained == "demo":
        import demo  # the built-in demo: its data, CLIP and sizes become the defaults; typed flags win
        args = demo.fill(parser, argv, "pretrain")
    if args.ratio is None:
        args.ratio = masking.PAPER_RATIO[args.mask]

    def fail(msg):
        raise data.UsageError(f"pretrain.py: {msg}")
    cfg = M.make_config(args.model, img_size=args.input_size, num_frames=args.num_frames)
    if args.num_frames % cfg.tubelet_size:
        fail(f"--num-frames {args.num_frames} must be a multiple of the tubelet size {cfg.tubelet_size}")
    if args.input_size % cfg.patch_size:
        fail(f"--input-size {args.input_size} must be a multiple of the patch size {cfg.patch_size}")
    if (args.mask == "tgm" or args.contrastive) and not args.captions:
        what = "--mask tgm" if args.mask == "tgm" else "--contrastive"
        fail(f"{what} needs a caption per video: pass --captions FILE (make one with caption.py)")
    if args.tgm_maps and (args.mask != "tgm" or args.tgm_features):
        fail("--tgm-maps gives --mask tgm its masks from maps made offline: drop --tgm-features, or --tgm-maps")
    if args.mse_weight == 0 and not (args.contrastive or args.captions):
        fail("--mse-weight 0 leaves no loss: add --contrastive for pure contrastive pretraining (or --captions for "
             "Fig. 4's control: the probe alone, on an encoder that never trains)")
    if args.batch_size % args.repeat_aug:
        fail(f"--batch-size {args.batch_size} must be a multiple of --repeat-aug {args.repeat_aug}")
    if args.mask == "tgm" and not (args.tgm_maps or args.tgm_features):
        fail("--mask tgm on your data reads CLIP similarity maps made once, offline (CLIP in the step costs 2.7x to "
             "80x a tube step): make them with maps.py --data LIST --root ROOT --captions FILE --out-dir DIR, then "
             "pass --tgm-maps DIR; or pass --tgm-features patch|dense to run CLIP in the step")
    if args.precision == "fp16" and (args.device == "cpu" or not torch.cuda.is_available()):
        fail("--precision fp16 needs a GPU; use bf16 or fp32 on a CPU")
    path = os.path.join(args.output_dir, "ckpt.pt") if args.resume == "auto" else args.resume
    try:
        saved = M.load_checkpoint(path, mmap=True).get("args", {}) if path and os.path.isfile(path) else {}
    except M.CheckpointError as e:
        fail(e)
    for k in ("model", "num_frames", "input_size", "no_norm_pix_loss", "mask", "ratio", "contrastive", "batch_size"):
        if k in saved and saved[k] != getattr(args, k):  # a resumed run goes on as it began, or says why it cannot
            fail(f"--{k.replace('_', '-')} is {getattr(args, k)}, but {path} was made with {saved[k]}: resume with the "
                 "checkpoint's value, or start a new run in another --output-dir")
    if args.warmup_epochs >= args.epochs:
        M.print0(f"note: --warmup-epochs {args.warmup_epochs} >= --epochs {args.epochs}: the lr never reaches its peak")
    return args


def pick_captions(captions, indices, seed, step):
    """Sec. 3.2: one of the video's captions at random, per sample; it serves the mask and the loss alike. Seeded by
    (seed, step, video index): a resumed run draws the same. None: no caption (only where just the probe needs text)."""
    return [caps[random.Random(hash((seed, step, i))).randrange(len(caps))] if caps else None
            for caps, i in zip(captions, indices.tolist())]


def text_targets(embed_text, captions, caption_ids, dim, device):
    """The text side of Eq. (4): captions (B,), str or None -> (t (B, E) L2-normalised CLIP embeddings, ids (B,) in the
    run's caption list); no caption: a zero row and id -1, which info_nce leaves out (each rank still runs it)."""
    t = torch.zeros(len(captions), dim, device=device)
    have = [i for i, c in enumerate(captions) if c is not None]
    if have:
        t[have] = embed_text([captions[i] for i in have])
    return t, torch.tensor([caption_ids.get(c, -1) for c in captions], device=device)


def pretraining_loss(mae, video, mask, t=None, text_ids=None, tau=0.07, mse_weight=1.0, nce_weight=1.0, probe=False,
                     grad_sync="mean"):
    """Sec. 3.5: L = mse_weight * L_MSE + lambda * L_NCE -> (L, L_MSE, L_NCE or None in a run without text).
    mae: the VideoMAE as trained (bare, or wrapped by DDP / torch.compile); video (B, C, T, H, W); mask (B, N) bool,
    True = masked; t (B, E) and text_ids (B,): the captions' CLIP embeddings and ids (text_targets); lambda: nce_weight.
    probe: the head is Fig. 4's online probe: it learns from a stop-gradient copy of the latent, so L_NCE is measured
    as the encoder learns (Sec. 5) but none of its gradient reaches the encoder (docs/design.md "Fig. 4").
    grad_sync: how the loop's ranks combine gradients, 'mean' (DDP's average, the default) or 'sum' (see info_nce)."""
    loss_mse, _, latent = mae(video, mask)                     # Sec. 3.1, Eq. (3): E = phi(V_vis), V' = xi(E, ...)
    if t is None:
        return mse_weight * loss_mse, loss_mse, None
    head = getattr(mae, "module", mae)                         # the VideoMAE inside DDP: its video-text head
    v = head.video_embedding(latent.detach() if probe else latent)  # (B, E) L2-normalised
    loss_nce = M.info_nce(v, t, tau, text_ids, grad_sync)     # Sec. 3.4, Eq. (4)
    if probe:  # the probe's loss stays out of L, stepped apart (backward_and_clip): a diverging probe never stops a run
        return mse_weight * loss_mse, loss_mse, loss_nce
    return mse_weight * loss_mse + nce_weight * loss_nce, loss_mse, loss_nce


def main(args):
    rank, world, device = M.setup_distributed(args.device)
    # the same seed on every rank: the model (and a random CLIP) start identical everywhere; the data draws are seeded
    # per (seed, epoch, video) in data.py, the tgm tie-breaks per (seed, step, rank)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    cfg = M.make_config(args.model, img_size=args.input_size, num_frames=args.num_frames,
                        norm_pix_loss=not args.no_norm_pix_loss)
    with stop_together(world):      # a list or captions file that cannot be read: one sentence, every rank stops
        dataset, sampler, steps_per_epoch = make_data(args, cfg.grid, rank, world)

    embed_text = caption_ids = tgm = None                     # a run without text: no CLIP at all
    if args.mask == "tgm" or args.contrastive or args.captions:  # the tgm mask, L_NCE, or the Fig. 4 probe
        embed_text, caption_ids, tgm = frozen_text(args, dataset, cfg, device, world)
        cfg.head_out_dim = embed_text(["a video"]).shape[1]   # CLIP's joint width: video and text meet in one space

    raw_model = M.VideoMAE(cfg).to(device)
    # what trains the video-text head: L_NCE, the Fig. 4 probe, or nothing (frozen: DDP waits for no gradient)
    head = "contrastive" if args.contrastive else ("probe" if embed_text is not None else None)
    # Fig. 4's control (--mse-weight 0, no --contrastive): the probe on the initial MAE, frozen: weight decay spares it
    raw_model.requires_grad_(not (args.mse_weight == 0 and head == "probe"))
    raw_model.projector.requires_grad_(head is not None)
    mae = torch.compile(raw_model) if args.compile else raw_model
    if world > 1:
        mae = DDP(mae, device_ids=[device.index] if device.type == "cuda" else None)
    global_batch, videos_per_step = args.batch_size * world, args.batch_size // args.repeat_aug
    lr, min_lr = args.blr * global_batch / 256, args.min_blr * global_batch / 256
    # fused: one kernel for all parameters (2-3x faster than the per-tensor loop on a CPU, and on GPUs)
    optimizer = torch.optim.AdamW(M.param_groups(raw_model, args.weight_decay), lr=lr, betas=(0.9, 0.95), fused=True)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    ckpt_path, log_path = os.path.join(args.output_dir, "ckpt.pt"), os.path.join(args.output_dir, "log.jsonl")
    step = resume(args, raw_model, optimizer, scaler, rank, steps_per_epoch)
    total_steps, warmup_steps = steps_per_epoch * args.epochs, args.warmup_epochs * steps_per_epoch
    caught = []  # SIGTERM (a preempted job) or Ctrl-C: the step finishes, the run saves and exits; --resume continues
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: caught.append(signum))
    counts = dict(bad_videos=0, mask_fallbacks=0, probe_skips=0)  # in every log line and in the final summary
    last_nce = None

    # -------------------------------------------------------------------------
    # the loop: Sec. 3.5, L = L_MSE + lambda L_NCE with the mask of Sec. 3.1 / 3.3
    mae.train()
    for epoch in range(step // steps_per_epoch, args.epochs):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        order = list(sampler)[(step - epoch * steps_per_epoch) * videos_per_step:]  # a resumed run goes on mid-epoch
        loader = DataLoader(dataset, batch_size=videos_per_step, sampler=order, num_workers=args.num_workers,
                            collate_fn=data.collate, drop_last=True, pin_memory=device.type == "cuda")
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=rank != 0, leave=False, dynamic_ncols=True)
        t_data, stopped = time.perf_counter(), False
        for batch in bar:
            data_ms, t_step = (time.perf_counter() - t_data) * 1e3, time.perf_counter()
            M.set_lr(optimizer, M.lr_at(step, total_steps, warmup_steps, lr, min_lr))
            counts["bad_videos"] += len(batch["bad"])
            video = batch["video"].to(device, non_blocking=True)                      # (B, C, T, H, W)
            text = text_ids = captions = None
            if embed_text is not None:  # Sec. 3.2; --tgm-maps: the loader drew the caption, with the map of its mask
                captions = batch.get("caption") or pick_captions(batch["captions"], batch["index"], args.seed, step)
                text, text_ids = text_targets(embed_text, captions, caption_ids, cfg.head_out_dim, device)  # (B, E)
            if tgm is not None:                                                        # Sec. 3.3: top-k per frame
                gen = torch.Generator().manual_seed(hash((args.seed, step, rank)) % 2**63)
                with M.autocast(device, args.precision):
                    mask = tgm(video, text, generator=gen)                             # (B, N), True = masked
            else:
                mask = batch["mask"].to(device, non_blocking=True)                    # made in the loader workers
                counts["mask_fallbacks"] += sum(batch["mask_fallback"])
            if step == 0 and rank == 0:
                masking.save_mask_picture(batch["video"], mask.cpu(), cfg, os.path.join(args.output_dir, "masks.png"),
                                          titles=[c or "" for c in captions] if captions else ())

            with M.autocast(device, args.precision):
                loss, loss_mse, loss_nce = pretraining_loss(mae, video, mask, text, text_ids, args.tau, args.mse_weight,
                                                            args.nce_weight, probe=not args.contrastive)
            if not torch.isfinite(loss):
                raise SystemExit(f"pretrain.py: the loss is {loss.item()} at step {step} (epoch {epoch + 1}); stopping."
                                 f" The last good checkpoint is {ckpt_path}"
                                 + ("" if os.path.isfile(ckpt_path) else " (none saved yet)"))
            optimizer.zero_grad(set_to_none=True)
            counts["probe_skips"] += backward_and_clip(loss, loss_nce if head == "probe" else None, raw_model,
                                                       optimizer, scaler, args.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            step += 1

            if step % args.log_interval == 0 or step == total_steps:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                step_ms = (time.perf_counter() - t_step) * 1e3
                last_nce = None if loss_nce is None else loss_nce.item()
                M.log(log_path, dict(step=step, epoch=epoch + 1, loss_mse=loss_mse.item(), loss_nce=last_nce,
                                     nce_optimised=args.contrastive, lr=optimizer.param_groups[0]["lr"],
                                     data_ms=round(data_ms, 1), step_ms=round(step_ms, 1),
                                     clips_per_s=round(global_batch / ((data_ms + step_ms) / 1e3), 2), **counts),
                      tqdm.write)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            # every rank stops at the same step, or the collectives would hang
            stop = torch.tensor(float(bool(caught) or step == args.max_steps), device=device)
            if world > 1:
                dist.all_reduce(stop, op=dist.ReduceOp.MAX)
            if stop.item():
                stopped = True
                break
            t_data = time.perf_counter()
        bar.close()
        if stopped or (epoch + 1) % args.save_every == 0 or epoch + 1 == args.epochs:
            save(ckpt_path, args, cfg, raw_model, optimizer, scaler, step, steps_per_epoch, head, world, rank)
        if stopped:
            M.print0(f"stopped at step {step}; continue with --resume {ckpt_path}")
            break

    M.print0(f"done: {step} steps, last loss_nce {'none (no captions)' if last_nce is None else f'{last_nce:.4f}'}, "
             f"{counts['bad_videos']} bad videos skipped, {counts['mask_fallbacks']} mgm masks fell back to tube, "
             f"{counts['probe_skips']} probe steps dropped; checkpoint {ckpt_path}")
    if world > 1:
        dist.destroy_process_group()
    return step


# -----------------------------------------------------------------------------
# The set-up of main, in the order it runs

def make_data(args, grid, rank, world):
    """The clips, with the masks made in the loader workers (all but in-step tgm) -> (dataset, sampler, steps/epoch)."""
    mask_fn = {"random": masking.RandomMasker, "tube": masking.TubeMasker, "mgm": masking.MotionMasker}.get(args.mask)
    mask_fn = mask_fn(grid, args.ratio) if mask_fn else None
    if args.tgm_maps:  # TGM from maps made offline: in the loader, as MGM
        mask_fn = maps.TextMapMasker(grid, args.ratio, args.tgm_order)
    try:
        dataset = data.VideoDataset(
            args.data, args.root, captions=args.captions, mode="pretrain", num_frames=args.num_frames,
            sampling_rate=args.sampling_rate, input_size=args.input_size, repeat_aug=args.repeat_aug,
            flip=not args.no_flip, motion=args.mask == "mgm", seed=args.seed,
            # decode no larger than the smallest crop needs (a no-op for 224 crops of 320p Kinetics)
            short_side=data.multiscale_short_side(args.input_size),
            require_captions=args.mask == "tgm" or args.contrastive,
            mask_fn=mask_fn, text_maps=maps.TextMaps(args.tgm_maps) if args.tgm_maps else None)
    except ValueError as e:  # a malformed list or captions line: file, line and reason
        raise SystemExit(f"pretrain.py: {e}")
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True)
    steps_per_epoch = len(sampler) // (args.batch_size // args.repeat_aug)
    if steps_per_epoch == 0:
        raise SystemExit(f"pretrain.py: {len(dataset)} videos over {world} ranks give no full batch of "
                         f"{args.batch_size // args.repeat_aug} videos: lower --batch-size")
    return dataset, sampler, steps_per_epoch


def frozen_text(args, dataset, cfg, device, world):
    """The frozen CLIP of the text-guided mask (Sec. 3.3) and of L_NCE's text side (Sec. 3.4) -> (embed_text, {caption:
    id}, the in-step TextGuidedMasker or None). Every distinct caption is embedded once, up front, in fixed chunks: a
    text target never depends on its CLIP batch (bit for bit: --resume is exact). K400: about 1.5 GB on the CPU."""
    with stop_together(world):  # a rank that cannot load CLIP or use the maps stops every rank, with its sentence
        clip, tokenizer = frozen_clip.load_clip_or_exit("pretrain.py", args.clip_model, args.clip_pretrained, device)
        if args.tgm_maps:  # masks from the loader: the maps must come from this run's CLIP and captions, all made
            problem = maps.check_maps(args.tgm_maps, maps.maps_identity(
                args.clip_model, args.clip_pretrained, dataset.captions, dataset.rel), dataset.rel)
            if problem:
                raise SystemExit(f"pretrain.py: {problem}")
    embed_text = frozen_clip.TextEmbedder(clip, tokenizer)
    distinct = sorted({c for rel in dataset.rel for c in dataset.captions.get(rel, [])})
    for i in tqdm(range(0, len(distinct), 256), desc="embedding captions", disable=int(os.environ.get("RANK", 0)) != 0,
                  leave=False):
        with M.autocast(device, args.precision):              # CLIP in --precision too (bf16: ~3x faster on a CPU)
            embed_text(distinct[i:i + 256])
    tgm = None
    if args.mask == "tgm" and not args.tgm_maps:              # Sec. 3.3 in the step; with maps, in the loader
        tgm = masking.TextGuidedMasker(clip, args.tgm_features, args.ratio, args.tgm_order, cfg.patch_size,
                                       cfg.tubelet_size)
    M.print0(f"CLIP {args.clip_model} ({args.clip_pretrained}): text-guided masks " + (
        f"from the maps in {args.tgm_maps}" if args.tgm_maps else f"from its {args.tgm_features} features"
        if tgm else "off") + (", L_NCE" if args.contrastive else ", the Fig. 4 probe"))
    return embed_text, {c: i for i, c in enumerate(distinct)}, tgm


def resume(args, raw_model, optimizer, scaler, rank, steps_per_epoch):
    """--resume (model.resume_path): model, optimizer, scaler and this rank's RNG states -> the step to go on from."""
    os.makedirs(args.output_dir, exist_ok=True)
    path = M.resume_path(args.resume, args.output_dir, next(raw_model.parameters()).device)
    if not path:
        return 0
    ckpt = M.load_checkpoint(path)
    raw_model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt["rng"][rank] if rank < len(ckpt["rng"]) else ckpt["rng"][0]  # more ranks than saved: rank 0's
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    M.print0(f"resumed from {path} at step {ckpt['step']} (epoch {ckpt['step'] // steps_per_epoch})")
    return ckpt["step"]


def save(ckpt_path, args, cfg, raw_model, optimizer, scaler, step, steps_per_epoch, head, world, rank):
    """One atomic checkpoint, with every rank's RNG states as tensors and numbers (weights_only-safe): exact resume."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    states = [{"torch": torch.get_rng_state(), "python": random.getstate(),
               "numpy": (torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}] * world
    if world > 1:
        dist.all_gather_object(states, states[0])
    if rank == 0:
        M.save_checkpoint(ckpt_path, {
            "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "step": step, "epoch": step // steps_per_epoch, "model_cfg": M.model_config_dict(cfg),
            "head": head,                                      # contrastive | probe | None: what trained the head
            "args": vars(args), "rng": states})


@contextlib.contextmanager
def stop_together(world):
    """Start-up work that may fail on some rank (CLIP weights, a list or captions file, the maps): when one fails, all
    stop at the block's end, not at the job's timeout. The lowest failed rank raises its error, the others exit 1."""
    error = None
    try:
        yield
    except BaseException as e:
        error = e
    failed = [error is not None] * world
    if world > 1:
        dist.all_gather_object(failed, error is not None)      # one all_gather: which ranks failed
    if error is not None and failed.index(True) == (dist.get_rank() if world > 1 else 0):
        raise error
    if any(failed):
        raise SystemExit(1)


def backward_and_clip(loss, probe_loss, raw_model, optimizer, scaler, clip_grad):
    """One backward pass (DDP reduces every gradient in it) of L and, given, the Fig. 4 probe's loss; then --clip-grad.
    -> 1 when the probe's step was dropped, else 0. The probe never changes what the encoder learns: a non-finite
    probe gradient is dropped before GradScaler looks for infs (which would skip the whole step), and --clip-grad
    clips the head and the MAE each by its own norm (one total norm would let the probe set the encoder's factor)."""
    scaler.scale(loss if probe_loss is None else loss + probe_loss).backward()  # the probe's graph starts at a detach
    head = list(raw_model.projector.parameters()) if probe_loss is not None else []
    dropped = 0
    if head:
        grads = [p.grad for p in head if p.grad is not None]
        finite = torch.isfinite(probe_loss) & torch.stack([torch.isfinite(g).all() for g in grads]).all()
        if not finite:  # the same on every rank: the loss is the global batch's, the gradients DDP's average
            for p in head:
                p.grad = None
            dropped = 1
    if clip_grad:
        scaler.unscale_(optimizer)
        ids = {id(p) for p in head}
        torch.nn.utils.clip_grad_norm_([p for p in raw_model.parameters() if id(p) not in ids], clip_grad)
        torch.nn.utils.clip_grad_norm_(head, clip_grad)      # no gradients (dropped, or no probe): nothing to do
    return dropped


if __name__ == "__main__":
    main(parse_args())
