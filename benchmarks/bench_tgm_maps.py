"""
TGM at the paper's cost (Sec. 5: "15 hours for TGM vs. 13 hours for MGM"): text-guided masks from maps made once,
offline (maps.py, pretrain.py --tgm-maps), against CLIP in the step ('patch', the paper's recipe,
and 'dense'), side by side in one process on this machine:

  1. agreement with the paper's recipe, on the demo with the demo CLIP: for each val video, the mask from its maps
     against the online 'patch' mask of the same clip and caption (IoU per clip, mean), and the share of the main
     object each hides ("object coverage", as benchmarks/bench_mask_coverage.py); on the val view (centre window,
     centre crop) and on a pretraining view (multi-scale crop, flipped every other video), where the map is
     carried through the crop while the online masks see the cropped frames;
  2. what a step costs: the MAE step a tube step consists of, the same step plus the online TGM masks of its batch,
     and the maps' work per clip, which runs in the loader workers (read, carry through the crop, top-k) next to
     the decode every mask needs; at demo size (vit_tiny, 16 clips of 8 x 64, the demo CLIP) and at the paper's
     shapes (ViT-B, 2 clips of 16 x 224, ratio 0.6, ViT-B/32 with random weights: its speed does not depend on them);
  3. the offline cost: time and bytes per video on the demo, and per stored frame at real sizes with ViT-B/32,
     projected for Kinetics-400 and Something-Something v2.
Medians of --repeats runs, steps alternated (tube, then TGM) so that both see the same load.

    python benchmarks/bench_tgm_maps.py                     # everything (a few minutes on 2 CPU cores)
    python benchmarks/bench_tgm_maps.py --skip vitb offline # the demo part only
"""
import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: flat layout
import data  # noqa: E402
import demo as D  # noqa: E402
import frozen_clip  # noqa: E402
import maps  # noqa: E402
import masking  # noqa: E402
import model as M  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (medians)")
parser.add_argument("--maps", nargs="+", default=["patch:4:4", "patch:4:8", "patch:4:16", "dense:4:4", "patch:8:4"],
                    help="FEATURES:CELLS:FRAME_STRIDE of the demo maps to compare (4 cells = one per token of a full-frame "
                    "crop, maps.py's default there; stride 4 its default)")
parser.add_argument("--patch-images", type=int, default=256, help="ViT-B part: CLIP images timed for 'patch', scaled "
                    "to the clip's 3,136 (a full batch of them takes minutes on a CPU)")
parser.add_argument("--skip", nargs="*", default=[], choices=["agreement", "demo", "vitb", "offline"])
args = parser.parse_args()
torch.manual_seed(0)
print(f"machine: {os.cpu_count()} cores, torch {torch.__version__} on {torch.get_num_threads()} threads")


