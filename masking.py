"""Sec. 3.1, 3.3: which tokens the MAE hides. Random (ST-MAE), tube (VideoMAE), motion-guided (MGM, from the
codec's motion vectors) and text-guided (TGM, the paper's: CLIP similarity of each token to the caption).

Mask convention, everywhere in this file: mask (B, N) bool, True = masked (hidden from the encoder), tokens in
(t, h, w) raster order, N = T' * h * w. Tube, MGM and TGM hide exactly k = int(ratio * h * w) tokens in every
time slice; random hides int(ratio * N) over the whole volume; every row hides the same number.

Look at a mask (one CPU process; no --video: the built-in demo's first val video; CLIP weights: openai | a local
file | demo | none):
    python masking.py --video V.mp4 --caption "a man is surfing" --mask tgm --ratio 0.6 --out mask.png
    python masking.py --mask mgm --ratio 0.75 --out mgm.png
    python masking.py --mask tgm --tgm-features dense --clip-pretrained none --out tgm.png
pretrain.py makes random/tube/mgm masks in the loader workers (data.VideoDataset(mask_fn=...)), and tgm ones there too
from maps made once, offline (or, with --tgm-features patch|dense, with CLIP in the training step):
    python masking.py --make-maps maps/k400 --data k400/train.txt --root k400/ --captions k400_captions.jsonl
    python pretrain.py ... --mask tgm --tgm-maps maps/k400
"""
import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import socket
import sys

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
from model import ModelConfig, denormalize, patchify, print0, write_whole

# Notation: B clips, C channels, T frames of H x W pixels, tubelet t, patch p, grid (T', h, w) = (T/t, H/p, W/p),
# N = T' * h * w tokens, k tokens masked per time slice, E the CLIP embedding width.


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
    """(B, N) bool, True = masked: int(ratio * N) tokens at random over the whole volume (ST-MAE), as MAE's
    random_masking: sort uniform noise, hide the first ones."""
    N = math.prod(grid)
    noise = _uniform((batch, 1, N), generator)
    return topk_mask(noise, ratio, generator=generator)  # the whole volume as one "slice": k = int(ratio * N)


def tube_mask(batch, grid, ratio, generator=None):
    """(B, N) bool, True = masked: one random spatial mask of k = int(ratio * h*w) tokens per sample, the same
    in every time slice (VideoMAE's tube masking: a masked patch stays hidden for the whole clip)."""
    T_, h, w = grid
    noise = _uniform((batch, 1, h * w), generator)
    mask = topk_mask(noise, ratio, generator=generator)  # (B, h*w) one spatial mask per sample
    return mask.repeat(1, T_)  # (B, T'*h*w): time is the slowest axis of the raster order, so repeat = tube


class LoaderMasker:
    """A mask_fn for data.VideoDataset, called in the loader workers: (sample, generator=None) -> (mask (N,) bool,
    True = masked; fell_back to a tube mask), for a token grid (T', h, w) and a ratio. Without a generator it draws
    from torch's, which data.VideoDataset seeds per (seed, epoch, video): a mask does not depend on the worker."""

    def __init__(self, grid, ratio):
        self.grid, self.ratio = tuple(grid), ratio


class RandomMasker(LoaderMasker):
    """LoaderMasker of a random mask (ST-MAE)."""

    def __call__(self, sample, generator=None):
        return random_mask(1, self.grid, self.ratio, generator)[0], False


class TubeMasker(LoaderMasker):
    """LoaderMasker of a tube mask (VideoMAE)."""

    def __call__(self, sample, generator=None):
        return tube_mask(1, self.grid, self.ratio, generator)[0], False


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
    """The clip's motion per token -> (T', h, w), or None when no frame of the clip carries vectors.
    motion: num_frames entries (PyAV structured array or None) as data.read_frames returns them; frame_size (H, W)
    of the coded frames; crop: the clip's data.Crop; size (H_out, W_out): the clip's pixel size."""
    assert len(motion) == num_frames, f"{len(motion)} motion entries for a {num_frames}-frame clip"
    has = [i for i, v in enumerate(motion) if v is not None and len(v) > 0]
    if not has:
        return None  # no vectors at all: all-intra video, or a codec that exports none; the caller falls back
    maps = {i: paint_motion(motion[i], frame_size) for i in has}
    # frames without vectors (I-frames) borrow the nearest frame that has them (the earlier one on a tie)
    x = torch.stack([maps[min(has, key=lambda j: abs(j - i))] for i in range(num_frames)])  # (T, H, W)
    return token_sums(x, crop, grid, size)


