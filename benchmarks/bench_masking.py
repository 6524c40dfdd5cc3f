"""Benchmark of masking.py (Sec. 3.3, issue 4): what each mask costs for one T x 224 x 224 clip; for TGM 'patch'
(the paper's: one CLIP image per 16x16 patch, T*196 of them per clip) the CLIP images/s it reaches against plain
encode_image at the same batch size; the cost of 'dense' against 'patch'; and how often the two agree on demo
videos. CLIP is the real ViT-B-32-quickgelu architecture with random weights: its speed does not depend on the
weights, but its agreement numbers do, so those mean something only with --clip-pretrained openai (or a file).

    python benchmarks/bench_masking.py                                # CPU, the full 16-frame clip (slow: 3136 images)
    python benchmarks/bench_masking.py --frames 2 --repeats 1 --warmup 0 --agreement-videos 2   # a small CPU
    python benchmarks/bench_masking.py --device cuda --repeats 5 --chunk-size 1024
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: flat layout
import data  # noqa: E402
import demo as D  # noqa: E402
import frozen_clip  # noqa: E402
import masking  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--frames", type=int, default=16, help="T frames per clip; paper: 16")
parser.add_argument("--input-size", type=int, default=224, help="H = W; paper: 224")
parser.add_argument("--device", default="cpu", help="cpu | cuda")
parser.add_argument("--chunk-size", type=int, default=512, help="CLIP images per forward")
parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement")
parser.add_argument("--warmup", type=int, default=1, help="untimed runs before them (0 saves time on a slow CPU)")
parser.add_argument("--clip-pretrained", default="none", help="none (random weights) | openai | weights file")
parser.add_argument("--agreement-videos", type=int, default=4, help="demo videos for the dense-vs-patch agreement; 0: skip")
parser.add_argument("--agreement-frames", type=int, default=None, help="frames per agreement clip (default: --frames)")
parser.add_argument("--skip", nargs="*", default=[], choices=["mgm", "tgm", "agreement"], help="parts to leave out")
args = parser.parse_args()
device = torch.device(args.device)
T, S = args.frames, args.input_size
grid = (T // 2, S // 16, S // 16)


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats=args.repeats, warmup=args.warmup):
    """Mean seconds of fn() over `repeats` runs after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeats


def timed_pair(fn_a, fn_b):
    """Mean seconds of fn_a() and of fn_b(), timed in turns, so that both see the same load on a shared machine."""
    for _ in range(args.warmup):
        fn_a(), fn_b()
    t_a = t_b = 0.0
    for _ in range(args.repeats):
        t_a, t_b = t_a + timed(fn_a, 1, 0), t_b + timed(fn_b, 1, 0)
    return t_a / args.repeats, t_b / args.repeats


print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
      f"torch {torch.__version__}, clip {T}x{S}x{S}, grid {grid}, chunk {args.chunk_size}")

# ----------------------------------------------------------------------------------------------------------------
# random and tube: noise and a sort

print(f"random    {timed(lambda: masking.random_mask(1, grid, 0.9), 100, 1) * 1e3:8.3f} ms/clip")
print(f"tube      {timed(lambda: masking.tube_mask(1, grid, 0.9), 100, 1) * 1e3:8.3f} ms/clip")

# ----------------------------------------------------------------------------------------------------------------
# mgm: decoding with motion vectors, then painting, cropping and summing them (in a loader worker, on its CPU)

