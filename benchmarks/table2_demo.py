"""
Table 2 (Sec. 4.4) and Fig. 4 (Sec. 5) at demo scale, on a CPU: does the masked video-text contrastive loss
raise the linear probe, for tube, motion-guided and text-guided masking alike?

For every row (mask x {MAE, MAE + V->T, V->T only}) and seed, it runs the project's own scripts, as a user would:
pretrain.py on the demo dataset, then finetune.py --mode linear and --mode finetune from that checkpoint, then
evaluate.py (multi-view test, 5 temporal x 3 spatial views) on each. It writes
    OUT/table2_demo.md    mean and spread over seeds of finetune and linear-probe top-1, per row
    OUT/table2_demo.json  every number of every run
    OUT/fig4_demo.png     loss_nce over pretraining, optimised (solid) and only measured (dashed), per mask

    python benchmarks/table2_demo.py                       # 9 rows x 3 seeds, under an hour on 2 cores
    python benchmarks/table2_demo.py --seeds 0 --rows tube # a quick look
Offline, CLIP has random weights: the tgm masks and the text targets then come from a random CLIP (said in
the table), which is what this machine can do; with --clip-pretrained PATH they are the paper's.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Table 2's rows: (mask, ratio, flags, label). Ratios as the paper: tube and MGM 0.75, TGM 0.6.
ROWS = []
for mask, ratio in (("tube", 0.75), ("mgm", 0.75), ("tgm", 0.6)):
    ROWS += [(mask, ratio, ["--contrastive", "--mse-weight", "0"], "V->T only"),
             (mask, ratio, [], "MAE"),
             (mask, ratio, ["--contrastive"], "MAE + V->T")]

parser = argparse.ArgumentParser(description=__doc__.split("\n")[1], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one full pipeline per seed and row")
parser.add_argument("--rows", nargs="+", default=["tube", "mgm", "tgm"], help="masks to run")
parser.add_argument("--pretrain-epochs", type=int, default=4, help="pretraining epochs on the 160 demo videos")
parser.add_argument("--lp-epochs", type=int, default=5, help="linear-probe epochs")
parser.add_argument("--ft-epochs", type=int, default=3, help="finetuning epochs")
parser.add_argument("--clip-pretrained", default="none", help="none (offline) | a local open_clip weights file")
parser.add_argument("--output-dir", default="runs/table2_demo")
parser.add_argument("--num-workers", type=int, default=1, help="loader processes per script")
parser.add_argument("--report-only", action="store_true", help="run nothing: write the table and plot of the runs done so far")
args = parser.parse_args()


def run(cmd, log_path):
    """One stage, as a subprocess; its output goes to a log file, and a failure stops the table with its tail."""
    t = time.time()
    with open(log_path, "w") as f:
        res = subprocess.run([sys.executable] + cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if res.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n" + open(log_path).read()[-3000:])
    return time.time() - t


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


os.makedirs(args.output_dir, exist_ok=True)
results_path = os.path.join(args.output_dir, "table2_demo.json")
results = json.load(open(results_path)) if os.path.isfile(results_path) else {}
t0 = time.time()
for seed in args.seeds:  # every row once before any row twice: a stopped run still covers the whole table
    for mask, ratio, extra, label in [r for r in ROWS if r[0] in args.rows]:
        key = f"{mask}|{label}|{seed}"
        if key in results or args.report_only:  # finished in an earlier run of this script: resumable
            continue
        d = os.path.join(args.output_dir, f"{mask}_{label.replace(' ', '').replace('>', '').replace('+', '_')}_s{seed}")
        common = ["--seed", str(seed), "--num-workers", str(args.num_workers)]
        secs = {}
        secs["pretrain"] = run(["pretrain.py", "--mask", mask, "--ratio", str(ratio), "--epochs", str(args.pretrain_epochs),
                                "--clip-pretrained", args.clip_pretrained, "--output-dir", f"{d}/pre", "--log-interval", "2"]
                               + extra + common, f"{d}.pretrain.log")
        row = {"mask": mask, "ratio": ratio, "components": label, "seed": seed,
               "pretrain_log": read_jsonl(f"{d}/pre/log.jsonl")}
        for mode, epochs in (("linear", args.lp_epochs), ("finetune", args.ft_epochs)):
            secs[mode] = run(["finetune.py", "--checkpoint", f"{d}/pre/ckpt.pt", "--mode", mode, "--epochs", str(epochs),
                              "--output-dir", f"{d}/{mode}"] + common, f"{d}.{mode}.log")
            secs[mode + "_test"] = run(["evaluate.py", "--checkpoint", f"{d}/{mode}/ckpt.pt", "--output-dir", f"{d}/{mode}",
                                        "--num-workers", str(args.num_workers)], f"{d}.{mode}.test.log")
            res = json.load(open(f"{d}/{mode}/results.json"))
            row[mode] = {"top1": res["top1"], "top5": res["top5"]}
        row["seconds"] = secs
        results[key] = row
        with open(results_path + ".tmp", "w") as f:
            json.dump(results, f)
        os.replace(results_path + ".tmp", results_path)
        print(f"{key}: linear {row['linear']['top1']:.1f}, finetune {row['finetune']['top1']:.1f} "
              f"({sum(secs.values()):.0f} s; {time.time() - t0:.0f} s so far)", flush=True)

if not args.report_only:
    print(f"wall time of this run: {time.time() - t0:.0f} s", flush=True)

# -----------------------------------------------------------------------------
# the table: mean and spread (min-max over seeds) per row, in Table 2's order


def stats(values):
    return f"{statistics.mean(values):.1f} ({min(values):.1f}-{max(values):.1f})" if values else "-"


lines = ["| mask | ratio | components | seeds | finetune top-1 | linear top-1 |", "| --- | --- | --- | --- | --- | --- |"]
for mask, ratio, _, label in ROWS:
    rows = [r for r in results.values() if r["mask"] == mask and r["components"] == label]
    if rows:
        lines.append(f"| {mask} | {ratio} | {label} | {len(rows)} | {stats([r['finetune']['top1'] for r in rows])} "
                     f"| {stats([r['linear']['top1'] for r in rows])} |")
note = ("\nMulti-view top-1 (%) on the 40 demo validation videos (8 classes, chance 12.5), 5x3 views; mean over "
        "seeds, (min-max) in brackets. CLIP: " + ("random weights (offline): tgm masks and text targets come from a "
                                                 "random CLIP" if args.clip_pretrained == "none" else args.clip_pretrained) + ".\n")
with open(os.path.join(args.output_dir, "table2_demo.md"), "w") as f:
    f.write("\n".join(lines) + "\n" + note)
print("\n".join(lines) + note)

# -----------------------------------------------------------------------------
# Fig. 4: the contrastive loss over pretraining, optimised (MAE + V->T) and only measured (MAE), seed-averaged


def plot_fig4(path):
    from PIL import Image, ImageDraw
    curves = {}
    for r in results.values():
        if r["components"] == "V->T only":
            continue
        k = (r["mask"], r["components"])
        for rec in r["pretrain_log"]:
            curves.setdefault(k, {}).setdefault(rec["step"], []).append(rec["loss_nce"])
    if not curves:
        return
    curves = {k: sorted((s, statistics.mean(v)) for s, v in c.items()) for k, c in curves.items()}
    W, H, pad = 640, 400, 50
    xs = [s for c in curves.values() for s, _ in c]
    ys = [y for c in curves.values() for _, y in c]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = lambda s: pad + (s - x0) / max(x1 - x0, 1) * (W - 2 * pad)
    sy = lambda y: H - pad - (y - y0) / max(y1 - y0, 1e-9) * (H - 2 * pad)
    img = Image.new("RGB", (W, H + 14 * len(curves) + 10), "white")  # the legend goes under the plot
    draw = ImageDraw.Draw(img)
    draw.rectangle([pad, pad, W - pad, H - pad], outline="black")
    colours = {"tube": (40, 90, 200), "mgm": (40, 160, 60), "tgm": (210, 50, 40)}
    for i, ((mask, label), c) in enumerate(sorted(curves.items())):
        pts = [(sx(s), sy(y)) for s, y in c]
        if label == "MAE":  # only measured: dashed
            for a, b in list(zip(pts, pts[1:]))[::2]:
                draw.line([a, b], fill=colours[mask], width=2)
        else:
            draw.line(pts, fill=colours[mask], width=2)
        draw.text((pad, H + 14 * i), f"{mask} {label}" + (" (dashed: measured, not optimised)" if label == "MAE" else ""),
                  fill=colours[mask])
    draw.text((pad, 15), "Fig. 4 (demo): loss_nce vs pretraining step; dashed = not optimised", fill="black")
    for v, y in ((y0, H - pad), (y1, pad)):
        draw.text((5, y - 6), f"{v:.2f}", fill="black")
    for v, x in ((x0, pad), (x1, W - pad)):
        draw.text((x - 10, H - pad + 8), f"{v}", fill="black")
    draw.text((W // 2 - 40, H - pad + 8), "pretraining step", fill="black")
    img.save(path)


plot_fig4(os.path.join(args.output_dir, "fig4_demo.png"))
print(f"wrote {args.output_dir}/table2_demo.md, table2_demo.json, fig4_demo.png in {time.time() - t0:.0f} s")
