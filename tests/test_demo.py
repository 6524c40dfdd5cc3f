"""
Tests of demo.py, the built-in demo: its dataset (deterministic, cached, learnable by construction), its CLIP, and
the one entry the stages call (`fill`). CPU, no network.

    python -m pytest -q tests/test_demo.py
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

import caption
import data
import demo as D
import evaluate
import finetune
import frozen_clip
import pretrain
from conftest import ROOT


# -----------------------------------------------------------------------------
# The demo dataset

def test_demo_dataset_files(demo):
    names = data.read_class_names(demo["class_names"])
    pretrain = data.read_list(demo["pretrain"], demo["root"])
    train, val = data.read_list(demo["train"], demo["root"]), data.read_list(demo["val"], demo["root"])
    caps = data.read_captions(demo["captions"])
    n = D.DEMO_COUNTS
    assert len(names) == 8 and (len(pretrain), len(train), len(val)) == (8 * (n["pretrain"] + n["train"]), 8 * n["train"], 8 * n["val"])
    assert len(pretrain) > 5 * len(train)                        # more unlabelled videos than labelled ones
    assert set(train) <= set(pretrain) and not set(val) & set(pretrain)  # val is never pretrained on
    assert {label for _, label in train} == set(range(8))
    assert len(caps) == len(pretrain) + len(val) and all(len(c) == 3 and len(set(c)) == 3 for c in caps.values())
    info = data.probe_video(train[0][0])
    assert info.num_frames == D.DEMO_FRAMES >= 8 * 4 and (info.height, info.width) == D.DEMO_SIZE
    # the captions say what a frame shows, as BLIP-2's keyframe captions do: every one names a colour and the actor's
    # shape (half of the class), and only about one video in ten has a caption that names its motion
    named = 0
    for path, label in train:
        c = caps[path[len(demo["root"]) + 1:]]
        assert all(any(w in x for w in D.DEMO_COLOURS) and D.DEMO_ACTIONS[label][0].split()[1] in x for x in c)
        named += any(D.DEMO_ACTIONS[label][1] in x for x in c)
        assert not any(a[0] in x for a in D.DEMO_ACTIONS for x in c)  # never the class name itself
    assert 0 < named / len(train) < 0.2
    assert not any(" a o" in x or " a e" in x for c in caps.values() for x in c)  # "an orange", not "a orange"


def test_demo_is_deterministic_and_atomic(tmp_path, monkeypatch):
    kw = dict(seed=3, pretrain_per_class=1, train_per_class=1, val_per_class=1)
    a = D.demo_dataset(cache_dir=str(tmp_path / "a"), **kw)
    b = D.demo_dataset(cache_dir=str(tmp_path / "b"), **kw)
    c = D.demo_dataset(cache_dir=str(tmp_path / "c"), **{**kw, "seed": 4})
    assert open(a["captions"]).read() == open(b["captions"]).read() != open(c["captions"]).read()
    for (pa, _), (pb, _) in zip(data.read_list(a["pretrain"], a["root"]), data.read_list(b["pretrain"], b["root"])):
        idx = np.arange(D.DEMO_FRAMES)
        np.testing.assert_array_equal(data.read_frames(pa, idx), data.read_frames(pb, idx))
    oa, ob = np.load(a["objects"]), np.load(b["objects"])
    assert oa.files == ob.files and all(np.array_equal(oa[k], ob[k]) for k in oa.files)
    # no temporary folder is left behind, and a second call reuses the cache without rendering anything
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [f"demo-v{D.DEMO_VERSION}-seed3-1x1x1"]
    monkeypatch.setattr(D, "_render_demo", None)
    assert D.demo_dataset(cache_dir=str(tmp_path / "a"), **kw) == a


def test_demo_scene_is_independent_of_the_class():
    """Every draw comes before the class is read: one stream rendered as each class gives the same background and
    distractor, and the actor differs only in what the class sets, its shape with that shape's colours and pattern."""
    for k in range(4):
        w = [D._render_demo(np.random.default_rng([0, k]), label)[2] for label in range(len(D.DEMO_ACTIONS))]
        assert all((x["bg"], x["dshape"], x["dtexture"]) == (w[0]["bg"], w[0]["dshape"], w[0]["dtexture"]) for x in w)
        for label, x in enumerate(w):
            shape = D.DEMO_ACTIONS[label][0].split()[1]
            s = D.DEMO_SHAPES.index(shape)
            assert x["shape"] == shape and x["texture"] == D.DEMO_TEXTURES[s]
            assert x["colour"] in list(D.DEMO_COLOURS)[2 * s:2 * s + 2] and x["dcolour"] != x["colour"]


