"""
Table 2 (Sec. 4.4) and Fig. 4 (Sec. 5) at demo scale, on a CPU: does the masked video-text contrastive loss
raise the linear probe, for tube, motion-guided and text-guided masking alike? And, before that: does
pretraining help at all here (the transfer comparison: the paper's TGM + V->T, the same TGM without L_NCE, or
VideoMAE's tube 0.9, against no pretraining)?

For every row (mask x {MAE, MAE + V->T, V->T only}, plus the two reference rows) and seed, it runs the project's
own scripts, as a user would: pretrain.py on the demo dataset, then finetune.py --mode linear and --mode finetune
from that checkpoint (from `--checkpoint none` for the no-pretraining row), then evaluate.py (multi-view test,
5 temporal x 3 spatial views) on each. It writes
    OUT/table2_demo.md    mean and spread over seeds of finetune and linear-probe top-1, per row
    OUT/table2_demo.json  every number of every run
    OUT/fig4_demo.md      loss_nce in the first and last quarter of pretraining, per mask and curve
    OUT/fig4_demo.png     loss_nce over pretraining, optimised (solid) and only measured (dashed), per mask
    OUT/transfer_demo.png probe and finetuning curves, the transfer comparison's pretrainings against none

    python benchmarks/table2_demo.py --jobs 2              # every row x 3 seeds, two pipelines at a time
    python benchmarks/table2_demo.py --seeds 0 --rows tube # a quick look
    python benchmarks/table2_demo.py --rows tgm-vt tgm-mae tube0.9 none --pretrain-epochs 20 --jobs 2  # transfer
It stops and resumes: finished pipelines are kept in table2_demo.json. The two plots need matplotlib, which is not
in requirements.txt: without it they are skipped (pip install matplotlib, then --report-only, draws them).
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Table 2's rows: (name for --rows, mask, ratio, pretrain.py flags, label). Ratios as the paper: tube and MGM 0.75,
# TGM 0.6. Then the references: VideoMAE's tube 0.9, and no pretraining at all (finetune.py --checkpoint none).
ROWS = []
for mask, ratio in (("tube", 0.75), ("mgm", 0.75), ("tgm", 0.6)):
    ROWS += [(mask, mask, ratio, ["--contrastive", "--mse-weight", "0"], "V->T only"),
             (mask, mask, ratio, [], "MAE"),
             (mask, mask, ratio, ["--contrastive"], "MAE + V->T")]
ROWS += [("tube0.9", "tube", 0.9, [], "MAE"), ("none", "none", None, None, "no pretraining")]
# the transfer comparison's rows, each one of Table 2's TGM rows alone: the paper's method (the README's first command),
# and its pure MAE (what L_NCE adds at the comparison's budget)
ROWS += [("tgm-vt", "tgm", 0.6, ["--contrastive"], "MAE + V->T"), ("tgm-mae", "tgm", 0.6, [], "MAE")]
# Fig. 4's control, per mask: the same head, data and schedule as pure MAE, on an encoder that never trains
# (--mse-weight 0 without --contrastive); pretraining only, as its transfer is the "none" row's
CONTROL = "probe, never-trained encoder"
ROWS += [(mask + "-control", mask, ratio, ["--mse-weight", "0"], CONTROL) for mask, ratio in (("tube", 0.75), ("mgm", 0.75), ("tgm", 0.6))]

parser = argparse.ArgumentParser(description=__doc__.split("\n")[1], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one full pipeline per seed and row")
parser.add_argument("--rows", nargs="+", default=["tube", "mgm", "tgm", "tube0.9", "none", "tube-control", "mgm-control",
                                                 "tgm-control"],
                    choices=list(dict.fromkeys(r[0] for r in ROWS)), help="rows to run")
parser.add_argument("--pretrain-epochs", type=int, default=None, help="pretraining epochs; default: pretrain.py's demo value")
parser.add_argument("--lp-epochs", type=int, default=None, help="linear-probe epochs; default: finetune.py's demo value")
parser.add_argument("--ft-epochs", type=int, default=None, help="finetuning epochs; default: finetune.py's demo value")
parser.add_argument("--clip-pretrained", default=None, help="CLIP weights for pretrain.py; default: what its demo uses "
                    "(OpenAI's when cached, else the demo CLIP)")
parser.add_argument("--no-transfer", action="store_true", help="pretraining only (Fig. 4's curves), no probe or finetuning")
parser.add_argument("--data-seed", type=int, default=0, help="the demo's data draw (TGM_DEMO_SEED for every script): "
                    "its own videos, captions and demo CLIP; 0 is the draw the stages use by default")
parser.add_argument("--output-dir", default="runs/table2_demo")
parser.add_argument("--num-workers", type=int, default=1, help="loader processes per script")
parser.add_argument("--jobs", type=int, default=1, help="pipelines run at once; with more than one, each script gets "
                    "cores / jobs threads (OMP_NUM_THREADS), which on a small CPU is faster than one job on all cores")
parser.add_argument("--report-only", action="store_true", help="run nothing: write the table and plot of the runs done so far")
args = parser.parse_args()
env = {**os.environ, "HF_HUB_OFFLINE": "1", "TGM_DEMO_SEED": str(args.data_seed)}
if args.jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
    env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))


def run(cmd, log_path):
    """One stage, as a subprocess; its output goes to a log file, and a failure raises with its tail."""
    t = time.time()
    with open(log_path, "w") as f:
        res = subprocess.run([sys.executable] + cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    if res.returncode:
        raise RuntimeError(f"failed: {' '.join(cmd)}\n" + open(log_path).read()[-3000:])
    return time.time() - t


def flag(name, value):
    """[name, value] for a flag the driver sets, [] to leave the script's own (demo) default."""
    return [] if value is None else [name, str(value)]


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


