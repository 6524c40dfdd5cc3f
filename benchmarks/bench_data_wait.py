"""How long pretraining waits on data: pretrain.py's own data-wait field (`data_ms` in log.jsonl) against its
step time, on real-sized clips.

Sec. 5 ("Computational Efficiency") and VideoMAE: decoding, not the model, is the usual bottleneck of video
MAE pretraining. This writes a folder of 320p H.264 videos a few seconds long (textured scenes with moving
shapes, x264 keyframes every 250 frames like web video) with one caption each, then runs pretrain.py on them as
a user would, with the default number of loader workers, logging every step, and prints per mask the median
data wait, the median step time and their ratio. A second run per mask loads in the training process (0 workers):
there the data ms is the whole CPU cost of a batch's clips and the step ms is the model alone, which shows how much
of the machine decoding takes even when the loop does not wait for it.

    python benchmarks/bench_data_wait.py                             # demo model size, tube, mgm and tgm
    python benchmarks/bench_data_wait.py --masks tube --steps 10     # a quick look
    python benchmarks/bench_data_wait.py --extra "--model vit_base --input-size 224 --num-frames 16 --repeat-aug 2"

The model defaults are the demo's (ViT-tiny, 8 frames, 64x64): the size this 2-core CPU can train. The first
step of each epoch (loader workers starting) is reported separately: on Kinetics an epoch is thousands of steps.
The videos are written once into $TGM_CACHE/bench (default ~/.cache/tgm/bench).
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
import demo as D  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--videos", type=int, default=96, help="videos in the test set")
parser.add_argument("--seconds", type=float, default=6.0, help="length of each video")
parser.add_argument("--height", type=int, default=320, help="video height (320p, 16:9)")
parser.add_argument("--masks", nargs="+", default=["tube", "mgm", "tgm"], help="one pretraining run per mask")
parser.add_argument("--steps", type=int, default=16, help="steps per run (--max-steps)")
parser.add_argument("--batch-size", type=int, default=16, help="clips per step (the demo's)")
parser.add_argument("--workers", type=int, nargs="+", default=[-1, 0],
                    help="loader workers per run; -1 = pretrain.py's default. 0 loads in the training process: its "
                         "data ms is then the whole cost of a batch's clips and its step ms the model alone")
parser.add_argument("--extra", default="--model vit_tiny --num-frames 8 --input-size 64 --tgm-features dense",
                    help="more pretrain.py flags (the model size)")
parser.add_argument("--output-dir", default="runs/bench_data_wait")
args = parser.parse_args()


def make_video(path, seconds, H, seed, fps=25):
    """A scrolling texture with three discs on their own circular paths: cheap to draw, not trivially compressible."""
    rng = np.random.default_rng(seed)
    W = (H * 16 // 9) // 2 * 2  # yuv420p needs even sides
    texture = rng.integers(0, 60, (H, W, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    speed, phase = rng.uniform(1, 4), rng.uniform(0, 2 * np.pi, 3)
    frames = np.empty((int(seconds * fps), H, W, 3), np.uint8)
    for i in range(len(frames)):
        a = np.roll(texture, int(i * speed), axis=1) + np.uint8(40 + 30 * np.sin(i / 50))
        for k in range(3):
            cx = W / 2 + W / 3 * np.cos(i / (40 + 17 * k) + phase[k])
            cy = H / 2 + H / 3 * np.sin(i / (30 + 11 * k) + 2 * phase[k])
            a[(xx - cx) ** 2 + (yy - cy) ** 2 < (H / 10) ** 2] = (200, 80 + 50 * k, 60 * k)
        frames[i] = a
    D.write_video(path, frames, fps=fps, gop=250)


cache = os.path.join(os.environ.get("TGM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tgm"), "bench")
root = os.path.join(cache, f"datawait-{args.height}p-{args.seconds:g}s-{args.videos}")
if not os.path.isdir(root):
    t0 = time.time()
    tmp = root + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "videos"))
    with open(os.path.join(tmp, "train.txt"), "w") as lst, open(os.path.join(tmp, "captions.jsonl"), "w") as cap:
        for k in range(args.videos):
            rel = f"videos/{k:05d}.mp4"
            make_video(os.path.join(tmp, rel), args.seconds, args.height, seed=k)
            lst.write(f"{rel} {k % 4}\n")
            cap.write(json.dumps({"video": rel, "captions": [f"three discs circle over a moving texture, scene {k}"]}) + "\n")
    os.rename(tmp, root)  # atomic: an interrupted run never leaves a half dataset
    print(f"wrote {args.videos} videos ({args.seconds:g} s, {args.height}p) to {root} in {time.time() - t0:.0f} s")
info = data.probe_video(os.path.join(root, "videos", "00000.mp4"))

print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
      f"videos {info.width}x{info.height}, {info.num_frames} frames at {info.fps:g} fps; pretrain.py {args.extra}")
print(f"{'mask':<6} {'workers':>7} {'data ms':>8} {'step ms':>8} {'wait/step':>9} {'loop ms':>8} {'1st step data ms':>16} {'steps':>5}")
results = []
for mask in args.masks:
    for workers in args.workers:
        workers = min(8, os.cpu_count() or 1) if workers < 0 else workers  # pretrain.py's default
        out = os.path.join(args.output_dir, f"{mask}-w{workers}")
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, os.path.join(ROOT, "pretrain.py"), "--data", os.path.join(root, "train.txt"), "--root", root,
               "--captions", os.path.join(root, "captions.jsonl"), "--mask", mask, "--batch-size", str(args.batch_size),
               "--epochs", "100", "--warmup-epochs", "1", "--max-steps", str(args.steps), "--log-interval", "1",
               "--output-dir", out, "--save-every", "1000", "--clip-pretrained", "none",
               "--num-workers", str(workers)] + args.extra.split()
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if res.returncode:
            sys.exit(f"pretrain.py failed ({mask}, {workers} workers):\n{res.stderr[-3000:]}")
        log = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
        first = [r for i, r in enumerate(log) if i == 0 or r["epoch"] != log[i - 1]["epoch"]]
        rest = [r for r in log if r not in first]
        d, s = statistics.median(r["data_ms"] for r in rest), statistics.median(r["step_ms"] for r in rest)
        loop = statistics.median(r["data_ms"] + r["step_ms"] for r in rest)
        first_ms = statistics.median(r["data_ms"] for r in first)
        results.append({"mask": mask, "workers": workers, "data_ms": d, "step_ms": s, "wait_share": d / s, "loop_ms": loop,
                        "first_data_ms": first_ms, "steps": len(log)})
        print(f"{mask:<6} {workers:>7} {d:>8.1f} {s:>8.1f} {d / s:>8.1%} {loop:>8.0f} {first_ms:>16.0f} {len(log):>5}", flush=True)
os.makedirs(args.output_dir, exist_ok=True)
with open(os.path.join(args.output_dir, "bench_data_wait.json"), "w") as f:
    json.dump({"video": [info.width, info.height, info.num_frames], "extra": args.extra, "results": results}, f, indent=1)
print("medians over the steps that are not the first of an epoch; wait/step = data ms / step ms; loop ms = data + step")
