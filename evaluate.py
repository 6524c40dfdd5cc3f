"""
Sec. 4.2, 4.5 and 4.7: the multi-view test (Tables 1, 2, 4), zero-shot retrieval (Table 3) and Fig. 3's pictures;
--export writes a checkpoint as a transformers VideoMAE folder (weights.py). More commands: docs/transfer.md.

    python evaluate.py --checkpoint runs/demo_ft/ckpt.pt                # the demo's 5x3 test, one CPU process
    torchrun --nproc_per_node=8 evaluate.py --checkpoint runs/k400_ft/ckpt.pt --data k400/val.csv --root /data/k400
"""
import argparse
import json
import os
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

import data
import frozen_clip
import masking
import model as M
import weights

# -----------------------------------------------------------------------------
# Flags. A default of none is the checkpoint's (its stored args), else the paper's.

def get_parser():
    p = argparse.ArgumentParser(description="Multi-view test, zero-shot retrieval and pictures (Sec. 4.2, 4.5, 4.7)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = p.add_argument
    # data
    add("--data", help="list file to evaluate, 'path label' per line (--retrieval: the gallery, the training split); "
                       "none: the demo's val split (--retrieval: its train split)")
    add("--val-data", help="--retrieval: the query list, the test split (Table 3: UCF101/HMDB51 split 1); none with "
                           "the demo: its val split")
    add("--root", default="", help="folder prefixed to every path of the list")
    add("--captions", help="captions JSONL; --retrieval against captions, --visualize --mask tgm queries")
    add("--class-names", help="class names, line i = label i; --retrieval against them (the default when given)")
    add("--num-frames", type=int, help="T; none: the checkpoint's (paper: 16)")
    add("--sampling-rate", type=int, help="frame stride of a test window; none: the finetuning run's (paper: 4)")
    add("--input-size", type=int, help="crop side, also the short side the 3 crops are cut from; none: the "
                                       "checkpoint's (paper: 224)")
    add("--tsn", action=argparse.BooleanOptionalAction, help="SSv2's 2 interleaved TSN samplings x 3 crops instead "
                                                             "of 5 x 3; none: as finetuned")
    add("--test-num-segment", type=int, default=5, help="temporal windows per video (with --tsn always 2)")
    add("--test-num-crop", type=int, default=3, help="spatial crops per window along the long side")
    add("--batch-size", type=int, default=4, help="videos per process per step, each with all its views")
    add("--num-workers", type=int, default=min(8, os.cpu_count() or 1), help="data loader processes per process")
    # model
    add("--checkpoint", help="finetune.py checkpoint (test); pretrain.py checkpoint (--retrieval, --visualize)")
    add("--model", default="vit_base", choices=list(M.MODEL_SIZES), help="size of published VideoMAE weights "
                                                                          "(which store no config)")
    add("--precision", default="bf16", choices=["bf16", "fp32"], help="autocast dtype; bf16: fp32 on GPUs without it")
    # retrieval (Table 3)
    add("--retrieval", action="store_true", help="zero-shot video->video retrieval R@1/5/10/20 (Table 3)")
    add("--text", choices=["classes", "captions"], help="--retrieval video->text instead, through the contrastive "
                                                        "head: against the class names or the captions")
    add("--clip-model", help="CLIP for the text side; none: the pretraining run's (paper: ViT-B-32-quickgelu)")
    add("--clip-pretrained", help="openai | a local weights file | demo (the demo CLIP) | none (random: numbers mean "
                                  "nothing); none: the pretraining run's")
    # pictures (Fig. 3)
    add("--visualize", action="store_true", help="write Fig. 3-style pictures instead of the test")
    add("--num-videos", type=int, default=4, help="videos to draw, spread over the list")
    add("--mask", choices=["tube", "random", "mgm", "tgm"], help="mask to draw; none: the pretraining run's")
    add("--ratio", type=float, help="mask ratio gamma of the picture; none: the pretraining run's, else the paper's")
    add("--tgm-features", choices=["patch", "dense"], help="CLIP features for --mask tgm; none: the pretraining run's")
    # output
    add("--output-dir", help="where results.json / retrieval_*.json / vis_*.png go; none: the checkpoint's folder")
    add("--seed", type=int, default=0)
    add("--export", metavar="DIR", help="instead of evaluating, write the checkpoint as a new transformers VideoMAE "
                                        "folder DIR (docs/transfer.md); no data is read")
    return p


def parse_args(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.checkpoint is None:
        raise data.UsageError("evaluate.py needs --checkpoint: a finetune.py checkpoint for the multi-view test, or "
                              "a pretrain.py checkpoint (or VideoMAE weights) with --retrieval or --visualize")
    data.check_flags("evaluate.py", args)  # what was typed, before the demo is built
    if (args.data is None or args.clip_pretrained == "demo") and not args.export:
        import demo  # the demo's lists (retrieval: val queries, train gallery) and CLIP; typed flags win
        args = demo.fill(parser, argv, "evaluate")
    return args


# -----------------------------------------------------------------------------
# Rebuilding models from checkpoints

def load_classifier(ckpt):
    """A finetune.py checkpoint -> (module, mode) in eval mode: a VideoClassifier, or {encoder, probe} (linear)."""
    if "num_classes" not in ckpt:
        raise SystemExit("this is a pretraining checkpoint (no classifier): finetune it first with finetune.py, "
                         "or use it with --retrieval / --visualize")
    cfg, K, mode = M.config_from_checkpoint(ckpt), ckpt["num_classes"], ckpt.get("mode", "finetune")
    model = M.VideoClassifier(cfg, K, drop_path=0.0) if mode == "finetune" else M.ProbeClassifier(cfg, K)
    model.load_state_dict(ckpt["model"])
    return model.eval(), mode


def load_pretrained(path, args):
    """A pretrain.py checkpoint or published VideoMAE weights (sized by --model) -> (VideoMAE in eval mode, the
    pretraining run's args, what trained its contrastive head: "contrastive", "probe" or None)."""
    ckpt = M.load_checkpoint(path) if os.path.isfile(path) else None
    if ckpt is not None and "num_classes" in ckpt:
        raise SystemExit(f"{path} is a finetune.py checkpoint; --retrieval and --visualize need the pretraining "
                         "checkpoint (its encoder, decoder and contrastive head)")
    if ckpt is not None and "model_cfg" in ckpt:
        model = M.VideoMAE(M.config_from_checkpoint(ckpt))
        model.load_state_dict(ckpt["model"])
        pre_args = ckpt.get("args", {})
        return model.eval(), pre_args, ckpt.get("head", "contrastive" if pre_args.get("contrastive") else None)
    model = M.VideoMAE(M.make_config(args.model, num_frames=args.num_frames or 16, img_size=args.input_size or 224))
    try:
        missing, _ = weights.load_videomae_weights(model, path)
    except (M.CheckpointError, RuntimeError) as e:             # no such file, or shapes of another size
        raise SystemExit(f"evaluate.py: {path} does not load as VideoMAE weights of --model {args.model}: {e}")
    if [k for k in missing if not k.startswith("projector.")]:
        raise SystemExit(f"evaluate.py: {path} does not load as VideoMAE pretraining weights of --model {args.model} "
                         f"(missing {missing[:3]}...): pass the size they were trained at")
    return model.eval(), {}, None                              # published weights: no contrastive head


def load_clip(args, pre_args, device):
    """--clip-model / --clip-pretrained, else the pretraining run's CLIP -> (clip, tokenizer, name, weights)."""
    name = args.clip_model or pre_args.get("clip_model", "ViT-B-32-quickgelu")
    pretrained = args.clip_pretrained or pre_args.get("clip_pretrained") or "openai"
    torch.manual_seed(args.seed)                               # a random CLIP ('none') is then the same every run
    return (*frozen_clip.load_clip_or_exit("evaluate.py", name, pretrained, device), name, pretrained)


# -----------------------------------------------------------------------------
# Distributed helpers: every rank evaluates a share; rows come together by video index

def merge_views(index, view, probs):
    """Sec. 4.2 multi-view: rows (video index (n,), view id (n,), softmax probs (n, K)) from any ranks, in any order
    -> (videos (m,), mean probs over each video's views (m, K), views per video (m,)). A (video, view) pair seen twice
    counts once (DistributedSampler's padding), as VideoMAE's merge() skips it."""
    index, view, probs = np.asarray(index), np.asarray(view), np.asarray(probs, dtype=np.float64)
    _, first = np.unique(np.stack([index, view], 1), axis=0, return_index=True)
    index, probs = index[first], probs[first]
    videos, inv, counts = np.unique(index, return_inverse=True, return_counts=True)
    sums = np.zeros((len(videos), probs.shape[1]))
    np.add.at(sums, inv, probs)                                # sum each video's views
    return videos, sums / counts[:, None], counts


def topk_accuracy(scores, labels, ks=(1, 5)):
    """scores (m, K), labels (m,) -> {k: % of rows whose label is among the k highest scores}."""
    order = np.argsort(-scores, axis=1, kind="stable")
    hit = order == np.asarray(labels)[:, None]                 # (m, K): where the label sits in the ranking
    return {k: 100.0 * hit[:, :k].any(1).mean() for k in ks}


# -----------------------------------------------------------------------------
# Table 3: zero-shot retrieval, video -> video (the paper's, as we read it) and video -> text (an extra)

def text_gallery(labels, video_captions=None, class_names=None):
    """The texts to retrieve from and which are right for each video -> (texts (S,), positives (V, S) bool): the
    class names (a video's positive: its class's), or every distinct caption (a video's positives: its own)."""
    if class_names is not None:
        positives = np.zeros((len(labels), len(class_names)), dtype=bool)
        positives[np.arange(len(labels)), labels] = True
        return list(class_names), positives
    texts = list(dict.fromkeys(c for caps in video_captions for c in caps))
    where = {t: i for i, t in enumerate(texts)}
    positives = np.zeros((len(video_captions), len(texts)), dtype=bool)
    for v, caps in enumerate(video_captions):
        positives[v, [where[c] for c in caps]] = True
    return texts, positives


def recall_at_k(sim, positives, ks=(1, 5)):
    """sim (V, S) video-text similarities, positives (V, S) bool -> {k: % of videos with a positive in the top k}."""
    sim, positives = np.asarray(sim, dtype=np.float64), np.asarray(positives, dtype=bool)
    keep = positives.any(1)                                    # videos without a right text are left out
    sim, positives = sim[keep], positives[keep]
    best = np.where(positives, sim, -np.inf).max(1)            # (V,) score of the best right text
    rank = (np.where(positives, -np.inf, sim) > best[:, None]).sum(1)  # wrong texts above it (a tie is not)
    return {k: 100.0 * (rank < k).mean() for k in ks}


def video_recall(query, query_labels, gallery, gallery_labels, ks=(1, 5, 10, 20)):
    """Video -> video retrieval: query (Q, F) and gallery (G, F) L2-normalised features with their labels ->
    {k: % of queries with a clip of their own class among their k nearest gallery clips (cosine)}, for k < G only."""
    query, gallery = torch.as_tensor(query).float(), torch.as_tensor(gallery).float()
    query_labels, gallery_labels = torch.as_tensor(query_labels), torch.as_tensor(gallery_labels)
    ks = [k for k in ks if k < len(gallery)]  # at k >= G every query whose class G holds hits, whatever the features
    if not ks:
        return {}
    k_max = max(ks)
    hits = []
    for i in range(0, len(query), 1024):                       # chunks: K400's Q x G similarities would not fit
        nearest = (query[i:i + 1024] @ gallery.T).topk(k_max, dim=1).indices  # (q, k_max), most similar first
        hits.append(gallery_labels[nearest] == query_labels[i:i + 1024, None])  # (q, k_max): same class?
    hit = torch.cat(hits)
    return {k: 100.0 * hit[:, :k].any(dim=1).float().mean().item() for k in ks}


# -----------------------------------------------------------------------------
# Fig. 3: input, mask, reconstruction, attention

def unpatchify(x, t, p, grid):
    """The inverse of model.patchify. x: (B, N, t*p*p*C), tubelet t, patch p, grid (T', h, w) -> (B, C, T, H, W)."""
    B = x.shape[0]
    tp, h, w = grid
    x = x.reshape(B, tp, h, w, t, p, p, -1)                    # (B, T', h, w, t, p, p, C)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)                     # (B, C, T', t, h, p, w, p)
    return x.reshape(B, -1, tp * t, h * p, w * p)


def reconstruct(model, video, mask):
    """Pixels in [0, 1] (B, C, T, H, W): visible patches as they are, hidden ones from the decoder. mask (B, N) bool,
    True = masked. A norm-pixel prediction is shown with the hidden patch's TRUE mean and std per channel, as
    VideoMAE's run_videomae_vis.py does: the picture borrows those two numbers from the hidden pixels."""
    cfg = model.cfg
    t, p, C = cfg.tubelet_size, cfg.patch_size, video.shape[1]
    _, pred, _ = model(video, mask)                            # (B, N_mask, P), hidden tokens in raster order
    x = M.pixel_target(video, t, p, norm_pix_loss=False).unflatten(-1, (-1, C))  # (B, N, t*p*p, C) in [0, 1]
    pred = pred.float().flatten(0, 1).unflatten(-1, (-1, C))   # (B * N_mask, t*p*p, C), the rows of x[mask]
    if cfg.norm_pix_loss:                                      # undo the target's per-token normalisation
        hidden = x[mask]                                       # (B * N_mask, t*p*p, C): the hidden tokens' pixels
        std = hidden.var(dim=-2, unbiased=True, keepdim=True).sqrt()
        pred = pred * (std + 1e-6) + hidden.mean(dim=-2, keepdim=True)
    out = x.clone()
    out[mask] = pred                                           # hidden tokens replaced, visible ones kept
    return unpatchify(out.flatten(-2), t, p, cfg.grid).clamp(0, 1)


def centre_attention(model, video):
    """Last block's attention of the centre token (T'/2, h/2, w/2), mean over heads -> (B, T', h, w); no mask."""
    T_, h, w = model.cfg.grid
    i = (T_ // 2) * h * w + (h // 2) * w + w // 2              # raster index (t, h, w)
    x = model.encoder.tokens(video)                            # (B, N, D): all tokens, with positions
    for blk in model.encoder.blocks[:-1]:
        x = blk(x)
    last = model.encoder.blocks[-1]
    q, k, _ = last.attn.qkv_heads(last.norm1(x))               # each (B, nh, N, hs)
    attn = M.attention_weights(q[:, :, i:i + 1], k)            # (B, nh, 1, N): the centre token's softmax row
    return attn[:, :, 0].mean(dim=1).view(-1, T_, h, w)        # (B, T', h, w)


def picture(rows, labels, title, cell=112):
    """rows: list of (T', H, W, 3) float [0, 1] arrays, one per figure row -> a PIL image with a label column."""
    font = ImageFont.load_default(size=12)
    ncol, label_w, top = rows[0].shape[0], 230, 24
    img = Image.new("RGB", (label_w + ncol * (cell + 4), top + len(rows) * (cell + 4)), "white")
    draw = ImageDraw.Draw(img)
    draw.text((6, 6), title, fill="black", font=font)
    for r, (row, label) in enumerate(zip(rows, labels)):
        y = top + r * (cell + 4)
        draw.multiline_text((6, y + 8), label, fill="black", font=font, spacing=3)
        for c in range(ncol):
            tile = Image.fromarray((np.asarray(row[c]) * 255).round().astype(np.uint8))
            tile = tile.resize((cell, cell * tile.height // tile.width), Image.NEAREST)
            img.paste(tile, (label_w + c * (cell + 4), y))
    return img


def visualize(model, sample, mask, caption, mask_name, ratio):
    """One video's Fig. 3 picture. sample: a data.VideoDataset item; mask (1, N) bool, True = masked."""
    cfg = model.cfg
    video = sample["video"][None]                              # (1, C, T, H, W)
    t, p = cfg.tubelet_size, cfg.patch_size
    T_, h, w = cfg.grid
    frames = M.denormalize(video).clamp(0, 1)[0, :, ::t].permute(1, 2, 3, 0)  # (T', H, W, 3): each tubelet's 1st
    # the mask: hidden patches light grey with a trace of the pixels, as masking.draw_mask shades them
    m = mask.view(T_, h, w).float().repeat_interleave(p, 1).repeat_interleave(p, 2)[..., None]  # (T', H, W, 1)
    masked = frames * (1 - 0.8 * m) + 0.8 * m * (170 / 255)
    recon = reconstruct(model, video, mask)[0, :, ::t].permute(1, 2, 3, 0)  # (T', H, W, 3)
    attn = centre_attention(model, video)[0]                   # (T', h, w)
    attn = (attn - attn.min()) / (attn.max() - attn.min()).clamp_min(1e-12)  # min to max of the whole clip
    attn = attn.repeat_interleave(p, 1).repeat_interleave(p, 2)  # (T', H, W)
    heat = torch.stack([(3 * attn - c).clamp(0, 1) for c in range(3)], dim=-1)  # 'hot': black, red, yellow, white
    overlay = 0.35 * frames + 0.65 * heat                      # (T', H, W, 3)
    # outline the query patch on the centre slice
    y0, x0 = (h // 2) * p, (w // 2) * p
    box = torch.zeros(overlay.shape[1:3], dtype=torch.bool)
    box[y0:y0 + p, x0:x0 + p] = True
    box[y0 + 1:y0 + p - 1, x0 + 1:x0 + p - 1] = False
    overlay[T_ // 2][box] = torch.tensor([0.0, 0.8, 1.0])
    norm_note = ("predicted norm-pixels, shown\nwith the hidden patches' TRUE\nmean and std (borrowed)"
                 if cfg.norm_pix_loss else "predicted pixels")
    labels = ["input (1st frame\nof each tubelet)", f"mask: {mask_name}, {ratio:.0%} hidden\n(grey = hidden)",
              f"reconstruction: visible as is;\nhidden = {norm_note}",
              "attention, last block,\nquery = centre patch (cyan)\nof the centre frame"]
    return picture([frames, masked, recon, overlay], labels, caption[:110])


# -----------------------------------------------------------------------------
# The three protocols, one function each, and the set-up they share

def open_list(list_file, args, cfg, run_args, mode="val", **ds_kw):
    """A data.VideoDataset of the model's clips (cfg); run_args: the stored args of the checkpoint's run."""
    try:
        return data.VideoDataset(list_file, args.root, mode=mode, num_frames=cfg.num_frames, input_size=cfg.img_size,
                                 sampling_rate=args.sampling_rate or run_args.get("sampling_rate", 4), **ds_kw)
    except (ValueError, OSError) as e:
        raise SystemExit(f"evaluate.py: {e}")


def class_names_of(path):
    try:
        return data.read_class_names(path)
    except OSError as e:
        raise SystemExit(f"evaluate.py: --class-names {path}: {e.strerror}")


def run_views(fn, ds, batch_size, args, device, amp, rank, world, desc):
    """fn: video (B, C, T, H, W) -> (B, F) over every view of ds, the ranks sharing the videos -> ((video index (n,),
    view id (n,), fn's rows (n, F) float32), bad videos 'path: reason'), all ranks' rows on every rank."""
    sampler = torch.utils.data.DistributedSampler(ds, world, rank, shuffle=False) if world > 1 else None
    loader = torch.utils.data.DataLoader(ds, batch_size, sampler=sampler, num_workers=args.num_workers,
                                         collate_fn=data.collate)
    rows, bad = [], []
    with torch.no_grad():
        for batch in tqdm(loader, desc=desc, disable=rank != 0):
            with amp:
                out = fn(batch["video"].to(device))            # (B * views, F)
            views = batch.get("view", [(0, 0)] * len(out))     # (window, crop) of each row; 'val': one view
            view = np.array([w * ds.test_num_crop + c for w, c in views])  # window-major view id
            rows.append((batch["index"].numpy(), view, out.float().cpu().numpy()))
            bad += [f"{p}: {r}" for p, r in batch["bad"]]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, (rows, bad))
        rows = [r for p in parts for r in p[0]]
        bad = [b for p in parts for b in p[1]]
    return tuple(np.concatenate(col) for col in zip(*rows)), sorted(set(bad))


def labels_of(ds, index):
    return np.array([ds.items[i][1] for i in index])


def run_retrieval(args, model, pre_args, device, amp, rank, world, report):
    """Table 3: zero-shot video -> video retrieval with the frozen encoder. One view per video (the centre clip of
    the centre crop, as the val split is read), for the queries (--val-data) and the gallery (--data) alike."""
    if not (args.data and args.val_data):
        raise SystemExit("evaluate.py: --retrieval needs --data (the gallery: the training list) and --val-data (the "
                         "queries: the test list)")
    gallery = open_list(args.data, args, model.cfg, pre_args)
    queries = open_list(args.val_data, args, model.cfg, pre_args)
    # Table 3's features (our reading): the frozen encoder over all tokens, its final LayerNorm, mean-pooled, L2
    embed = lambda video: F.normalize(model.encoder(video).float().mean(dim=1), dim=-1)  # (B, D)
    g_rows, g_bad = run_views(embed, gallery, 4 * args.batch_size, args, device, amp, rank, world, "embed gallery")
    q_rows, q_bad = run_views(embed, queries, 4 * args.batch_size, args, device, amp, rank, world, "embed queries")
    if rank != 0:
        return
    g_index, g_feat, _ = merge_views(*g_rows)                 # one view per video, each once
    q_index, q_feat, _ = merge_views(*q_rows)
    r = video_recall(q_feat, labels_of(queries, q_index), g_feat, labels_of(gallery, g_index))
    res = dict(checkpoint=args.checkpoint, gallery=args.data, queries=args.val_data, num_gallery=len(g_index),
               num_queries=len(q_index), views="1 per video: centre clip, centre crop", features=
               "encoder, all tokens, final LayerNorm, mean-pooled, L2-normalised; cosine",
               **{f"R{k}": v for k, v in r.items()}, bad_videos=g_bad + q_bad)
    out = [f"R@{k}" for k in (1, 5, 10, 20) if k not in r]   # video_recall leaves out the k >= the gallery's size
    if out:
        res["left_out"] = (f"{', '.join(out)} left out: the gallery holds {len(g_index)} clips, and at k >= the "
                           "gallery's size every query whose class it holds is a hit, whatever the features")
    report("retrieval_video.json", res, ["zero-shot video->video", "queries", "gallery", *(f"R@{k}" for k in r)],
           [f"{os.path.basename(args.val_data)} -> {os.path.basename(args.data)}", len(q_index), len(g_index),
            *(f"{v:.1f}" for v in r.values())], res.get("left_out", ""))


def run_text_retrieval(args, model, pre_args, head, device, amp, rank, world, report):
    """Video -> text retrieval through the contrastive head (Sec. 3.4), an extra beside Table 3: --val-data's videos
    (one centre view each) rank CLIP's embeddings of the class names (right: its class's) or captions (its own)."""
    if head is None:
        raise SystemExit(f"evaluate.py: {args.checkpoint} has no trained contrastive head (published VideoMAE weights, "
                         "or a run without captions): --text needs one; leave --text out for video->video retrieval")
    flag, given = ("--class-names", args.class_names) if args.text == "classes" else ("--captions", args.captions)
    if not given:
        raise SystemExit(f"evaluate.py: --text {args.text} needs {flag} FILE")
    videos = args.val_data or args.data
    ds = open_list(videos, args, model.cfg, pre_args, captions=args.captions)
    class_names = class_names_of(args.class_names) if args.text == "classes" else None
    if class_names is not None and max(lbl for _, lbl in ds.items) >= len(class_names):
        raise SystemExit(f"{videos} has labels beyond the {len(class_names)} names of {args.class_names}: wrong file?")
    embed = lambda video: model.video_embedding(model.encoder(video))  # (B, E): all tokens, no mask, the head
    rows, bad = run_views(embed, ds, 4 * args.batch_size, args, device, amp, rank, world, "embed videos")
    if rank != 0:
        return
    index, emb, _ = merge_views(*rows)                         # one view per video
    texts, positives = text_gallery(labels_of(ds, index), [ds.captions.get(ds.rel[i], []) for i in index], class_names)
    clip, tok, clip_model, clip_pretrained = load_clip(args, pre_args, device)
    if clip_pretrained == "none":
        print("warning: a random CLIP gives random text embeddings: recall means something only against the "
              "same random CLIP the pretraining used (seeded identically)")
    # the texts in the precision the pretraining embedded its captions in, so the head meets the same targets
    with M.autocast(device, pre_args.get("precision", "fp32")):
        text_emb = frozen_clip.TextEmbedder(clip, tok)(texts).float().cpu()  # (S, E) L2-normalised
    if text_emb.shape[1] != emb.shape[1]:
        raise SystemExit(f"{clip_model} embeds text in {text_emb.shape[1]} dims but the contrastive head gives "
                         f"{emb.shape[1]}; pass the --clip-model the pretraining used")
    r = recall_at_k(emb @ text_emb.numpy().T, positives)
    res = dict(checkpoint=args.checkpoint, data=videos, text=args.text, head=head, num_texts=len(texts),
               num_videos=int(positives.any(1).sum()), num_listed=len(ds), clip_model=clip_model,
               clip_pretrained=clip_pretrained, R1=r[1], R5=r[5], bad_videos=bad)
    report(f"retrieval_{args.text}.json", res,
           [f"zero-shot video->text ({args.text})", "videos", "texts", "R@1", "R@5"],
           [os.path.basename(videos), res["num_videos"], len(texts), f"{r[1]:.1f}", f"{r[5]:.1f}"])


def run_pictures(args, model, pre_args, device, out_dir):
    """Fig. 3: one picture per video (input, mask, reconstruction, attention), on rank 0's CPU."""
    cfg = model.cfg
    mask_name = args.mask or pre_args.get("mask", "tube")
    ratio = (args.ratio or (pre_args.get("ratio") if mask_name == pre_args.get("mask") else None)
             or masking.PAPER_RATIO[mask_name])
    ds = open_list(args.data, args, cfg, pre_args, captions=args.captions, motion=mask_name == "mgm")
    class_names = class_names_of(args.class_names) if args.class_names else None
    if mask_name == "tgm":
        clip, tok, _, _ = load_clip(args, pre_args, device)
        features = args.tgm_features or pre_args.get("tgm_features") or "patch"
        tgm = masking.TextGuidedMasker(clip, features, ratio, pre_args.get("tgm_order", "top"), cfg.patch_size,
                                       cfg.tubelet_size)
        embed = frozen_clip.TextEmbedder(clip, tok)
    gen = torch.Generator().manual_seed(args.seed)
    model.cpu().float()                                        # a few videos: pictures are drawn on the CPU
    for j, i in enumerate(np.linspace(0, len(ds) - 1, min(args.num_videos, len(ds))).round().astype(int)):
        sample = ds[int(i)][0]
        label = sample["label"]
        caption = (sample["captions"] or [class_names[label] if class_names else f"label {label}"])[0]
        if mask_name == "tgm":
            mask = tgm(sample["video"][None].to(device), embed([caption]), gen).cpu()
        else:  # the loader's own maskers, as masking.py draws them
            maskers = {"random": masking.RandomMasker, "tube": masking.TubeMasker, "mgm": masking.MotionMasker}
            mask = maskers[mask_name](cfg.grid, ratio)(sample, gen)[0][None]
        with torch.no_grad():
            img = visualize(model, sample, mask, f"{os.path.basename(ds.items[i][0])}: {caption}", mask_name, ratio)
        path = os.path.join(out_dir, f"vis_{j:02d}_{mask_name}.png")
        print(f"{'overwrote' if os.path.exists(path) else 'wrote'} {path}")
        img.save(path)


def run_test(args, device, amp, rank, world, report):
    """Sec. 4.2 multi-view test of a finetune.py checkpoint: every view of every video, softmax per view, the mean."""
    ckpt = M.load_checkpoint(args.checkpoint)
    model, mode = load_classifier(ckpt)
    model.to(device)
    cfg, ft_args = M.config_from_checkpoint(ckpt), ckpt.get("args", {})
    M.check_shape_flags(cfg, args.num_frames, args.input_size)
    tsn = ft_args.get("tsn", False) if args.tsn is None else args.tsn
    ds = open_list(args.data, args, cfg, ft_args, mode="test", tsn=tsn, test_num_segment=args.test_num_segment,
                   test_num_crop=args.test_num_crop)
    n_seg, n_crop = ds.test_num_segment, ds.test_num_crop
    if max(lbl for _, lbl in ds.items) >= ckpt["num_classes"]:
        raise SystemExit(f"{args.data} has labels beyond the checkpoint's {ckpt['num_classes']} classes: wrong list?")
    M.print0(f"multi-view test: {len(ds)} videos x {n_seg} {'TSN samplings' if tsn else 'windows'} x {n_crop} crops, "
             f"{mode} checkpoint {args.checkpoint}, {world} process(es)")
    t0 = time.time()
    softmax = lambda video: F.softmax(model(video).float(), dim=-1)  # (B * views, K): softmax per view
    (index, view, view_probs), bad = run_views(softmax, ds, args.batch_size, args, device, amp, rank, world, "test")
    if rank != 0:
        return
    videos, probs, counts = merge_views(index, view, view_probs)
    labels = labels_of(ds, videos)
    acc = topk_accuracy(probs, labels)
    one = topk_accuracy(view_probs, labels_of(ds, index))     # each view alone, the mean over views (not the centre)
    top = np.argsort(-probs, axis=1, kind="stable")[:, :5]
    per_video = [dict(video=ds.rel[v], label=int(labels[j]), top5=top[j].tolist(),
                      top5_prob=probs[j, top[j]].round(6).tolist()) for j, v in enumerate(videos)]
    res = dict(checkpoint=args.checkpoint, mode=mode, data=args.data, num_videos=len(videos), num_listed=len(ds),
               views=f"{n_seg}x{n_crop}", tsn=tsn, top1=acc[1], top5=acc[5], mean_view_top1=one[1],
               incomplete_videos=int((counts != n_seg * n_crop).sum()), bad_videos=bad, test_s=time.time() - t0,
               per_video=per_video)
    report("results.json", res, ["checkpoint", "mode", "videos", "views", "top-1", "top-5", "mean per-view top-1"],
           [args.checkpoint, mode, f"{len(videos)}/{len(ds)}", f"{n_seg}x{n_crop}", f"{acc[1]:.2f}", f"{acc[5]:.2f}",
            f"{one[1]:.2f}"])


def main(args):
    rank, world, device = M.setup_distributed()

    if args.export:                                            # weights out to transformers: no data, no model run
        try:
            ckpt = M.load_checkpoint(args.checkpoint)
            names = args.class_names or (ckpt.get("args") or {}).get("class_names")  # id2label: the run's classes
            names = class_names_of(names) if names and "num_classes" in ckpt else None
            weights.export_videomae(ckpt, args.export, class_names=names, source=args.checkpoint)
        except (M.CheckpointError, FileExistsError) as e:
            raise SystemExit(f"evaluate.py: {e}")
        print(f"wrote {args.export}: a transformers VideoMAE folder (its README.md shows how to load it)")
        return
    if args.retrieval and args.visualize:
        raise SystemExit("--retrieval and --visualize are separate runs; pass one of them")
    out_dir = args.output_dir or os.path.dirname(os.path.abspath(args.checkpoint))
    os.makedirs(out_dir, exist_ok=True)
    amp = M.autocast(device, args.precision)
    torch.manual_seed(args.seed)

    def report(name, res, header, row, note=""):
        """res written whole to out_dir/name (temp file, then rename), and printed as a one-row markdown table."""
        path = os.path.join(out_dir, name)
        M.write_whole(path, lambda f: f.write(json.dumps(res, indent=1).encode()))
        print(f"\n| {' | '.join(header)} |\n" + "|---" * len(header) + f"|\n| {' | '.join(map(str, row))} |\n"
              f"(written to {path}; bad videos skipped: {len(res['bad_videos'])})" + (f"\n{note}" if note else ""))

    if args.visualize or args.retrieval:
        model, pre_args, head = load_pretrained(args.checkpoint, args)
        model.to(device)
    if args.visualize:
        if rank == 0:
            run_pictures(args, model, pre_args, device, out_dir)
    elif args.retrieval and args.text:
        run_text_retrieval(args, model, pre_args, head, device, amp, rank, world, report)
    elif args.retrieval:
        run_retrieval(args, model, pre_args, device, amp, rank, world, report)
    else:
        run_test(args, device, amp, rank, world, report)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(parse_args())