def _mask_features(mask):
    """The renderer's ground truth -> what a tiny classifier needs: how much the actor's area swings over the video
    (pulsing: about +-30 %; spinning: pixel rounding only), and how it fills the disc around its centre (shape)."""
    area = mask.sum(axis=(1, 2)).astype(float)                # (T,)
    T, H, W = mask.shape
    yy, xx = np.mgrid[0:H, 0:W]
    fill = []
    for f in range(T):
        ys, xs = np.nonzero(mask[f])
        r = np.hypot(ys - ys.mean(), xs - xs.mean()).max() + 0.5
        fill.append(area[f] / (np.pi * r * r))                 # 1: a circle; 0.64: a square; less: triangle, star
    return np.array([area.std() / area.mean(), np.mean(fill)])


def test_demo_classes_are_learnable_by_construction():
    """A nearest-class-mean classifier on two numbers of each video's ground-truth actor mask, trained on 6 videos
    a class and tested on 4 new ones, names the class of every one: shape and motion are both in what the video shows."""
    def videos(start, per_class):
        X, y = [], []
        for label in range(len(D.DEMO_ACTIONS)):
            for k in range(per_class):
                X.append(_mask_features(D._render_demo(np.random.default_rng([7, start + 100 * label + k]), label)[1]))
                y.append(label)
        return np.array(X), np.array(y)
    Xtr, ytr = videos(0, 6)
    Xva, yva = videos(50, 4)
    mu, sd = Xtr.mean(0), Xtr.std(0)
    means = np.stack([((Xtr - mu) / sd)[ytr == c].mean(0) for c in range(len(D.DEMO_ACTIONS))])
    pred = np.linalg.norm(((Xva - mu) / sd)[:, None] - means[None], axis=2).argmin(1)
    assert (pred == yva).mean() >= 0.9


def test_demo_keeps_the_main_objects_mask(demo):
    """objects.npz holds, for every labelled demo video, the per-frame mask of the object the captions name first; rendered
    pixels under it are that object's colour, shaded and patterned (so a multiple of it, or its dark rim), and it moves as
    the class says."""
    objects = np.load(demo["objects"])
    stems = sorted(os.path.splitext(os.path.basename(rel))[0] for f in (demo["train"], demo["val"])
                   for rel, _ in data.read_list(f))
    assert sorted(objects.files) == stems
    names = [a[0] for a in D.DEMO_ACTIONS]
    frames, mask, words = D._render_demo(np.random.default_rng([0, 0]), label=names.index("pulsing square"))
    assert mask.shape == frames.shape[:3] and mask.any(axis=(1, 2)).all()
    colour = np.array(D.DEMO_COLOURS[words["colour"]])
    ratio = frames[mask].astype(float) / colour                # (pixels, 3): the shading, times the pulse's light
    lit = (frames[mask] < 255).all(1)                          # where no channel clipped at white
    assert np.abs(ratio - ratio.mean(1, keepdims=True))[lit].max() < 0.06 and 0.2 < ratio.min()
    assert ratio.max() < 1 + D.DEMO_KNOBS["pulse_light"] + 0.01
    assert len(np.unique(frames[mask], axis=0)) > 20           # shaded and patterned, not one flat colour
    area = mask.sum(axis=(1, 2))
    assert area.max() > 1.8 * area.min()                       # pulsing: (1.25 / 0.75) ** 2 = 2.8 at the extremes
    light = np.array([(frames[f][mask[f]] / colour).mean() for f in range(len(mask))])
    assert light.max() > 1.4 * light.min()                     # and its light throbs with it
    frames, spun, words = D._render_demo(np.random.default_rng([0, 0]), label=names.index("spinning square"))
    area = spun.sum(axis=(1, 2))
    assert area.max() < 1.15 * area.min() and not np.array_equal(spun[0], spun[5])  # spinning: it turns in place
    colour = np.array(D.DEMO_COLOURS[words["colour"]])
    light = np.array([(frames[f][spun[f]] / colour).mean() for f in range(len(spun))])
    assert light.max() < 1.1 * light.min()                     # in a steady light


# ----------------------------------------------------------------------------------------------------------------
# The demo CLIP: trained by D.train_demo_clip, saved beside the demo data, loaded by load_clip

