"""TGM maps, not in the paper: the CLIP side of the text-guided masks (Sec. 3.3) made once per video, offline, so that
pretrain.py --tgm-maps DIR makes TGM masks in the loader workers (TextMaps, TextMapMasker below), as MGM's.
NOTE: differs from the paper (Sec. 5 says only that TGM cost 15 % over MGM): CLIP in the step costs 2.7x (dense) to
80x (patch) a tube step on an H100 (docs/design.md "TGM maps": what the maps give up; benchmarks/bench_tgm_maps.py).
    python maps.py --out-dir maps/k400 --data k400/train.txt --root k400/ --captions k400_captions.jsonl
Rerunning resumes; --shard i/n splits a list over GPUs. Tests: python -m pytest -q tests/test_maps.py
"""
import argparse
import hashlib
import json
import os
import sys

import numpy as np
import torch
from tqdm import tqdm

import data
import frozen_clip
import masking
from model import write_whole

MAPS_UPSAMPLE = 8  # each map cell becomes 8 x 8 pixels before the crop: the crop's edges then cut cells finely


def maps_identity(clip_model, clip_pretrained, captions, rels):
    """What a maps folder is made from (its meta.json): the CLIP (a weights file by path, size and mtime), a digest of
    the list's videos and their captions, and the format's version (bump it when the format changes)."""
    digest = hashlib.sha256()
    for rel in sorted(rels):
        digest.update(json.dumps([rel, captions.get(rel, [])]).encode())
    if clip_model.endswith(".json"):  # a config file: the name open_clip registers it under (load_clip)
        clip_model = os.path.splitext(os.path.basename(clip_model))[0]
    weights = clip_pretrained
    if os.path.isfile(clip_pretrained):
        st = os.stat(clip_pretrained)
        weights = f"{os.path.abspath(clip_pretrained)} ({st.st_size} bytes, mtime {int(st.st_mtime)})"
    return {"version": 1, "clip_model": clip_model, "clip_pretrained": weights,
            "captions_sha256": digest.hexdigest()}


def map_path(folder, rel):
    return os.path.join(folder, rel + ".npz")


def frame_maps(clip, tokenizer, frames, captions, cells, features="patch", patch_size=16, chunk_size=256):
    """uint8 frames (F, H, W, 3) -> float16 (n_captions, F, g_h, g_w): each frame resized to `cells` patches along its
    short side (a full-frame crop's scale), each patch's cosine similarity to each caption by TextGuidedMasker."""
    F_, H, W, _ = frames.shape
    g_h, g_w = (cells, max(1, round(cells * W / H))) if H <= W else (max(1, round(cells * H / W)), cells)
    masker = masking.TextGuidedMasker(clip, features, patch_size=patch_size, chunk_size=chunk_size)
    device = next(clip.parameters()).device
    x = data.apply_crop(torch.from_numpy(frames).permute(0, 3, 1, 2), data.Crop(0, 0, 1, 1),
                        (g_h * patch_size, g_w * patch_size), torch.float32)  # (F, C, H', W')
    video = data.normalize(x.permute(0, 2, 3, 1))[None].to(device)  # (1, C, F, H', W')
    with torch.no_grad():
        feats = masker.token_features(video)  # (F*g_h*g_w, E) L2-normalised
        text = frozen_clip.TextEmbedder(clip, tokenizer)(list(captions)).to(device)  # (n, E)
        sim = text.float() @ feats.T  # (n, F*g_h*g_w)
    return sim.view(len(captions), F_, g_h, g_w).half().cpu().numpy()


def make_maps(clip, tokenizer, items, captions, folder, identity, cells=14, frame_stride=4, features="patch",
              chunk_size=256):
    """items [(path, rel)] -> (made, already there, failed): one .npz per video (maps, frames: the stored frame indices,
    captions), written whole. Videos with a map are skipped: a rerun resumes, and shards of a list share a folder."""
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


def check_maps(folder, identity, rels):
    """pretrain.py's start-up check: maps from other captions, another CLIP or other settings, or a folder not finished
    -> the sentence that says so, else None. Videos the maker could not read (failed.jsonl) are bad, not missing."""
    meta_path = os.path.join(folder, "meta.json")
    if not os.path.isfile(meta_path):
        return f"{folder} holds no maps (no meta.json): make them with maps.py --out-dir {folder}"
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
                f"maps.py --out-dir {folder} with the same flags (it resumes)")
    return None


