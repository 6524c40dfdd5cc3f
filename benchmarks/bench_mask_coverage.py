"""
What each mask hides, on the demo's validation split: the share of the main object (the one that performs the
class's action, which the captions name first) that random, tube, motion-guided and text-guided masks cover, and
how far text-guided masks from 'dense' CLIP features agree with the paper's 'patch' features (Sec. 3.3).

The demo renderer keeps every video's main-object mask (D.demo_dataset()["objects"]); it is carried through the
clip's crop as the clip is (masking.token_sums) and weighted per token by its pixels, so "object coverage" is the
share of the object's pixels that sit in masked tokens (masking.object_coverage): a random mask of ratio gamma
covers gamma in expectation. Text-guided masks use the caption's first sentence through the demo CLIP (offline) or
OpenAI's (when cached). One clip per video: the centre window and the centre crop, as the val split is read.

    python benchmarks/bench_mask_coverage.py                         # the paper's ratios and a common 0.6
    python benchmarks/bench_mask_coverage.py --pictures benchmarks/results/masks_demo.png
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import demo as D  # noqa: E402
import frozen_clip  # noqa: E402
import masking  # noqa: E402
from model import ModelConfig  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
parser.add_argument("--num-frames", type=int, default=8, help="T; the demo pretraining's")
parser.add_argument("--sampling-rate", type=int, default=4)
parser.add_argument("--input-size", type=int, default=64, help="the demo pretraining's crop")
parser.add_argument("--seeds", type=int, default=3, help="draws of the random masks and tie-breaks per clip")
parser.add_argument("--pictures", default=None, help="PNG of the first clips' masks under their captions")
parser.add_argument("--num-pictures", type=int, default=3)
args = parser.parse_args()

T, S = args.num_frames, args.input_size
cfg = ModelConfig(img_size=S, num_frames=T)
grid = cfg.grid
demo = D.demo_dataset()
objects = np.load(demo["objects"])
captions = data.read_captions(demo["captions"])
torch.manual_seed(0)
clip_name, clip_weights = D.clip_for(demo)  # OpenAI's ViT-B/32 where it can be had, else the demo CLIP
clip, tokenizer = frozen_clip.load_clip(clip_name, clip_weights)
embed = frozen_clip.TextEmbedder(clip, tokenizer)

# every clip once: pixels, motion vectors, the main object's pixels per token, the caption's embedding
clips = []
for rel, _ in data.read_list(demo["val"]):
    path = os.path.join(demo["root"], rel)
    info = data.probe_video(path)
    idx = data.test_indices(info.num_frames, T, args.sampling_rate, 0, num_views=1)
    frames, motion = data.read_frames(path, idx, motion=True)
    crop = data.uniform_crop(info.height, info.width, S, 0, num_crops=1)
    video = data.normalize(data.apply_crop(torch.from_numpy(frames).permute(0, 3, 1, 2), crop, S, torch.float32)
                           .permute(0, 2, 3, 1))                                     # (C, T, S, S)
    obj = torch.from_numpy(objects[os.path.splitext(os.path.basename(rel))[0]][idx]).float()  # (T, H, W) source pixels
    clips.append(dict(video=video, motion=motion, crop=crop, frame_size=(info.height, info.width), rel=rel,
                      object=masking.token_sums(obj, crop, grid, (S, S)).flatten(), caption=captions[rel][0]))
videos = torch.stack([c["video"] for c in clips])                                  # (V, C, T, S, S)
object_pixels = torch.stack([c["object"] for c in clips])                           # (V, N)
text = embed([c["caption"] for c in clips])                                        # (V, E)


def masks(method, ratio, seed):
    """(V, N) bool, True = masked, for every clip."""
    g = torch.Generator().manual_seed(seed)
    V = len(clips)
    if method == "random":
        return masking.random_mask(V, grid, ratio, g)
    if method == "tube":
        return masking.tube_mask(V, grid, ratio, g)
    if method == "mgm":
        return torch.stack([masking.MotionMasker(grid, ratio)(c, g)[0] for c in clips])
    features, order = {"tgm dense": ("dense", "top"), "tgm patch": ("patch", "top"),
                       "tgm patch bottom-k": ("patch", "bottom")}[method]
    return masking.TextGuidedMasker(clip, features, ratio, order, cfg.patch_size, cfg.tubelet_size)(videos, text, g)


PAPER = {"random": 0.9, "tube": 0.9, "mgm": 0.75, "tgm dense": 0.6, "tgm patch": 0.6, "tgm patch bottom-k": 0.6}
t0 = time.time()
rows, kept = [], {}
for method, paper_ratio in PAPER.items():
    cells = []
    for ratio in (paper_ratio, 0.6):
        cov = [masking.object_coverage(m := masks(method, ratio, s), object_pixels) for s in range(args.seeds)]
        kept[(method, ratio)] = m
        cells.append(f"{torch.stack(cov).mean():.3f}")
    rows.append(f"| {method} | {paper_ratio} | {cells[0]} | {cells[1]} |")
agree = []
for s in range(args.seeds):
    a, b = masks("tgm dense", 0.6, s), masks("tgm patch", 0.6, s)
    agree.append(((a & b).sum(1) / (a | b).sum(1)).mean())
iou = torch.stack(agree).mean().item()
chance = 0.6 / (2 - 0.6)  # E|A and B| / E|A or B| of two independent masks of ratio 0.6 per slice
print(f"object coverage on {len(clips)} demo val clips ({T} frames of {S} px, grid {grid}), mean over {args.seeds} "
      f"draws; CLIP: {clip_name} ({clip_weights})\n")
print("| mask | paper's ratio | coverage at the paper's ratio | coverage at 0.6 |\n| --- | --- | --- | --- |")
print("\n".join(rows))
print(f"\nIoU of tgm dense and tgm patch masks at 0.6: {iou:.3f} (two unrelated masks: {chance:.3f}); {time.time() - t0:.0f} s")
if args.pictures:
    n = args.num_pictures
    import tempfile

    from PIL import Image
    blocks = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("tube", "mgm", "tgm dense", "tgm patch"):
            m = kept[(method, 0.6)][:n]
            path = os.path.join(tmp, f"{method}.png")
            masking.save_mask_picture(videos[:n], m, cfg, path, titles=[f"{method} 0.6: {c['caption']}" for c in clips[:n]],
                                      max_clips=n)
            blocks.append(Image.open(path).copy())
    img = Image.new("RGB", (max(b.width for b in blocks), sum(b.height for b in blocks)), "white")
    for i, b in enumerate(blocks):
        img.paste(b, (0, sum(b.height for b in blocks[:i])))
    img.save(args.pictures)
    print(f"wrote {args.pictures}")
