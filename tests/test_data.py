"""Tests for data.py: frame-exact reading, VideoMAE's samplers, crops, bad input, the demo dataset.

Run: python -m pytest -q tests/test_data.py   (CPU, no network, about half a minute)
"""
import json
import os
import logging

import av
import numpy as np
import pytest
import torch

import data
import demo as D

# ----------------------------------------------------------------------------- helpers


class FixedRng:
    """Stands in for np.random.Generator where a test works an index out by hand: every draw is `value`
    (clipped below `high`), and the bounds VideoMAE passes to randint are recorded."""

    def __init__(self, value):
        self.value, self.calls = value, []

    def integers(self, low, high=None, size=None):
        self.calls.append((low, high, size))
        hi = low if high is None else high
        v = min(self.value, hi - 1) if high is None else min(max(self.value, low), hi - 1)
        return np.full(size, v, dtype=np.int64) if size is not None else v


BITS, BLOCK = 12, 32  # 12 grey blocks of 32x32 pixels (a 4 x 3 grid) spell a frame's index in binary


def index_frame(i, H=96, W=128):
    a = np.zeros((H, W, 3), np.uint8)
    for b in range(BITS):
        y, x = divmod(b, 4)
        a[y * BLOCK:(y + 1) * BLOCK, x * BLOCK:(x + 1) * BLOCK] = 255 if (i >> b) & 1 else 0
    return a


def frame_index(a):
    """Read the index back from a decoded (H, W, 3) frame (block means survive lossy coding)."""
    return sum(1 << b for b in range(BITS)
               if a[(b // 4) * BLOCK + 8:(b // 4 + 1) * BLOCK - 8, (b % 4) * BLOCK + 8:(b % 4 + 1) * BLOCK - 8].mean() > 128)


def write(path, frames, codec="libx264", pix_fmt="yuv420p", fmt="rgb24", options=None):
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=25)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = pix_fmt
        if options:
            s.options = options
        for a in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(a, format=fmt)))
        c.mux(s.encode())
    return str(path)


@pytest.fixture(scope="module")
def index_videos(tmp_path_factory):
    """200-frame videos whose frame i shows i: H.264 with a keyframe every 8 frames (so seeking matters),
    with and without B-frames, and in mkv, which stores no frame count (counted by demuxing)."""
    d = tmp_path_factory.mktemp("index")
    frames = np.stack([index_frame(i) for i in range(200)])
    gop = {"g": "8", "sc_threshold": "0", "crf": "18"}
    return {"mp4": write(d / "p.mp4", frames, options={**gop, "bf": "0"}),
            "mp4-bframes": write(d / "b.mp4", frames, options={**gop, "bf": "3"}),
            "mkv": write(d / "b.mkv", frames, options={**gop, "bf": "2"})}


# ----------------------------------------------------------------------------- reading is frame-exact


def test_index_video_roundtrip():
    assert [frame_index(index_frame(i)) for i in (0, 1, 77, 199, 4095)] == [0, 1, 77, 199, 4095]


@pytest.mark.parametrize("kind", ["mp4", "mp4-bframes", "mkv"])
def test_samplers_decode_exact_frames(index_videos, kind):
    path = index_videos[kind]
    info = data.probe_video(path)
    assert (info.num_frames, info.height, info.width) == (200, 96, 128)
    rng = np.random.default_rng(0)
    cases = [data.pretrain_indices(200, 16, 4, rng) for _ in range(3)]
    cases += [data.finetune_indices(200, 16, 4, rng), data.finetune_indices(200, 16, 2, rng)]
    cases += [data.tsn_indices(200, 16, rng), data.tsn_indices(200, 16, None, 0), data.tsn_indices(200, 16, None, 1)]
    cases += [data.test_indices(200, 16, 4, v) for v in range(5)]
    cases += [np.array([199, 3, 3, 150, 8, 7])]  # unsorted, repeated, a keyframe and the frame before it
    for idx in cases:
        seek = data.read_frames(path, idx)
        assert [frame_index(a) for a in seek] == idx.tolist()
        # decoding from the start (counting frames) agrees pixel for pixel
        np.testing.assert_array_equal(seek, data.read_frames(path, idx, seek=False))