def token_sums(x, crop, grid, size):
    """A per-pixel map of the clip's source frames (T, H, W) -> (T', h, w): carried through the clip's own
    crop/resize/flip (so it lands where the clip shows it), then summed over each token's pixels and its
    tubelet's frames. crop: the clip's data.Crop; size (H_out, W_out): the clip's pixel size."""
    x = data.apply_crop(x.float(), crop, size)  # (T, H_out, W_out)
    T_, h, w = grid
    t, p_h, p_w = x.shape[0] // T_, size[0] // h, size[1] // w
    # (T', t, h, p, w, p) -> (T', h, w)
    return x.view(T_, t, h, p_h, w, p_w).sum(dim=(1, 3, 5))


def object_coverage(mask, object_pixels):
    """The share of an object a mask hides: mask (B, N) bool, True = masked; object_pixels (B, N), the object's pixels
    per token (token_sums of its per-pixel mask) -> (B,) in [0, 1]. A random mask of ratio gamma covers gamma."""
    w = object_pixels.float()
    return (w * mask).sum(dim=1) / w.sum(dim=1).clamp_min(1e-12)  # a clip without the object scores 0


class MotionMasker(LoaderMasker):
    """mask_fn for data.VideoDataset(motion=True): (sample, generator=None) -> (mask (N,) bool, True = masked;
    fell_back): the top-k tokens of every time slice by codec motion (MGM). A video without motion vectors gets a
    tube mask and fell_back = True, which the dataset keeps with the sample so the training loop can count it."""

    def __call__(self, sample, generator=None):
        C, T, H, W = sample["video"].shape
        scores = motion_scores(sample["motion"], sample["frame_size"], sample["crop"], self.grid, T, (H, W))
        if scores is None:
            return tube_mask(1, self.grid, self.ratio, generator)[0], True
        # still regions all score 0: topk_mask orders those ties at random (generator note: LoaderMasker)
        return topk_mask(scores.flatten(1)[None], self.ratio, generator=generator)[0], False  # (N,)


# ----------------------------------------------------------------------------------------------------------------
# CLIP (open_clip ViT-B-32-quickgelu) and the caption embeddings

class ClipWeightsError(RuntimeError):
    """CLIP weights that cannot be had: the message says what to pass instead."""


def _cached_or_reachable(name, tag, cache_dir):
    """Where open_clip would find `tag`'s weights: a cached file path, or the tag itself when the Hugging Face
    hub can be reached. Offline and not cached: ClipWeightsError at once (open_clip's own download retries
    for about a minute before it gives up)."""
    import huggingface_hub
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    cfg = open_clip.get_pretrained_cfg(name, tag)
    repo, filename = os.path.split(cfg.get("hf_hub", ""))
    for fname in ([filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]):
        path = huggingface_hub.try_to_load_from_cache(repo, fname, cache_dir=cache_dir) if repo else None
        if isinstance(path, str):
            return path
    offline = huggingface_hub.constants.HF_HUB_OFFLINE
    proxied = any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
    if not offline and not proxied:  # behind a proxy a direct connection proves nothing: let the hub try
        try:
            socket.create_connection(("huggingface.co", 443), timeout=3).close()
        except OSError:
            offline = True
    if offline:
        raise ClipWeightsError(
            f"CLIP weights '{tag}' for {name} are not cached and huggingface.co cannot be reached; pass a local "
            f"weights file (--clip-pretrained /path/to/open_clip_model.safetensors) or --clip-pretrained none "
            f"(random weights, only to test the code)")
    return tag


