"""The demo CLIP (D.DEMO_CLIP, the stand-in for OpenAI's weights on the demo): what training it costs, how well
it knows the demo, whether text-guided masks (Sec. 3.3) made with it hide what the caption names, and what it makes
a demo TGM step cost.

    python benchmarks/bench_demo_clip.py                 # trains a fresh copy (about a minute), then measures
    python benchmarks/bench_demo_clip.py --cached        # measures the copy cached beside the demo data
    TGM_DEMO_SEED=1 python benchmarks/bench_demo_clip.py --cached   # the demo CLIP of the demo's data draw 1

It prints, for the trained demo CLIP, the same architecture untrained, and ViT-B/32 with random weights (the demo's
old stand-in):
  1. training time, decoding the frames included (the trainer runs on one thread);
  2. frame -> caption R@1 on the demo's val split: the centre frame of each val video (its centre square) against
     every val caption; a hit when the first is one of the video's own captions;
  3. whether the TGM mask hides the object the caption names: the renderer keeps the main object's pixels (the
     actor, which every caption names first; D.demo_dataset()["objects"]), carried through the clip's crop. For
     each val caption, per clip (8 frames, 64 px, a 4 x 4 x 4 token grid), the AUC of the TGM scores of the actor's
     tokens (>30% its pixels) against the tokens with none of it, and the share of its tokens the 0.6 mask hides
     (chance: 9 of 16, 0.56); 'dense' and 'patch' features. A CLIP blind to the words can score well here too, if
     it finds the bright actor salient; so also: per time slice, whether the actor's main token ranks higher in
     the frame when the text is "a <colour> <shape>" naming the actor than when it names the small distractor
     (a CLIP blind to the words: 50%, ties counted as misses);
  4. the pieces of a demo pretraining step, best of --repeats on this machine: the vit_tiny MAE step (16 clips of
     8 x 64 x 64, bf16 autocast) a tube step consists of, and the TGM masks of that batch.
"""
import argparse
import json
import os
import platform
import re
import sys
import time

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: flat layout
import data  # noqa: E402
import demo as D  # noqa: E402
import frozen_clip  # noqa: E402
import masking  # noqa: E402
import model as M  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--cached", action="store_true", help="measure the demo CLIP cached beside the demo data (trained "
                    "there on first use) instead of training a fresh copy")
parser.add_argument("--repeats", type=int, default=5, help="timed runs per step cost (the best is reported)")
parser.add_argument("--seed", type=int, default=0, help="the demo CLIP's seed")
args = parser.parse_args()
demo = D.demo_dataset(seed=int(os.environ.get("TGM_DEMO_SEED", 0)))  # the data draw, as the stages read it
cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
           platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
print(f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} on {torch.get_num_threads()} threads; "
      f"a shared machine's numbers vary from run to run")

# -----------------------------------------------------------------------------
# 1. train (or load) the demo CLIP
config_path = os.path.join(demo["root"], f"{D.DEMO_CLIP_NAME}.json")
if args.cached:
    config_path, weights = D.demo_clip(demo, seed=args.seed)
    clip, tokenizer = frozen_clip.load_clip(config_path, weights)
else:
    with open(config_path, "w") as f:  # the same file D.demo_clip writes: load_clip registers it
        json.dump(D.DEMO_CLIP, f, indent=1)
    t0 = time.perf_counter()
    videos = D.demo_clip_videos(demo["train"], demo["root"], demo["captions"])
    t1 = time.perf_counter()
    clip = D.train_demo_clip(videos, config_path, seed=args.seed)
    t2 = time.perf_counter()
    tokenizer = open_clip.get_tokenizer(D.DEMO_CLIP_NAME)
    print(f"\n1. training: {len(videos)} videos x {D.DEMO_CLIP_FRAMES} frames decoded in {t1 - t0:.1f} s, "
          f"{D.DEMO_CLIP_STEPS} steps of {D.DEMO_CLIP_BATCH} in {t2 - t1:.1f} s: {t2 - t0:.1f} s")
torch.manual_seed(0)
untrained, _ = frozen_clip.load_clip(config_path, "none")
b32, b32_tokenizer = frozen_clip.load_clip("ViT-B-32-quickgelu", "none")
clips = {"demo CLIP": (clip, tokenizer), "demo CLIP untrained": (untrained, tokenizer),
         "ViT-B/32 random": (b32, b32_tokenizer)}

