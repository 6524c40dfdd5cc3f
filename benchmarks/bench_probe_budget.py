"""
Is the demo's linear probe limited by the encoder or by its own budget? The probe (MAE's: BatchNorm without affine,
then Linear, SGD with momentum, warmup and a cosine to 0; model.LinearProbe) trained for more steps than the demo's
240, on the same encoders and the same kind of clips.

The encoder is frozen, so its mean-pooled features are computed once: P augmented passes over the labelled train
split (finetune.py --mode linear's crops: random-resized crop and flip, fresh per pass) and the centre view of each
val video. Each probe step then draws 16 train videos, each in one of its P passes, as the demo's batch of 16 does,
at the demo's lr (base 1.6 at batch 16 = 0.1), 10 % warmup. Reported: val top-1 (centre view; the stage's 5x3 test
is not run here) and the training loss over all cached clips at the end, per step budget; and how anisotropic the
features are: the share of the variance that the top 5 principal directions of the standardised features hold (a
linear probe's SGD converges slowly along the small ones, where a budget of a few hundred steps leaves the class).

    python benchmarks/bench_probe_budget.py runs/demo_tgm/ckpt.pt      # a random encoder and this checkpoint's
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import demo as D  # noqa: E402
import finetune as FT  # noqa: E402
import model as M  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
parser.add_argument("checkpoints", nargs="*", help="pretrain.py checkpoints whose encoders to probe, besides a random one")
parser.add_argument("--steps", type=int, nargs="+", default=[240, 720, 2400], help="probe step budgets; the demo's is 240")
parser.add_argument("--passes", type=int, default=6, help="augmented passes over the train split, computed once")
parser.add_argument("--lr", type=float, default=0.1, help="the probe's peak lr at batch 16 (the demo's base 1.6)")
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--random-seeds", type=int, nargs="+", default=[0], help="one random encoder per init seed")
args = parser.parse_args()
SHAPE = dict(num_frames=8, sampling_rate=4, input_size=64)   # the demo's clips


def encoder(ckpt, seed=0):
    """A frozen encoder with its final LayerNorm, as finetune.py --mode linear builds and loads it: VideoMAE's random
    init (under `seed`), or a checkpoint's weights."""
    cfg, enc_sd = M.make_config("vit_tiny", num_frames=SHAPE["num_frames"], img_size=SHAPE["input_size"]), None
    if ckpt is not None:
        _, enc_sd, cfg = FT.read_pretrained(ckpt)
    torch.manual_seed(seed)
    enc = M.Encoder(cfg, final_norm=True)
    enc.apply(M.init_weights)
    if enc_sd is not None:
        FT.load_encoder(enc, enc_sd, ckpt)
    return enc.eval()


@torch.no_grad()
def features(enc, ds):
    """-> (V, D) mean-pooled features, (V,) labels."""
    xs, ys = [], []
    for batch in torch.utils.data.DataLoader(ds, 32, num_workers=0, collate_fn=data.collate):
        xs.append(enc(batch["video"]).mean(1).float())
        ys.append(batch["label"])
    return torch.cat(xs), torch.cat(ys)


def probe(xtr, ytr, xva, yva, steps):
    """MAE's probe for `steps` SGD steps on the cached passes xtr (P, V, D) -> (val top-1, final train loss)."""
    P, V, Dim = xtr.shape
    torch.manual_seed(0)
    head = M.LinearProbe(Dim, int(ytr.max()) + 1)
    opt = torch.optim.SGD(head.parameters(), lr=args.lr, momentum=0.9, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    head.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = M.lr_at(step, steps, steps // 10, args.lr, 0.0)
        v = torch.randperm(V, generator=g)[:args.batch_size]                 # distinct videos, as an epoch's batch
        p = torch.randint(P, (len(v),), generator=g)                         # each in one of its augmented crops
        loss = F.cross_entropy(head(xtr[p, v]), ytr[v])
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        top1 = (head(xva).argmax(1) == yva).float().mean().item() * 100
        train_loss = F.cross_entropy(head(xtr.flatten(0, 1)), ytr.repeat(P)).item()
    return top1, train_loss


def top5_share(x):
    """Share of the variance of the standardised features held by their top 5 principal directions."""
    z = (x - x.mean(0)) / (x.std(0) + 1e-6)
    ev = torch.linalg.eigvalsh(z.T @ z / len(z))
    return (ev[-5:].sum() / ev.sum()).item()


demo = D.demo_dataset()
print(f"demo v{D.DEMO_VERSION}, chance {100 / len(D.DEMO_ACTIONS):.1f} %; MAE's probe at lr {args.lr}, batch "
      f"{args.batch_size}, on {args.passes} cached augmented passes; val top-1 (centre view) / final train loss")
print("| encoder | top-5 variance share | " + " | ".join(f"{s} steps" for s in args.steps) + " |")
print("| --- | --- | " + " | ".join("---" for _ in args.steps) + " |")
randoms = [(f"random ViT (init seed {s})", None, s) for s in args.random_seeds]
for name, ckpt, seed in randoms + [(os.path.relpath(c), c, 0) for c in args.checkpoints]:
    t0 = time.time()
    enc = encoder(ckpt, seed)
    passes = []
    for p in range(args.passes):
        ds = data.VideoDataset(demo["train"], demo["root"], mode="finetune", seed=p, **SHAPE)
        ds.set_epoch(p)
        passes.append(features(enc, ds))
    xtr, ytr = torch.stack([x for x, _ in passes]), passes[0][1]            # (P, V, D); the same video order
    assert all(torch.equal(y, ytr) for _, y in passes)
    xva, yva = features(enc, data.VideoDataset(demo["val"], demo["root"], mode="val", **SHAPE))
    cells = [probe(xtr, ytr, xva, yva, s) for s in args.steps]
    print(f"| {name} | {top5_share(xtr[0]):.2f} | " + " | ".join(f"{a:.1f} / {l:.3f}" for a, l in cells) + " |",
          flush=True)
    print(f"({name}: {time.time() - t0:.0f} s)", file=sys.stderr)