def register_config(name):
    """A model name, or the path of an open_clip config (.json) -> the name open_clip knows it by (the file's stem)."""
    if name.endswith(".json") and os.path.isfile(name):
        open_clip.add_model_config(name)  # registers the config under the file's stem
        return os.path.splitext(os.path.basename(name))[0]
    return name


@contextlib.contextmanager
def random_weights_meant():
    """open_clip warns (root logger, on every rank) when it builds a CLIP without weights: held back where that is
    what was asked for, and said once by our own sentence."""
    level = logging.root.manager.disable
    logging.disable(max(level, logging.WARNING))
    try:
        yield
    finally:
        logging.disable(level)


def clip_weights(name, pretrained, cache_dir=None):
    """Where CLIP `name`'s weights come from -> None (random: 'none'), a file, or an open_clip tag that is cached or
    can be downloaded; ClipWeightsError (a sentence saying what to pass instead) when they cannot be had."""
    name = register_config(name)
    if pretrained == "none":
        return None
    if os.path.isfile(pretrained):
        return pretrained
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not cfg:
        raise ClipWeightsError(
            f"--clip-pretrained {pretrained!r} is neither a file nor a weights tag of {name} "
            f"({', '.join(open_clip.list_pretrained_tags_by_model(name))}); pass one of those, a file, or none")
    if cfg.get("quick_gelu") and not open_clip.get_model_config(name).get("quick_gelu"):
        raise ClipWeightsError(f"the {pretrained!r} weights need QuickGELU: use --clip-model {name}-quickgelu "
                               f"(open_clip's {name} builds GELU and only warns)")
    return _cached_or_reachable(name, pretrained, cache_dir)


def load_clip(name="ViT-B-32-quickgelu", pretrained="openai", device="cpu", cache_dir=None):
    """-> (clip, tokenizer): a frozen open_clip model in eval mode and its tokenizer. pretrained: an open_clip tag
    ('openai': download or cache), a local weights file, or 'none' (random weights). name may also be the path of
    an open_clip model config (.json), for a CLIP open_clip does not list."""
    source = clip_weights(name, pretrained, cache_dir)
    name = register_config(name)
    if source is None:
        print0(f"CLIP {name} has random weights (--clip-pretrained none): text-guided masks carry no meaning")
    with random_weights_meant() if source is None else contextlib.nullcontext():
        clip = open_clip.create_model(name, pretrained=source, device=device, cache_dir=cache_dir)
    clip.eval().requires_grad_(False)  # frozen: the masks and the text targets never train CLIP (Sec. 3.3, 3.4)
    return clip, open_clip.get_tokenizer(name)


def load_clip_or_exit(prog, name, pretrained, device):
    """load_clip for a script: one sentence, "prog: ...", when the weights cannot be had (every rank loads its own)."""
    try:
        return load_clip(name, pretrained, device)
    except ClipWeightsError as e:
        raise SystemExit(f"{prog}: {e}")


def encode_text(clip, tokens):
    """CLIP's encode_text, run on the first L positions only, L = 1 + the last [EOS] of the batch: the causal text
    tower's [EOS] output never attends to the padding after it, so the embedding is the same for ~5x less work (a
    15-token caption). Other text towers fall back to open_clip's own encode_text."""
    if not (isinstance(clip, open_clip.CLIP) and clip.text_pool_type == "argmax" and clip.attn_mask is not None):
        return clip.encode_text(tokens)
    L = int(tokens.argmax(dim=-1).max()) + 1           # [EOS] has the highest id, as text_global_pool assumes
    tokens = tokens[:, :L]
    cast = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens).to(cast) + clip.positional_embedding[:L].to(cast)  # (n, L, width)
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:L, :L]))
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # (n, width): the [EOS] tokens
    return clip.text_projection(x) if isinstance(clip.text_projection, torch.nn.Linear) else x @ clip.text_projection


