"""Sec. 3.1, 3.3: which tokens the MAE hides. Random (ST-MAE), tube (VideoMAE), motion-guided (MGM, from the
codec's motion vectors) and text-guided (TGM, the paper's: CLIP similarity of each token to the caption), all by one
rule: the k highest scores of every time slice (topk_mask).

Mask convention, everywhere in this file: mask (B, N) bool, True = masked (hidden from the encoder), tokens in
(t, h, w) raster order. Tube, MGM and TGM hide exactly k = int(ratio * h * w) tokens in every time slice; random
hides int(ratio * N) over the whole volume; every row hides the same number.

Look at a mask (one CPU process; no --video: the built-in demo's first val video and its first caption):
    python masking.py --video V.mp4 --caption "a man is surfing" --mask tgm --ratio 0.6 --out mask.png
pretrain.py makes these masks in the loader workers, TGM's in the training step (TextGuidedMasker) unless maps.py
made its maps offline. Tests: python -m pytest -q tests/test_masking.py
"""
import argparse
import dataclasses
import functools
import math
import os
import sys

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

import data
import frozen_clip
from model import ModelConfig, autocast, denormalize, patchify, write_whole

# Notation: model.py's (B, C, T, H, W, tubelet t, patch p, grid (T', h, w), N = T' * h * w tokens, CLIP width E).


# ----------------------------------------------------------------------------------------------------------------
# The one selection rule: the k highest (or lowest) scores of every time slice

def _uniform(shape, generator=None):
    """U[0, 1) noise from `generator` (on its device), or from torch's global CPU generator."""
    return torch.rand(shape, generator=generator, device=generator.device if generator is not None else "cpu")


def topk_mask(scores, ratio, order="top", generator=None):
    """scores (B, T', h*w) -> mask (B, N) bool, True = masked: exactly k = int(ratio * h*w) per time slice.
    order 'top' masks the k highest scores (Sec. 3.3), 'bottom' the k lowest (Table 5b). Equal scores (a still
    background under MGM, random/tube noise never) are ordered at random, drawn from `generator`."""
    B, S, L = scores.shape
    k = int(ratio * L)  # VideoMAE's rounding: int(mask_ratio * num_patches_per_frame)
    # a random permutation first, then a *stable* sort: tied scores keep the random order, untied ones are
    # ordered by score alone (adding noise to the scores instead would reorder near-ties, not just ties)
    perm = torch.argsort(_uniform((B, S, L), generator), dim=-1).to(scores.device)
    order_in_perm = torch.argsort(scores.gather(-1, perm), dim=-1, descending=(order == "top"), stable=True)
    ids = perm.gather(-1, order_in_perm)  # (B, T', h*w) token ids, the ones to mask first
    mask = torch.zeros(B, S, L, dtype=torch.bool, device=scores.device)
    mask.scatter_(-1, ids[..., :k], True)  # True = masked: the first k of each slice
    return mask.flatten(1)  # (B, N) in (t, h, w) raster order


# ----------------------------------------------------------------------------------------------------------------
# Random (ST-MAE) and tube (VideoMAE) masks: both are the top-k of uniform noise

def random_mask(batch, grid, ratio, generator=None):
    """(B, N) bool, True = masked: int(ratio * N) random tokens of the whole volume (ST-MAE; MAE's random_masking)."""
    noise = _uniform((batch, 1, math.prod(grid)), generator)  # (B, 1, N)
    return topk_mask(noise, ratio, generator=generator)  # the whole volume as one "slice": k = int(ratio * N)


def tube_mask(batch, grid, ratio, generator=None):
    """(B, N) bool, True = masked: one random spatial mask of k = int(ratio * h*w) tokens per sample (VideoMAE)."""
    T_, h, w = grid
    noise = _uniform((batch, 1, h * w), generator)
    mask = topk_mask(noise, ratio, generator=generator)  # (B, h*w) one spatial mask per sample
    return mask.repeat(1, T_)  # (B, T'*h*w): time is the slowest axis of the raster order, so repeat = tube