def test_short_side_decodes_smaller(index_videos):
    frames = data.read_frames(index_videos["mp4"], np.array([10, 20]), short_side=48)
    assert frames.shape == (2, 48, 64, 3)
    full = data.read_frames(index_videos["mp4"], np.array([10, 20]))
    # the same picture at half size: block-mean of the full frame ~ the small frame
    small = full.reshape(2, 48, 2, 64, 2, 3).mean((2, 4))
    assert np.abs(small - frames).mean() < 8


def test_pretrain_clips_decoded_at_the_crop_size_match_full_decoding(index_videos, tmp_path):
    # what pretrain.py does: decode no larger than the smallest crop needs; the clip is the same picture
    lst = tmp_path / "list.txt"
    lst.write_text(f"{index_videos['mp4']} 0\n")
    kw = dict(mode="pretrain", num_frames=4, sampling_rate=2, input_size=32, seed=3)
    full = data.VideoDataset(str(lst), **kw)[0][0]
    small = data.VideoDataset(str(lst), short_side=data.multiscale_short_side(32), **kw)[0][0]
    assert small["crop"] == full["crop"] and small["video"].shape == full["video"].shape == (3, 4, 32, 32)
    assert (small["video"] - full["video"]).abs().mean() < 0.1  # normalised units: a few grey levels


def test_indices_past_the_end_repeat_the_last_frame(index_videos):
    frames = data.read_frames(index_videos["mp4"], np.array([196, 199, 250]))
    assert [frame_index(a) for a in frames] == [196, 199, 199]


# ----------------------------------------------------------------------------- samplers, worked by hand


def test_pretrain_indices_long_video():
    rng = FixedRng(5)
    idx = data.pretrain_indices(100, 16, 4, rng)
    assert rng.calls == [(37, None, None)]  # randint(num_frames - 16 * 4 + 1)
    assert idx.tolist() == [5 + 4 * k for k in range(16)]


def test_pretrain_indices_short_video_repeats():
    # 30 frames < 16 x 4: start at 0, step while `offset + 4 < 30` (1-based), so 28 repeats and the
    # last frame (29) is never used: VideoMAE's `_video_TSN_decord_batch_loader`
    idx = data.pretrain_indices(30, 16, 4, FixedRng(0))
    assert idx.tolist() == [0, 4, 8, 12, 16, 20, 24, 28] + [28] * 8
    assert data.pretrain_indices(64, 16, 4, FixedRng(0)).tolist() == list(range(0, 64, 4))
    assert data.pretrain_indices(1, 16, 4, FixedRng(0)).tolist() == [0] * 16


def test_finetune_indices():
    # long: end_idx = randint(64, 100) = 80, linspace(16, 80, 16) floored, clipped to 79
    rng = FixedRng(80)
    assert data.finetune_indices(100, 16, 4, rng).tolist() == [16, 20, 24, 28, 33, 37, 41, 45, 50, 54, 58, 62, 67, 71, 75, 79]
    assert rng.calls == [(64, 100, None)]
    # short: linspace(0, 30, 30 // 4 = 7) then padding with frame 30, clipped to 29
    assert data.finetune_indices(30, 16, 4, FixedRng(0)).tolist() == [0, 5, 10, 15, 20, 25] + [29] * 10


def test_tsn_indices():
    assert data.tsn_indices(50, 16, FixedRng(2)).tolist() == [3 * k + 2 for k in range(16)]  # segments of 3
    assert data.tsn_indices(20, 16, FixedRng(0)).tolist() == list(range(16))
    assert data.tsn_indices(10, 16, FixedRng(0)).tolist() == [0] * 16  # fewer frames than segments
    # test views: tick 8, starts [0, 8, 16, 24] and mid-points [4, 12, 20, 28], interleaved
    assert data.tsn_indices(32, 4, None, test_offset=0).tolist() == [0, 8, 16, 24]
    assert data.tsn_indices(32, 4, None, test_offset=1).tolist() == [4, 12, 20, 28]


