"""
Sec. 3.1: the CPU bf16 attention of model.py (Attention.forward), forward + backward, at the ViT-B pretraining sizes.

For each attention of a pretraining step (the encoder over N_vis visible tokens at mask ratios 0.9 and 0.6, the
decoder over all N tokens) it times softmax(q k^T / sqrt(hs)) v and its backward, written out at once (the
(B, nh, N, N) weights in one tensor), written out a chunk of queries at a time (model.chunked_attention, for several
chunk sizes), and torch's fused F.scaled_dot_product_attention. The variants alternate, the order reversed every
repeat, after two warm-up rounds; it prints medians of this process's CPU time (steadier than wall time on a CPU
that others share; with --threads 1 nothing spins).

    python benchmarks/bench_attention.py                 # B = 2 clips of 16x224, 1 thread (~1 min)
    python benchmarks/bench_attention.py --threads 2
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--batch-size", type=int, default=2, help="clips B")
parser.add_argument("--model", default="vit_base", help="model size; paper: vit_base")
parser.add_argument("--chunk-mib", default="16,8,4,2", help="chunk sizes to time, MiB of bf16 weights per chunk")
parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
parser.add_argument("--repeats", type=int, default=9, help="timed rounds (medians)")
args = parser.parse_args()
torch.set_num_threads(args.threads)
cfg = M.make_config(args.model)
B = args.batch_size


def chunked(mib):
    """model.chunked_attention with chunks of mib MiB."""
    def f(q, k, v):
        M.ATTN_CHUNK_BYTES = mib * 2 ** 20
        return M.chunked_attention(q, k, v)
    return f


variants = {"at once": lambda q, k, v: M.attention_weights(q, k) @ v,
            **{f"chunks {mib} MiB": chunked(int(mib)) for mib in args.chunk_mib.split(",")},
            "fused (SDPA)": F.scaled_dot_product_attention}
h, w = cfg.grid[1], cfg.grid[2]
# (name, tokens, heads, width): the encoder keeps h*w - int(ratio*h*w) tokens per time slice (a tube mask)
sizes = [(f"encoder, ratio {r}", cfg.grid[0] * (h * w - int(r * h * w)), cfg.num_heads, cfg.embed_dim)
         for r in (0.9, 0.6)] + [("decoder", cfg.num_patches, cfg.decoder_num_heads, cfg.decoder_embed_dim)]

print(f"CPU bf16 attention fwd + bwd, B = {B}, {args.threads} thread(s), medians of {args.repeats} rounds, ms of CPU time")
print("| attention | tokens | heads | " + " | ".join(variants) + " |")
print("| --- " * (3 + len(variants)) + "|")
for name, n, nh, dim in sizes:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, nh, n, dim // nh, generator=g).bfloat16().requires_grad_() for _ in range(3))
    grad = torch.randn(B, nh, n, dim // nh, generator=g).bfloat16()  # (B, nh, N, hs)
    times = {v_: [] for v_ in variants}
    for i in range(args.repeats + 2):
        for key in (list(variants) if i % 2 == 0 else list(reversed(variants))):
            t = time.process_time()
            variants[key](q, k, v).backward(grad)
            if i >= 2:
                times[key].append(time.process_time() - t)
    print(f"| {name} | {n} | {nh} | " + " | ".join(f"{statistics.median(t) * 1e3:.0f}" for t in times.values()) + " |",
          flush=True)