os.makedirs(args.output_dir, exist_ok=True)
results_path = os.path.join(args.output_dir, "table2_demo.json")
results = json.load(open(results_path)) if os.path.isfile(results_path) else {}
lock = threading.Lock()
t0 = time.time()


def run_dir(seed, mask, ratio, label):
    return os.path.join(args.output_dir, f"{mask}{'' if ratio is None else ratio}_"
                        f"{label.replace(' ', '').replace('>', '').replace('+', '_')}_s{seed}")


def pipeline(key, seed, mask, ratio, extra, label):
    """pretrain.py, then linear probe and finetuning from its checkpoint, each tested: one row's numbers for one seed,
    kept in results[key]."""
    d = run_dir(seed, mask, ratio, label)
    common = ["--seed", str(seed), "--num-workers", str(args.num_workers)]
    secs = {}
    row = {"mask": mask, "ratio": ratio, "components": label, "seed": seed, "pretrain_log": []}
    checkpoint = "none"
    if mask != "none":
        secs["pretrain"] = run(["pretrain.py", "--mask", mask, "--ratio", str(ratio), "--output-dir", f"{d}/pre",
                                "--log-interval", "2"] + flag("--epochs", args.pretrain_epochs)
                               + flag("--clip-pretrained", args.clip_pretrained) + extra + common, f"{d}.pretrain.log")
        row["pretrain_log"] = read_jsonl(f"{d}/pre/log.jsonl")
        checkpoint = f"{d}/pre/ckpt.pt"
    for mode, epochs in () if label == CONTROL or args.no_transfer else (("linear", args.lp_epochs), ("finetune", args.ft_epochs)):
        secs[mode] = run(["finetune.py", "--checkpoint", checkpoint, "--mode", mode, "--output-dir", f"{d}/{mode}"]
                         + flag("--epochs", epochs) + common, f"{d}.{mode}.log")
        secs[mode + "_test"] = run(["evaluate.py", "--checkpoint", f"{d}/{mode}/ckpt.pt", "--output-dir", f"{d}/{mode}",
                                    "--num-workers", str(args.num_workers)], f"{d}.{mode}.test.log")
        res = json.load(open(f"{d}/{mode}/results.json"))
        row[mode] = {"top1": res["top1"], "top5": res["top5"], "log": read_jsonl(f"{d}/{mode}/log.jsonl")}  # its curves
    row["seconds"] = secs
    with lock:
        results[key] = row
        with open(results_path + ".tmp", "w") as f:
            json.dump(results, f)
        os.replace(results_path + ".tmp", results_path)
        done = "" if "linear" not in row else f"linear {row['linear']['top1']:.1f}, finetune {row['finetune']['top1']:.1f} "
        print(f"{key}: {done}({sum(secs.values()):.0f} s; {time.time() - t0:.0f} s so far)", flush=True)