def median_ms(fn, repeats=args.repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def alternated_ms(fns, repeats=args.repeats):
    """Median ms of each fn, run in turns (one of each per round) so that all see the same load."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for t, fn in zip(times, fns):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [1e3 * statistics.median(t) for t in times]


demo = D.demo_dataset()
captions = data.read_captions(demo["captions"])
clip_name, clip_pretrained = D.clip_for(demo)  # OpenAI's ViT-B/32 where it can be had, else the demo CLIP
clip, tokenizer = frozen_clip.load_clip(clip_name, clip_pretrained)
embed = frozen_clip.TextEmbedder(clip, tokenizer)
val = [(os.path.join(demo["root"], rel), rel) for rel, _ in data.read_list(demo["val"])]
T, S = 8, 64
cfg = M.ModelConfig(img_size=S, num_frames=T)
maps_dirs = {}

# -----------------------------------------------------------------------------
# 3 (first: part 1 needs the maps). Offline: the demo val videos' maps, timed
tmp = tempfile.TemporaryDirectory()
identity = maps.maps_identity(clip_name, clip_pretrained, captions, [r for _, r in val])
print(f"\n3. offline maps of the {len(val)} demo val videos ({clip_name}, {clip_pretrained})")
for spec in args.maps:
    features, cells, stride = spec.split(":")[0], int(spec.split(":")[1]), int(spec.split(":")[2])
    folder = os.path.join(tmp.name, spec.replace(":", "_"))
    t0 = time.perf_counter()
    maps.make_maps(clip, tokenizer, val, captions, folder, identity, cells=cells, frame_stride=stride,
                      features=features)
    secs = time.perf_counter() - t0
    size = sum(os.path.getsize(maps.map_path(folder, r)) for _, r in val)
    label = f"{features}, {cells} cells, every {stride}th frame"
    print(f"   {label}: {1e3 * secs / len(val):.1f} ms and {size / len(val) / 1024:.1f} KiB per video "
          f"(72 frames of 96 x 128, 3 captions)")
    maps_dirs[label] = folder

# -----------------------------------------------------------------------------
# 1. agreement with the online masks, on the demo
if "agreement" not in args.skip:
    objects = np.load(demo["objects"])
    views = {"val view": [], "pretraining view": []}  # per clip: (video, crop, frame size, indices, rel, object)
    rng = np.random.default_rng(0)
    for n, (path, rel) in enumerate(val):
        info = data.probe_video(path)
        centre = data.test_indices(info.num_frames, T, 4, 0, num_views=1)
        train = data.pretrain_indices(info.num_frames, T, 4, rng)
        crop = data.multiscale_crop(info.height, info.width, S, flip=False, rng=rng)
        for name, idx, c in (("val view", centre, data.uniform_crop(info.height, info.width, S, 0, num_crops=1)),
                             ("pretraining view", train, dataclasses.replace(crop, flip=n % 2 == 1))):
            frames = data.read_frames(path, idx)
            video = data.normalize(data.apply_crop(torch.from_numpy(frames).permute(0, 3, 1, 2), c, S, torch.float32)
                                   .permute(0, 2, 3, 1))  # (C, T, S, S)
            obj = torch.from_numpy(objects[os.path.splitext(os.path.basename(rel))[0]][idx]).float()
            views[name].append(dict(video=video, crop=c, idx=idx, rel=rel,
                                    object=masking.token_sums(obj, c, cfg.grid, (S, S)).flatten()))
    print(f"\n1. agreement with the paper's 'patch' masks (online, CLIP on the clip's own pixels), ratio 0.6, "
          f"{len(val)} demo val videos, the first caption, {clip_name}; IoU of two unrelated masks: {0.6 / 1.4:.3f}")
    print("| view | masks | IoU with patch | object coverage |\n| --- | --- | --- | --- |")
    for name, clips in views.items():
        videos = torch.stack([c["video"] for c in clips])
        text = embed([captions[c["rel"]][0] for c in clips])
        objs = torch.stack([c["object"] for c in clips])
        ref = masking.TextGuidedMasker(clip, "patch", 0.6)(videos, text, torch.Generator().manual_seed(0))
        rows = {"online patch (the paper's)": ref,
                "online dense": masking.TextGuidedMasker(clip, "dense", 0.6)(videos, text, torch.Generator().manual_seed(0))}
        for label, folder in maps_dirs.items():
            reader, masker, masks = maps.TextMaps(folder), maps.TextMapMasker(cfg.grid, 0.6), []
            for c in clips:
                text_maps, stored = reader.load(c["rel"], captions[c["rel"]])
                nearest = np.abs(stored[None, :] - c["idx"][:, None]).argmin(1)
                sample = {"video": c["video"], "text_map": text_maps[0, nearest], "crop": c["crop"]}
                masks.append(masker(sample, torch.Generator().manual_seed(0))[0])
            rows[f"maps: {label}"] = torch.stack(masks)
        for label, m in rows.items():
            iou = ((m & ref).sum(1) / (m | ref).sum(1)).mean().item()
            print(f"| {name} | {label} | {iou:.3f} | {masking.object_coverage(m, objs).mean():.3f} |")


# -----------------------------------------------------------------------------
# 2. what a step costs


def step_costs(title, cfg, batch, tgm_clip, patch_images=None):
    """The MAE step (bf16 autocast, AdamW) with a tube mask vs + online TGM masks; the maps' loader work per clip."""
    mae = M.VideoMAE(cfg)
    opt = torch.optim.AdamW(mae.parameters(), fused=True)
    T_, S_ = cfg.num_frames, cfg.img_size
    video = torch.randn(batch, 3, T_, S_, S_)
    tube = masking.tube_mask(batch, cfg.grid, 0.6)
    text = torch.nn.functional.normalize(torch.randn(batch, tgm_clip.text_projection.shape[1]), dim=-1)

    def step(mask):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _, _ = mae(video, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()

    dense = masking.TextGuidedMasker(tgm_clip, "dense", 0.6)
    patch = masking.TextGuidedMasker(tgm_clip, "patch", 0.6)

    def online(masker, video_part=video):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return masker(video_part, text[:len(video_part)])

    # the maps' work per clip in a loader worker: read the .npz (16-frame map of a 4:3 frame), carry, top-k
    cells = S_ // cfg.patch_size
    folder = tempfile.mkdtemp(dir=tmp.name)
    stored = np.arange(0, 300, 4)  # a 10 s video at 30 fps, every 4th frame
    fake = np.random.default_rng(0).standard_normal((3, len(stored), cells, cells * 4 // 3)).astype(np.float16)
    with open(os.path.join(folder, "v.mp4.npz"), "wb") as f:
        np.savez(f, maps=fake, frames=stored, captions=np.array(["a", "b", "c"]))
    reader, masker = maps.TextMaps(folder), maps.TextMapMasker(cfg.grid, 0.6)
    crop = data.multiscale_crop(256, 341, S_, rng=np.random.default_rng(0))
    idx = data.pretrain_indices(300, T_, 4, np.random.default_rng(0))

    def loader_maps():
        m, frames_ = reader.load("v.mp4", ["a", "b", "c"])
        nearest = np.abs(frames_[None, :] - idx[:, None]).argmin(1)
        return masker({"video": video[0], "text_map": m[1, nearest], "crop": crop})

    from_maps = loader_maps()[0][None].expand(batch, -1).clone()  # (B, N) what the loader hands the step
    tube_ms, maps_step_ms, dense_ms = alternated_ms([lambda: step(tube), lambda: step(from_maps), lambda: online(dense)])
    per_clip_ms = median_ms(loader_maps)
    if patch_images:  # the paper's patch recipe on a part of one clip's patches, scaled to the whole batch
        t = cfg.tubelet_size  # whole tubelets of frames
        frames_needed = max(t, t * (patch_images // (t * cfg.grid[1] * cfg.grid[2])))
        part = video[:1, :, :frames_needed]
        patch_ms = median_ms(lambda: online(patch, part), repeats=1) * batch * T_ / frames_needed
        how = f"timed on {frames_needed} frame(s) of one clip, scaled to {batch} x {T_}"
    else:
        patch_ms = median_ms(lambda: online(patch))
        how = "timed on the batch"
    print(f"\n2. {title}: one step, medians of {args.repeats}, alternated")
    print("| masks | ms per step | x a tube step |\n| --- | --- | --- |")
    print(f"| tube (in the loader) | {tube_ms:.0f} | 1.00 |")
    print(f"| TGM maps (in the loader; the step's mask came from them) | {maps_step_ms:.0f} | {maps_step_ms / tube_ms:.2f} |")
    print(f"| TGM online dense (CLIP in the step) | {tube_ms + dense_ms:.0f} | {(tube_ms + dense_ms) / tube_ms:.2f} |")
    print(f"| TGM online patch, the paper's ({how}) | {tube_ms + patch_ms:.0f} | {(tube_ms + patch_ms) / tube_ms:.2f} |")
    print(f"   the maps' loader work: {per_clip_ms:.1f} ms per clip ({per_clip_ms * batch:.0f} ms per step of {batch} "
          f"clips, spread over the loader workers, next to each clip's decode)")


if "demo" not in args.skip:
    step_costs(f"demo size (vit_tiny, 16 clips of {T} x {S}, {clip_name})", M.make_config("vit_tiny", img_size=S, num_frames=T),
               16, clip)
if "vitb" not in args.skip:
    b32, _ = frozen_clip.load_clip("ViT-B-32-quickgelu", "none")
    step_costs("the paper's shapes (ViT-B, 2 clips of 16 x 224, ViT-B/32 random weights)",
               M.make_config("vit_base", img_size=224, num_frames=16), 2, b32, patch_images=args.patch_images)

# -----------------------------------------------------------------------------
# 3. offline at real sizes: ViT-B/32 over whole frames, per stored frame, projected
if "offline" not in args.skip:
    b32, b32_tok = frozen_clip.load_clip("ViT-B-32-quickgelu", "none")
    print("\n3. offline at real sizes, ViT-B/32, 14 cells along the short side, 3 captions (per stored frame: 'patch' "
          "timed on one frame, 'dense' on 8)")
    print("| dataset | frames (H x W) | stored per video | features | CLIP images per video | CLIP s per stored frame "
          "| s per video | KiB per video | training set, this CPU | training set, maps |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    # K400: 240k train videos of ~10 s at 30 fps, 320 px short side after VideoMAE's resize; every 4th frame.
    # SSv2: 169k train videos of ~4 s at 12 fps, 240 px high; every 2nd frame (its sampling rate)
    for name, n_videos, (H, W), n_frames, stride in (("Kinetics-400", 240_000, (320, 426), 300, 4),
                                                    ("SSv2", 169_000, (240, 427), 48, 2)):
        for features, n in (("patch", 1), ("dense", 8)):
            frames = np.random.default_rng(0).integers(0, 256, (n, H, W, 3), dtype=np.uint8)
            ms = median_ms(lambda: maps.frame_maps(b32, b32_tok, frames, ["a", "b", "c"], 14, features),
                           repeats=1) / n
            stored = -(-n_frames // stride)
            kib = 3 * stored * 14 * round(14 * W / H) * 2 / 1024  # float16, before npz's few hundred bytes of headers
            per_video = ms * stored / 1e3
            images = stored * 14 * round(14 * W / H) if features == "patch" else stored  # 'dense': one 448 px pass each
            print(f"| {name} | {n_frames} ({H} x {W}) | {stored} | {features} | {images:,} | {ms / 1e3:.2f} | {per_video:.1f} | "
                  f"{kib:.0f} | {per_video * n_videos / 3600:.0f} CPU-hours | {kib * n_videos / 2 ** 20:.1f} GiB |")
tmp.cleanup()