# a CLIP smaller still than conftest's, trained for a few steps on solid colours named by their captions
TINY_DEMO_CLIP = {"embed_dim": 16,
                  "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 230), "yellow": (235, 220, 30),
           "white": (245, 245, 245), "black": (10, 10, 10)}


@pytest.fixture(scope="module")
def colour_demo(tmp_path_factory):
    """A demo-shaped dataset (the keys D.demo_clip reads) of one short video per colour: the whole frame in
    that colour, with a little noise; captions that name it."""
    root = tmp_path_factory.mktemp("colour-demo")
    os.makedirs(root / "videos")
    rng = np.random.default_rng(0)
    with open(root / "train.txt", "w") as lst, open(root / "captions.jsonl", "w") as caps:
        for i, (name, rgb) in enumerate(COLOURS.items()):
            frames = np.clip(np.array(rgb) + rng.normal(0, 8, size=(8, 32, 32, 3)), 0, 255).astype(np.uint8)
            D.write_video(str(root / f"videos/{name}.mp4"), frames)
            lst.write(f"videos/{name}.mp4 {i}\n")
            caps.write(json.dumps({"video": f"videos/{name}.mp4", "captions": [f"a {name} picture", f"all {name}"]}) + "\n")
    (root / "class_names.txt").write_text("".join(f"{name}\n" for name in COLOURS))
    return {"root": str(root), "pretrain": str(root / "train.txt"), "train": str(root / "train.txt"), "val": str(root / "train.txt"),
            "captions": str(root / "captions.jsonl"), "class_names": str(root / "class_names.txt")}


def encode_frames(clip, frames):
    """uint8 (n, H, W, 3) whole frames -> (n, E) L2-normalised image embeddings, CLIP's own preprocessing."""
    x = data.apply_crop(torch.from_numpy(frames).permute(0, 3, 1, 2), data.Crop(0, 0, 1, 1), clip.visual.image_size,
                        torch.float32) / 255
    x = (x - torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1)) / torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)
    return F.normalize(clip.encode_image(x), dim=-1)


@pytest.fixture(scope="module")
def tiny_demo_clip(colour_demo):
    """(config path, weights path) of a tiny demo CLIP trained on colour_demo by D.demo_clip (a second or two)."""
    return D.demo_clip(colour_demo, name="tgm-test-demo-clip", config=TINY_DEMO_CLIP, steps=60)


def test_demo_clip_learns_its_captions_saves_and_loads_through_load_clip(colour_demo, tiny_demo_clip):
    config, weights = tiny_demo_clip
    assert os.path.dirname(weights) == colour_demo["root"] and os.path.isfile(config)
    clip, tokenizer = frozen_clip.load_clip(config, weights)  # the path every user of the demo CLIP takes
    # each colour's frames rank their own caption first among the six
    videos = D.demo_clip_videos(colour_demo["train"], colour_demo["root"], colour_demo["captions"])
    text = frozen_clip.TextEmbedder(clip, tokenizer)([f"a {name} picture" for name in COLOURS])  # (6, E)
    for i, (frames, _) in enumerate(videos):
        assert (encode_frames(clip, frames) @ text.t()).argmax(dim=1).eq(i).all()
    # the file holds exactly what the trainer made, and the trainer is deterministic for a seed
    again = D.train_demo_clip(videos, config, steps=60, seed=0)
    frames = videos[0][0]
    assert torch.equal(encode_frames(again, frames), encode_frames(clip, frames))
    tokens = tokenizer(["a red picture"])
    assert torch.equal(again.encode_text(tokens), clip.encode_text(tokens))


