"""
The transfer comparison across draws of the demo's data: does what table2_demo.py finds hold on demos nobody tuned on?
Its seeds are training seeds on one draw of the data (demo_dataset(seed=0)), the draw on whose val split the demo's
probe lr and finetuning recipe were chosen; this runs the same pipelines on other draws (each with its own videos,
captions and demo CLIP, as a user with TGM_DEMO_SEED=N gets them), recipes unchanged, and compares the draws.

For each draw N it runs `table2_demo.py --data-seed N --output-dir OUT/drawN` with the flags after `--`, then writes
    OUT/draws.md    every row of every draw (mean over its training seeds), the spread across draws, the differences
    OUT/draws.json  every run of every draw (table2_demo.py's results, curves included), and the wall times
    OUT/draws.png   pretraining losses and the probe's and finetuning's per-epoch curves, per row and draw

    python benchmarks/table2_draws.py --data-seeds 1 2 3 --output-dir runs/draws -- \\
        --rows tgm-vt tgm-mae none --seeds 0 --pretrain-epochs 20 --jobs 2
    python benchmarks/table2_draws.py --data-seeds 1 2 3 --output-dir runs/draws --report-only
A draw already in OUT/drawN resumes as table2_demo.py does. The plot needs matplotlib (not in requirements.txt).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# the transfer comparison's rows as table2_demo.py names them (its --rows), and its run folders' names
NAMES = {"tgm-vt": "TGM 0.6 + V->T (the paper's method)", "tgm-mae": "TGM 0.6, pure MAE", "tube0.9": "tube 0.9, pure MAE",
         "none": "none (random encoder)"}
DIFFS = [("tgm-vt", "none", "the paper's method minus none"), ("tgm-vt", "tgm-mae", "what L_NCE adds (TGM + V->T minus TGM)"),
         ("tgm-mae", "none", "TGM pure MAE minus none"), ("tube0.9", "none", "tube 0.9 minus none")]

parser = argparse.ArgumentParser(description=__doc__.split("\n")[1], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--data-seeds", type=int, nargs="+", default=[1, 2, 3], help="the demo's data draws")
parser.add_argument("--output-dir", default="runs/draws")
parser.add_argument("--report-only", action="store_true", help="run nothing: compare the draws run so far")
parser.add_argument("table2_flags", nargs="*", help="after --: table2_demo.py's flags for every draw (--rows, --seeds, ...)")
args = parser.parse_args()
os.makedirs(args.output_dir, exist_ok=True)
walls_path = os.path.join(args.output_dir, "wall_seconds.json")  # each draw's wall time, kept across reruns
walls = json.load(open(walls_path)) if os.path.isfile(walls_path) else {}

for draw in [] if args.report_only else args.data_seeds:
    cmd = [sys.executable, os.path.join(HERE, "table2_demo.py"), "--data-seed", str(draw),
           "--output-dir", os.path.join(args.output_dir, f"draw{draw}")] + args.table2_flags
    print(" ".join(cmd[1:]), flush=True)
    t = time.time()
    if subprocess.run(cmd).returncode:
        sys.exit(f"draw {draw} failed: its runs so far are kept, a rerun resumes them")
    walls.setdefault(str(draw), []).append({"seconds": round(time.time() - t),  # one entry per run of the draw
                                            "command": " ".join(["python", os.path.relpath(cmd[1])] + cmd[2:])})
    with open(walls_path, "w") as f:
        json.dump(walls, f, indent=1)


# every finished run of every draw: draws[draw][name] = [run, ...] over the training seeds
everything, draws = {"wall_seconds": walls, "draws": {}}, {}
for draw in args.data_seeds:
    path = os.path.join(args.output_dir, f"draw{draw}", "table2_demo.json")
    if not os.path.isfile(path):
        continue
    everything["draws"][str(draw)] = runs = json.load(open(path))
    draws[draw] = {}
    for key, r in runs.items():
        name = key.split("|")[0]
        if name in NAMES and "linear" in r:
            draws[draw].setdefault(name, []).append(r)
if not draws:
    sys.exit(f"no draw has finished runs in {args.output_dir}")
with open(os.path.join(args.output_dir, "draws.json"), "w") as f:
    json.dump(everything, f)


def mean_top1(rows, mode):
    return statistics.mean(r[mode]["top1"] for r in rows)


def spread(values, signed=False):
    if signed:
        return f"{statistics.mean(values):+.1f} ({min(values):+.1f} to {max(values):+.1f})"
    return f"{statistics.mean(values):.1f} ({min(values):.1f}-{max(values):.1f})"


names = [n for n in NAMES if any(n in d for d in draws.values())]
lines = ["## By draw", "", "5x3 multi-view top-1 (%) on the draw's 120 val videos, mean over the draw's training seeds; "
         "seconds: each pipeline's stages summed (pretraining, probe, finetuning and their tests), mean over seeds.", "",
         "| draw | encoder | seeds | linear probe | finetuning | probe's last training loss | pipeline seconds |",
         "| --- | --- | --- | --- | --- | --- | --- |"]


def last_loss(rows):
    """The probe's training loss in its last epoch (mean over seeds): how well the probe fitted the train videos."""
    losses = [[e["train_loss"] for e in r["linear"].get("log", []) if "train_loss" in e] for r in rows]
    return f"{statistics.mean(loss[-1] for loss in losses):.3f}" if losses and all(losses) else "-"