todo = []  # every row once before any row twice: a stopped run still covers the whole table
for seed in args.seeds:
    for name, mask, ratio, extra, label in ROWS:
        key = f"{name}|{label}|{seed}"
        if name in args.rows and key not in results and not args.report_only:
            todo.append((key, seed, mask, ratio, extra, label))
if todo:
    # the demo data and the demo CLIP, made once before pipelines run side by side (each is made on first use)
    run(["masking.py", "--mask", "tgm", "--ratio", "0.6", "--out", os.path.join(args.output_dir, "mask_tgm.png")]
        + flag("--clip-pretrained", args.clip_pretrained), os.path.join(args.output_dir, "prepare.log"))
    with ThreadPoolExecutor(args.jobs) as pool:
        for f in [pool.submit(pipeline, *job) for job in todo]:
            try:
                f.result()
            except RuntimeError as e:  # one failed pipeline: the others finish, the table shows what was done
                print(e, file=sys.stderr, flush=True)

if not args.report_only:
    print(f"wall time of this run: {time.time() - t0:.0f} s", flush=True)

# -----------------------------------------------------------------------------
# the table: mean and spread (min-max over seeds) per row, in Table 2's order


def stats(values):
    return f"{statistics.mean(values):.1f} ({min(values):.1f}-{max(values):.1f})" if values else "-"


# one run per (mask, ratio, components, seed): tgm-vt, tgm-mae and tgm's rows are the same runs when both were asked for
runs_done = list({(r["mask"], r["ratio"], r["components"], r["seed"]): r for r in results.values()}.values())
lines = ["| mask | ratio | components | seeds | finetune top-1 | linear top-1 |", "| --- | --- | --- | --- | --- | --- |"]
for mask, ratio, label in dict.fromkeys((r[1], r[2], r[4]) for r in ROWS):  # tgm-vt, tgm-mae: Table 2 rows, once
    rows = [r for r in runs_done if r["mask"] == mask and r["ratio"] == ratio and r["components"] == label]
    rows = [r for r in rows if "linear" in r]
    if rows:
        lines.append(f"| {mask} | {ratio or '-'} | {label} | {len(rows)} | {stats([r['finetune']['top1'] for r in rows])} "
                     f"| {stats([r['linear']['top1'] for r in rows])} |")
note = ("\nMulti-view top-1 (%) on the demo validation videos, 5x3 views; mean over seeds, (min-max) in brackets. "
        f"CLIP: {args.clip_pretrained or 'the demo default'}.\n")
with open(os.path.join(args.output_dir, "table2_demo.md"), "w") as f:
    f.write("\n".join(lines) + "\n" + note)
print("\n".join(lines) + note)

# -----------------------------------------------------------------------------
# the plots: matplotlib is imported here only, so the driver and its --help need requirements.txt alone

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    plt = None
    print("no matplotlib: fig4_demo.png and transfer_demo.png not drawn (pip install matplotlib, then --report-only, "
          "draws them)", flush=True)

# -----------------------------------------------------------------------------
# Fig. 4: the contrastive loss over pretraining, optimised (MAE + V->T) and only measured (MAE), seed-averaged


