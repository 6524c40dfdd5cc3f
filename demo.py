"""The built-in demo: what every stage runs on when no --data is given. Not a stage of the paper (docs/demo.md).

A synthetic video dataset (8 classes, shape x motion; three captions per video that say what one frame shows, as
BLIP-2's keyframe captions do), written once into $TGM_CACHE (default ~/.cache/tgm); a small CLIP trained on its
frames and captions (the demo CLIP), which stands in for OpenAI's weights offline; and demo-sized flag values, so
that every stage runs in minutes on a CPU. The stages call one entry, `fill(parser, argv, stage)`. For example:
    python pretrain.py --mask tgm --ratio 0.6 --contrastive        # the demo, end to end
Tests: python -m pytest -q tests/test_demo.py
"""
import contextlib
import fcntl
import json
import math
import os
import re
import shutil
import tempfile

import av
import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import frozen_clip
import model as M


# -----------------------------------------------------------------------------
# The demo dataset
# Shaded, patterned shapes over a lit background that drifts (the camera pans), with a small distractor. A class is
# what the actor is (its shape) and how it moves in place (spinning, or pulsing with a throbbing light): the paper's
# classifiers mean-pool every token, so a class must live in what the tokens show, not in where the actor goes.
# Shading, pattern and glow give the normalised-pixel target something to predict inside a patch. Size, background,
# light and distractor are drawn independently of the class, and both motions are periodic with a random phase, so
# no window of the video is special.

DEMO_VERSION = 7  # in the cache folder's name: a new version renders the dataset anew (history: docs/demo.md)
DEMO_SHAPES = ["circle", "square", "triangle", "star"]  # no diamond: a spinning square is a spinning diamond
DEMO_MOTIONS = [("spinning", "spins"), ("pulsing", "pulses")]  # (class word, the verb a caption would use)
DEMO_ACTIONS = [(f"{m} {s}", f"{v}") for s in DEMO_SHAPES for m, v in DEMO_MOTIONS]  # label = 2 * shape + motion
DEMO_COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 230), "yellow": (235, 215, 40),
                "purple": (150, 60, 200), "orange": (245, 140, 30), "white": (240, 240, 240), "pink": (240, 120, 190)}
DEMO_BACKGROUNDS = {"dark blue": (20, 30, 80), "dark green": (20, 70, 35), "grey": (90, 90, 90), "brown": (90, 60, 30)}
DEMO_TEXTURES = ["striped", "checkered", "dotted", "speckled"]
DEMO_SIZE, DEMO_FRAMES = (72, 96), 40  # (H, W), T: room for the 8 x 4 clip's 64 px crops, and fast to write
# videos per class: unlabelled (the pretraining list adds the train videos, as K400's train split is pretrained on,
# then finetuned on), labelled train, val. More unlabelled than labelled: where self-supervised pretraining pays.
DEMO_COUNTS = dict(pretrain=135, train=25, val=15)  # pretraining list: 8 x (135 + 25) = 1,280 = 80 steps of 16
# the renderer's knobs: the actor's radius (px; a third of the frame's height, so the class reaches many tokens);
# spin (radians per frame); pulse depth (fraction of the radius) and period (frames); the background's light (+- grey
# levels) and drift (px per frame); the objects' pattern contrast and frequency (radians per radius); one-sided
# shading; the actor's glow (grey levels at its centre; white: in the actor's colour it tints the background with the
# colour the caption names) and reach (radii); how much a pulsing actor's colour and glow swing (fractions); patterns
# tied to the shape; the share of actors in their shape's own colours
DEMO_KNOBS = dict(radius=(22, 28), spin=(0.10, 0.16), pulse=0.25, period=(18, 28), light=35, bg_drift=0.25,
                  obj_tex=0.4, obj_f=(1.5, 2.5), shade=0.45, glow=60, glow_sigma=2.0, pulse_light=0.35, pulse_glow=0.8,
                  kind_texture=True, kind_colour=1.0)


def _shape_mask(shape, u, v):
    """Inside-test in the object's own coordinates (radius 1)."""
    if shape == "circle":
        return u * u + v * v <= 1
    if shape == "square":
        return np.maximum(abs(u), abs(v)) <= 0.8
    if shape == "star":  # five rounded points: the radius swings between 0.45 and 1 around the centre
        return np.hypot(u, v) <= 0.45 + 0.55 * ((1 + np.cos(5 * np.arctan2(v, u))) / 2) ** 2
    return (v <= 0.6) & (v >= 1.8 * abs(u) - 1.0)  # triangle, apex up