for draw, rows in draws.items():
    for name in names:
        if name in rows:
            secs = statistics.mean(sum(r["seconds"].values()) for r in rows[name])
            lines.append(f"| {draw} | {NAMES[name]} | {len(rows[name])} | {mean_top1(rows[name], 'linear'):.1f} | "
                         f"{mean_top1(rows[name], 'finetune'):.1f} | {last_loss(rows[name])} | {secs:.0f} |")
lines += [""] + [f"Draw {d}: {w['seconds']:,} s wall, `{w['command']}`  " for d, runs in walls.items() if int(d) in draws
                 for w in runs]

lines += ["", "## Across draws", "", f"Mean over draws {', '.join(map(str, draws))} of each draw's number, (min-max) "
          "over the draws.", "", "| encoder | draws | linear probe | finetuning |", "| --- | --- | --- | --- |"]
for name in names:
    have = [rows[name] for rows in draws.values() if name in rows]
    lines.append(f"| {NAMES[name]} | {len(have)} | {spread([mean_top1(r, 'linear') for r in have])} | "
                 f"{spread([mean_top1(r, 'finetune') for r in have])} |")

lines += ["", "Differences, per draw and across draws: how many draws the first row wins, and whether the two rows' "
          "ranges across draws are apart (neither row's min-max range reaches the other's).", "",
          "| difference | protocol | per draw | mean (min to max) | wins | ranges |", "| --- | --- | --- | --- | --- | --- |"]
for a, b, label in DIFFS:
    both = [d for d, rows in draws.items() if a in rows and b in rows]
    for mode, protocol in (("linear", "linear probe"), ("finetune", "finetuning")):
        if not both:
            continue
        va = [mean_top1(draws[d][a], mode) for d in both]
        vb = [mean_top1(draws[d][b], mode) for d in both]
        diff = [x - y for x, y in zip(va, vb)]
        apart = "apart" if min(va) > max(vb) or min(vb) > max(va) else "overlap"
        lines.append(f"| {label} | {protocol} | {', '.join(f'{d}: {x:+.1f}' for d, x in zip(both, diff))} | "
                     f"{spread(diff, signed=True)} | {sum(x > 0 for x in diff)} of {len(both)} | {apart} |")
text = "\n".join(lines) + "\n"
with open(os.path.join(args.output_dir, "draws.md"), "w") as f:
    f.write(text)
print(text)

# -----------------------------------------------------------------------------
# the curves: matplotlib is imported here only


try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("no matplotlib: draws.png not drawn (pip install matplotlib, then --report-only, draws it)")
    sys.exit(0)

colours = {"tgm-vt": "tab:red", "tgm-mae": "tab:orange", "tube0.9": "tab:blue", "none": "tab:grey"}
styles = ["-", "--", ":", "-."]
fig, axes = plt.subplots(2, 3, figsize=(13, 7))
panels = [("pretraining", "loss_mse"), ("pretraining", "loss_nce"), ("linear", "train_loss"), ("linear", "val_top1"),
          ("finetune", "train_loss"), ("finetune", "val_top1")]
for i, (stage, field) in enumerate(panels):
    ax = axes[i % 2, i // 2]
    for k, (draw, rows) in enumerate(draws.items()):
        for name in names:
            logs = [r["pretrain_log"] if stage == "pretraining" else r[stage].get("log", []) for r in rows.get(name, [])]
            logs = [[e for e in log if e.get(field) is not None] for log in logs]
            if not logs or not all(logs):
                continue
            n = min(len(log) for log in logs)
            x = [e["step" if stage == "pretraining" else "epoch"] for e in logs[0][:n]]
            y = [statistics.mean(log[j][field] for log in logs) for j in range(n)]
            if stage == "pretraining":  # a logged step every few: the mean of each 20 logged steps
                x, y = x[19::20], [statistics.mean(y[j - 19:j + 1]) for j in range(19, n, 20)]
            ax.plot(x, y, color=colours[name],
                    linestyle=styles[k % len(styles)], linewidth=1, label=f"{NAMES[name]}, draw {draw}")
    ax.set_title({"pretraining": "pretraining", "linear": "linear probe", "finetune": "finetuning"}[stage] + ": " + field)
    ax.set_xlabel("step" if stage == "pretraining" else "epoch")
    ax.grid(alpha=0.3)
handles = {h.get_label(): h for ax in axes.flat for h in ax.get_lines()}  # one legend entry per encoder and draw
fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=4, fontsize=7)
fig.suptitle("The transfer comparison per draw of the demo's data (colour: encoder; line style: draw; "
             "mean over the draw's training seeds)")
fig.tight_layout(rect=(0, 0.08, 1, 1))
fig.savefig(os.path.join(args.output_dir, "draws.png"), dpi=110)
print(f"wrote {args.output_dir}/draws.md, draws.json, draws.png")