def plot_fig4(path):
    """loss_nce per pretraining step, mean over seeds: solid where L_NCE is optimised (MAE + V->T), dashed where the
    head is only an online probe on the detached encoder output (MAE), dotted for the same probe on an encoder that
    never trains (the control: what the probe's own fitting of the captions gives), one colour per mask. Prints and
    writes each curve's first- and last-quarter means (fig4_demo.md) with or without matplotlib -> the files written."""
    curves = {}
    for r in runs_done:
        if r["components"] not in ("MAE", "MAE + V->T", CONTROL) or r["ratio"] == 0.9:  # Table 2's ratios only
            continue
        for rec in r["pretrain_log"]:
            if rec.get("loss_nce") is not None:
                curves.setdefault((r["mask"], r["components"]), {}).setdefault(rec["step"], []).append(rec["loss_nce"])
    if not curves:
        return []
    means = {}  # (mask, label) -> (steps, mean loss_nce over seeds at each step)
    quarters = ["| mask | curve | seeds | first quarter | last quarter |", "| --- | --- | --- | --- | --- |"]
    for (mask, label), c in sorted(curves.items()):
        steps = sorted(c)
        means[mask, label] = steps, [statistics.mean(c[s]) for s in steps]
        mean, q = means[mask, label][1], max(1, len(steps) // 4)
        quarters.append(f"| {mask} | {label} | {len(c[steps[0]])} | {statistics.mean(mean[:q]):.3f} | "
                        f"{statistics.mean(mean[-q:]):.3f} |")
    print("Fig. 4, loss_nce (mean over seeds) in the first and last quarter of the logged steps:\n" + "\n".join(quarters))
    with open(os.path.join(args.output_dir, "fig4_demo.md"), "w") as f:
        f.write("\n".join(quarters) + "\n")
    if plt is None:
        return ["fig4_demo.md"]
    colours = {"tube": "tab:blue", "mgm": "tab:green", "tgm": "tab:red"}
    styles = {"MAE": ("--", " (probe: measured, not optimised)"), "MAE + V->T": ("-", " (optimised)"),
              CONTROL: (":", "")}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (mask, label), (steps, mean) in means.items():
        ax.plot(steps, mean, color=colours[mask], linestyle=styles[label][0],
                label=f"{mask}, {label}{styles[label][1]}")
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("contrastive loss L_NCE (mean over seeds)")
    ax.set_title("Fig. 4 at demo scale")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return ["fig4_demo.md", os.path.basename(path)]


def plot_transfer(path):
    """Per epoch of the linear probe (left) and of finetuning (right): the training loss (top row) and the one-view
    val top-1 (bottom row) from finetune.py's log, mean over seeds, for each pretraining of the transfer comparison
    (tube 0.9, TGM, TGM + V->T) and for none -> the files written."""
    if plt is None:
        return []
    names = {"tube0.9": "tube 0.9 pretraining", "tgm-mae": "TGM 0.6 pretraining (MAE)",
             "tgm-vt": "TGM 0.6 + V->T pretraining", "none": "no pretraining"}
    runs = {label: [r for k, r in results.items() if k.startswith(name + "|") and "log" in r.get("linear", {})]
            for name, label in names.items()}
    runs = {label: rows for label, rows in runs.items() if rows}
    if "no pretraining" not in runs or len(runs) < 2:
        return []
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), sharex="col")
    for col, mode in enumerate(("linear", "finetune")):
        for (name, rows), colour in zip(runs.items(), ("tab:blue", "tab:orange", "tab:red", "tab:grey")):
            epochs = [[e for e in r[mode]["log"] if "val_top1" in e] for r in rows]
            n = min(len(e) for e in epochs)
            x = [e["epoch"] for e in epochs[0][:n]]
            for row, field in enumerate(("train_loss", "val_top1")):
                axes[row, col].plot(x, [statistics.mean(e[i][field] for e in epochs) for i in range(n)], color=colour,
                                    label=f"{name} ({len(rows)} seeds)")
        axes[0, col].set_title("linear probe" if mode == "linear" else "finetuning")
        axes[0, col].axhline(math.log(8), color="k", linewidth=0.5, linestyle=":")  # chance: ln 8
        axes[1, col].axhline(12.5, color="k", linewidth=0.5, linestyle=":")          # chance: 1 in 8
        axes[1, col].set_xlabel("epoch")
    axes[0, 0].set_ylabel("training loss (dotted: ln 8)")
    axes[1, 0].set_ylabel("one-view val top-1 % (dotted: chance)")
    axes[0, 0].legend(fontsize=8)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle("Linear probe and finetuning per epoch: each pretraining and none (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [os.path.basename(path)]


written = (["table2_demo.md", "table2_demo.json"] + plot_fig4(os.path.join(args.output_dir, "fig4_demo.png"))
           + plot_transfer(os.path.join(args.output_dir, "transfer_demo.png")))
print(f"wrote {args.output_dir}/{', '.join(written)} in {time.time() - t0:.0f} s")