class TextEmbedder:
    """captions list[str] -> (n, E) L2-normalised CLIP text embeddings (encode_text: the [EOS] token's
    activation, projected; Sec. 3.3). Each distinct caption is embedded once: a caption serves as the TGM
    query and the contrastive target every epoch. The cache lives on the CPU (E floats per caption)."""

    def __init__(self, clip, tokenizer):
        self.clip, self.tokenizer, self.cache = clip, tokenizer, {}

    @torch.no_grad()
    def __call__(self, captions):
        device = next(self.clip.parameters()).device
        new = [c for c in dict.fromkeys(captions) if c not in self.cache]  # distinct and not yet embedded
        if new:
            emb = encode_text(self.clip, self.tokenizer(new).to(device)).float()  # (n_new, E)
            self.cache.update(zip(new, F.normalize(emb, dim=-1).cpu()))
        return torch.stack([self.cache[c] for c in captions]).to(device)  # (n, E)


# ----------------------------------------------------------------------------------------------------------------
# TGM: text-guided masking (Sec. 3.3)

def _autocast(device):
    """bf16 (else fp16) autocast on a GPU; CPUs run CLIP fastest in fp32."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


class TextGuidedMasker:
    """(video (B, C, T, H, W) ImageNet-normalised, text_emb (B, E) L2-normalised) -> mask (B, N) bool, True =
    masked: the k tokens of each time slice most (order 'top') or least ('bottom', Table 5b) similar to the
    caption. features 'patch' is the paper's: every p x p patch of every frame resized to CLIP's input and
    embedded alone; 'dense' (our addition) embeds each frame once and reads CLIP's patch tokens."""

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
        """Cosine similarity of every token to its clip's caption -> (B, T', h*w): per frame, then the mean over
        the token's tubelet frames (docs/design.md "Masking")."""
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
        """video (B, C, T, H, W) ImageNet-normalised, H and W multiples of p -> (B*T*h*w, E) L2-normalised, one
        CLIP feature per p x p patch of every frame, (t, h, w) order, by this masker's features."""
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
        """Our fast variant: each frame once, at the size whose CLIP token grid is the MAE grid h x w (448 x 448
        for 224 x 224 and ViT-B/32), and CLIP's patch tokens after ln_post projected into the text space by
        visual.proj (the map the CLS token takes) -> (B*T*h*w, E) L2-normalised, (t, h, w) order.
        NOTE: differs from the paper: a patch token sees its neighbours through attention, the paper's patch
        embedding sees only its own pixels; benchmarks/bench_masking.py measures how often they agree."""
        v = self.clip.visual
        h, w = grid_hw
        P_h, P_w = v.patch_size
        B, C, T, H, W = video.shape
        frames = video.transpose(1, 2).reshape(B * T, C, H, W)  # (B*T, C, H, W)
        # CLIP's positional embedding is learnt for its own grid (7 x 7): resized to h x w as open_clip's
        # resize_pos_embed does for force_image_size (tests check the same tokens), so one frozen CLIP serves text,
        # patch and dense features at any grid, without a second model.
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
# TGM maps: the CLIP side of text-guided masks made once per video, offline, so that the masks ride with the data
#
# NOTE: not in the paper (Sec. 5 says only that TGM cost 15 % over MGM); CLIP in the step costs 2.7x (dense) to 80x
# (patch) a tube step on an H100. Each stored frame goes through CLIP once and its similarity to each caption is kept
# as a small grid; the loader carries the drawn caption's map through the clip's crop and flip, as MGM's motion, and
# takes the top-k (docs/design.md "TGM maps": what it gives up; benchmarks/bench_tgm_maps.py measures it).

MAPS_VERSION = 1
MAPS_UPSAMPLE = 8  # each map cell becomes 8 x 8 pixels before the crop: the crop's edges then cut cells finely