if "mgm" not in args.skip:
    # a Kinetics-sized (240 x 320) H.264 video: the demo's first video scaled up, 4 frames apart as in pretraining
    demo = D.demo_dataset()
    src = os.path.join(demo["root"], data.read_list(demo["train"])[0][0])
    small = torch.from_numpy(data.read_frames(src, np.arange(data.probe_video(src).num_frames))).permute(0, 3, 1, 2)
    big = F.interpolate(small.float(), size=(240, 320), mode="bilinear").round().clamp(0, 255).to(torch.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k400_sized.mp4")
        D.write_video(path, big.permute(0, 2, 3, 1).numpy())
        idx = data.pretrain_indices(len(big), T, 4, np.random.default_rng(0))
        t_plain, t_mvs = (timed(lambda m=m: data.read_frames(path, idx, motion=m), 5, 1) for m in (False, True))
        frames, motion = data.read_frames(path, idx, motion=True)
    crop = data.multiscale_crop(240, 320, S, rng=np.random.default_rng(0))
    sample = {"video": torch.zeros(3, T, S, S), "motion": motion, "frame_size": (240, 320), "crop": crop}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker, where MotionMasker runs
    t_mgm = timed(lambda: masking.MotionMasker(grid, 0.75)(sample)[0], 10, 1)
    torch.set_num_threads(threads)
    print(f"mgm       {t_mgm * 1e3:8.3f} ms/clip to mask (paint, crop, sum, top-k; one CPU thread); "
          f"decoding the 240x320 clip {t_plain * 1e3:.1f} ms plain, {t_mvs * 1e3:.1f} ms with motion vectors")

# ----------------------------------------------------------------------------------------------------------------
# tgm: CLIP ViT-B/32, patch (the paper's) and dense (ours)

if "tgm" in args.skip and "agreement" in args.skip:
    sys.exit(0)
clip, tokenizer = frozen_clip.load_clip("ViT-B-32-quickgelu", args.clip_pretrained, device)
embed = frozen_clip.TextEmbedder(clip, tokenizer)
text = embed(["a person is riding a bicycle down a street"])
video = torch.randn(1, 3, T, S, S, device=device)  # an ImageNet-normalised clip (content does not change speed)
patch = masking.TextGuidedMasker(clip, "patch", 0.6, chunk_size=args.chunk_size)
dense = masking.TextGuidedMasker(clip, "dense", 0.6, chunk_size=args.chunk_size)
n_img = T * grid[1] * grid[2]  # CLIP images per clip in the patch path

# plain encode_image on ready-made 224 x 224 inputs, the same number of images in the same chunks and precision
size = clip.visual.image_size
ready = torch.randn(min(args.chunk_size, n_img), 3, *size, device=device)
sizes = [len(c) for c in torch.arange(n_img).split(args.chunk_size)]


def plain():
    with torch.no_grad(), masking._autocast(device):
        for n in sizes:
            clip.encode_image(ready[:n])


t_patch, t_plain = timed_pair(lambda: patch(video, text), plain)
t_dense = timed(lambda: dense(video, text))
print(f"tgm patch {t_patch * 1e3:8.1f} ms/clip: {n_img / t_patch:8.1f} CLIP images/s; plain encode_image "
      f"{n_img / t_plain:8.1f} images/s at the same batch: {t_plain / t_patch:.1%} of it (goal >= 90%)")
print(f"tgm dense {t_dense * 1e3:8.1f} ms/clip ({T} CLIP images at {grid[1] * 32}x{grid[2] * 32}): "
      f"dense/patch cost {t_dense / t_patch:.4f} ({t_patch / t_dense:.0f}x cheaper)")

# ----------------------------------------------------------------------------------------------------------------
# agreement of dense with patch on demo videos, each with its own first caption

if "agreement" not in args.skip and args.agreement_videos > 0:
    demo = D.demo_dataset()
    caps = data.read_captions(demo["captions"])
    Ta = args.agreement_frames or T
    ious, rhos = [], []
    for rel, _ in data.read_list(os.path.join(demo["val"]))[:args.agreement_videos]:
        path = os.path.join(demo["root"], rel)
        info = data.probe_video(path)
        frames = torch.from_numpy(data.read_frames(path, data.test_indices(info.num_frames, Ta, 4, 0, num_views=1)))
        crop = data.uniform_crop(info.height, info.width, S, 0, num_crops=1)
        clip_px = data.apply_crop(frames.permute(0, 3, 1, 2).float(), crop, S).permute(0, 2, 3, 1)  # (T, S, S, C)
        v = data.normalize(clip_px)[None].to(device)  # (1, C, T, S, S)
        t_emb = embed([caps[rel][0]])
        sp, sd = patch.scores(v, t_emb)[0], dense.scores(v, t_emb)[0]  # (T', h*w) each
        mp, md = masking.topk_mask(sp[None], 0.6)[0], masking.topk_mask(sd[None], 0.6)[0]
        ious.append(((mp & md).sum() / (mp | md).sum()).item())
        ranks = lambda s: s.argsort(-1).argsort(-1).float()  # noqa: E731  (ranks within each time slice)
        rp, rd = ranks(sp), ranks(sd)
        rp, rd = rp - rp.mean(-1, keepdim=True), rd - rd.mean(-1, keepdim=True)
        rhos.append(((rp * rd).sum(-1) / (rp.norm(dim=-1) * rd.norm(dim=-1))).mean().item())  # Spearman per slice
    L = grid[1] * grid[2]
    k = int(0.6 * L)
    chance = (k * k / L) / (2 * k - k * k / L)  # expected IoU of two independent random masks of k out of L
    print(f"agreement dense vs patch, {len(ious)} demo videos x {Ta} frames, ratio 0.6, CLIP weights "
          f"'{args.clip_pretrained}': mask IoU {np.mean(ious):.3f} (chance {chance:.3f}), "
          f"Spearman rho of the scores {np.mean(rhos):.3f} (chance 0)")
    if args.clip_pretrained == "none":
        print("  (random CLIP weights: this agreement says nothing about real CLIP; rerun with --clip-pretrained openai)")