def _texture(kind, u, v, params):
    """A two-tone pattern (+1 / -1) of an object's own coordinates u, v (radius 1)."""
    f, phi, grid = params
    u, v = f * u, f * v  # one period of the pattern is 2 pi
    if kind == "striped":
        return np.sign(np.sin(u * np.cos(phi) + v * np.sin(phi)))
    if kind == "checkered":
        return np.sign(np.sin(u) * np.sin(v))
    if kind == "dotted":
        return np.where(np.cos(u) + np.cos(v) > 1.0, 1.0, -1.0)
    n = grid.shape[0]  # speckled: a fixed random grid of +-1 cells, half a period wide, tiled
    return grid[np.floor(u / np.pi).astype(int) % n, np.floor(v / np.pi).astype(int) % n]


def _texture_params(rng, f_range):
    return rng.uniform(*f_range), rng.uniform(0, np.pi), rng.choice([-1.0, 1.0], size=(8, 8))


def _render_demo(rng, label):
    """One clip as uint8 (T, H, W, 3), the main object's mask (T, H, W) bool (the object that performs the action,
    which the captions name first), and the words its captions use. label = 2 * shape index + motion index."""
    K = DEMO_KNOBS
    (H, W), T = DEMO_SIZE, DEMO_FRAMES
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    # every draw comes before the class is looked at, in the same order for every class: only the actor's shape,
    # colour, pattern and motion depend on the label
    bg_name = list(DEMO_BACKGROUNDS)[rng.integers(len(DEMO_BACKGROUNDS))]
    colours = list(DEMO_COLOURS)
    ci, di = rng.choice(len(colours), size=2, replace=False)
    dshape = DEMO_SHAPES[rng.integers(len(DEMO_SHAPES))]
    tex, dtex = DEMO_TEXTURES[rng.integers(4)], DEMO_TEXTURES[rng.integers(4)]
    drift = rng.normal(size=2) * K["bg_drift"]
    light_at = rng.uniform(0, 1, size=2)
    R, ang0, phase = rng.uniform(*K["radius"]), rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)
    spin = rng.uniform(*K["spin"]) * rng.choice([-1, 1])
    period = rng.uniform(*K["period"])
    cx0, cy0 = W / 2 + rng.uniform(-10, 10), H / 2 + rng.uniform(-5, 5)
    d0, dv, drad, dang = (rng.uniform([12, 12], [W - 12, H - 12]), rng.normal(size=2) * 0.1, rng.uniform(5, 7),
                          rng.uniform(0, 6))
    tp, dtp = _texture_params(rng, K["obj_f"]), _texture_params(rng, K["obj_f"])
    # the class: the actor's shape, and its motion in place
    shape, (motion, _) = DEMO_SHAPES[label // len(DEMO_MOTIONS)], DEMO_MOTIONS[label % len(DEMO_MOTIONS)]
    t = np.arange(T, dtype=np.float32)
    # what the actor is shows in every frame, as a Kinetics class's objects do: each shape comes in its own two colours
    # (circles red or green, ...) and wears its own pattern; the distractor keeps every colour and pattern in play
    if rng.random() < K["kind_colour"]:
        ci = 2 * DEMO_SHAPES.index(shape) + (ci % 2)
        di = di if di != ci else (ci + 3) % len(colours)
    if K["kind_texture"]:
        tex = DEMO_TEXTURES[DEMO_SHAPES.index(shape)]
    r, ang, light_of, glow_of = np.full(T, R), np.full(T, ang0), np.ones(T), np.ones(T)
    if motion == "spinning":   # turns at a steady rate; shading and pattern turn with it (circles show it so)
        ang = ang0 + spin * t
    elif motion == "pulsing":  # grows and shrinks around its size, a sinus of a random phase, and its light throbs
        beat = np.sin(2 * np.pi * t / period + phase)
        r, light_of, glow_of = R * (1 + K["pulse"] * beat), 1 + K["pulse_light"] * beat, 1 + K["pulse_glow"] * beat
    x, y = np.full(T, cx0), np.full(T, cy0)
    # the background: its colour, lit by a spot of light, on a larger canvas that drifts (the camera pans)
    pad = int(np.ceil(np.abs(drift).max() * T)) + 1
    cy, cx = np.mgrid[0:H + 2 * pad, 0:W + 2 * pad].astype(np.float32)
    ly, lx = light_at * (H + 2 * pad, W + 2 * pad)
    light = K["light"] * (1 - 2 * np.sqrt((cy - ly) ** 2 + (cx - lx) ** 2) / np.hypot(H, W))
    canvas = np.array(DEMO_BACKGROUNDS[bg_name], np.float32) + light[..., None]
    off = (pad + np.round(drift[None] * (t[:, None] - T / 2))).astype(int)  # (T, 2) the camera's offset per frame
    video = np.stack([canvas[oy:oy + H, ox:ox + W] for oy, ox in off])  # (T, H, W, 3)
    # the actor's white light on the background, falling off over a few radii; all frames at once
    fall = np.exp(-((xx[None] - x[:, None, None]) ** 2 + (yy[None] - y[:, None, None]) ** 2)
                  / (2 * (K["glow_sigma"] * r[:, None, None]) ** 2))
    video += K["glow"] * glow_of[:, None, None, None] * fall[..., None]
    objects = [(d0[0] + dv[0] * (t - T / 2), d0[1] + dv[1] * (t - T / 2), np.full(T, drad), np.full(T, dang),
                colours[di], dshape, dtex, dtp),                  # the distractor: small, drifting slowly
               (x, y, r, ang, colours[ci], shape, tex, tp)]       # the actor, drawn last: what it covers is its own
    main_mask = np.zeros((T, H, W), bool)
    for n, (x0, y0, rad, a, name, shp, tx, params) in enumerate(objects):
        col = np.array(DEMO_COLOURS[name], np.float32)
        for f in range(T):
            # draw inside the object's bounding box only
            ya, yb = max(int(y0[f] - rad[f]) - 1, 0), min(int(y0[f] + rad[f]) + 2, H)
            xa, xb = max(int(x0[f] - rad[f]) - 1, 0), min(int(x0[f] + rad[f]) + 2, W)
            if ya >= yb or xa >= xb:
                continue
            dx, dy = xx[ya:yb, xa:xb] - x0[f], yy[ya:yb, xa:xb] - y0[f]
            c, sn = np.cos(a[f]), np.sin(a[f])
            u, v = (c * dx + sn * dy) / rad[f], (-sn * dx + c * dy) / rad[f]
            inside = _shape_mask(shp, u, v)
            # lit from one side in the object's own frame (so spinning turns the shading), its pattern, a dark rim
            shade = ((1 - K["shade"] * (1 - u.clip(-1, 1)) / 2)
                     * (1 + K["obj_tex"] * 0.5 * (_texture(tx, u, v, params) - 1)))
            shade = np.where(_shape_mask(shp, u * 1.15, v * 1.15), shade, 0.35)
            box = video[f, ya:yb, xa:xb]
            if n == len(objects) - 1:
                shade = shade * light_of[f]
                main_mask[f, ya:yb, xa:xb] |= inside
            box[inside] = (col * shade[..., None])[inside]
    words = dict(colour=colours[ci], shape=shape, texture=tex, action=DEMO_ACTIONS[label],
                 verb=DEMO_MOTIONS[label % 2][1], bg=bg_name, dcolour=colours[di], dshape=dshape, dtexture=dtex)
    return np.clip(video, 0, 255).astype(np.uint8), main_mask, words


# What one frame shows, the main object first, as BLIP-2 captions a keyframe: the actor's shape (half of its class),
# never its motion but in the rare caption below, so they correlate with the class without naming it.
DEMO_CAPTIONS = ["a {texture} {colour} {shape} and a small {dcolour} {dshape} on a {bg} background",
                 "a glowing {colour} {shape} with a {texture} pattern in front of a {bg} wall",
                 "a picture of a {colour} {texture} {shape} next to a small {dcolour} {dshape}",
                 "a {colour} {shape} lighting up a {bg} surface",
                 "an image of a {texture} {colour} {shape}",
                 "a {colour} {shape} and a {dtexture} {dcolour} {dshape} on a {bg} background"]
DEMO_ACTION_CAPTION = "a {colour} {shape} that {verb} on a {bg} background"
DEMO_ACTION_RATE = 0.1  # the share of videos with one caption that names the motion (one frame rarely shows it)


def _demo_captions(w, rng):
    """Three captions, as BLIP-2 gives for three keyframes; about one video in ten gets one that names the motion."""
    caps = [DEMO_CAPTIONS[i].format(**w) for i in rng.choice(len(DEMO_CAPTIONS), size=3, replace=False)]
    if rng.random() < DEMO_ACTION_RATE:
        caps[rng.integers(3)] = DEMO_ACTION_CAPTION.format(**w)
    return [re.sub(r"\ba (?=[aeiou])", "an ", c) for c in caps]  # "an orange square"


def write_video(path, frames, fps=25, gop=16):
    """uint8 (T, H, W, 3) -> H.264 mp4. No B-frames and no scene-cut keyframes: the P-frames carry the
    motion vectors that motion-guided masking reads, and keyframes come every `gop` frames."""
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = "yuv420p"
        s.options = {"g": str(gop), "bf": "0", "sc_threshold": "0", "preset": "ultrafast", "crf": "20"}
        for a in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
        c.mux(s.encode())


def _cache_dir():
    return os.environ.get("TGM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tgm")


def demo_dataset(cache_dir=None, seed=0, pretrain_per_class=None, train_per_class=None, val_per_class=None):
    """The built-in demo dataset, generated on first use -> dict(root, pretrain, train, val, class_names, captions,
    objects) of paths. pretrain: the unlabelled videos, then the train ones (pretrain.py reads no label); objects:
    each labelled video's main-object mask, bool (T, H, W), by file stem. Counts per class; None: DEMO_COUNTS."""
    counts = dict(DEMO_COUNTS)
    counts.update({k: v for k, v in (("pretrain", pretrain_per_class), ("train", train_per_class),
                                     ("val", val_per_class)) if v is not None})
    cache_dir = cache_dir or _cache_dir()
    name = f"demo-v{DEMO_VERSION}-seed{seed}"
    name += "" if counts == DEMO_COUNTS else "-{pretrain}x{train}x{val}".format(**counts)
    root = os.path.join(cache_dir, name)
    paths = {k: os.path.join(root, k + ext) for k, ext in [("pretrain", ".txt"), ("train", ".txt"), ("val", ".txt"),
             ("class_names", ".txt"), ("captions", ".jsonl"), ("objects", ".npz")]}
    paths["root"] = root
    if os.path.isdir(root):
        return paths
    os.makedirs(cache_dir, exist_ok=True)
    # build in a temporary folder and rename it into place: a crash never leaves a half dataset, and
    # several processes (DDP ranks) starting at once each build one and the first rename wins
    tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir)
    try:
        os.makedirs(os.path.join(tmp, "videos"))
        lists, caps, objects = {"unlabelled": [], "train": [], "val": []}, [], {}
        k, bar = 0, tqdm(total=sum(counts.values()) * len(DEMO_ACTIONS), desc=f"writing the demo once into {root}")
        for split in lists:
            per_class = counts["pretrain" if split == "unlabelled" else split]
            for label in range(len(DEMO_ACTIONS)):
                for _ in range(per_class):
                    # one stream per video, k counting over all splits: no two videos share a stream
                    rng = np.random.default_rng([seed, k])
                    frames, main_mask, words = _render_demo(rng, label)
                    stem = f"{split}_{k:05d}"
                    write_video(os.path.join(tmp, "videos", stem + ".mp4"), frames)
                    bar.update()
                    if split != "unlabelled":  # the masks serve measurements on labelled videos
                        objects[stem] = main_mask
                    lists[split].append(f"videos/{stem}.mp4 {label}\n")
                    caps.append(json.dumps({"video": f"videos/{stem}.mp4", "captions": _demo_captions(words, rng),
                                            "source": "demo"}) + "\n")
                    k += 1
        bar.close()
        lists["pretrain"] = lists.pop("unlabelled") + lists["train"]
        lists.update(class_names=[a[0] + "\n" for a in DEMO_ACTIONS], captions=caps)  # every text file, by its key
        for key, lines in lists.items():
            with open(os.path.join(tmp, os.path.basename(paths[key])), "w") as f:
                f.writelines(lines)
        np.savez_compressed(os.path.join(tmp, "objects.npz"), **objects)  # a few hundred kB: masks compress well
        os.rename(tmp, root)
    except OSError:
        if not os.path.isdir(root):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