def maps_identity(clip_model, clip_pretrained, captions, rels):
    """What a maps folder is made from -> a dict (in its meta.json; a run compares it with its own at start-up):
    the CLIP (a weights file named by path, size and mtime) and a digest of the list's videos and their captions."""
    digest = hashlib.sha256()
    for rel in sorted(rels):
        digest.update(json.dumps([rel, captions.get(rel, [])]).encode())
    if clip_model.endswith(".json"):  # a config file: the name open_clip registers it under (load_clip)
        clip_model = os.path.splitext(os.path.basename(clip_model))[0]
    weights = clip_pretrained
    if os.path.isfile(clip_pretrained):
        st = os.stat(clip_pretrained)
        weights = f"{os.path.abspath(clip_pretrained)} ({st.st_size} bytes, mtime {int(st.st_mtime)})"
    return {"version": MAPS_VERSION, "clip_model": clip_model, "clip_pretrained": weights,
            "captions_sha256": digest.hexdigest()}


def map_path(folder, rel):
    """A video's map file: its list path under the folder, plus .npz."""
    return os.path.join(folder, rel + ".npz")


def check_maps(folder, identity, rels):
    """Refuse maps made from other captions, another CLIP or other settings, and a folder not finished yet ->
    None, or the sentence that says what differs. Videos the maker could not read (its failed.jsonl) have no map:
    the loader skips them as bad videos, as it would anyway."""
    meta_path = os.path.join(folder, "meta.json")
    if not os.path.isfile(meta_path):
        return f"{folder} holds no maps (no meta.json): make them with masking.py --make-maps {folder}"
    with open(meta_path) as f:
        meta = json.load(f)
    differ = [k for k in identity if meta.get(k) != identity[k]]
    if differ:
        return (f"the maps in {folder} were made with other " + ", ".join(
            f"{k} ({meta.get(k)!r}, this run: {identity[k]!r})" if k != "captions_sha256" else
            "captions (or another video list)" for k in differ) + ": make them again for this run's settings")
    failed = set()
    failed_path = os.path.join(folder, "failed.jsonl")
    if os.path.isfile(failed_path):
        with open(failed_path) as f:
            failed = {json.loads(line)["video"] for line in f if line.strip()}
    missing = [rel for rel in rels if rel not in failed and not os.path.isfile(map_path(folder, rel))]
    if missing:
        return (f"{len(missing)} of {len(rels)} videos have no map in {folder} yet (e.g. {missing[0]}): rerun "
                f"masking.py --make-maps {folder} with the same flags (it resumes)")
    return None


def frame_maps(clip, tokenizer, frames, captions, cells, features="patch", patch_size=16, chunk_size=256):
    """uint8 frames (F, H, W, 3) -> float16 (n_captions, F, g_h, g_w): each frame's grid of `cells` along its short
    side, each cell's cosine similarity to each caption. features 'patch' (the paper's recipe, Sec. 3.3): the frame
    resized to g_h x g_w patches of patch_size pixels (the scale of a full-frame crop at the MAE's input size), each
    patch through CLIP alone; 'dense': each frame once through CLIP at that grid (TextGuidedMasker's two ways)."""
    F_, H, W, _ = frames.shape
    g_h, g_w = (cells, max(1, round(cells * W / H))) if H <= W else (max(1, round(cells * H / W)), cells)
    masker = TextGuidedMasker(clip, features, patch_size=patch_size, chunk_size=chunk_size)
    device = next(clip.parameters()).device
    # the whole frame at the patches' scale, as a full-frame crop would show it: g_h x g_w patches
    x = data.apply_crop(torch.from_numpy(frames).permute(0, 3, 1, 2), data.Crop(0, 0, 1, 1),
                        (g_h * patch_size, g_w * patch_size), torch.float32)  # (F, C, H', W')
    video = data.normalize(x.permute(0, 2, 3, 1))[None].to(device)  # (1, C, F, H', W')
    with torch.no_grad():
        feats = masker.token_features(video)  # (F*g_h*g_w, E) L2-normalised
        text = TextEmbedder(clip, tokenizer)(list(captions)).to(device)  # (n, E)
        sim = text.float() @ feats.T  # (n, F*g_h*g_w)
    return sim.view(len(captions), F_, g_h, g_w).half().cpu().numpy()


