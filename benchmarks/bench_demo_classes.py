"""
Where the demo's class is, before any transfer run: can a linear model read it from the features the paper's
classifiers see? The paper's finetuning and linear probe mean-pool every token (Sec. 4.2), so a class that lives in
where the actor goes is thrown away before the head sees it; this measures what is left.

Features, frozen, of one clip per video (the centre window and the centre crop, as the val split is read): 8 x 8
average-pooled raw pixels per frame; a random ViT (VideoMAE's init, `finetune.py --checkpoint none`); and the
encoders of pretrain.py checkpoints given on the command line. Pooled three ways: the mean over all tokens (the
paper's), the mean per time slice, all tokens concatenated. Read by a logistic regression on standardised features
(Adam, full batch, best of three weight decays), trained on the labelled train split and scored on the val split,
for the class, for the actor's shape alone (what one frame shows) and for its motion alone (spinning or pulsing).

    python benchmarks/bench_demo_classes.py
    python benchmarks/bench_demo_classes.py runs/demo_pretrain/ckpt.pt     # and a pretrained encoder
    TGM_DEMO_SEED=1 python benchmarks/bench_demo_classes.py                # on the demo's data draw 1
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
parser.add_argument("checkpoints", nargs="*", help="pretrain.py checkpoints whose encoders to measure too")
parser.add_argument("--num-frames", type=int, default=8, help="T; the demo pretraining's")
parser.add_argument("--sampling-rate", type=int, default=4)
parser.add_argument("--input-size", type=int, default=64, help="the demo pretraining's crop")
parser.add_argument("--steps", type=int, default=500, help="full-batch Adam steps of the logistic regression")
args = parser.parse_args()
torch.set_num_threads(1)


def pixel_tokens(video):
    """(B, C, T, H, W) -> (B, T * 64, C): each frame average-pooled to 8 x 8 cells, a cell per token."""
    x = F.adaptive_avg_pool3d(video, (video.shape[2], 8, 8))      # (B, C, T, 8, 8)
    return x.flatten(2).transpose(1, 2)


def vit_tokens(ckpt):
    """A frozen encoder (its final LayerNorm kept, as the linear probe's, loaded as finetune.py loads it): random, or a
    checkpoint's."""
    cfg, enc_sd = M.make_config("vit_tiny", num_frames=args.num_frames, img_size=args.input_size), None
    if ckpt is not None:
        _, enc_sd, cfg = FT.read_pretrained(ckpt)
    torch.manual_seed(0)
    enc = M.Encoder(cfg, final_norm=True)
    enc.apply(M.init_weights)
    if enc_sd is not None:
        FT.load_encoder(enc, enc_sd, ckpt)
    return enc.eval()


@torch.no_grad()
def features(tokens_fn, list_file, root):
    """-> {pooling: (V, D')}, labels (V,): one centre clip per video."""
    ds = data.VideoDataset(list_file, root, mode="val", num_frames=args.num_frames, sampling_rate=args.sampling_rate,
                           input_size=args.input_size)
    out, labels = {"mean": [], "per time slice": [], "all tokens": []}, []
    for batch in torch.utils.data.DataLoader(ds, 32, num_workers=0, collate_fn=data.collate):
        x = tokens_fn(batch["video"])                               # (B, N, D)
        B, N, D = x.shape
        out["mean"].append(x.mean(1))                               # the paper's pooling
        out["per time slice"].append(x.view(B, 4, N // 4, D).mean(2).flatten(1))  # time is the slowest token axis
        out["all tokens"].append(x.flatten(1))
        labels.append(batch["label"])
    return {k: torch.cat(v).float() for k, v in out.items()}, torch.cat(labels)


def val_top1(xtr, ytr, xva, yva):
    """Logistic regression on features standardised by the train split's statistics; best val top-1 of 3 decays."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    best = 0.0
    for wd in (1e-4, 1e-3, 1e-2):
        torch.manual_seed(0)
        head = torch.nn.Linear(xtr.shape[1], int(ytr.max()) + 1)
        opt = torch.optim.Adam(head.parameters(), 1e-2, weight_decay=wd)
        for _ in range(args.steps):
            opt.zero_grad()
            F.cross_entropy(head(xtr), ytr).backward()
            opt.step()
        with torch.no_grad():
            best = max(best, (head(xva).argmax(1) == yva).float().mean().item() * 100)
    return best


demo = D.demo_dataset(seed=int(os.environ.get("TGM_DEMO_SEED", 0)))  # the data draw, as the stages read it
K_motion = len(D.DEMO_MOTIONS)
tasks = {"class": lambda y: y, "shape": lambda y: y // K_motion, "motion": lambda y: y % K_motion}  # label = shape * K_motion + motion
encoders = {"pixels 8x8": pixel_tokens, "random ViT": vit_tokens(None)}
encoders.update({os.path.relpath(c): vit_tokens(c) for c in args.checkpoints})
print(f"demo v{D.DEMO_VERSION}, data draw {os.environ.get('TGM_DEMO_SEED', 0)}: chance {100 / len(D.DEMO_ACTIONS):.1f} "
      f"(class), {100 / len(D.DEMO_SHAPES):.1f} "
      f"(shape), {100 / K_motion:.1f} (motion); val top-1 of a logistic regression on the train split's centre clips")
print("| features | pooling | class | shape | motion |\n| --- | --- | --- | --- | --- |")
for name, fn in encoders.items():
    t0 = time.time()
    ftr, ytr = features(fn, demo["train"], demo["root"])
    fva, yva = features(fn, demo["val"], demo["root"])
    for pool in ftr:
        accs = [val_top1(ftr[pool], f(ytr), fva[pool], f(yva)) for f in tasks.values()]
        print(f"| {name} | {pool} | " + " | ".join(f"{a:.1f}" for a in accs) + " |", flush=True)
    print(f"({name}: {time.time() - t0:.0f} s)", file=sys.stderr)