def test_fill_gives_the_demo_clip_on_the_demo_only(colour_demo, tiny_demo_clip, tiny_clip_config, monkeypatch,
                                                  capsys, tmp_path):
    # the full-size demo CLIP trains for a minute: the tiny one stands in; the dataset is the colour demo
    monkeypatch.chdir(tmp_path)
    for name in ("ckpt.pt", "ft.pt", "pre.pt"):                       # the checkpoints named must exist; fill never reads them
        open(name, "w").close()
    seeds = []                                                        # the data draw each fill asked for
    monkeypatch.setattr(D, "demo_dataset", lambda cache_dir, seed: seeds.append(seed) or colour_demo)
    monkeypatch.setattr(D, "demo_clip", lambda demo: tiny_demo_clip)
    monkeypatch.setattr(D, "_openai_clip_at_hand", lambda name: False)  # offline, nothing cached
    # the demo, --clip-pretrained untyped, OpenAI's weights out of reach: the demo CLIP and its per-patch features,
    # recorded as --clip-model / --clip-pretrained, so a checkpoint names the files evaluate.py loads
    args = pretrain.parse_args(["--clip-model", tiny_clip_config])
    assert (args.clip_model, args.clip_pretrained) == tiny_demo_clip and args.tgm_features == "patch"
    assert (args.data, args.captions, args.model, args.epochs) == (colour_demo["pretrain"], colour_demo["captions"],
                                                                   "vit_tiny", D.FLAGS["pretrain"]["epochs"])
    assert "demo-sized --model vit_tiny" in capsys.readouterr().out
    # a typed value wins; typed weights are never replaced, the demo's lists still fill --data
    args = pretrain.parse_args(["--clip-pretrained", "none", "--epochs", "7", "--tgm-features", "dense"])
    assert (args.clip_pretrained, args.epochs, args.tgm_features) == ("none", 7, "dense")
    assert "--epochs" not in capsys.readouterr().out                  # the printed line names only what it set
    # real data: nothing is filled, unless --clip-pretrained demo asks for the demo CLIP (--help shows the paper's)
    args = D.fill(pretrain.get_parser(), ["--data", "x.txt", "--clip-pretrained", "demo", "--tgm-features", "patch"],
                  "pretrain")
    assert (args.data, args.model, args.epochs) == ("x.txt", "vit_base", 200) and args.clip_pretrained == tiny_demo_clip[1]
    # finetuning from a checkpoint keeps the checkpoint's shape; from none the demo's; evaluate's test reads val
    args = finetune.parse_args(["--checkpoint", "ckpt.pt", "--mode", "linear"])
    assert args.model is None and args.val_data == colour_demo["val"] and args.blr == D.FLAGS["linear"]["blr"]
    args = finetune.parse_args(["--checkpoint", "none"])
    assert (args.model, args.num_frames, args.input_size) == ("vit_tiny", 8, 64)
    args = evaluate.parse_args(["--checkpoint", "ft.pt"])
    assert (args.data, args.val_data, args.clip_pretrained, args.tgm_features) == (colour_demo["val"], None, None, None)
    args = evaluate.parse_args(["--checkpoint", "pre.pt", "--retrieval"])
    assert (args.data, args.val_data) == (colour_demo["train"], colour_demo["val"])
    args = caption.parse_args(["--source", "oracle"])
    assert (args.data, args.class_names) == (colour_demo["train"], colour_demo["class_names"])
    assert set(seeds) == {0}                                          # the default draw, unless TGM_DEMO_SEED says
    monkeypatch.setenv("TGM_DEMO_SEED", "3")                          # another draw of the demo's data, for every stage
    caption.parse_args(["--source", "oracle"])
    assert seeds[-1] == 3


def test_paper_values_are_the_defaults_help_shows(tmp_path, monkeypatch):
    # --help shows the paper's recipe; the demo sets its own only when it runs, and typed flags win over both
    parser = pretrain.get_parser()
    assert [parser.get_default(k) for k in ("epochs", "blr", "warmup_epochs", "model", "batch_size", "clip_pretrained")
            ] == [200, 1.5e-4, 40, "vit_base", 32, "openai"]
    assert "(default: 200)" in " ".join(parser.format_help().split())
    monkeypatch.chdir(tmp_path)
    open("x.txt", "w").close()
    ft = finetune.parse_args(["--data", "x.txt", "--mode", "linear"])  # MAE's probe recipe where --mode linear
    assert (ft.epochs, ft.batch_size, ft.blr, ft.warmup_epochs, ft.weight_decay) == (90, 128, 0.1, 10, 0.0)
    ft = finetune.parse_args(["--data", "x.txt", "--mode", "linear", "--epochs", "3"])
    assert ft.epochs == 3 and ft.blr == 0.1
    ft = finetune.parse_args(["--data", "x.txt"])
    assert (ft.epochs, ft.blr, ft.layer_decay, ft.mixup, ft.reprob) == (100, 1e-3, 0.75, 0.8, 0.25)


def test_stages_hold_no_demo_code():
    # the demo lives in demo.py: the shared modules never import it; a command line imports it only when no --data
    # (or --video) is given, and calls its one entry once
    for name in ("data.py", "model.py", "frozen_clip.py", "weights.py"):
        src = open(os.path.join(ROOT, name)).read()
        assert "import demo" not in src and "demo_dataset" not in src, name
    for name in ("masking.py", "maps.py", "pretrain.py", "finetune.py", "evaluate.py", "caption.py"):
        src = open(os.path.join(ROOT, name)).read()
        assert src.count("demo.fill(") == 1 and "\nimport demo" not in src and "demo_dataset" not in src, name