def test_test_indices():
    # 100 frames at stride 4 -> 25 candidates; 5 windows of 16 start at int(v * 9 / 4) = 0, 2, 4, 6, 9
    for v, start in enumerate([0, 2, 4, 6, 9]):
        assert data.test_indices(100, 16, 4, v).tolist() == [4 * (start + k) for k in range(16)]
    assert data.test_indices(100, 16, 4, 0, num_views=1).tolist() == [4 * (4 + k) for k in range(16)]  # centre
    # a short video: every window is the whole video padded with its last sampled frame
    assert data.test_indices(30, 16, 4, 3).tolist() == [0, 4, 8, 12, 16, 20, 24, 28] + [28] * 8


# ----------------------------------------------------------------------------- crops


def test_multiscale_crop_follows_videomae():
    rng = np.random.default_rng(0)
    sides = [int(240 * s) for s in (1, .875, .75, .66)]  # 240, 210, 180, 158: none within 3 of 224
    seen, flips = set(), set()
    for _ in range(2000):
        c = data.multiscale_crop(240, 320, 224, rng=rng)
        h, w = round(c.height * 240), round(c.width * 320)
        assert h in sides and w in sides and abs(sides.index(h) - sides.index(w)) <= 1  # max_distort = 1
        y, x = round(c.top * 240), round(c.left * 320)
        assert y % ((240 - h) // 4 or 1) == 0 and x % ((320 - w) // 4 or 1) == 0 and y + h <= 240 and x + w <= 320
        seen.add((w, h, x // ((320 - w) // 4), y // ((240 - h) // 4) if h < 240 else None))
        flips.add(c.flip)
    assert len({s[:2] for s in seen}) == 10 and flips == {True, False}  # all size pairs; both flips
    assert len({s[2:] for s in seen if s[3] is not None}) == 13  # the 13 fixed offsets of `more_fix_crop`
    assert not any(data.multiscale_crop(240, 320, 224, flip=False, rng=rng).flip for _ in range(50))
    # a side within 3 pixels of the input size snaps to it (VideoMAE): 226 -> 224
    c = data.multiscale_crop(226, 300, 224, scales=(1,), rng=rng)
    assert (round(c.height * 226), round(c.width * 300)) == (224, 224)


def test_random_resized_crop_area_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(500):
        c = data.random_resized_crop(240, 320, rng=rng)
        h, w = c.height * 240, c.width * 320
        assert 0.08 * 240 * 320 * 0.9 <= h * w <= 240 * 320 and 0.7 <= w / h <= 1.4
        assert 0 <= c.top and c.top + c.height <= 1 + 1e-9 and 0 <= c.left and c.left + c.width <= 1 + 1e-9
    # impossible areas fall back to the centre crop of VideoMAE
    c = data.random_resized_crop(100, 400, scale=(2.0, 3.0), rng=rng)
    assert (round(c.height * 100), round(c.width * 400), round(c.left * 400)) == (100, 133, 133)


def test_uniform_crop_test_views():
    # 240x320 -> short side 224, long side int(224 * 320 / 240) = 298, windows at int(k * 74 / 2)
    crops = [data.uniform_crop(240, 320, 224, k) for k in range(3)]
    assert [round(c.left * 298) for c in crops] == [0, 37, 74]
    assert all(c.top == 0 and c.height == 1 and round(c.width * 298) == 224 for c in crops)
    portrait = data.uniform_crop(320, 240, 224, 2)
    assert (portrait.left, portrait.width, round(portrait.top * 298)) == (0, 1, 74)
    assert data.uniform_crop(96, 96, 64, 0, num_crops=1) == data.Crop(0.0, 0.0, 1.0, 1.0)


def test_apply_crop_moves_pixels_and_maps_alike():
    H, W = 8, 16
    x = torch.arange(W, dtype=torch.float32).expand(2, 3, H, W)  # value = column
    crop = data.Crop(top=0.25, left=0.25, height=0.5, width=0.5, flip=False)
    out = data.apply_crop(x, crop, (4, 8))  # the crop at its own size: no resampling
    assert out.shape == (2, 3, 4, 8) and out[0, 0, 0].tolist() == list(range(4, 12))
    flipped = data.apply_crop(x, data.Crop(0.25, 0.25, 0.5, 0.5, flip=True), (4, 8))
    assert flipped[1, 2, 3].tolist() == list(range(11, 3, -1))
    # a per-pixel map of another resolution follows the same geometry (fractions, not pixels)
    m = torch.arange(W * 2, dtype=torch.float32).expand(H * 2, W * 2) / 2
    assert torch.allclose(data.apply_crop(m, crop, (4, 8)), out[0, 0], atol=0.5)
    assert data.apply_crop(torch.zeros(5, 7, dtype=torch.uint8), crop, 3).dtype == torch.uint8


def test_apply_crop_of_uint8_frames_to_float_equals_the_float_frames():
    # the clip path converts only the crop to float: bit-identical to converting the whole frame first
    x = torch.randint(0, 256, (3, 3, 40, 56), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    crop = data.Crop(0.1, 0.2, 0.66, 0.5, flip=True)
    got = data.apply_crop(x, crop, 16, torch.float32)
    assert got.dtype == torch.float32
    assert torch.equal(got, data.apply_crop(x.float(), crop, 16))


def test_multiscale_short_side_keeps_every_crop_at_least_input_size():
    for size in (64, 112, 224):
        side = data.multiscale_short_side(size)
        rng = np.random.default_rng(0)
        W = side * 16 // 9
        for _ in range(50):
            c = data.multiscale_crop(side, W, size, rng=rng)
            assert round(c.height * side) >= size and round(c.width * W) >= size
    assert data.multiscale_short_side(224) > 320  # Kinetics at 320p is decoded at full size for 224 crops


def test_normalize():
    mean = torch.tensor(data.IMAGENET_MEAN) * 255
    frames = mean.expand(2, 4, 5, 3).round().to(torch.uint8)
    x = data.normalize(frames)
    assert x.shape == (3, 2, 4, 5) and x.abs().max() < 0.01
    white = data.normalize(np.full((1, 1, 1, 3), 255, np.uint8))[:, 0, 0, 0]
    assert torch.allclose(white, (1 - torch.tensor(data.IMAGENET_MEAN)) / torch.tensor(data.IMAGENET_STD))


# ----------------------------------------------------------------------------- list and caption files


def test_malformed_list_and_captions(tmp_path):
    good = tmp_path / "l.txt"
    good.write_text("a.mp4 0\n\nb/c.mp4 3\n")
    assert data.read_list(str(good), "root") == [("root/a.mp4", 0), ("root/b/c.mp4", 3)]
    for text, why in [("a.mp4 0\nb.mp4\n", "2: expected"), ("a.mp4 x\n", "1: label"), ("a.mp4 -1\n", "1: label"),
                      ("a.mp4 1 2\n", "1: expected"), ("\n", " the list has no videos")]:
        (tmp_path / "bad.txt").write_text(text)
        with pytest.raises(ValueError, match=f"bad.txt:{why}"):
            data.read_list(str(tmp_path / "bad.txt"))
    caps = tmp_path / "c.jsonl"
    caps.write_text(json.dumps({"video": "a.mp4", "captions": ["x"]}) + "\n" +
                    json.dumps({"video": "a.mp4", "captions": ["y", "z"], "source": "blip2"}) + "\n")
    assert data.read_captions(str(caps)) == {"a.mp4": ["y", "z"]}  # the later (resumed) line wins
    for text, why in [('{"video": "a.mp4", "captions": ["x"]}\n{"video": "b', "2: not valid JSON"),
                      ('{"video": "a.mp4", "captions": []}', "1: 'captions'"), ('["a.mp4"]', "1: expected"),
                      ('{"video": "a.mp4", "captions": [""]}', "1: 'captions'")]:
        caps.write_text(text)
        with pytest.raises(ValueError, match=f"c.jsonl:{why}"):
            data.read_captions(str(caps))


# ----------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """One good video and every kind of awkward or broken one, with a list file over them all."""
    d = tmp_path_factory.mktemp("zoo")
    rng = np.random.default_rng(0)
    ramp = np.stack([index_frame(i) for i in range(80)])
    paths = {"good": write(d / "good.mp4", ramp, options={"g": "8", "bf": "0"}),
             "short": write(d / "short.mp4", ramp[:5]),
             "odd": write(d / "odd.mp4", rng.integers(0, 255, (20, 47, 63, 3), dtype=np.uint8), codec="mpeg4"),
             "gray": write(d / "gray.mkv", rng.integers(0, 255, (20, 47, 63), dtype=np.uint8), codec="ffv1",
                           pix_fmt="gray", fmt="gray")}
    (d / "zero.mp4").write_bytes(b"")
    (d / "junk.mp4").write_bytes(rng.bytes(5000))
    with av.open(str(d / "empty.mp4"), "w") as c:  # a header and a video track, but no frames
        s = c.add_stream("libx264", rate=25)
        s.height, s.width = 96, 128
        c.start_encoding()
    with av.open(str(d / "audio.mp4"), "w") as c:
        s = c.add_stream("aac", rate=16000)
        for _ in range(8):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate = 16000
            c.mux(s.encode(f))
        c.mux(s.encode())
    good_bytes = open(paths["good"], "rb").read()
    (d / "cut.mp4").write_bytes(good_bytes[:len(good_bytes) // 3])  # truncated download: moov atom at the end
    for name in ("zero", "junk", "empty", "audio", "cut"):
        paths[name] = str(d / f"{name}.mp4")
    paths["missing"] = str(d / "missing.mp4")
    order = list(paths)
    (d / "list.txt").write_text("".join(f"{paths[k][len(str(d)) + 1:]} {i}\n" for i, k in enumerate(order)))
    return str(d), str(d / "list.txt"), order


BAD = {"zero": "zero-byte", "junk": "cannot open", "empty": "", "audio": "no video stream", "cut": "",
       "missing": "not found"}


def test_every_bad_video_is_skipped_and_counted(zoo, caplog):
    root, list_file, order = zoo
    ds = data.VideoDataset(list_file, root, mode="pretrain", num_frames=8, sampling_rate=2, input_size=32)
    with caplog.at_level(logging.WARNING, logger="tgm.data"):
        for i, name in enumerate(order):
            samples = ds[i]
            s = samples[0]
            assert s["video"].shape == (3, 8, 32, 32) and torch.isfinite(s["video"]).all()
            if name in BAD:
                # another video was drawn, and the skip is reported with the path and a reason
                assert s["index"] != i and s["bad"][0][0].endswith(name + ".mp4") and BAD[name] in s["bad"][0][1]
                assert all(order[s["index"]] not in BAD for s in samples)
            else:
                assert s["index"] == i and s["bad"] == [], name  # odd sizes, gray and short videos read fine
        n_warn = len(caplog.records)
        assert n_warn == len(BAD) and all("skipping bad video" in r.getMessage() for r in caplog.records)
        again = ds[order.index("junk")][0]  # a known bad video: counted again, not logged again
        assert len(caplog.records) == n_warn and again["bad"][0][1].startswith("cannot open")
    assert set(ds.bad) == {order.index(k) for k in BAD}


def test_short_video_repeats_its_last_frame(zoo):
    root, list_file, order = zoo
    frames, _, idx, info = data.read_clip(f"{root}/short.mp4", lambda info: data.pretrain_indices(info.num_frames, 8, 2, None))
    assert info.num_frames == 5 and idx.tolist() == [0, 2, 2, 2, 2, 2, 2, 2]  # VideoMAE never reaches frame 4
    assert [frame_index(a) for a in frames] == idx.tolist()


def test_all_bad_stops_with_a_clear_error(zoo):
    root, _, _ = zoo
    import os
    lst = os.path.join(root, "allbad.txt")
    with open(lst, "w") as f:
        f.write("junk.mp4 0\nzero.mp4 0\nmissing.mp4 1\n")
    ds = data.VideoDataset(lst, root, input_size=32, num_frames=4)
    with pytest.raises(RuntimeError, match="every video in .*allbad.txt is unreadable"):
        ds[0]


def test_bad_counts_cross_worker_processes(zoo):
    root, _, _ = zoo
    lst = f"{root}/one_bad.txt"
    with open(lst, "w") as f:
        f.write("good.mp4 0\njunk.mp4 1\nshort.mp4 2\nodd.mp4 3\n")
    ds = data.VideoDataset(lst, root, mode="finetune", num_frames=4, sampling_rate=2, input_size=32, repeat_aug=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, collate_fn=data.collate)
    for _ in range(2):
        batches = list(loader)
        assert sum(len(b["video"]) for b in batches) == 8  # 4 videos x 2 copies, the bad one replaced
        # the skip comes back from the worker process, once per epoch, not once per augmented copy
        bad = [b for batch in batches for b in batch["bad"]]
        assert len(bad) == 1 and bad[0][0].endswith("junk.mp4")


# ----------------------------------------------------------------------------- on the demo's videos


def test_demo_motion_vectors(demo):
    train = data.read_list(demo["train"], demo["root"])
    path = train[0][0]
    idx = np.arange(0, 32, 2)
    frames, mvs = data.read_frames(path, idx, motion=True)
    assert len(mvs) == 16
    # threaded decoding keeps the vectors: compare with a plain single-threaded PyAV decode
    with av.open(path) as c:
        s = c.streams.video[0]
        s.codec_context.options = {"flags2": "+export_mvs"}
        ref = [f.side_data.get("MOTION_VECTORS") for f in c.decode(s)]
    for i, m in zip(idx, mvs):
        if ref[i] is None:
            assert m is None and i % 16 == 0  # the keyframes (gop 16) carry none
        else:
            np.testing.assert_array_equal(m, ref[i].to_ndarray())
            assert {"src_x", "dst_y", "motion_x", "motion_scale"} <= set(m.dtype.names)
    # the vectors see the motion in place: on the actor, spinning moves pixels around its centre and pulsing moves
    # them towards or away from it
    objects = np.load(demo["objects"])
    share = {}
    for motion in range(len(D.DEMO_MOTIONS)):
        radial = tangential = 0.0
        for p, label in train[:48]:
            if label % len(D.DEMO_MOTIONS) != motion:
                continue
            mask = objects[os.path.splitext(os.path.basename(p))[0]]
            for i, v in zip(idx, data.read_frames(p, idx, motion=True)[1]):
                if v is None:
                    continue
                ys, xs = np.nonzero(mask[i])
                on = mask[i][v["dst_y"].clip(0, mask.shape[1] - 1), v["dst_x"].clip(0, mask.shape[2] - 1)]
                v = v[on]
                rx, ry = v["dst_x"] - xs.mean(), v["dst_y"] - ys.mean()
                mx, my = (v["dst_x"] - v["src_x"]).astype(float), (v["dst_y"] - v["src_y"]).astype(float)
                norm = np.hypot(rx, ry) + 1e-6
                radial += (np.abs(mx * rx + my * ry) / norm).sum()
                tangential += (np.abs(mx * ry - my * rx) / norm).sum()
        share[D.DEMO_MOTIONS[motion][0]] = radial / (radial + tangential)
    assert share["spinning"] < 0.5 < share["pulsing"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through Linux's /proc")
def test_motion_decoding_leaves_no_decoder_threads(demo):
    # PyAV's frame <-> side-data cycles keep a decoder and its frame threads alive until the garbage collector runs;
    # a process that forks DataLoader workers must not carry them (see read_clip)
    def threads():
        return len(os.listdir("/proc/self/task"))
    train = data.read_list(demo["train"], demo["root"])
    before = threads()
    for path, _ in train[:6]:
        frames, mvs = data.read_frames(path, np.arange(0, 32, 2), motion=True)
        assert any(m is not None for m in mvs)
    assert threads() <= before


def test_demo_dataset_batches_with_masks_and_repeats(demo):
    grid_n = 4 * 2 * 2  # (T / 2) x (32 / 16) x (32 / 16) tokens

    def mask_fn(s):  # a stand-in for masking.py's maskers: mask the first half of the tokens, no fallback
        return torch.arange(grid_n) < grid_n // 2, False

    ds = data.VideoDataset(demo["train"], demo["root"], demo["captions"], mode="pretrain", num_frames=8,
                           sampling_rate=4, input_size=32, repeat_aug=2, motion=True, mask_fn=mask_fn)
    batch = data.collate([ds[0], ds[37]])
    assert batch["video"].shape == (4, 3, 8, 32, 32) and batch["mask"].shape == (4, grid_n)
    assert batch["mask_fallback"] == [False] * 4
    assert batch["index"].tolist() == [0, 0, 37, 37] and batch["label"].tolist() == [ds.items[0][1]] * 2 + [ds.items[37][1]] * 2
    assert len(batch["captions"][0]) == 3 and batch["frame_size"][0] == D.DEMO_SIZE and len(batch["motion"][0]) == 8
    assert batch["bad"] == [] and len(batch["crop"]) == 4
    # the two copies share frames (one decode) but not their crop
    assert batch["crop"][0] != batch["crop"][1] or not torch.equal(batch["video"][0], batch["video"][1])
    test = data.collate([data.VideoDataset(demo["val"], demo["root"], mode="test", num_frames=8, input_size=32)[0]])
    assert test["video"].shape[0] == 15 and test["view"] == [(t, s) for t in range(5) for s in range(3)]
    tsn = data.VideoDataset(demo["val"], demo["root"], mode="test", tsn=True, num_frames=8, input_size=32)[0]
    assert len(tsn) == 6 and data.VideoDataset(demo["val"], demo["root"], mode="val", input_size=32)[0][0]["video"].shape == (3, 16, 32, 32)


def test_uncaptioned_video_is_a_bad_sample_when_text_is_required(demo, tmp_path):
    """pretrain.py with tgm or --contrastive needs a caption per clip: a video caption.py could not caption is
    skipped and counted like an unreadable one, never a crash mid-run."""
    rel = [line.split()[0] for line in open(demo["train"])][:4]
    (tmp_path / "list.txt").write_text("".join(f"{r} 0\n" for r in rel))
    caps = data.read_captions(demo["captions"])
    (tmp_path / "caps.jsonl").write_text("".join(json.dumps({"video": r, "captions": caps[r]}) + "\n" for r in rel[1:]))
    kw = dict(root=demo["root"], captions=str(tmp_path / "caps.jsonl"), num_frames=4, input_size=32)
    ds = data.VideoDataset(str(tmp_path / "list.txt"), require_captions=True, **kw)
    s = ds[0][0]
    assert s["index"] != 0 and s["captions"] == caps[rel[s["index"]]]
    assert len(s["bad"]) == 1 and "no caption" in s["bad"][0][1]
    assert data.VideoDataset(str(tmp_path / "list.txt"), **kw)[0][0]["index"] == 0  # not required: kept


# ----------------------------------------------------------------------------- finetuning augmentation


@pytest.fixture(scope="module")
def still_video(tmp_path_factory):
    """A lossless video of 12 identical textured frames (every decoded frame equals the array), listed alone."""
    d = tmp_path_factory.mktemp("still")
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    path = write(d / "still.mp4", np.stack([frame] * 12), codec="libx264rgb", pix_fmt="rgb24", options={"crf": "0"})
    (d / "list.txt").write_text("still.mp4 0\n")
    return str(d / "list.txt"), str(d), frame


def finetune_clip(still_video, epoch=0, **aug):
    lst, root, _ = still_video
    ds = data.VideoDataset(lst, root, mode="finetune", num_frames=4, sampling_rate=2, input_size=32, **aug)
    ds.set_epoch(epoch)
    return ds[0][0]


def test_augmentation_off_gives_the_plain_clip(still_video):
    """Off (the default, or n = 0 and reprob = 0) is the float crop normalised, bit for bit, as before it existed;
    and turning it on changes neither the crop nor the frames drawn (its seed is drawn after them)."""
    _, _, frame = still_video
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].expand(4, -1, -1, -1)  # (T, C, H, W): the still frames
    for epoch in range(3):
        default, off = finetune_clip(still_video, epoch), finetune_clip(still_video, epoch, randaug_n=0, reprob=0.0)
        plain = data.normalize(data.apply_crop(x, off["crop"], 32, torch.float32).permute(0, 2, 3, 1))
        assert torch.equal(off["video"], plain) and torch.equal(default["video"], plain)
        on = finetune_clip(still_video, epoch, randaug_n=4, randaug_m=7, reprob=0.25)
        assert on["crop"] == off["crop"] and not torch.equal(on["video"], off["video"])


def test_randaugment_is_one_draw_for_every_frame(still_video):
    """The frames of the still video are identical, so after the same operations they must still be; the draw
    is a function of (seed, epoch, index), so the same epoch gives the same clip and another epoch another."""
    clips = []
    for epoch in range(4):
        s = finetune_clip(still_video, epoch, randaug_n=4, randaug_m=7, reprob=0.0)
        v = s["video"]                                         # (C, T, S, S)
        assert all(torch.equal(v[:, 0], v[:, t]) for t in range(1, v.shape[1]))
        off = finetune_clip(still_video, epoch, randaug_n=0, reprob=0.0)["video"]
        assert (v - off).abs().mean() > 0.05                  # changed beyond the uint8 rounding of the crop
        assert torch.equal(finetune_clip(still_video, epoch, randaug_n=4, randaug_m=7, reprob=0.0)["video"], v)
        clips.append(v)
    assert not any(torch.equal(clips[0], c) for c in clips[1:])


def test_random_erasing_is_one_box_in_every_frame(still_video):
    """reprob 1: a rectangle of fresh N(0, 1) values in the normalised clip, at the same place in every frame,
    and nothing else changed."""
    boxes = set()
    for epoch in range(4):
        off = finetune_clip(still_video, epoch, randaug_n=0, reprob=0.0)["video"]
        v = finetune_clip(still_video, epoch, randaug_n=0, reprob=1.0)["video"]  # (C, T, S, S)
        erased = (v != off).any(0)                             # (T, S, S)
        assert erased.any() and all(torch.equal(erased[0], erased[t]) for t in range(1, erased.shape[0]))
        rows, cols = erased[0].any(1).nonzero().flatten(), erased[0].any(0).nonzero().flatten()
        y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert erased[0, y0:y1, x0:x1].all() and erased[0].sum() == (y1 - y0) * (x1 - x0)  # one filled rectangle
        assert torch.equal(v[:, :, ~erased[0]], off[:, :, ~erased[0]])
        boxes.add((int(y0), int(y1), int(x0), int(x1)))
    assert len(boxes) > 1                                      # a new box each epoch
