"""Decode + augment throughput of data.py's clip reader: seeking vs decoding from the start.

Sec. 4.2 / "Computational Efficiency" (Sec. 5): data loading, not the model, is the bottleneck of video
MAE pretraining, so the reader seeks to the keyframe before a clip and decodes only from there. This
prints clips/s for one loader worker (one process, one torch thread, PyAV's own decoder threads) on
VideoMAE pretraining clips (16 frames at stride 4, multi-scale crop to 224, ImageNet normalisation) from
a few-minute 320p H.264 video, for the seeking reader and for decoding from the start, and their ratio
(medians over repeats).

    python benchmarks/bench_decode.py                      # 3-minute video, 5 repeats
    python benchmarks/bench_decode.py --minutes 1 --repeats 3 --short-side 256

The test video is written once into $TGM_CACHE/bench (default ~/.cache/tgm/bench): x264 defaults for
keyframes (keyint 250, scene cuts) and B-frames, like a typical web video.
"""
import argparse
import os
import platform
import statistics
import sys
import time

import av
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--minutes", type=float, default=3.0, help="length of the test video in minutes")
parser.add_argument("--height", type=int, default=320, help="video height in pixels (320p; width 16:9)")
parser.add_argument("--num-frames", type=int, default=16, help="frames per clip; paper: 16")
parser.add_argument("--sampling-rate", type=int, default=4, help="temporal stride; paper: 4 for K400")
parser.add_argument("--input-size", type=int, default=224, help="crop size; paper: 224")
parser.add_argument("--clips", type=int, default=8, help="clips per repeat for the seeking reader")
parser.add_argument("--start-clips", type=int, default=3, help="clips per repeat when decoding from the start (slow)")
parser.add_argument("--repeats", type=int, default=5, help="repeats; the median is reported")
parser.add_argument("--short-side", type=int, default=None, help="also time seeking + decoding at this short side")
args = parser.parse_args()

# ----------------------------------------------------------------------------- the test video, once


def make_video(path, seconds, H, fps=25):
    """A textured scene with moving shapes: cheap to draw, not trivially compressible."""
    W = (H * 16 // 9) // 2 * 2  # yuv420p needs even sides
    tmp = path + ".tmp.mp4"
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 60, (H, W, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    with av.open(tmp, "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.height, s.width, s.pix_fmt = H, W, "yuv420p"
        s.options = {"preset": "veryfast", "crf": "23"}  # x264 defaults otherwise: keyint 250, B-frames
        for i in range(int(seconds * fps)):
            shift = i % W
            a = np.roll(texture, shift, axis=1) + np.uint8(40 + 30 * np.sin(i / 50))
            for k in range(3):  # three discs on their own circular paths
                cx = W / 2 + W / 3 * np.cos(i / (40 + 17 * k) + k)
                cy = H / 2 + H / 3 * np.sin(i / (30 + 11 * k) + 2 * k)
                a[(xx - cx) ** 2 + (yy - cy) ** 2 < (H / 10) ** 2] = (200, 80 + 50 * k, 60 * k)
            c.mux(s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
        c.mux(s.encode())
    os.replace(tmp, path)  # atomic: an interrupted run never leaves a half video behind


cache = os.path.join(os.environ.get("TGM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tgm"), "bench")
os.makedirs(cache, exist_ok=True)
path = os.path.join(cache, f"bench-{args.height}p-{args.minutes:g}min.mp4")
if not os.path.exists(path):
    t0 = time.time()
    make_video(path, args.minutes * 60, args.height)
    print(f"wrote {path} in {time.time() - t0:.0f} s")
info = data.probe_video(path)
with av.open(path) as c:
    keyframes = sum(p.is_keyframe for p in c.demux(c.streams.video[0]))

# ----------------------------------------------------------------------------- timing

torch.set_num_threads(1)  # what a DataLoader worker gets


def clip_rate(n_clips, rng, seek, short_side=None):
    """clips/s for n_clips pretraining clips: read (seek or from the start), crop, resize, normalise."""
    t0 = time.perf_counter()
    for _ in range(n_clips):
        frames, _, _, _ = data.read_clip(path, lambda i: data.pretrain_indices(i.num_frames, args.num_frames, args.sampling_rate, rng),
                                         seek=seek, short_side=short_side)
        crop = data.multiscale_crop(info.height, info.width, args.input_size, rng=rng)
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (T, C, H, W)
        video = data.normalize(data.apply_crop(x, crop, args.input_size).permute(0, 2, 3, 1))  # (C, T, S, S)
        assert video.shape == (3, args.num_frames, args.input_size, args.input_size)
    return n_clips / (time.perf_counter() - t0)


runs = {"seek": [], "from start": []}
if args.short_side:
    runs[f"seek + short side {args.short_side}"] = []
for r in range(args.repeats):
    runs["seek"].append(clip_rate(args.clips, np.random.default_rng(r), seek=True))
    runs["from start"].append(clip_rate(args.start_clips, np.random.default_rng(r), seek=False))
    if args.short_side:
        runs[f"seek + short side {args.short_side}"].append(clip_rate(args.clips, np.random.default_rng(r), True, args.short_side))

print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, PyAV {av.__version__}, "
      f"torch threads 1")
print(f"video: {info.width}x{info.height}, {info.num_frames} frames ({info.num_frames / info.fps / 60:.1f} min), "
      f"{keyframes} keyframes; clips: {args.num_frames} x {args.sampling_rate}, crop {args.input_size}")
med = {k: statistics.median(v) for k, v in runs.items()}
for k, v in med.items():
    print(f"{k:>24s}: {v:7.2f} clips/s  (median of {args.repeats}; runs {', '.join(f'{x:.2f}' for x in runs[k])})")
print(f"{'seek / from start':>24s}: {med['seek'] / med['from start']:7.1f}x")