def test_no_two_top_level_modules_import_each_other():
    # the demo stands above the stages it serves, the stages above the shared modules: imports inside functions count
    import ast
    names = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")}
    imports = {}
    for name in names:
        tree = ast.parse(open(os.path.join(ROOT, name + ".py")).read())
        imports[name] = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | {
            n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "demo" in imports["pretrain"] and "maps" in imports["pretrain"]  # imports inside functions are seen
    assert [(a, b) for a in names for b in names if a < b and b in imports[a] and a in imports[b]] == []


def test_command_line_demo_goes_on_offline_with_the_demo_clip(demo, tiny_demo_clip, tiny_clip_config, tmp_path):
    # the README's `python masking.py --mask tgm` on a machine without CLIP weights: the demo video, the demo CLIP
    # (said so), the paper's patch features; a real video with weights that cannot be had stops with the reason
    env = {**os.environ, "TGM_CACHE": os.path.dirname(demo["root"])}  # the demo dataset the session built
    # the tiny demo CLIP where demo.py keeps the demo's own (the full-size one trains for a minute)
    config, weights = tiny_demo_clip
    shutil.copy(weights, os.path.join(demo["root"], f"{D.DEMO_CLIP_NAME}-seed0.pt"))
    with open(config) as f, open(os.path.join(demo["root"], f"{D.DEMO_CLIP_NAME}.json"), "w") as g:
        g.write(f.read())
    small = ["--mask", "tgm", "--num-frames", "4", "--sampling-rate", "1", "--input-size", "32",
             "--clip-model", tiny_clip_config]  # no --clip-pretrained: openai's, which this tiny model has none of
    run = lambda *extra: subprocess.run([sys.executable, os.path.join(ROOT, "masking.py"), *small, *extra], env=env,
                                        capture_output=True, text=True, timeout=300)
    out = run("--out", str(tmp_path / "demo.png"))
    assert out.returncode == 0, out.stderr
    assert "uses the demo CLIP" in out.stdout and "tgm patch top" in out.stdout and os.path.isfile(tmp_path / "demo.png")
    video = os.path.join(demo["root"], data.read_list(demo["val"])[0][0])
    out = run("--video", video, "--caption", "a square", "--out", str(tmp_path / "v.png"))
    assert out.returncode != 0 and "neither a file nor a weights tag" in out.stderr


def test_table2_draws_compares_the_draws_it_finds(tmp_path):
    """benchmarks/table2_draws.py --report-only: each draw's rows, the spread across draws and the differences, from
    table2_demo.py's result files (two made-up draws: L_NCE adds 10 points on one and loses 5 on the other)."""
    def row(mask, ratio, label, lp, ft):
        return {"mask": mask, "ratio": ratio, "components": label, "seed": 0, "pretrain_log": [],
                "linear": {"top1": lp}, "finetune": {"top1": ft}, "seconds": {"linear": 1.0, "finetune": 2.0}}
    for draw, (vt, mae) in {1: (80.0, 70.0), 2: (75.0, 80.0)}.items():
        os.makedirs(tmp_path / f"draw{draw}")
        runs = {"tgm-vt|MAE + V->T|0": row("tgm", 0.6, "MAE + V->T", vt, 90.0), "tgm-mae|MAE|0": row("tgm", 0.6, "MAE", mae, 85.0),
                "none|no pretraining|0": row("none", None, "no pretraining", 60.0, 50.0)}
        json.dump(runs, open(tmp_path / f"draw{draw}" / "table2_demo.json", "w"))
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "table2_draws.py"), "--data-seeds", "1", "2",
                    "--output-dir", str(tmp_path), "--report-only"], check=True, capture_output=True)
    md = open(tmp_path / "draws.md").read()
    assert "| 2 | TGM 0.6, pure MAE | 1 | 80.0 | 85.0 | - | 3 |" in md
    assert "| TGM 0.6 + V->T (the paper's method) | 2 | 77.5 (75.0-80.0) | 90.0 (90.0-90.0) |" in md
    assert "| linear probe | 1: +10.0, 2: -5.0 | +2.5 (-5.0 to +10.0) | 1 of 2 | overlap |" in md
    assert "| the paper's method minus none | linear probe | 1: +20.0, 2: +15.0 | +17.5 (+15.0 to +20.0) | 2 of 2 | apart |" in md
    assert set(json.load(open(tmp_path / "draws.json"))["draws"]) == {"1", "2"}
