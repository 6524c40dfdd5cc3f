"""
Sec. 3.1, 3.3, 3.5: the cost of one pretraining step, ours against transformers' VideoMAEForPreTraining.

For each precision and tube-mask ratio it times a full training step (forward, backward, AdamW) of our ViT-B
(model.VideoMAE) and of transformers.VideoMAEForPreTraining with its default attention (config matched:
use_mean_pooling=False, layer_norm_eps=1e-6, norm_pix_loss=True, same sizes, and the same weights, so the first losses
agree), on the same clips, masks, batch size and precision. Each model runs in a fresh process of its own, as a
user's training process would (its own heap, glibc's allocator as the environment sets it, the same for both),
and this script alternates their steps (the order swapped every
repeat), after a warm-up; it prints medians. The settings run in the order a user meets them (bf16, pretrain.py's
default, first; ratio 0.9 then 0.6), each with fresh processes. --one-process times both models in one process
instead (they then share one heap, and each one's freed blocks shape the other's page faults); --keep-freed-memory
reruns this script with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647, so that both models' processes keep the
memory they free (docs/pretraining.md: a CPU run's setting).
It also measures the machine's matmul rate (large square matmuls, after the timed steps) for each precision,
counts the step's FLOPs analytically from the config and the visible/masked token counts (forward matmuls;
backward = 2x forward, except the patch embedding whose input needs no gradient), and the peak memory of each
model in a subprocess of its own (CPU: the growth of the process's peak RSS; GPU: torch.cuda.max_memory_allocated).
Last, the per-step cost of text-guided masks (TGM, Sec. 3.3, features 'dense' and 'patch') with a random CLIP
ViT-B-32-quickgelu, against a tube step.

    python benchmarks/bench_pretrain.py                                   # CPU: batch 2, 16x224, 2 threads (~15 min)
    python benchmarks/bench_pretrain.py --num-frames 8 --input-size 112   # smaller, quicker
    python benchmarks/bench_pretrain.py --device cuda --precisions bf16   # one GPU: batch 32, 16x224 ViT-B
    python benchmarks/bench_pretrain.py --profile --precisions bf16 --ratios 0.9   # where the time goes
    python benchmarks/bench_pretrain.py --compile --precisions bf16 --ratios 0.9 --no-memory --no-tgm  # compile pays?
    python benchmarks/bench_pretrain.py --threads 1                       # a CPU that others share: 1 thread

Machines are shared and noisy: compare only the ratio (their/our) from one run, and rerun when `uptime` is high.
On a shared CPU, two threads wait on each other whenever the other job holds a core; the (CPU t) column and
--threads 1 are then the steadier measures.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402
import weights  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
# data
parser.add_argument("--batch-size", type=int, default=None, help="clips per step B (default: 2 on CPU, 32 on GPU)")
parser.add_argument("--num-frames", type=int, default=16, help="frames per clip T; paper: 16")
parser.add_argument("--input-size", type=int, default=224, help="frame side H = W in pixels; paper: 224")
parser.add_argument("--ratios", default="0.9,0.6", help="tube mask ratios; paper: 0.9 (VideoMAE), 0.6 (TGM, Table 5a)")
# model
parser.add_argument("--model", default="vit_base", help="model size; paper: vit_base")
parser.add_argument("--precisions", default="bf16,fp32", help="comma list of bf16 (autocast) and fp32")
parser.add_argument("--compile", action="store_true", help="also time torch.compile(ours) against eager ours")
parser.add_argument("--optimizer", choices=["fused", "foreach", "forloop"], default="fused",
                    help="AdamW implementation, the same for both models; fused is transformers' Trainer default")
# timing
parser.add_argument("--device", default="cpu", help="cpu or cuda")
parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (this machine: 2 cores)")
parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each model per setting (the first prints its loss)")
parser.add_argument("--repeats", type=int, default=None, help="timed steps of each model (default: 5 CPU, 20 GPU)")
parser.add_argument("--keep-freed-memory", action="store_true",
                    help="CPU, glibc: run with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647, both models "
                         "(every process keeps the memory it frees: no page faults for the next step's blocks)")
parser.add_argument("--attn-chunk-mib", type=float, default=None,
                    help="CPU bf16: our attention's query chunks, MiB of weights each (default: model.ATTN_CHUNK_BYTES; "
                         "1e6: the (B, nh, N, N) weights at once, as before chunking)")
parser.add_argument("--one-process", action="store_true",
                    help="time both models in one fresh process per setting, as before (they then share one heap, "
                         "and each model's freed blocks shape the other's page faults: no user's process does that)")
parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
parser.add_argument("--no-tgm", action="store_true", help="skip the text-guided mask timing")
parser.add_argument("--tgm-patch-frames", type=int, default=None,
                    help="frames whose patches the 'patch' TGM timing embeds, scaled to the batch "
                         "(default: 2 on CPU, 16 on GPU; it costs one CLIP image per patch)")
parser.add_argument("--profile", action="store_true", help="print torch.profiler tables of both steps and stop")
parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)  # internal: ours|theirs, in a subprocess
parser.add_argument("--setting", default=None, help=argparse.SUPPRESS)  # internal: "precision,ratio", in a subprocess
parser.add_argument("--stepper", default=None, help=argparse.SUPPRESS)  # internal: "kind,precision,ratio", a subprocess
parser.add_argument("--weights", default=None, help=argparse.SUPPRESS)  # internal: theirs saves, ours loads, here
args = parser.parse_args()

device = torch.device(args.device)
cuda = device.type == "cuda"
torch.set_num_threads(args.threads)
KEEP = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647"}
if args.keep_freed_memory and any(os.environ.get(k) != v for k, v in KEEP.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **KEEP})  # glibc reads them at start-up
if args.attn_chunk_mib:
    M.ATTN_CHUNK_BYTES = int(args.attn_chunk_mib * 2 ** 20)
B = args.batch_size or (32 if cuda else 2)
repeats = args.repeats or (20 if cuda else 5)
precisions = args.precisions.split(",")
ratios = [float(r) for r in args.ratios.split(",")]
cfg = M.make_config(args.model, num_frames=args.num_frames, img_size=args.input_size)


def sync():
    if cuda:
        torch.cuda.synchronize()


def autocast(precision):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


# -----------------------------------------------------------------------------
# The two models, with the same weights

def build_theirs():
    """transformers' VideoMAEForPreTraining with our config."""
    from transformers import VideoMAEConfig, VideoMAEForPreTraining
    hf_cfg = VideoMAEConfig(
        image_size=cfg.img_size, patch_size=cfg.patch_size, num_channels=cfg.in_chans, num_frames=cfg.num_frames,
        tubelet_size=cfg.tubelet_size, hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads, intermediate_size=int(cfg.embed_dim * cfg.mlp_ratio),
        decoder_hidden_size=cfg.decoder_embed_dim, decoder_num_hidden_layers=cfg.decoder_depth,
        decoder_num_attention_heads=cfg.decoder_num_heads,
        decoder_intermediate_size=int(cfg.decoder_embed_dim * cfg.mlp_ratio),
        use_mean_pooling=False, norm_pix_loss=cfg.norm_pix_loss, layer_norm_eps=cfg.norm_eps)
    torch.manual_seed(0)
    theirs = VideoMAEForPreTraining(hf_cfg)
    theirs.decoder.norm.eps = cfg.norm_eps  # HF hard-codes 1e-5 here; VideoMAE (and we) use 1e-6
    return theirs.to(device).train()