# -----------------------------------------------------------------------------
# 2. frame -> caption R@1 on the val split
T, S, p = 8, 64, 16
captions = data.read_captions(demo["captions"])
objects = np.load(demo["objects"])
val = []  # (frames uint8 (T, S, S, 3) as the val loader cuts them, captions, the actor's share of each token (T', h*w))
for rel, _ in data.read_list(demo["val"]):
    path = os.path.join(demo["root"], rel)
    info = data.probe_video(path)
    idx = data.test_indices(info.num_frames, T, 4, 0, num_views=1)
    frames = data.read_frames(path, idx)
    crop = data.uniform_crop(info.height, info.width, S, 0, num_crops=1)  # the centre square
    x = data.apply_crop(torch.from_numpy(frames).permute(0, 3, 1, 2), crop, S, torch.uint8)  # (T, C, S, S)
    actor = torch.from_numpy(objects[os.path.splitext(os.path.basename(rel))[0]][idx])  # (T, H, W) source pixels
    share = masking.token_sums(actor, crop, (T // 2, S // p, S // p), (S, S)) / (2 * p * p)
    val.append((x.permute(0, 2, 3, 1).numpy(), captions[rel], share.flatten(1)))
texts = sorted({c for v in val for c in v[1]})


def clip_input(clip, frames):
    """uint8 (n, H, W, 3) -> (n, C, size, size) as CLIP's preprocessing gives it (TextGuidedMasker's statistics)."""
    x = data.apply_crop(torch.from_numpy(frames).permute(0, 3, 1, 2), data.Crop(0, 0, 1, 1), clip.visual.image_size,
                        torch.float32) / 255
    pp = open_clip.get_model_preprocess_cfg(clip)
    mean = torch.tensor(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)).view(3, 1, 1)
    std = torch.tensor(pp.get("std", open_clip.OPENAI_DATASET_STD)).view(3, 1, 1)
    return (x - mean) / std


print(f"\n2. frame -> caption R@1, {len(val)} val videos against their {len(texts)} captions (chance "
      f"{100 * 3 / len(texts):.1f}%)")
for name, (c, tok) in clips.items():
    with torch.no_grad():
        t = frozen_clip.TextEmbedder(c, tok)(texts)  # (n_texts, E)
        v = F.normalize(c.encode_image(clip_input(c, np.stack([v[0][T // 2] for v in val]))), dim=-1)  # (n, E)
    top = (v @ t.t()).argmax(1).tolist()
    print(f"   {name:20s} R@1 {100 * np.mean([texts[i] in v[1] for i, v in zip(top, val)]):.1f}%")

# -----------------------------------------------------------------------------
# 3. does the mask hide what the caption names?


named = re.compile(rf"\b({'|'.join(D.DEMO_COLOURS)}) ({'|'.join(D.DEMO_SHAPES)})\b")
queries = []  # (video index, caption, the actor's share of each token (T', h*w)): every caption names the actor
pairs = []  # (video index, the actor's phrase "a <colour> <shape>", the distractor's)
for i, (_, cs, share) in enumerate(val):
    queries += [(i, c, share) for c in cs]
    objects_named = list(dict.fromkeys(m.groups() for c in cs for m in named.finditer(c)))  # the actor first
    if len(objects_named) == 2 and objects_named[0][0] != objects_named[1][0]:
        pairs.append((i, *[f"a {c} {s}" for c, s in objects_named]))
print(f"\n3. TGM masks against the object the caption names: {len(queries)} val captions, {len(pairs)} clips "
      "whose captions name both objects")
for name, (c, tok) in clips.items():
    embed = frozen_clip.TextEmbedder(c, tok)
    for features in ("dense", "patch"):
        if name.startswith("ViT-B/32") and features == "patch":
            continue  # 2,048 images at 224 px per clip: minutes on a CPU, and random weights say nothing anyway
        masker = masking.TextGuidedMasker(c, features, 0.6)
        aucs, hidden = [], []
        for i, caption, share in queries:
            scores = masker.scores(data.normalize(val[i][0])[None], embed([caption]))[0]  # (T', h*w)
            on, off = scores[share > 0.3], scores[share == 0]
            if len(on) and len(off):
                aucs.append((on[:, None] > off[None, :]).float().mean().item())
                mask = masking.topk_mask(scores[None], 0.6)[0].view_as(share)  # True = masked
                hidden.append(mask[share > 0.3].float().mean().item())
        follows = []
        for i, actor_text, other_text in pairs:
            share = val[i][2]
            x = data.normalize(val[i][0])[None]
            ranks = [masker.scores(x, embed([text]))[0].argsort(1).argsort(1).float() for text in (actor_text, other_text)]
            for t in range(T // 2):
                if share[t].max() > 0:
                    a = share[t].argmax()  # the actor's main token in this time slice
                    follows.append(bool(ranks[0][t, a] > ranks[1][t, a]))
        print(f"   {name:20s} {features:5s}: AUC {np.mean(aucs):.2f}, object tokens hidden {np.mean(hidden):.2f}, "
              f"the actor ranks higher when named than when the distractor is {100 * np.mean(follows):.0f}% of {len(follows)}")

# -----------------------------------------------------------------------------
# 4. the pieces of a demo pretraining step


def best_ms(fn):
    fn()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


cfg = M.make_config("vit_tiny", img_size=S, num_frames=T)
mae = M.VideoMAE(cfg)
optimizer = torch.optim.AdamW(mae.parameters(), fused=True)
video = torch.randn(16, 3, T, S, S)
tube = masking.tube_mask(16, cfg.grid, 0.6)


def mae_step():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = mae(video, tube)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


step = best_ms(mae_step)
print(f"\n4. a demo step's pieces (16 clips of {T} x {S} x {S}, bf16 autocast, best of {args.repeats}):\n"
      f"   MAE step (all a tube step is)       {step:7.0f} ms")
for name, (c, tok) in clips.items():
    if name.endswith("untrained"):
        continue
    text = frozen_clip.TextEmbedder(c, tok)([queries[0][1] if queries else "a video"] * 16)
    for features in ("dense", "patch"):
        if name.startswith("ViT-B/32") and features == "patch":
            continue
        masker = masking.TextGuidedMasker(c, features, 0.6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ms = best_ms(lambda: masker(video, text))
        print(f"   TGM mask, {name:15s} {features:5s} {ms:7.0f} ms: a TGM step is {(step + ms) / step:.1f}x a tube step")