class TextMaps:
    """A maps folder, read in the loader workers: load(rel, captions) -> (maps float32 (n_captions, F, g_h, g_w), the
    stored frame indices (F,)); data.VideoError (the loader skips the video) without a map or from other captions."""

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
    """One caption's map at the clip's frames (T, g_h, g_w) -> (T', h, w), as MGM's motion (masking.token_sums)."""
    r = MAPS_UPSAMPLE
    return masking.token_sums(text_map.repeat_interleave(r, -2).repeat_interleave(r, -1), crop, grid, size)


class TextMapMasker:
    """mask_fn for data.VideoDataset(text_maps=...), as masking.LoaderMasker (True = masked): TGM's top-k by the map."""

    def __init__(self, grid, ratio, order="top"):
        self.grid, self.ratio, self.order = tuple(grid), ratio, order

    def __call__(self, sample, generator=None):
        C, T, H, W = sample["video"].shape
        scores = map_scores(sample["text_map"], sample["crop"], self.grid, (H, W))  # (T', h, w)
        return masking.topk_mask(scores.flatten(1)[None], self.ratio, self.order, generator)[0], False  # (N,)


# ----------------------------------------------------------------------------------------------------------------
# The command line

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="TGM maps: each video's CLIP similarity to its captions, made once",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # data
    parser.add_argument("--out-dir", required=True, help="folder the maps go into (pretrain.py --tgm-maps DIR)")
    parser.add_argument("--data", help="list file 'path label' per line; none: the built-in demo's pretraining list")
    parser.add_argument("--root", default="", help="folder prefixed to every path of the list")
    parser.add_argument("--captions", help="captions JSONL from caption.py")
    parser.add_argument("--shard", default="0/1", help="i/n: every n-th video from the i-th; one --out-dir for all")
    # maps
    parser.add_argument("--input-size", type=int, default=224, help="the MAE's H = W in pixels")
    parser.add_argument("--patch-size", type=int, default=16, help="p pixels per token side; paper: 16")
    parser.add_argument("--cells", type=int, help="map cells along a frame's short side; none: input size / patch size")
    parser.add_argument("--map-features", default="patch", choices=["patch", "dense"], help="patch: each cell "
                        "through CLIP alone (the paper's recipe); dense: each frame once (cheaper, agrees less)")
    parser.add_argument("--frame-stride", type=int, default=4, help="map every n-th frame; paper: 4 (K400), 2 (SSv2)")
    # CLIP
    parser.add_argument("--clip-model", default="ViT-B-32-quickgelu", help="open_clip model; paper: ViT-B/32")
    parser.add_argument("--clip-pretrained", default="openai", help="CLIP weights: openai (download or cache) | a "
                        "weights file | demo (a small CLIP trained on the demo's data) | none (random)")
    parser.add_argument("--chunk-size", type=int, default=256, help="CLIP images per forward")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where CLIP runs")
    args = parser.parse_args(argv)
    data.check_flags("maps.py", args)  # what was typed, before the demo is built
    if args.data is None or args.clip_pretrained == "demo":
        import demo  # no --data: the built-in demo's pretraining list, captions and CLIP; typed flags win
        args = demo.fill(parser, argv, "maps")
    if not args.captions:
        raise data.UsageError("maps.py needs --captions FILE (make one with caption.py)")
    try:
        i, n = (int(x) for x in args.shard.split("/"))
    except ValueError:
        i = n = 0
    if not 0 <= i < n:
        raise data.UsageError(f"maps.py: --shard {args.shard}: expected i/n with 0 <= i < n, e.g. 0/8")
    args.shard = (i, n)
    return args


def main(args):
    i, n = args.shard
    rels = [rel for rel, _ in data.read_list(args.data)]  # as written in the list: the captions' and maps' keys
    items = [(os.path.join(args.root, rel), rel) for rel in rels][i::n]  # this shard's (path, rel)
    captions = data.read_captions(args.captions)
    clip, tokenizer = frozen_clip.load_clip_or_exit("maps.py", args.clip_model, args.clip_pretrained, args.device)
    cells = args.cells or args.input_size // args.patch_size
    try:
        made, done, failed = make_maps(clip, tokenizer, items, captions, args.out_dir,
                                       maps_identity(args.clip_model, args.clip_pretrained, captions, rels), cells,
                                       args.frame_stride, args.map_features, args.chunk_size)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(f"{args.out_dir}: {made} maps made, {done} already there, {failed} videos failed (failed.jsonl)")


if __name__ == "__main__":
    main(parse_args())