def build_ours(theirs=None, folder=None):
    """Our VideoMAE, with theirs' weights (through our importer) when given, or from the folder theirs was saved to."""
    import tempfile
    ours = M.VideoMAE(cfg)
    if theirs is not None:
        with tempfile.TemporaryDirectory() as tmp:
            theirs.save_pretrained(tmp)
            weights.load_videomae_weights(ours, tmp)
    elif folder is not None:
        weights.load_videomae_weights(ours, folder)
    return ours.to(device).train()


def make_step(model, kind, precision):
    """One training step: forward under autocast, backward, AdamW (VideoMAE's betas and weight decay)."""
    impl = {"fused": dict(fused=True), "foreach": dict(foreach=True), "forloop": dict(foreach=False)}[args.optimizer]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1.5e-4, betas=(0.9, 0.95),
                            weight_decay=0.05, **impl)

    def step(video, mask):
        with autocast(precision):
            if kind == "ours":
                loss = model(video, mask)[0]
            else:  # HF takes (B, T, C, H, W): a transposed view, no copy (its patch embedding permutes it back)
                loss = model(video.transpose(1, 2), bool_masked_pos=mask).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()
    return step


def inputs(ratio, seed=0):
    """Clips (B, C, T, H, W), ImageNet-normalised noise, and a tube mask (B, N), True = masked."""
    import masking
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(B, cfg.in_chans, cfg.num_frames, cfg.img_size, cfg.img_size, generator=g)
    mask = masking.tube_mask(B, cfg.grid, ratio, generator=g)
    return video.to(device), mask.to(device)