# -----------------------------------------------------------------------------
# The demo CLIP: a small open_clip model trained on the demo's own frames and captions
# NOTE: not in the paper. Offline a random CLIP gives text-guided masks that follow no word; this one, trained in about
# a minute on the demo's frames and captions, knows its colours, shapes and scenes, and is small enough for the paper's
# per-patch features in the step (1.4-1.8x a tube step). open_clip's own CLIP class, loaded like any weights file.

DEMO_CLIP_NAME = "tgm-demo-clip-v1"  # its config file's stem, the name load_clip registers it under; bump to retrain
DEMO_CLIP = {
    "embed_dim": 64,
    # 32 px images in 8 px patches: a 4 x 4 token grid, the demo MAE's own, so 'dense' features run this CLIP at its
    # trained size and 'patch' features upsample each 16 px patch to 32 px. Pooling is CLIP's class token: with mean
    # pooling the patch tokens that 'dense' reads scored the background above the object the caption names.
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 3, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
DEMO_CLIP_STEPS, DEMO_CLIP_BATCH, DEMO_CLIP_LR = 300, 128, 1e-3
DEMO_CLIP_FRAMES = 8  # frames decoded per training video, spread over its length


@contextlib.contextmanager
def _one_thread():
    """torch on one CPU thread inside the block: the demo CLIP's weights for a seed are then the same on any machine,
    and its small matrices gain little from threads (two made a busy 2-core machine's steps several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_demo_clip(videos, config_path, steps=DEMO_CLIP_STEPS, batch_size=DEMO_CLIP_BATCH, lr=DEMO_CLIP_LR,
                    seed=0, crop_scale=(0.02, 1.0)):
    """CLIP's contrastive training, from scratch, on frames and their captions -> the open_clip model, frozen, in eval
    mode; deterministic for a seed. videos: [(frames uint8 (F, H, W, 3), captions)]; config_path: an open_clip config
    (.json); crop_scale: a crop's share of the frame, from about a 'patch' feature's 16 px to the whole scene."""
    name = frozen_clip.register_config(config_path)
    tokenizer = open_clip.get_tokenizer(name)
    distinct = sorted({c for _, caps in videos for c in caps})
    ids = {c: i for i, c in enumerate(distinct)}  # two videos may share a caption: the loss tells them apart by id
    tokens = tokenizer(distinct)  # (n_captions, context): tokenised once
    rng = np.random.default_rng(seed)  # every draw of the batches below
    B = min(batch_size, len(videos))
    warmup = max(1, steps // 10)
    # fork_rng: the caller's random state is left as it was, so a run that trains this CLIP and a run that loads it
    # go on with the same draws
    with _one_thread(), torch.random.fork_rng():
        torch.manual_seed(seed)
        with frozen_clip.random_weights_meant():  # from scratch: random weights are the point
            clip = open_clip.create_model(name)
        pp = open_clip.get_model_preprocess_cfg(clip)  # the statistics TextGuidedMasker normalises CLIP's input with
        mean = torch.tensor(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)).view(1, 3, 1, 1)
        std = torch.tensor(pp.get("std", open_clip.OPENAI_DATASET_STD)).view(1, 3, 1, 1)
        size = clip.visual.image_size
        # CLIP's recipe: AdamW (0.9, 0.98), eps 1e-6, weight decay on matrices only (not gains, biases, logit scale)
        params = list(clip.parameters())
        optimizer = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
                                       {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                                      lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=True)
        clip.train()
        for step in tqdm(range(steps), desc="training the demo CLIP", leave=False, dynamic_ncols=True):
            f = ((step + 1) / warmup if step < warmup  # linear warmup, then a cosine to 0
                 else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup))))
            M.set_lr(optimizer, lr * f)
            images, caption_ids = [], []
            for v in rng.choice(len(videos), size=B, replace=False):  # distinct videos: no row's twin is a negative
                frames, captions = videos[v]
                frame = torch.from_numpy(frames[rng.integers(len(frames))]).permute(2, 0, 1)  # (C, H, W) uint8
                # the crop's area log-uniform over crop_scale: as many patch-sized crops as frame-sized ones
                area = math.exp(rng.uniform(math.log(crop_scale[0]), math.log(crop_scale[1])))
                crop = data.random_resized_crop(*frame.shape[1:], scale=(area, area), flip=True, rng=rng)
                images.append(data.apply_crop(frame, crop, size, torch.float32))  # (C, S, S) in [0, 255]
                caption_ids.append(ids[captions[rng.integers(len(captions))]])
            x = (torch.stack(images) / 255 - mean) / std  # (B, C, S, S), as CLIP's preprocessing gives it
            c = torch.tensor(caption_ids)  # (B,)
            img = F.normalize(clip.encode_image(x), dim=-1)  # (B, E)
            txt = F.normalize(frozen_clip.encode_text(clip, tokens[c]), dim=-1)  # (B, E)
            logits = clip.logit_scale.exp() * img @ txt.t()  # (B, B): cosine / tau, the positive pairs on the diagonal
            same = c[:, None] == c[None, :]  # two rows with the same caption are neither positive nor negative:
            same.fill_diagonal_(False)       # that pair leaves both denominators
            logits = logits.masked_fill(same, float("-inf"))
            labels = torch.arange(B)
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2  # both directions
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                clip.logit_scale.clamp_(0, math.log(100))  # CLIP's cap: 1 / tau <= 100
    return clip.eval().requires_grad_(False)


def demo_clip_videos(list_file, root, captions_file, num_frames=DEMO_CLIP_FRAMES):
    """The demo CLIP's training material: [(frames uint8 (F, H, W, 3), captions)], every captioned, readable video."""
    captions = data.read_captions(captions_file)
    videos = []
    for rel, _ in tqdm(data.read_list(list_file), desc="decoding demo frames", leave=False):
        if not captions.get(rel):
            continue
        path = os.path.join(root, rel)
        try:
            ids = np.linspace(0, data.probe_video(path).num_frames - 1, num_frames).round().astype(int)
            videos.append((data.read_frames(path, ids), captions[rel]))
        except data.VideoError:
            continue
    return videos


def demo_clip(demo, seed=0, name=DEMO_CLIP_NAME, config=DEMO_CLIP, steps=DEMO_CLIP_STEPS):
    """The demo CLIP of a demo dataset (demo_dataset()'s dict) -> (config path, weights path), both in the
    dataset's folder, for load_clip; trained on its train split on first use (about a minute on 2 CPU cores)."""
    config_path = os.path.join(demo["root"], f"{name}.json")
    weights = os.path.join(demo["root"], f"{name}-seed{seed}.pt")
    if not os.path.isfile(weights):
        M.write_whole(config_path, lambda f: f.write(json.dumps(config, indent=1).encode()))
        videos = demo_clip_videos(demo["train"], demo["root"], demo["captions"])
        clip = train_demo_clip(videos, config_path, steps=steps, seed=seed)
        # open_clip's own format, a state dict: open_clip.create_model(name, pretrained=weights) loads it
        M.save_checkpoint(weights, clip.state_dict())
    return config_path, weights


# -----------------------------------------------------------------------------
# The one entry the stages call: fill what the user did not type

# Demo-sized values of a stage's flags (typed flags win), so that each stage runs in minutes on a CPU: ViT-tiny on 8
# frames of 64 px; learning rates above the paper's, for a global batch of 16 and a few hundred steps (docs/demo.md).
SHAPE = dict(model="vit_tiny", num_frames=8, sampling_rate=4, input_size=64)
FLAGS = {
    "pretrain": dict(SHAPE, batch_size=16, epochs=1, warmup_epochs=0.25, blr=1e-2, save_every=1, log_interval=5,
                     num_workers=1),
    # finetuning: VideoMAE's optimiser and schedule without its augmentation and layer decay (docs/demo.md)
    "finetune": dict(SHAPE, epochs=15, batch_size=16, blr=2e-2, warmup_epochs=1, weight_decay=0.05, layer_decay=1.0,
                     mixup=0.0, cutmix=0.0, randaug_n=0, reprob=0.0),
    # linear probe: MAE's SGD and schedule at base lr 1.6 (lr 0.1 at batch 16); MAE's 0.1 underfits (docs/demo.md)
    "linear": dict(SHAPE, epochs=20, batch_size=16, blr=1.6, warmup_epochs=2, weight_decay=0.0),
    "evaluate": {},
    "caption": {},
    "masking": dict(num_frames=8, input_size=64),
    "maps": dict(input_size=64),  # the maps of the demo's pretraining clips: 64 / 16 = 4 cells a side
}


def fill(parser, argv, stage):
    """Parse a stage's command line with the demo's values as the parser's defaults -> args; typed flags win. No --data:
    the demo's lists, captions, class names and FLAGS[stage] (those that change a value are printed); the demo CLIP's
    files for --clip-pretrained demo, or on the demo when OpenAI's CLIP is out of reach (docs/design.md "Plumbing")."""
    first = parser.parse_args(argv)
    cache_dir = _cache_dir()
    on_demo = getattr(first, "data", None) is None  # masking.py's picture has no --data: its caller asks when needed
    # evaluate.py's CLIP and features are the pretraining run's: only the stages that make masks get demo defaults
    stand_in = on_demo and stage in ("pretrain", "maps", "masking")
    typed = getattr(first, "clip_pretrained", None)
    os.makedirs(cache_dir, exist_ok=True)
    # ranks that start at once build the demo once: the first holds the lock, the others then find it in the cache
    with open(os.path.join(cache_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)                      # released when the file closes
        demo = demo_dataset(cache_dir, seed=int(os.environ.get("TGM_DEMO_SEED", 0)))  # the data draw
        clip = None
        if typed == "demo" or (stand_in and typed == "openai"):
            clip = demo_clip(demo) if typed == "demo" else clip_for(demo, first.clip_model)
    if on_demo:
        defaults = dict(FLAGS[stage])
        if stage in ("finetune", "linear") and first.checkpoint != "none":
            for k in ("model", "num_frames", "input_size"):  # the checkpoint's
                defaults.pop(k)
        test = stage == "evaluate" and not first.retrieval    # the test and the pictures read the val split
        # pretraining (and its maps) read the pretraining list (unlabelled videos and the labelled train ones)
        split = "val" if test else "pretrain" if stage in ("pretrain", "maps") else "train"
        defaults.update(data=demo[split], val_data=None if test else demo["val"], root=demo["root"],
                        captions=demo["captions"], class_names=demo["class_names"])
        if stage == "masking" and first.video is None:        # the picture: the first val video, its first caption
            rel = data.read_list(demo["val"])[0][0]
            defaults.update(video=os.path.join(demo["root"], rel), caption=data.read_captions(demo["captions"])[rel][0])
        if stage == "caption":
            defaults["out"] = os.path.join("runs", "demo_captions.jsonl")
        parser.set_defaults(**{k: v for k, v in defaults.items() if k in vars(first)})
    args = parser.parse_args(argv)
    if clip:
        args.clip_model, args.clip_pretrained = clip
    if on_demo:
        filled = {k: getattr(args, k) for k in FLAGS[stage] if getattr(args, k) != getattr(first, k)}
        M.print0(f"no --data: the built-in demo dataset in {demo['root']}"
                 + (", with demo-sized " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in filled.items())
                    if filled else ""))
    # masking.py has no --tgm-maps; maps.py neither --tgm-features nor --tgm-maps
    if stand_in and getattr(args, "tgm_features", "") is None and not getattr(args, "tgm_maps", None):
        args.tgm_features = "patch" if clip and clip[1] != "openai" else "dense"
    return args


def clip_for(demo, name="ViT-B-32-quickgelu"):
    """-> (--clip-model, --clip-pretrained): OpenAI's weights for `name` where they can be had, else the demo CLIP's."""
    return (name, "openai") if _openai_clip_at_hand(name) else demo_clip(demo)


def _openai_clip_at_hand(name):
    """Whether OpenAI's weights for CLIP `name` are cached or can be downloaded; when not, say so."""
    try:
        frozen_clip.clip_weights(name, "openai")
        return True
    except frozen_clip.ClipWeightsError:
        M.print0(f"the demo uses the demo CLIP (--clip-pretrained demo), a small CLIP trained on the demo's own frames "
                 f"and captions, as OpenAI's weights for {name} are neither cached nor downloadable here")
        return False
