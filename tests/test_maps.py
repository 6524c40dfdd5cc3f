"""Tests for maps.py (TGM maps, made offline; not in the paper): the map carried through the clip's crop and flip,
a stored cell equal to the paper's online recipe, resuming and sharding, stale maps refused, the command line, and the
demo's defaults (the pretraining list and CLIP pretrain.py checks the maps against). CPU, tiny shapes, no network.

    python -m pytest -q tests/test_maps.py
"""
import dataclasses
import os

import pytest
import torch

import data
import demo as D
import frozen_clip
import maps
import masking


@pytest.fixture(scope="module")
def tiny_clip(tiny_clip_config):
    torch.manual_seed(0)
    return frozen_clip.load_clip(tiny_clip_config, pretrained="none")  # registers its stem: tgm-test-tiny


# ----------------------------------------------------------------------------------------------------------------
# The loader side: a map carried through the clip's crop and flip

def test_map_carried_through_crop_and_flip_equals_the_map_of_the_cropped_frames():
    """A constructed case: per-pixel scores piecewise constant on 8 x 8 cells (a map of 4 x 6 cells over a 32 x 48
    frame, as the maps store them). The map carried through a cell-aligned crop and a flip, per token, equals the
    same scores computed on the cropped, flipped frames; and the loader's mask is the top-k of those."""
    g = torch.Generator().manual_seed(0)
    T, gh, gw, cell = 4, 4, 6, maps.MAPS_UPSAMPLE
    text_map = torch.rand(T, gh, gw, generator=g)                           # one caption's map, a value per cell
    pixels = text_map.repeat_interleave(cell, 1).repeat_interleave(cell, 2)  # (T, 32, 48) the scores of each pixel
    crop = data.Crop(top=8 / 32, left=16 / 48, height=16 / 32, width=24 / 48, flip=True)
    cropped = pixels[:, 8:24, 16:40].flip(-1)                               # (T, 16, 24) the cropped, flipped frames
    p, t = 4, 2
    grid = (T // t, 16 // p, 24 // p)
    want = cropped.reshape(T // t, t, 16 // p, p, 24 // p, p).mean(dim=(1, 3, 5))  # per token: its pixels' mean score
    got = maps.map_scores(text_map, crop, grid, (16, 24)) / (t * p * p)
    assert torch.allclose(got, want, atol=1e-6)
    sample = {"video": torch.zeros(3, T, 16, 24), "text_map": text_map, "crop": crop}
    mask, fell_back = maps.TextMapMasker(grid, 0.5)(sample, torch.Generator().manual_seed(1))
    assert not fell_back
    assert torch.equal(mask, masking.topk_mask(want.flatten(1)[None], 0.5)[0])
    # and not by accident: without the flip the map lands elsewhere
    unflipped = maps.map_scores(text_map, dataclasses.replace(crop, flip=False), grid, (16, 24)) / (t * p * p)
    assert not torch.allclose(unflipped, want)


# ----------------------------------------------------------------------------------------------------------------
# Making the maps, and refusing stale ones

@pytest.fixture(scope="module")
def few_videos(demo):
    """Six demo videos with their captions: (items [(path, rel)], captions {rel: [...]})."""
    rels = [rel for rel, _ in data.read_list(demo["train"])][::25][:6]
    captions = data.read_captions(demo["captions"])
    return [(os.path.join(demo["root"], r), r) for r in rels], {r: captions[r] for r in rels}


def test_make_maps_resumes_without_duplicates_and_shards_share_a_folder(tiny_clip, few_videos, tmp_path):
    clip, tokenizer = tiny_clip
    items, captions = few_videos
    identity = maps.maps_identity("tgm-test-tiny", "none", captions, [r for _, r in items])
    folder = str(tmp_path / "maps")
    assert maps.make_maps(clip, tokenizer, items[:2], captions, folder, identity, cells=3, frame_stride=8) == (2, 0, 0)
    first = {r: os.stat(maps.map_path(folder, r)).st_mtime_ns for _, r in items[:2]}
    # the run stopped after two videos; the rerun, in two shards into the same folder, makes only the other four
    made = [maps.make_maps(clip, tokenizer, items[i::2], captions, folder, identity, cells=3, frame_stride=8)
            for i in (0, 1)]
    assert sum(m for m, _, _ in made) == 4 and sum(d for _, d, _ in made) == 2
    assert {r: os.stat(maps.map_path(folder, r)).st_mtime_ns for _, r in items[:2]} == first  # not made again
    files = sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)
    assert files == sorted([r + ".npz" for _, r in items] + ["meta.json"])  # one file per video, no temp files
    assert maps.check_maps(folder, identity, [r for _, r in items]) is None
    stored, frames = maps.TextMaps(folder).load(items[0][1], captions[items[0][1]])
    info = data.probe_video(items[0][0])
    assert frames.tolist() == list(range(0, info.num_frames, 8))
    assert stored.shape == (3, len(frames), 3, 4)  # 3 captions, 3 cells along the short side (96 x 128: 3 x 4)
    # a stored cell is what the paper's online recipe gives that patch: the frame at the patches' scale (3 x 4 patches
    # of 16 px), each patch through CLIP alone, against each caption
    f0 = torch.from_numpy(data.read_frames(items[0][0], frames[:1])).permute(0, 3, 1, 2)  # (1, C, 96, 128)
    x = data.normalize(data.apply_crop(f0, data.Crop(0, 0, 1, 1), (48, 64), torch.float32).permute(0, 2, 3, 1))
    text = frozen_clip.TextEmbedder(clip, tokenizer)(captions[items[0][1]])  # (3, E)
    online = masking.TextGuidedMasker(clip, "patch").scores(x[None].expand(3, -1, 2, -1, -1), text)  # (3, 1, 12)
    assert torch.allclose(stored[:, 0].flatten(1), online[:, 0], atol=2e-3)  # float16 storage
    with pytest.raises(ValueError, match="other settings"):  # resuming with other settings into the same folder
        maps.make_maps(clip, tokenizer, items, captions, folder, identity, cells=4, frame_stride=8)


def test_stale_or_mismatched_maps_are_refused(tiny_clip, few_videos, tmp_path):
    clip, tokenizer = tiny_clip
    items, captions = few_videos
    rels = [r for _, r in items]
    identity = maps.maps_identity("tgm-test-tiny", "none", captions, rels)
    folder = str(tmp_path / "maps")
    maps.make_maps(clip, tokenizer, items[:4], captions, folder, identity, cells=2, frame_stride=16)
    assert "have no map" in maps.check_maps(folder, identity, rels)  # two videos not made yet
    maps.make_maps(clip, tokenizer, items, captions, folder, identity, cells=2, frame_stride=16)
    assert maps.check_maps(folder, identity, rels) is None
    other = {**captions, rels[3]: ["a different caption"] + captions[rels[3]][1:]}
    msg = maps.check_maps(folder, maps.maps_identity("tgm-test-tiny", "none", other, rels), rels)
    assert msg.startswith("the maps in") and "captions" in msg
    msg = maps.check_maps(folder, maps.maps_identity("ViT-B-32-quickgelu", "openai", captions, rels), rels)
    assert "clip_model" in msg and "clip_pretrained" in msg
    assert "no meta.json" in maps.check_maps(str(tmp_path / "empty"), identity, rels)
    # a single stale file (made from other captions) is refused by the reader too: the loader skips that video
    with pytest.raises(data.VideoError, match="other captions"):
        maps.TextMaps(folder).load(rels[3], other[rels[3]])
    with pytest.raises(data.VideoError, match="no readable text map"):
        maps.TextMaps(folder).load("not/there.mp4", ["a caption"])


# ----------------------------------------------------------------------------------------------------------------
# The command line, and its demo defaults

def test_command_line_makes_every_map_of_a_list_in_shards(tiny_clip_config, few_videos, demo, tmp_path, capsys):
    items, _ = few_videos
    rels = [r for _, r in items]
    (tmp_path / "list.txt").write_text("".join(f"{r} 0\n" for r in rels))
    folder = str(tmp_path / "maps")
    flags = ["--out-dir", folder, "--data", str(tmp_path / "list.txt"), "--root", demo["root"], "--captions",
             demo["captions"], "--clip-model", tiny_clip_config, "--clip-pretrained", "none", "--cells", "2",
             "--frame-stride", "16", "--device", "cpu"]
    for shard in ("0/2", "1/2"):
        maps.main(maps.parse_args(flags + ["--shard", shard]))
    assert "3 maps made, 0 already there, 0 videos failed" in capsys.readouterr().out
    identity = maps.maps_identity(tiny_clip_config, "none", data.read_captions(demo["captions"]), rels)
    assert maps.check_maps(folder, identity, rels) is None  # what pretrain.py --tgm-maps checks at start-up
    with pytest.raises(SystemExit, match="needs --captions"):
        maps.main(maps.parse_args(flags[:6] + flags[8:]))
    with pytest.raises(SystemExit, match="expected i/n"):
        maps.main(maps.parse_args(flags + ["--shard", "2/2"]))


def test_on_the_demo_the_maps_are_made_for_what_pretraining_reads(demo, tmp_path, monkeypatch):
    """No --data: the demo's pretraining list (not its train list), which pretrain.py reads and checks the maps'
    captions against, and the demo's stand-in CLIP when OpenAI's weights are out of reach."""
    import pretrain
    monkeypatch.setenv("TGM_CACHE", str(tmp_path))  # the demo's lock file; the dataset is the session's
    monkeypatch.setattr(D, "demo_dataset", lambda cache_dir, seed: demo)
    monkeypatch.setattr(D, "_openai_clip_at_hand", lambda name: False)  # offline: the demo CLIP stands in
    monkeypatch.setattr(D, "demo_clip", lambda demo: ("demo-clip.json", "demo-clip.pt"))  # not trained here
    args = maps.parse_args(["--out-dir", str(tmp_path / "maps")])
    assert (args.data, args.root, args.captions) == (demo["pretrain"], demo["root"], demo["captions"])
    assert (args.clip_model, args.clip_pretrained, args.input_size) == ("demo-clip.json", "demo-clip.pt", 64)
    pre = pretrain.parse_args(["--mask", "tgm", "--tgm-maps", args.out_dir])
    assert (pre.data, pre.root, pre.captions) == (args.data, args.root, args.captions)