def step_flops(n_vis, n_mask):
    """Analytic FLOPs of one training step (all clips): 2 per multiply-add of every matmul, attention included;
    backward = 2x forward (input and weight gradients), the patch embedding 1x (its input, the clip, needs no
    gradient). The patch embedding counts the visible tokens only, as ours runs it (transformers' Conv3d also
    embeds the masked ones, then drops them)."""
    D, d, N = cfg.embed_dim, cfg.decoder_embed_dim, n_vis + n_mask
    P = cfg.tubelet_size * cfg.patch_size ** 2 * cfg.in_chans
    block = lambda n, w: 2 * n * (4 * w * w + 2 * w * int(w * cfg.mlp_ratio)) + 4 * n * n * w  # linears + attention
    embed = 2 * n_vis * P * D
    fwd = cfg.depth * block(n_vis, D) + 2 * n_vis * D * d + cfg.decoder_depth * block(N, d) + 2 * n_mask * d * P
    return B * (3 * fwd + 2 * embed)


def timed(fn, cpu_times=None):
    """Wall seconds of fn(); with cpu_times, this process's CPU seconds are appended to it too (on a CPU shared
    with other jobs, wall time counts their turns and CPU time does not; with 1 thread nothing spins)."""
    sync()
    c, t = time.process_time(), time.perf_counter()
    fn()
    sync()
    if cpu_times is not None:
        cpu_times.append(time.process_time() - c)
    return time.perf_counter() - t


# -----------------------------------------------------------------------------
# Fresh subprocesses of this script: one per setting (the heap a user's process starts with), one per model for memory

def child_cmd(*extra):
    """This script, with the same sizes and flags as this run, plus extra."""
    return [sys.executable, os.path.abspath(__file__), *extra, "--device", args.device,
            "--threads", str(args.threads), "--batch-size", str(B), "--num-frames", str(args.num_frames),
            "--input-size", str(args.input_size), "--model", args.model, "--optimizer", args.optimizer,
            "--warmup", str(args.warmup), "--repeats", str(repeats),
            *(["--keep-freed-memory"] if args.keep_freed_memory else []),
            *(["--attn-chunk-mib", str(args.attn_chunk_mib)] if args.attn_chunk_mib else [])]