def make_maps(clip, tokenizer, items, captions, folder, identity, cells=14, frame_stride=4, features="patch",
              chunk_size=256):
    """The maps of a list's videos, one .npz per video (maps float16 (n_captions, F, g_h, g_w), frames (F,) the
    stored frame indices, captions), each written whole (temp file, then rename). Videos with a map are skipped,
    so a rerun resumes, and shards of one list (items[i::n]) can run at once into one folder. items: [(path, rel)].
    -> (made, already there, failed)."""
    os.makedirs(folder, exist_ok=True)
    meta_path = os.path.join(folder, "meta.json")
    meta = {**identity, "cells": cells, "frame_stride": frame_stride, "features": features}
    if os.path.isfile(meta_path):  # resuming: the same settings, or a sentence
        with open(meta_path) as f:
            old = json.load(f)
        if old != meta:
            raise ValueError(f"{folder} holds maps made with other settings ({old}, now {meta}): use another folder")
    write_whole(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))  # every shard writes the same
    made = done = failed = 0
    for path, rel in tqdm(items, desc="text maps", dynamic_ncols=True):
        out = map_path(folder, rel)
        if os.path.isfile(out):
            done += 1
            continue
        caps = captions.get(rel)
        try:
            if not caps:
                raise data.VideoError("no caption for it in the captions file")
            frames, _, stored, _ = data.read_clip(path, lambda info: np.arange(0, info.num_frames, frame_stride))
            maps = frame_maps(clip, tokenizer, frames, caps, cells, features, chunk_size=chunk_size)
        except data.VideoError as e:
            failed += 1
            with open(os.path.join(folder, "failed.jsonl"), "a") as f:
                f.write(json.dumps({"video": rel, "error": str(e)}) + "\n")
            continue
        write_whole(out, lambda f: np.savez(f, maps=maps, frames=stored, captions=np.array(caps)))
        made += 1
    return made, done, failed


class TextMaps:
    """A maps folder, read in the loader workers: (rel, the run's captions of the video) -> (maps float32
    (n_captions, F, g_h, g_w), stored frame indices (F,)). Raises data.VideoError (the loader then skips the video
    as bad, logged and counted) when the video has no map or its map was made from other captions."""

    def __init__(self, folder):
        self.folder = folder

    def load(self, rel, captions):
        path = map_path(self.folder, rel)
        try:
            with np.load(path) as z:
                maps, frames, made_from = z["maps"], z["frames"], z["captions"].tolist()
        except (OSError, ValueError, KeyError) as e:
            raise data.VideoError(f"no readable text map ({path}: {e})") from None
        if made_from != list(captions):
            raise data.VideoError(f"its text map {path} was made from other captions")
        return torch.from_numpy(maps.astype(np.float32)), frames


def map_scores(text_map, crop, grid, size):
    """One caption's map at the clip's frames (T, g_h, g_w) -> (T', h, w): carried through the clip's crop and flip
    as a per-pixel map (each cell MAPS_UPSAMPLE pixels wide), summed over each token's pixels and tubelet frames."""
    r = MAPS_UPSAMPLE
    return token_sums(text_map.repeat_interleave(r, -2).repeat_interleave(r, -1), crop, grid, size)


class TextMapMasker(LoaderMasker):
    """mask_fn for data.VideoDataset(text_maps=TextMaps(...)): (sample, generator=None) -> (mask (N,) bool, True =
    masked; False): TGM's top-k (or bottom-k) tokens of every time slice, from the sample's caption's map."""

    def __init__(self, grid, ratio, order="top"):
        super().__init__(grid, ratio)
        self.order = order

    def __call__(self, sample, generator=None):
        C, T, H, W = sample["video"].shape
        scores = map_scores(sample["text_map"], sample["crop"], self.grid, (H, W))
        return topk_mask(scores.flatten(1)[None], self.ratio, self.order, generator)[0], False


# ----------------------------------------------------------------------------------------------------------------
# A picture of a mask, and the command line