class LoaderMasker:
    """A mask_fn for data.VideoDataset: (sample, generator=None) -> (mask (N,) bool, True = masked; fell_back False).
    No generator: torch's, which data.VideoDataset seeds per (seed, epoch, video), so no mask depends on the worker."""

    def __init__(self, make, grid, ratio):
        self.make, self.grid, self.ratio = make, tuple(grid), ratio

    def __call__(self, sample, generator=None):
        return self.make(1, self.grid, self.ratio, generator)[0], False


RandomMasker = functools.partial(LoaderMasker, random_mask)  # RandomMasker(grid, ratio): ST-MAE's mask as a mask_fn
TubeMasker = functools.partial(LoaderMasker, tube_mask)  # TubeMasker(grid, ratio): VideoMAE's mask as a mask_fn


# ----------------------------------------------------------------------------------------------------------------
# MGM: motion-guided masking from the codec's motion vectors (no public code; our design, docs/design.md "Masking")

def paint_motion(vectors, frame_size):
    """One frame's motion vectors (PyAV structured array, coded-frame pixels) -> (H, W) float map holding each
    vector's displacement |(motion_x, motion_y)| / motion_scale over its w x h block."""
    H, W = frame_size
    flat = torch.zeros(H * W)
    mag = torch.from_numpy(np.hypot(vectors["motion_x"], vectors["motion_y"]) / vectors["motion_scale"]).float()
    # (dst_x, dst_y) is the block's centre in this frame (FFmpeg's add_mb), so the block starts half a size before
    x0 = torch.from_numpy(vectors["dst_x"] - vectors["w"] // 2).long()
    y0 = torch.from_numpy(vectors["dst_y"] - vectors["h"] // 2).long()
    # a few block sizes (16x16, 16x8, 8x16, 8x8 in H.264): vectorise over the blocks of each size
    for bw, bh in sorted(set(zip(vectors["w"].tolist(), vectors["h"].tolist()))):
        sel = torch.from_numpy((vectors["w"] == bw) & (vectors["h"] == bh))  # (n_vectors,) this size's blocks
        ys = y0[sel, None] + torch.arange(bh)  # (n, bh) the rows of each block
        xs = x0[sel, None] + torch.arange(bw)  # (n, bw) its columns
        # blocks at the frame's edge may reach past it: their outside pixels are clamped onto the frame and
        # painted 0, a no-op under max (cheaper than dropping them with a boolean index)
        inside = ((ys >= 0) & (ys < H))[:, :, None] & ((xs >= 0) & (xs < W))[:, None, :]  # (n, bh, bw)
        idx = ys.clamp(0, H - 1)[:, :, None] * W + xs.clamp(0, W - 1)[:, None, :]  # (n, bh, bw) pixel ids
        # max, not sum: a bi-predicted block of a B-frame carries two vectors (one per reference) for one area
        flat.scatter_reduce_(0, idx.flatten(), (mag[sel, None, None] * inside).flatten(), reduce="amax")
    return flat.view(H, W)


def motion_scores(motion, frame_size, crop, grid, num_frames, size):
    """The clip's motion per token -> (T', h, w), or None when no frame of the clip carries vectors. motion: num_frames
    entries (PyAV structured array or None) as data.read_frames returns them; frame_size (H, W) of the coded frames."""
    assert len(motion) == num_frames, f"{len(motion)} motion entries for a {num_frames}-frame clip"
    has = [i for i, v in enumerate(motion) if v is not None and len(v) > 0]
    if not has:
        return None  # no vectors at all: all-intra video, or a codec that exports none; the caller falls back
    maps = {i: paint_motion(motion[i], frame_size) for i in has}
    # frames without vectors (I-frames) borrow the nearest frame that has them (the earlier one on a tie)
    x = torch.stack([maps[min(has, key=lambda j: abs(j - i))] for i in range(num_frames)])  # (T, H, W)
    return token_sums(x, crop, grid, size)


def token_sums(x, crop, grid, size):
    """A per-pixel map of the clip's source frames (T, H, W) -> (T', h, w): through the clip's own crop (a data.Crop)
    to its size (H_out, W_out), so it lands where the clip shows it, then summed over each token's pixels and frames."""
    x = data.apply_crop(x.float(), crop, size)  # (T, H_out, W_out)
    T_, h, w = grid
    t, p_h, p_w = x.shape[0] // T_, size[0] // h, size[1] // w
    return x.view(T_, t, h, p_h, w, p_w).sum(dim=(1, 3, 5))  # (T', t, h, p, w, p) -> (T', h, w)


def object_coverage(mask, object_pixels):
    """The share of an object a mask hides: mask (B, N) bool, True = masked; object_pixels (B, N), the object's pixels
    per token (token_sums of its per-pixel mask) -> (B,) in [0, 1]. A random mask of ratio gamma covers gamma."""
    w = object_pixels.float()
    return (w * mask).sum(dim=1) / w.sum(dim=1).clamp_min(1e-12)  # a clip without the object scores 0


class MotionMasker:
    """mask_fn for data.VideoDataset(motion=True), as LoaderMasker: the top-k tokens of every time slice by codec motion
    (MGM), mask (N,) bool, True = masked. No motion vectors: a tube mask and fell_back = True, which the loop counts."""

    def __init__(self, grid, ratio):
        self.grid, self.ratio = tuple(grid), ratio

    def __call__(self, sample, generator=None):
        C, T, H, W = sample["video"].shape
        scores = motion_scores(sample["motion"], sample["frame_size"], sample["crop"], self.grid, T, (H, W))
        if scores is None:
            return tube_mask(1, self.grid, self.ratio, generator)[0], True
        # still regions all score 0: topk_mask orders those ties at random
        return topk_mask(scores.flatten(1)[None], self.ratio, generator=generator)[0], False  # (N,)


# ----------------------------------------------------------------------------------------------------------------
# TGM: text-guided masking (Sec. 3.3); the frozen CLIP and the caption embeddings come from frozen_clip.py

def _autocast(device):
    """CLIP's precision: bf16 (else fp16) on a GPU; none on a CPU, where CLIP runs fastest in fp32."""
    gpu = device.type == "cuda"
    return autocast(device, ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if gpu else "fp32")


class TextGuidedMasker:
    """(video (B, C, T, H, W) ImageNet-normalised, text_emb (B, E) L2-normalised) -> mask (B, N) bool, True =
    masked: the k tokens of each time slice most (order 'top') or least ('bottom', Table 5b) similar to the caption.
    features: 'patch', the paper's (_patch_features), or 'dense', our faster variant (_dense_features)."""

    def __init__(self, clip, features="patch", ratio=0.6, order="top", patch_size=16, tubelet_size=2,
                 chunk_size=512):
        if features not in ("patch", "dense") or order not in ("top", "bottom"):
            raise ValueError(f"features must be patch|dense and order top|bottom, not {features!r}, {order!r}")
        self.clip, self.features, self.ratio, self.order = clip, features, ratio, order
        self.patch_size, self.tubelet_size, self.chunk_size = patch_size, tubelet_size, chunk_size
        pp = open_clip.get_model_preprocess_cfg(clip)  # CLIP's own input statistics (OpenAI's for ViT-B-32)
        self.clip_mean = torch.tensor(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)).view(1, 3, 1, 1)
        self.clip_std = torch.tensor(pp.get("std", open_clip.OPENAI_DATASET_STD)).view(1, 3, 1, 1)

    def __call__(self, video, text_emb, generator=None):
        return topk_mask(self.scores(video, text_emb), self.ratio, self.order, generator).to(video.device)

    def _to_clip_input(self, x, size):
        """x (n, C, h_in, w_in) ImageNet-normalised -> (n, C, *size) as CLIP's preprocessing would give it."""
        mean, std = self.clip_mean.to(x.device), self.clip_std.to(x.device)
        # both normalisations are affine per channel, so they commute with the (linear) resize: apply them to
        # the small input, and do only the clamp on the big output (one pass over it instead of three)
        x = (denormalize(x[:, :, None])[:, :, 0] - mean) / std  # [0, 1] pixels (n 1-frame clips), then CLIP's mean/std
        # bicubic to CLIP's input size (Sec. 3.3); antialias=True is PIL's bicubic kernel, which CLIP was fed
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
        # bicubic overshoots: clamp to the normalised image of [0, 1], as PIL's 8-bit resize clips pixels
        return x.clamp_(-mean / std, (1 - mean) / std)

    @torch.no_grad()
    def scores(self, video, text_emb):
        """Cosine similarity of each token to its clip's caption -> (B, T', h*w): per frame, then the tubelet's mean."""
        device = next(self.clip.parameters()).device
        B, C, T, H, W = video.shape
        p, t = self.patch_size, self.tubelet_size
        if T % t or H % p or W % p:
            raise ValueError(f"clip {T}x{H}x{W} does not divide into {t}x{p}x{p} tokens")
        h, w = H // p, W // p
        feats = self.token_features(video.to(device, non_blocking=True))  # (B*T*h*w, E)
        text_emb = text_emb.to(device).float()
        sim = (feats.view(B, T * h * w, -1) * text_emb[:, None, :]).sum(-1)  # (B, T*h*w) cosine: both unit length
        return sim.view(B, T // t, t, h * w).mean(2)  # (B, T', h*w): mean over the tubelet's frames

    def token_features(self, video):
        """video (B, C, T, H, W) ImageNet-normalised -> (B*T*h*w, E) L2-normalised, one per p x p patch, (t, h, w)."""
        if self.features == "patch":
            return self._patch_features(video)
        H, W = video.shape[-2:]
        return self._dense_features(video, (H // self.patch_size, W // self.patch_size))

    def _patch_features(self, video):
        """Sec. 3.3, the paper's: each p x p patch of each frame, resized to CLIP's input size and embedded alone
        (CLIP's image embedding, i.e. its projected CLS token) -> (B*T*h*w, E) L2-normalised, (t, h, w) order."""
        p = self.patch_size
        size = self.clip.visual.image_size  # (224, 224) for ViT-B/32
        # patchify with tubelet 1: (B, T*h*w, p*p*C) channel-fastest -> (B*T*h*w, C, p, p) one image per patch
        patches = patchify(video, 1, p).reshape(-1, p, p, 3).permute(0, 3, 1, 2)
        feats = []
        with _autocast(video.device):
            # resize inside the loop: a chunk of 224x224 images is big, all of a batch's at once would not fit
            for chunk in patches.split(self.chunk_size):
                feats.append(self.clip.encode_image(self._to_clip_input(chunk, size)).float())
        return F.normalize(torch.cat(feats), dim=-1)

    def _dense_features(self, video, grid_hw):
        """Our fast variant: each frame once, at the size whose CLIP token grid is the MAE grid h x w (448 x 448 for
        224 x 224 and ViT-B/32); CLIP's patch tokens after ln_post, projected by visual.proj as its CLS token is.
        NOTE: differs from the paper: a patch token sees its neighbours through attention, the paper's patch
        embedding sees only its own pixels; benchmarks/bench_masking.py measures how often they agree."""
        v = self.clip.visual
        h, w = grid_hw
        P_h, P_w = v.patch_size
        B, C, T, H, W = video.shape
        frames = video.transpose(1, 2).reshape(B * T, C, H, W)  # (B*T, C, H, W)
        # CLIP's positional embedding is learnt for its own grid (7 x 7): resized to h x w as open_clip's
        # resize_pos_embed does (tests check the same tokens), so one frozen CLIP serves every grid.
        pos_cls, pos = v.positional_embedding[:1], v.positional_embedding[1:]  # (1, D), (g*g, D)
        g = math.isqrt(pos.shape[0])
        pos = F.interpolate(pos.T.reshape(1, -1, g, g), size=(h, w), mode="bicubic", antialias=True,
                            align_corners=False).reshape(-1, h * w).T  # (h*w, D)
        pos = torch.cat([pos_cls, pos])  # (1 + h*w, D)
        feats = []
        with _autocast(video.device):
            for chunk in frames.split(self.chunk_size):
                x = v.conv1(self._to_clip_input(chunk, (h * P_h, w * P_w)))  # (n, D, h, w)
                x = x.flatten(2).transpose(1, 2)  # (n, h*w, D)
                cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (n, 1, D)
                x = torch.cat([cls, x], dim=1) + pos.to(x.dtype)  # (n, 1 + h*w, D); eval: no patch dropout
                x = v.transformer(v.ln_pre(x))  # (n, 1 + h*w, D)
                x = v.ln_post(x[:, 1:]) @ v.proj  # (n, h*w, E): patch tokens, projected like CLIP's CLS token
                feats.append(x.float().flatten(0, 1))  # (n*h*w, E), frame-major then (h, w) raster
        return F.normalize(torch.cat(feats), dim=-1)


# ----------------------------------------------------------------------------------------------------------------
# A picture of a mask, and the command line

def draw_mask(frames, mask, grid, title=""):
    """frames uint8 (T, H, W, 3), mask (N,) bool (True = masked), grid (T', h, w) -> PIL image, masked tokens grey."""
    T, H, W, _ = frames.shape
    T_, h, w = grid
    m = torch.as_tensor(mask).view(T_, 1, h, 1, w, 1).expand(T_, T // T_, h, H // h, w, W // w)
    m = m.reshape(T, H, W, 1).numpy()  # (T, H, W, 1): each token's mask over its tubelet frames and pixels
    # masked tokens become light grey with a trace of the pixels (MAE's figures grey them out entirely)
    shaded = np.where(m, 0.2 * frames + 0.8 * np.array([170, 170, 170]), frames).astype(np.uint8)
    cols = min(T, 8)
    rows = -(-T // cols)
    pad, top = 2, 18
    width = max(cols * (W + pad) + pad, int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title)) + 2 * pad)
    img = Image.new("RGB", (width, rows * (H + pad) + pad + top), "white")
    for i in range(T):
        img.paste(Image.fromarray(shaded[i]), (pad + (i % cols) * (W + pad), top + pad + (i // cols) * (H + pad)))
    ImageDraw.Draw(img).text((pad, 3), title, fill="black")
    return img


def save_mask_picture(video, mask, cfg, path, titles=(), max_clips=4):
    """video (B, C, T, H, W) ImageNet-normalised, mask (B, N) bool (True = masked), cfg a model.ModelConfig -> a PNG
    at `path`: the first max_clips clips, one draw_mask block each, under its title (e.g. its caption)."""
    B, C, T, H, W = video.shape
    grid = (T // cfg.tubelet_size, H // cfg.patch_size, W // cfg.patch_size)
    blocks = []
    for x, m in zip(video[:max_clips].cpu(), mask[:max_clips].cpu()):
        pixels = (denormalize(x) * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0)  # (T, H, W, C)
        blocks.append(draw_mask(pixels.numpy(), m, grid, titles[len(blocks)] if len(blocks) < len(titles) else ""))
    img = Image.new("RGB", (max(b.width for b in blocks), sum(b.height for b in blocks)), "white")
    for i, b in enumerate(blocks):
        img.paste(b, (0, sum(b.height for b in blocks[:i])))
    write_whole(path, lambda f: img.save(f, format="PNG"))  # never a half-written picture


PAPER_RATIO = {"random": 0.9, "tube": 0.9, "mgm": 0.75, "tgm": 0.6}  # ST-MAE, VideoMAE, MGM, Table 5a


def get_parser():
    parser = argparse.ArgumentParser(description="Sec. 3.3: draw a clip's mask (masked tokens shaded) into a PNG",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # data
    parser.add_argument("--video", help="video file; none: the demo dataset's first val video")
    parser.add_argument("--caption", help="the text --mask tgm follows; demo: the video's first caption")
    parser.add_argument("--num-frames", type=int, default=16, help="T frames per clip")
    parser.add_argument("--sampling-rate", type=int, default=4, help="frame stride; paper: 4 (K400), 2 (SSv2)")
    parser.add_argument("--input-size", type=int, default=224, help="H = W in pixels")
    parser.add_argument("--flip", action="store_true", help="flip the clip horizontally (the masks must follow)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random, tube and tie-breaking draws")
    # mask
    parser.add_argument("--mask", default="tgm", choices=["random", "tube", "mgm", "tgm"], help="masking strategy")
    parser.add_argument("--ratio", type=float, help="mask ratio gamma; none: the paper's for --mask, 0.9 random/tube, "
                        "0.75 mgm, 0.6 tgm (Table 5a)")
    parser.add_argument("--tubelet-size", type=int, default=2, help="t frames per token; paper: 2")
    parser.add_argument("--patch-size", type=int, default=16, help="p pixels per token side; paper: 16")
    parser.add_argument("--tgm-features", choices=["patch", "dense"],
                        help="patch: each p x p patch through CLIP (the paper, Sec. 3.3); dense: CLIP's patch tokens "
                             "(~50x faster on a CPU); none: patch (the demo: dense for a full-size CLIP)")
    parser.add_argument("--tgm-order", default="top", choices=["top", "bottom"],
                        help="mask the top-k or bottom-k tokens by text similarity; paper: top (Table 5b)")
    # CLIP
    parser.add_argument("--clip-model", default="ViT-B-32-quickgelu", help="open_clip model; paper: ViT-B/32")
    parser.add_argument("--clip-pretrained", default="openai",
                        help="CLIP weights: openai (download or cache) | a weights file | demo (a small CLIP "
                             "trained on the demo's data, its stand-in offline) | none (random)")
    parser.add_argument("--chunk-size", type=int, default=512, help="CLIP images per forward (tgm)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where CLIP runs")
    # output
    parser.add_argument("--out", default="mask.png", help="PNG to write")
    return parser


def parse_args(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    data.check_flags("masking.py", args)  # what was typed, before the demo is built
    if args.video is None or args.clip_pretrained == "demo":
        import demo  # no --video: the demo's first val video, its caption and sizes (and --clip-pretrained demo)
        args = demo.fill(parser, argv, "masking")
    if args.mask == "tgm" and not args.caption:
        raise data.UsageError('masking.py: --mask tgm needs --caption "..." (the text the mask follows)')
    return args


def main(args):
    ratio = PAPER_RATIO[args.mask] if args.ratio is None else args.ratio
    T, S = args.num_frames, args.input_size
    t, p = args.tubelet_size, args.patch_size
    if T % t or S % p:
        sys.exit(f"error: --num-frames {T} and --input-size {S} must be multiples of {t} and {p}")
    cfg = ModelConfig(img_size=S, num_frames=T, tubelet_size=t, patch_size=p)  # cfg.grid: (T', h, w)

    # the clip as the validation loader cuts it: the centre window, the centre square, optionally flipped
    try:
        frames, motion, _, info = data.read_clip(args.video, lambda info: data.test_indices(
            info.num_frames, T, args.sampling_rate, 0, num_views=1), motion=args.mask == "mgm")
    except data.VideoError as e:
        sys.exit(f"error: {args.video}: {e}")
    crop = dataclasses.replace(data.uniform_crop(info.height, info.width, S, 0, num_crops=1), flip=args.flip)
    pixels = data.apply_crop(torch.from_numpy(frames).permute(0, 3, 1, 2), crop, S, torch.float32)  # (T, C, S, S)
    video = data.normalize(pixels.permute(0, 2, 3, 1))  # (C, T, S, S) ImageNet-normalised
    g = torch.Generator().manual_seed(args.seed)

    if args.mask == "tgm":
        clip, tokenizer = frozen_clip.load_clip_or_exit("masking.py", args.clip_model, args.clip_pretrained,
                                                        args.device)
        features = args.tgm_features or "patch"
        text = frozen_clip.TextEmbedder(clip, tokenizer)([args.caption])
        masker = TextGuidedMasker(clip, features, ratio, args.tgm_order, p, t, args.chunk_size)
        mask = masker(video[None], text, g)[0]
    else:  # the loader's own maskers, given the sample the loader would give them
        masker = {"random": RandomMasker, "tube": TubeMasker, "mgm": MotionMasker}[args.mask](cfg.grid, ratio)
        sample = {"video": video, "motion": motion, "frame_size": (info.height, info.width), "crop": crop}
        mask, fell_back = masker(sample, g)
        if fell_back:
            print(f"{args.video} carries no motion vectors: fell back to a tube mask")

    name = f"tgm {features} {args.tgm_order}" if args.mask == "tgm" else args.mask
    title = f"{name}, ratio {ratio}: {int(mask.sum())} of {mask.numel()} tokens masked"
    title += f" ({int(ratio * cfg.grid[1] * cfg.grid[2])} per time slice)" if args.mask != "random" else ""
    title += f' | "{args.caption}"' if args.mask == "tgm" else ""
    print(f"{title}\n{'overwrote' if os.path.exists(args.out) else 'wrote'} {args.out}")
    save_mask_picture(video[None], mask[None], cfg, args.out, [title])


if __name__ == "__main__":
    main(parse_args())