def run_child(extra, settings):
    """This script with extra flags, for settings [(precision, ratio)], in a fresh process -> the JSON of its last
    line, or None (its error printed)."""
    cmd = child_cmd(*extra, "--precisions", ",".join(p for p, _ in settings),
                    "--ratios", ",".join(str(r) for _, r in settings))
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"subprocess {' '.join(extra)} failed: {out.stderr[-2000:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mib():
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: that one keeps, across exec, the
    peak of the parent that forked us."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def memory_probe(kind, settings):
    """In a subprocess: build one model, run 2 steps per setting -> {setting: peak MiB}."""
    import masking, transformers  # noqa: F401 (imported before the baseline, so their memory is not counted)
    base = peak_rss_mib() if not cuda else 0.0
    model = build_ours() if kind == "ours" else build_theirs()
    out = {}
    for precision, ratio in settings:
        video, mask = inputs(ratio)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        step = make_step(model, kind, precision)
        for _ in range(2):
            step(video, mask)
        sync()
        out[f"{precision},{ratio}"] = (torch.cuda.max_memory_allocated() / 2**20 if cuda else
                                       peak_rss_mib() - base)
    return out


def peak_memory(settings):
    """{(kind, precision, ratio): MiB}, from fresh subprocesses (CPU peak RSS only grows: one setting per process)."""
    result = {}
    for kind in ("ours", "theirs"):
        for group in ([settings] if cuda else [[s] for s in settings]):
            for key, mib in (run_child(["--memory-probe", kind], group) or {}).items():
                precision, ratio = key.split(",")
                result[(kind, precision, float(ratio))] = mib
    return result


# -----------------------------------------------------------------------------
# The machine: matmul rate of large square matmuls

def matmul_rate(dtype, n):
    """FLOP/s of an n x n matmul, its best of several runs: the peak, with the machine's other jobs' turns left out."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    times = [timed(lambda: a @ b) for _ in range(10 if not cuda else 20)]
    return 2 * n ** 3 / min(times)


def machine():
    if cuda:
        return torch.cuda.get_device_name()
    with open("/proc/cpuinfo") as f:
        name = next((line.split(":")[1].strip() for line in f if line.startswith("model name")), "?")
    return f"{name}, {os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}"


# -----------------------------------------------------------------------------
# Ours against theirs, alternated step by step, one setting per fresh process

def timed_step(step, video, mask):
    """One step -> (wall s, CPU s, page faults: memory the allocator handed back to the kernel and takes again)."""
    cpu, before = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = timed(lambda: step(video, mask), cpu)
    return t, cpu[0], resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def alternate(take):
    """take(kind) -> timed_step's triple for one step of that model; `repeats` steps of each, the order swapped every
    repeat -> {kind: [(wall, CPU, faults)]}."""
    got = {"ours": [], "theirs": []}
    for i in range(repeats):
        for kind in (("ours", "theirs") if i % 2 == 0 else ("theirs", "ours")):
            got[kind].append(take(kind))
    return got


def summary(precision, ratio, got, **rest):
    """The setting's row: every step's time and the medians of wall time, CPU time and page faults."""
    med = {k: [statistics.median(col) for col in zip(*rows)] for k, rows in got.items()}  # kind -> [wall, CPU, faults]
    return dict(precision=precision, ratio=ratio, times={k: [r[0] for r in rows] for k, rows in got.items()},
                ours_ms=med["ours"][0] * 1e3, theirs_ms=med["theirs"][0] * 1e3,
                cpu_ours_ms=med["ours"][1] * 1e3, cpu_theirs_ms=med["theirs"][1] * 1e3,
                cpu_speedup=med["theirs"][1] / med["ours"][1], faults={k: m[2] for k, m in med.items()},
                load=os.getloadavg()[0], **rest)


def gflop(mask):
    n_mask = int(mask[0].sum())
    return step_flops(cfg.num_patches - n_mask, n_mask) / 1e9


def time_setting(precision, ratio):
    """--one-process, in a fresh subprocess: both models, one setting, steps alternated -> summary's dict."""
    theirs = build_theirs()
    ours = build_ours(theirs)
    video, mask = inputs(ratio)
    steps = {"ours": make_step(ours, "ours", precision), "theirs": make_step(theirs, "theirs", precision)}
    first = {k: s(video, mask).item() for k, s in steps.items()}  # same weights: the same loss
    for _ in range(args.warmup - 1):
        for s in steps.values():
            s(video, mask)
    got = alternate(lambda kind: timed_step(steps[kind], video, mask))
    # the matmul peak after the timed steps: its big blocks, freed, would otherwise warm the heap the steps meet
    return summary(precision, ratio, got, first=first, peak=matmul_rate(dtypes[precision], n_mm), gflop=gflop(mask),
                   attn=theirs.config._attn_implementation)