def draw_mask(frames, mask, grid, title=""):
    """frames uint8 (T, H, W, 3), mask (N,) bool (True = masked), grid (T', h, w) -> PIL image: the frames in rows
    of up to 8, masked tokens shaded grey, a title line on top."""
    from PIL import Image, ImageDraw

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
    """video (B, C, T, H, W) ImageNet-normalised, mask (B, N) bool (True = masked), cfg a model.ModelConfig (its
    tubelet and patch size) -> a PNG at `path` of the first max_clips clips, one draw_mask block per clip, each
    under its title (e.g. its caption)."""
    from PIL import Image

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


def get_args(argv=None):
    parser = argparse.ArgumentParser(description="Sec. 3.3: draw a clip's mask (masked tokens shaded) into a PNG")
    # data
    parser.add_argument("--video", default=None, help="video file; default: the demo dataset's first val video")
    parser.add_argument("--caption", default=None, help="the text --mask tgm follows (the demo video: its first caption)")
    parser.add_argument("--num-frames", type=int, default=None, help="T frames per clip; paper: 16")
    parser.add_argument("--sampling-rate", type=int, default=4, help="frame stride; paper: 4 (K400), 2 (SSv2)")
    parser.add_argument("--input-size", type=int, default=None, help="H = W in pixels; paper: 224")
    parser.add_argument("--flip", action="store_true", help="flip the clip horizontally (the masks must follow)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random, tube and tie-breaking draws")
    # mask
    parser.add_argument("--mask", default="tgm", choices=["random", "tube", "mgm", "tgm"], help="masking strategy")
    parser.add_argument("--ratio", type=float, default=None,
                        help="mask ratio gamma; default the paper's: 0.9 random/tube, 0.75 mgm, 0.6 tgm (Table 5a)")
    parser.add_argument("--tubelet-size", type=int, default=2, help="t frames per token; paper: 2")
    parser.add_argument("--patch-size", type=int, default=16, help="p pixels per token side; paper: 16")
    parser.add_argument("--tgm-features", default=None, choices=["patch", "dense"],
                        help="patch: each 16x16 patch through CLIP (the paper, Sec. 3.3; the default); dense: CLIP's "
                             "patch tokens (~50x faster on a CPU)")
    parser.add_argument("--tgm-order", default="top", choices=["top", "bottom"],
                        help="mask the top-k or bottom-k tokens by text similarity; paper: top (Table 5b)")
    # CLIP
    parser.add_argument("--clip-model", default="ViT-B-32-quickgelu", help="open_clip model; paper: ViT-B/32")
    parser.add_argument("--clip-pretrained", default=None,
                        help="CLIP weights: openai (download or cache; the default) | a weights file | demo (a small "
                             "CLIP trained on the built-in demo's data, its stand-in offline) | none (random)")
    parser.add_argument("--chunk-size", type=int, default=512, help="CLIP images per forward (tgm)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where CLIP runs")
    # output
    parser.add_argument("--out", default="mask.png", help="PNG to write")
    # TGM maps, made once before pretraining (pretrain.py --tgm-maps DIR)
    maps = parser.add_argument_group("TGM maps (instead of a picture)")
    maps.add_argument("--make-maps", default=None, metavar="DIR", help="write every video's CLIP similarity maps for "
                      "pretrain.py --tgm-maps DIR into DIR; rerunning resumes")
    maps.add_argument("--data", default=None, help="list file 'path label' per line; none: the demo's train list")
    maps.add_argument("--root", default="", help="folder prefixed to every path of the list")
    maps.add_argument("--captions", default=None, help="captions JSONL from caption.py")
    maps.add_argument("--cells", type=int, default=None, help="map cells along a frame's short side; default: one per "
                      "token of a full-frame crop (input size / patch size: 14 at 224 px)")
    maps.add_argument("--map-features", default="patch", choices=["patch", "dense"], help="patch: each cell through "
                      "CLIP alone (the paper's recipe); dense: each frame once (cheaper, agrees less: docs/design.md)")
    maps.add_argument("--frame-stride", type=int, default=4, help="map every n-th frame (a clip frame takes the "
                      "nearest); paper's clips: every 4th frame (K400), 2nd (SSv2)")
    maps.add_argument("--shard", default="0/1", help="i/n: every n-th video of the list from the i-th, to split a "
                      "list over GPUs or machines (all shards may write into one DIR)")
    return parser.parse_args(argv)