def stepper(kind, precision, ratio):
    """In a fresh subprocess: one model, as a user's process has it, taking a step each time the parent asks.

    Lines in: 'step' (-> timed_step's triple as JSON), 'peak' (-> the matmul rate), anything else ends it. theirs is
    built first and saves its weights to --weights; ours loads them from there, so the first losses agree."""
    if kind == "theirs":
        model = build_theirs()
        model.save_pretrained(args.weights)
    else:
        model = build_ours(folder=args.weights)
    video, mask = inputs(ratio)
    step = make_step(model, kind, precision)
    first = step(video, mask).item()
    for _ in range(args.warmup - 1):
        step(video, mask)
    print(json.dumps(dict(first=first, gflop=gflop(mask),
                          attn=getattr(getattr(model, "config", None), "_attn_implementation", None))), flush=True)
    for line in sys.stdin:
        if line.strip() == "step":
            print(json.dumps(timed_step(step, video, mask)), flush=True)
        elif line.strip() == "peak":
            print(json.dumps(matmul_rate(dtypes[precision], n_mm)), flush=True)
        else:
            break


def time_setting_apart(precision, ratio):
    """Each model in a fresh process of its own (a user's heap), their steps alternated from here -> summary's dict."""
    import tempfile

    def ask(proc, what):
        proc.stdin.write(what + "\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    with tempfile.TemporaryDirectory() as folder:
        procs, ready = {}, {}
        for kind in ("theirs", "ours"):  # theirs first: it writes the weights ours reads
            procs[kind] = subprocess.Popen(child_cmd("--stepper", f"{kind},{precision},{ratio}", "--weights", folder),
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            ready[kind] = json.loads(procs[kind].stdout.readline())
        got = alternate(lambda kind: ask(procs[kind], "step"))
        peak = ask(procs["ours"], "peak")
        for proc in procs.values():
            proc.stdin.close()  # the end of its input ends it
            proc.wait()
    return summary(precision, ratio, got, first={k: r["first"] for k, r in ready.items()}, peak=peak,
                   gflop=ready["ours"]["gflop"], attn=ready["theirs"]["attn"])


n_mm = 8192 if cuda else 2048
dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
if args.memory_probe:
    print(json.dumps(memory_probe(args.memory_probe, [(p, r) for p in precisions for r in ratios])))
    sys.exit(0)
if args.stepper:
    kind, precision, ratio = args.stepper.split(",")
    stepper(kind, precision, float(ratio))
    sys.exit(0)
if args.setting:
    precision, ratio = args.setting.split(",")
    print(json.dumps(time_setting(precision, float(ratio))))
    sys.exit(0)

print(f"device {device} ({machine()}), torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
print(f"model {args.model}, clips {B} x {cfg.num_frames}x{cfg.img_size}x{cfg.img_size}, tokens N = {cfg.num_patches},"
      f" warm-up {args.warmup}, repeats {repeats} (medians), AdamW {args.optimizer}, "
      + ("both models in one fresh process per setting" if args.one_process else
         "each model in a fresh process of its own per setting, steps alternated between them")
      + (", both processes keep freed memory (MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647)"
         if args.keep_freed_memory else "")
      + (f", attention chunks of {args.attn_chunk_mib:g} MiB" if args.attn_chunk_mib else ""))

# -----------------------------------------------------------------------------
# Where the time goes (in this process)

if args.profile:
    from torch.profiler import ProfilerActivity, profile
    theirs = build_theirs()
    ours = build_ours(theirs)
    for precision in precisions:
        for ratio in ratios:
            video, mask = inputs(ratio)
            for kind, model in (("ours", ours), ("theirs", theirs)):
                step = make_step(model, kind, precision)
                step(video, mask)
                acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
                with profile(activities=acts) as prof:
                    step(video, mask)
                    sync()
                print(f"\n=== {kind}, {precision}, ratio {ratio} ===")
                key = "self_device_time_total" if cuda else "self_cpu_time_total"
                print(prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=60))
    sys.exit(0)

# -----------------------------------------------------------------------------
# The settings, in the order a user meets them, each in a fresh process

rows = []
for precision in precisions:
    for ratio in ratios:
        r = (run_child(["--setting", f"{precision},{ratio}"], [(precision, ratio)]) if args.one_process
             else time_setting_apart(precision, ratio))
        if r is None:
            continue
        rows.append(r)
        print(f"{precision} ratio {ratio}: first loss ours {r['first']['ours']:.5f} theirs {r['first']['theirs']:.5f}; "
              f"ours {' '.join(f'{t * 1e3:.0f}' for t in r['times']['ours'])} ms; "
              f"theirs {' '.join(f'{t * 1e3:.0f}' for t in r['times']['theirs'])} ms; CPU time ours "
              f"{r['cpu_ours_ms']:.0f} theirs {r['cpu_theirs_ms']:.0f} ms ({r['cpu_speedup']:.2f}x); page faults per step "
              f"ours {r['faults']['ours']:.0f} theirs {r['faults']['theirs']:.0f}; load {r['load']:.2f}",
              flush=True)
peak = {p: max(r["peak"] for r in rows if r["precision"] == p) for p in {r["precision"] for r in rows}}
for r in rows:  # MFU against the best matmul rate of the run
    r["speedup"] = r["theirs_ms"] / r["ours_ms"]
    r["mfu"] = r["gflop"] * 1e9 / (r["ours_ms"] / 1e3) / peak[r["precision"]]

# -----------------------------------------------------------------------------
# torch.compile: compile time against per-step gain

if args.compile:  # in this process: one compile serves every repeat
    ours = build_ours()
    for precision in precisions:
        ratio = ratios[0]
        video, mask = inputs(ratio)
        eager = make_step(ours, "ours", precision)
        compiled_model = torch.compile(ours)
        compiled = make_step(compiled_model, "ours", precision)
        t_first = timed(lambda: compiled(video, mask))
        compiled(video, mask)
        eager(video, mask)
        times = {"eager": [], "compiled": []}
        for i in range(repeats):
            for kind in (("eager", "compiled") if i % 2 == 0 else ("compiled", "eager")):
                times[kind].append(timed(lambda: (eager if kind == "eager" else compiled)(video, mask)))
        te, tc = statistics.median(times["eager"]), statistics.median(times["compiled"])
        gain = te - tc
        print(f"compile {precision} ratio {ratio}: first step {t_first:.1f} s (compile included), eager "
              f"{te * 1e3:.0f} ms, compiled {tc * 1e3:.0f} ms ({te / tc:.2f}x); "
              + (f"pays after {(t_first - tc) / gain:.0f} steps" if gain > 0 else "never pays"))

# -----------------------------------------------------------------------------
# Text-guided masks: CLIP's cost per step, against a tube step

tgm_rows = []
if not args.no_tgm:
    import contextlib

    import frozen_clip
    import masking
    clip, _ = frozen_clip.load_clip("ViT-B-32-quickgelu", "none", device=device)
    video, _ = inputs(ratios[-1])
    text = torch.nn.functional.normalize(torch.randn(B, clip.text_projection.shape[1], device=device), dim=-1)
    # masking.py runs CLIP in fp32 on a CPU; the extra CPU row tries it under bf16 autocast
    variants = [("dense", contextlib.nullcontext), ("patch", contextlib.nullcontext)]
    if not cuda:
        variants.insert(1, ("dense", lambda: torch.autocast("cpu", dtype=torch.bfloat16)))
    for features, context in variants:
        tgm = masking.TextGuidedMasker(clip, features=features, ratio=ratios[-1])
        label = features + (" (CLIP in bf16)" if context is not contextlib.nullcontext else "")
        with context():
            if features == "dense":
                tgm(video, text)  # warm-up
                ms = statistics.median(timed(lambda: tgm(video, text)) for _ in range(3)) * 1e3
                note = ""
            else:  # one CLIP image per p x p patch of every frame: time a few frames' patches, scale to the batch
                f = min(args.tgm_patch_frames or (16 if cuda else 2), cfg.num_frames)
                part = video[:1, :, :f]
                if cuda:
                    tgm._patch_features(part)  # warm-up
                t = statistics.median(timed(lambda: tgm._patch_features(part)) for _ in range(3 if cuda else 1))
                ms = t * 1e3 * B * cfg.num_frames / f
                note = f" (CLIP timed on the {f * cfg.grid[1] * cfg.grid[2]} patches of {f} frame(s), scaled x{B * cfg.num_frames / f:.0f})"
        tgm_rows.append((label, ms, note))

# -----------------------------------------------------------------------------
# The table

mem = {} if args.no_memory else peak_memory([(p, r) for p in precisions for r in ratios])
unit = "MiB (peak RSS growth)" if not cuda else "MiB (max allocated)"
print("matmul peak, best over the run: " + ", ".join(f"{p} {r / 1e12:.3f} TFLOP/s" for p, r in peak.items()))
attn = rows[0]["attn"] if rows else "?"
print(f"\nours vs transformers.VideoMAEForPreTraining ({attn} attention), "
      f"{'both in one fresh process' if args.one_process else 'each in a fresh process of its own'} per setting, "
      f"{B} clips of {cfg.num_frames}x{cfg.img_size}x{cfg.img_size}, {device}; peak memory in {unit}")
print(f"{'precision':>9} {'ratio':>5} {'ours ms':>9} {'theirs ms':>9} {'their/our':>9} {'(CPU t)':>7} {'clips/s':>15} "
      f"{'GFLOP':>7} {'our MFU':>7} {'mem ours':>8} {'theirs':>8}")
for r in rows:
    m_o = mem.get(("ours", r["precision"], r["ratio"]), float("nan"))
    m_t = mem.get(("theirs", r["precision"], r["ratio"]), float("nan"))
    cps = f"{B / r['ours_ms'] * 1e3:.1f}/{B / r['theirs_ms'] * 1e3:.1f}"
    print(f"{r['precision']:>9} {r['ratio']:>5} {r['ours_ms']:>9.0f} {r['theirs_ms']:>9.0f} {r['speedup']:>8.2f}x "
          f"{r['cpu_speedup']:>6.2f}x "
          f"{cps:>15} {r['gflop']:>7.0f} {r['mfu']:>7.1%} {m_o:>8.0f} {m_t:>8.0f}")
tube = {r["precision"]: r["ours_ms"] for r in rows if r["ratio"] == ratios[-1]}
for features, ms, note in tgm_rows:
    for precision, step_ms in tube.items():
        print(f"{precision:>9} {ratios[-1]:>5} tgm-{features}: mask {ms:.0f} ms/step = {ms / B:.0f} ms/clip; "
              f"step + mask {(step_ms + ms):.0f} ms = {(step_ms + ms) / step_ms:.2f}x a tube step{note}")
print("their/our: transformers' ms / ours (>1: ours faster), in wall time and (CPU t) in process CPU time; clips/s ours/theirs; MFU: analytic step FLOPs / "
      "time / the best matmul peak; TGM's CLIP runs fp32 on CPU, bf16 autocast on GPU (masking.py)")