def make_maps_main(args):
    """masking.py --make-maps DIR: the maps of a list's videos (make_maps)."""
    if not args.captions:
        sys.exit("error: --make-maps needs --captions FILE (make one with caption.py)")
    try:
        i, n = (int(x) for x in args.shard.split("/"))
        assert 0 <= i < n
    except (ValueError, AssertionError):
        sys.exit(f"error: --shard {args.shard!r}: expected i/n with 0 <= i < n, e.g. 0/8")
    rels = [rel for rel, _ in data.read_list(args.data)]  # as written in the list: the captions' and maps' keys
    items = [(os.path.join(args.root, rel), rel) for rel in rels][i::n]  # this shard's (path, rel)
    captions = data.read_captions(args.captions)
    name, pretrained = args.clip_model, args.clip_pretrained or "openai"
    clip, tokenizer = load_clip_or_exit("masking.py", name, pretrained, args.device)
    cells = args.cells or (args.input_size or 224) // args.patch_size
    try:
        made, done, failed = make_maps(clip, tokenizer, items, captions, args.make_maps,
                                       maps_identity(name, pretrained, captions, rels), cells, args.frame_stride,
                                       args.map_features, min(args.chunk_size, 256))
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(f"{args.make_maps}: {made} maps made, {done} already there, {failed} videos failed (failed.jsonl); "
          f"CLIP {name} ({pretrained}), {args.map_features} features, {cells} cells along the short side, every "
          f"{args.frame_stride}th frame")


def main(args):
    if args.mask == "tgm" and not args.caption:
        sys.exit("error: --mask tgm needs --caption \"...\" (the text the mask follows)")
    ratio = PAPER_RATIO[args.mask] if args.ratio is None else args.ratio
    T, S = args.num_frames or 16, args.input_size or 224
    t, p = args.tubelet_size, args.patch_size
    if T % t or S % p:
        sys.exit(f"error: --num-frames {T} and --input-size {S} must be multiples of {t} and {p}")
    cfg = ModelConfig(img_size=S, num_frames=T, tubelet_size=t, patch_size=p)
    grid = cfg.grid  # (T', h, w)

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
        clip, tokenizer = load_clip_or_exit("masking.py", args.clip_model, args.clip_pretrained or "openai",
                                            args.device)
        features = args.tgm_features or "patch"
        text = TextEmbedder(clip, tokenizer)([args.caption])
        masker = TextGuidedMasker(clip, features, ratio, args.tgm_order, p, t, args.chunk_size)
        mask = masker(video[None], text, g)[0]
    else:  # the loader's own maskers, given the sample the loader would give them
        masker = {"random": RandomMasker, "tube": TubeMasker, "mgm": MotionMasker}[args.mask](grid, ratio)
        sample = {"video": video, "motion": motion, "frame_size": (info.height, info.width), "crop": crop}
        mask, fell_back = masker(sample, g)
        if fell_back:
            print(f"{args.video} carries no motion vectors: fell back to a tube mask")

    k = int(ratio * grid[1] * grid[2])
    name = f"tgm {features} {args.tgm_order}" if args.mask == "tgm" else args.mask
    title = f"{name}, ratio {ratio}: {int(mask.sum())} of {mask.numel()} tokens masked"
    title += f" ({k} per time slice)" if args.mask != "random" else ""
    title += f' | "{args.caption}"' if args.mask == "tgm" else ""
    save_mask_picture(video[None], mask[None], cfg, args.out, [title])
    print(f"{title}\nwrote {args.out}")


if __name__ == "__main__":
    args = get_args()
    if (args.video is None and args.data is None) or args.clip_pretrained == "demo":
        import demo  # no --video or --data: the built-in demo fills what was not typed
        demo.fill(args, "masking")
    make_maps_main(args) if args.make_maps else main(args)
