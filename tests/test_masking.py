"""Tests for masking.py (Sec. 3.1, 3.3) and frozen_clip.py: exact counts, tube structure, reproducibility, MGM on a
synthetic coded video, TGM parity with CLIP's encode_image on a tiny random open_clip model, crop/flip carried by the
masks, CLIP loading without network. CPU, tiny shapes, no network, well under a minute. TGM maps: tests/test_maps.py.

    python -m pytest -q tests/test_masking.py
"""
import logging
import math
import pickle
import time

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

import data
import demo as D
import frozen_clip
import masking
from model import IMAGENET_MEAN, IMAGENET_STD

# mask convention under test: (B, N) bool, True = masked, tokens in (t, h, w) raster order


def per_slice(mask, grid):
    """(B, N) -> (B, T', h, w)"""
    return mask.view(mask.shape[0], *grid)


# ----------------------------------------------------------------------------------------------------------------
# random / tube / top-k

GRIDS = [(8, 14, 14), (2, 3, 5), (1, 1, 7), (4, 7, 7)]
RATIOS = [0.5, 0.6, 0.75, 0.9]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("ratio", RATIOS)
def test_exact_counts(grid, ratio):
    g = torch.Generator().manual_seed(0)
    T_, h, w = grid
    k = int(ratio * h * w)
    assert random_rows(masking.random_mask(5, grid, ratio, g)) == {int(ratio * T_ * h * w)}
    for mask in (masking.tube_mask(5, grid, ratio, g), masking.topk_mask(torch.randn(5, T_, h * w), ratio, "top", g),
                 masking.topk_mask(torch.randn(5, T_, h * w), ratio, "bottom", g)):
        assert mask.shape == (5, T_ * h * w) and mask.dtype == torch.bool
        assert (per_slice(mask, grid).sum((2, 3)) == k).all()  # exactly k in every time slice of every sample


def random_rows(mask):
    return set(mask.sum(1).tolist())


def test_paper_counts():
    # docs/design.md "Conventions": 176 of 196 per slice at 0.9, 117 at 0.6; random: int(0.9 * 1568) = 1411
    grid = (8, 14, 14)
    assert (per_slice(masking.tube_mask(2, grid, 0.9), grid).sum((2, 3)) == 176).all()
    assert (per_slice(masking.tube_mask(2, grid, 0.6), grid).sum((2, 3)) == 117).all()
    assert random_rows(masking.random_mask(2, grid, 0.9)) == {1411}


def test_tube_is_equal_across_time_and_differs_between_samples():
    grid = (8, 14, 14)
    m = per_slice(masking.tube_mask(4, grid, 0.9, torch.Generator().manual_seed(1)), grid)
    assert (m == m[:, :1]).all()  # every time slice repeats the first
    assert not (m[0] == m[1]).all()


def test_random_is_reproducible_and_differs_between_samples():
    grid = (8, 14, 14)
    a = masking.random_mask(4, grid, 0.9, torch.Generator().manual_seed(3))
    b = masking.random_mask(4, grid, 0.9, torch.Generator().manual_seed(3))
    c = masking.random_mask(4, grid, 0.9, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(r.tolist()) for r in a}) == 4  # four different rows
    m = per_slice(a, grid)
    assert not (m == m[:, :1]).all()  # not a tube: slices differ
    assert len(set(m.sum((2, 3)).flatten().tolist())) > 1  # and per-slice counts vary (whole-volume sampling)


def test_topk_takes_the_extremes_and_breaks_ties_at_random():
    scores = torch.randn(3, 4, 20)
    for order in ("top", "bottom"):
        m = masking.topk_mask(scores, 0.25, order).view(3, 4, 20)
        s = scores if order == "top" else -scores
        # every masked score beats every visible one, slice by slice
        assert (s.masked_fill(~m, math.inf).amin(-1) > s.masked_fill(m, -math.inf).amax(-1)).all()
    flat = torch.zeros(1, 1, 100)  # all tied: the choice is random, reproducible, and still exactly k
    a = masking.topk_mask(flat, 0.3, generator=torch.Generator().manual_seed(0))
    b = masking.topk_mask(flat, 0.3, generator=torch.Generator().manual_seed(0))
    c = masking.topk_mask(flat, 0.3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.sum() == 30
    # ties only at the boundary: the untied top scores are always taken
    s = torch.tensor([[[5.0, 4.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]]])
    for seed in range(5):
        m = masking.topk_mask(s, 0.5, generator=torch.Generator().manual_seed(seed))[0]
        assert m[:2].all() and m[2:6].sum() == 2 and not m[6:].any()


def test_loader_maskers_return_one_row_from_the_given_generator():
    grid = (8, 7, 7)
    for masker in (masking.RandomMasker(grid, 0.9), masking.TubeMasker(grid, 0.9)):
        m, fell_back = masker({"video": torch.zeros(3, 16, 112, 112)})
        assert m.shape == (8 * 49,) and m.dtype == torch.bool and fell_back is False
        a, b = (masker({}, torch.Generator().manual_seed(7))[0] for _ in range(2))
        assert torch.equal(a, b)
        torch.manual_seed(7)  # no generator: torch's global one, which data.VideoDataset seeds per video
        assert not torch.equal(masker({})[0], masker({})[0])
        again = pickle.loads(pickle.dumps(masker))  # a loader that spawns its workers pickles the mask_fn
        assert torch.equal(again({}, torch.Generator().manual_seed(7))[0], a)
    assert masking.RandomMasker(grid, 0.9)({})[0].sum() == int(0.9 * 8 * 49)


# ----------------------------------------------------------------------------------------------------------------
# MGM on a synthetic coded video: a textured square moving right over a still grey background

H, W, NF, SQ, SPEED, Y0 = 64, 96, 24, 16, 2, 24  # frame size, frames, square side, px per frame, square top row


def square_x(i):
    return 4 + SPEED * i  # the square's left column in frame i


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("mgm")
    tex = np.random.default_rng(0).integers(0, 256, (SQ, SQ, 3), dtype=np.uint8)  # texture: the encoder can track it
    frames = np.full((NF, H, W, 3), 100, np.uint8)
    for i in range(NF):
        frames[i, Y0:Y0 + SQ, square_x(i):square_x(i) + SQ] = tex
    moving, intra = str(d / "square.mp4"), str(d / "intra.mp4")
    D.write_video(moving, frames, gop=250)  # PyAV libx264: one I-frame, then P-frames with motion vectors
    D.write_video(intra, frames, gop=1)  # every frame an I-frame: no motion vectors at all
    return moving, intra


def square_path(grid, num_frames, p=16):
    """(T', h, w) bool: the tokens the square overlaps in any frame of their tubelet."""
    T_, h, w = grid
    t = num_frames // T_
    on = torch.zeros(num_frames, H, W, dtype=torch.bool)
    for i in range(num_frames):
        on[i, Y0:Y0 + SQ, square_x(i):square_x(i) + SQ] = True
    return on.view(T_, t, h, p, w, p).any(dim=(1, 3, 5))


def test_mgm_masks_the_moving_square(videos):
    frames, motion = data.read_frames(videos[0], np.arange(16), motion=True)
    assert motion[0] is None and all(m is not None for m in motion[1:])  # frame 0 is the I-frame
    grid = (8, 4, 6)
    sample = {"video": data.normalize(frames), "motion": motion, "frame_size": (H, W), "crop": data.Crop(0, 0, 1, 1)}
    path = square_path(grid, 16)
    for seed in range(3):
        torch.manual_seed(seed)  # the still background is all ties: drawn from the global generator
        given = dict(sample)
        mask, fell_back = masking.MotionMasker(grid, 4 / 24)(sample)
        mask = mask.view(grid)
        assert fell_back is False and sample.keys() == given.keys()  # it reports by returning, not by writing
        assert (mask.sum((1, 2)) == 4).all()
        assert not (mask & ~path).any()  # every masked token lies on the square's path, slice 0 included
    scores = masking.motion_scores(motion, (H, W), data.Crop(0, 0, 1, 1), grid, 16, (H, W))
    assert (scores[~path] == 0).all() and (scores > 0).sum() >= 4 * 8  # motion only where the square went


def test_paint_motion_places_blocks_by_their_centre(videos):
    _, motion = data.read_frames(videos[0], np.arange(2), motion=True)
    # (w, h, dst_x, dst_y, motion_x, motion_y, motion_scale): a 16x16 block centred at (8, 8) moving 2 px; one
    # 8x8 area with two vectors (a bi-predicted block: 3 px and 1 px); a 16x16 block over the bottom-right corner
    rows = [(16, 16, 8, 8, 8, 0, 4), (8, 8, 36, 20, 0, -6, 2), (8, 8, 36, 20, 2, 0, 2), (16, 16, 92, 60, 3, 4, 1)]
    v = np.zeros(len(rows), dtype=motion[1].dtype)  # PyAV's own record layout
    for n, name in enumerate(["w", "h", "dst_x", "dst_y", "motion_x", "motion_y", "motion_scale"]):
        v[name] = [r[n] for r in rows]
    ref = torch.zeros(H, W)
    ref[0:16, 0:16] = 2.0  # |(8, 0)| / 4
    ref[16:24, 32:40] = 3.0  # max(|(0, -6)| / 2, |(2, 0)| / 2): two vectors of one area do not add up
    ref[52:64, 84:96] = 5.0  # |(3, 4)|, cut at the frame's edge
    assert torch.equal(masking.paint_motion(v, (H, W)), ref)


def test_mgm_mask_moves_with_crop_and_flip(videos):
    frames, motion = data.read_frames(videos[0], np.arange(16), motion=True)
    grid = (8, 4, 6)
    full = masking.motion_scores(motion, (H, W), data.Crop(0, 0, 1, 1), grid, 16, (H, W))
    flipped = masking.motion_scores(motion, (H, W), data.Crop(0, 0, 1, 1, flip=True), grid, 16, (H, W))
    assert torch.equal(flipped, full.flip(-1))  # flip the clip: the motion map flips with it
    # the left half at its own size: exactly the left three token columns of the whole frame
    left = masking.motion_scores(motion, (H, W), data.Crop(0, 0, 1, 0.5), (8, 4, 3), 16, (H, W // 2))
    assert torch.equal(left, full[..., :3])
    # and the masks: wherever the choice is not a tie, the flipped clip's mask is the flipped mask
    sample = {"video": torch.zeros(3, 16, H, W), "motion": motion, "frame_size": (H, W)}
    k = int(0.25 * 24)
    m = masking.MotionMasker(grid, 0.25)({**sample, "crop": data.Crop(0, 0, 1, 1)})[0].view(grid)
    mf = masking.MotionMasker(grid, 0.25)({**sample, "crop": data.Crop(0, 0, 1, 1, flip=True)})[0].view(grid)
    kth = full.flatten(1).sort(-1, descending=True).values[:, k - 1, None, None]  # (T', 1, 1)
    decided = full != kth
    assert torch.equal(mf.flip(-1)[decided], m[decided])
    assert m[full > kth].all() and not m[full < kth].any()


def test_mgm_without_vectors_falls_back_to_tube_and_is_counted(videos, tmp_path):
    _, intra = videos
    frames, motion = data.read_frames(intra, np.arange(16), motion=True)
    assert all(m is None for m in motion)
    assert masking.motion_scores(motion, (H, W), data.Crop(0, 0, 1, 1), (8, 4, 6), 16, (H, W)) is None
    # through the real loader path: data.VideoDataset calls the masker in the worker, on the sample dict
    (tmp_path / "list.txt").write_text(f"{videos[0]} 0\n{intra} 1\n")
    ds = data.VideoDataset(str(tmp_path / "list.txt"), mode="pretrain", num_frames=8, sampling_rate=2,
                           input_size=32, motion=True, mask_fn=masking.MotionMasker((4, 2, 2), 0.5))
    moving, still = ds[0][0], ds[1][0]
    assert moving["mask_fallback"] is False and still["mask_fallback"] is True
    grid = (4, 2, 2)
    for s in (moving, still):
        assert (per_slice(s["mask"][None], grid).sum((2, 3)) == 2).all()
    m = per_slice(still["mask"][None], grid)
    assert (m == m[:, :1]).all()  # the fallback is a tube mask
    batch = data.collate([ds[0], ds[1]])
    assert batch["mask"].shape == (2, 16)
    assert sum(batch["mask_fallback"]) == 1  # the count the training loop logs: it reached the batch


# ----------------------------------------------------------------------------------------------------------------
# TGM with a tiny random open_clip model (registered under a test name, so load_clip builds it like the real one)

@pytest.fixture(scope="module")
def tiny_clip(tiny_clip_config):
    torch.manual_seed(0)
    return frozen_clip.load_clip(tiny_clip_config, pretrained="none")  # a config file registers its stem: tgm-test-tiny


def test_load_clip_none_is_frozen_and_says_so(tiny_clip, capsys, caplog):
    with caplog.at_level(logging.WARNING):
        clip, tokenizer = frozen_clip.load_clip("tgm-test-tiny", pretrained="none")
    assert capsys.readouterr().out.count("carry no meaning") == 1
    assert not caplog.records  # open_clip's own warning, which every rank would print, is held back
    assert not clip.training and not any(p.requires_grad for p in clip.parameters())


def test_load_clip_offline_fails_fast(tmp_path, monkeypatch):
    import huggingface_hub
    import socket

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    for offline in (True, False):  # HF_HUB_OFFLINE set, or the hub does not answer
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
        for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(proxy, raising=False)
        t0 = time.time()
        with pytest.raises(frozen_clip.ClipWeightsError, match="local weights file.*none"):
            frozen_clip.load_clip("ViT-B-32-quickgelu", "openai", cache_dir=str(tmp_path))  # empty cache
        assert time.time() - t0 < 5
    with pytest.raises(frozen_clip.ClipWeightsError, match="neither a file nor a weights tag"):
        frozen_clip.load_clip("ViT-B-32-quickgelu", str(tmp_path / "missing.pt"))
    with pytest.raises(frozen_clip.ClipWeightsError, match="use --clip-model ViT-B-32-quickgelu"):
        frozen_clip.load_clip("ViT-B-32", "openai", cache_dir=str(tmp_path))  # OpenAI's weights under plain GELU


def test_cached_openai_weights_are_used_without_network(tmp_path, monkeypatch):
    import socket

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    # the Hugging Face cache layout: models--org--name/refs/main names the snapshot that holds the file
    repo = tmp_path / "models--timm--vit_base_patch32_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    weights = repo / "snapshots" / "abc123" / "open_clip_model.safetensors"
    weights.write_bytes(b"")
    assert frozen_clip._cached_or_reachable("ViT-B-32-quickgelu", "openai", str(tmp_path)) == str(weights)


def test_load_clip_from_a_local_file(tiny_clip, tmp_path):
    clip, _ = tiny_clip
    torch.save(clip.state_dict(), tmp_path / "w.pt")
    again, _ = frozen_clip.load_clip("tgm-test-tiny", str(tmp_path / "w.pt"))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(again.encode_image(x), clip.encode_image(x))


def test_trimmed_encode_text_equals_clips_own(tiny_clip):
    clip, tokenizer = tiny_clip
    caps = ["a dog", "a red square moves up on a dark blue background next to a small green circle", "x " * 40]
    tokens = tokenizer(caps)
    with torch.no_grad():
        assert torch.allclose(frozen_clip.encode_text(clip, tokens), clip.encode_text(tokens), rtol=1e-5, atol=1e-6)
        # a batch of short captions runs on a short context, and still agrees
        short = tokenizer(caps[:1])
        assert torch.allclose(frozen_clip.encode_text(clip, short), clip.encode_text(short), rtol=1e-5, atol=1e-6)


def test_text_embedder_is_encode_text_normalised_and_cached(tiny_clip, monkeypatch):
    clip, tokenizer = tiny_clip
    embed = frozen_clip.TextEmbedder(clip, tokenizer)
    calls = []
    encode = frozen_clip.encode_text
    monkeypatch.setattr(frozen_clip, "encode_text", lambda c, tokens: calls.append(len(tokens)) or encode(c, tokens))
    e = embed(["a dog runs", "a cat sits", "a dog runs"])
    e2 = embed(["a cat sits"])
    with torch.no_grad():
        ref = F.normalize(clip.encode_text(tokenizer(["a dog runs", "a cat sits"])), dim=-1)
    assert calls == [2]  # two distinct captions, embedded once each, the second call hits the cache
    assert torch.allclose(e, ref[[0, 1, 0]], atol=1e-6) and torch.allclose(e2, ref[1:], atol=1e-6)
    assert not e.requires_grad


def imagenet_clip(B, T, S, seed=0):
    """A random clip as the loader gives it: (B, C, T, S, S) ImageNet-normalised from [0, 1] pixels."""
    x = torch.rand(B, 3, T, S, S, generator=torch.Generator().manual_seed(seed))
    return (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)


def test_tgm_patch_scores_equal_encode_image_of_each_patch(tiny_clip):
    clip, tokenizer = tiny_clip
    video = imagenet_clip(2, 4, 32)  # grid (2, 2, 2)
    text = frozen_clip.TextEmbedder(clip, tokenizer)(["a red square", "a blue sky"])
    masker = masking.TextGuidedMasker(clip, "patch", ratio=0.5, chunk_size=5)  # chunks cut across frames and clips
    scores = masker.scores(video, text)  # (B, T', h*w)
    # by hand, one patch at a time: [0, 1] pixels, bicubic to CLIP's input, CLIP's mean/std, encode_image
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    cmean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1)  # CLIP's statistics
    cstd = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)
    ref = torch.zeros(2, 4, 2, 2)
    with torch.no_grad():
        for b in range(2):
            for f in range(4):
                for i in range(2):
                    for j in range(2):
                        patch = video[b, :, f, 16 * i:16 * i + 16, 16 * j:16 * j + 16] * std + mean
                        img = F.interpolate(patch[None], size=(32, 32), mode="bicubic", antialias=True).clamp(0, 1)
                        emb = F.normalize(clip.encode_image((img - cmean) / cstd), dim=-1)[0]
                        ref[b, f, i, j] = emb @ text[b]
    ref = ref.view(2, 2, 2, 4).mean(2)  # a token's similarity: the mean over its tubelet's two frames
    assert torch.allclose(scores, ref, atol=1e-5)
    for order in ("top", "bottom"):
        mask = masking.TextGuidedMasker(clip, "patch", ratio=0.5, order=order)(video, text).view(2, 2, 4)
        s = ref if order == "top" else -ref
        assert (mask.sum(-1) == 2).all()
        assert (s.masked_fill(~mask, math.inf).amin(-1) > s.masked_fill(mask, -math.inf).amax(-1)).all()


@pytest.mark.parametrize("features", ["patch", "dense"])
def test_tgm_batch_equals_one_clip_at_a_time(tiny_clip, features):
    clip, tokenizer = tiny_clip
    video = imagenet_clip(3, 4, 48, seed=1)  # grid (2, 3, 3)
    text = frozen_clip.TextEmbedder(clip, tokenizer)(["one", "two", "three"])
    masker = masking.TextGuidedMasker(clip, features, ratio=0.6, chunk_size=7)
    batch = masker.scores(video, text)
    alone = torch.cat([masker.scores(video[i:i + 1], text[i:i + 1]) for i in range(3)])
    assert batch.shape == (3, 2, 9) and torch.allclose(batch, alone, atol=1e-5)
    assert torch.equal(masker(video, text), torch.cat([masker(video[i:i + 1], text[i:i + 1]) for i in range(3)]))


def test_tgm_dense_equals_clip_built_at_that_image_size(tiny_clip):
    clip, _ = tiny_clip
    video = imagenet_clip(1, 2, 96, seed=2)  # grid (1, 6, 6): CLIP at 6 * 8 = 48 px, its 4 x 4 positions resized
    masker = masking.TextGuidedMasker(clip, "dense")
    ours = masker._dense_features(video, (6, 6))  # (T*h*w, E)
    # reference: open_clip's own force_image_size model, loaded through its resize_pos_embed
    big = open_clip.create_model("tgm-test-tiny", force_image_size=48)
    state = clip.state_dict()
    open_clip.model.resize_pos_embed(state, big)
    big.load_state_dict(state)
    big.eval().visual.output_tokens = True
    frames = video[0].transpose(0, 1)  # (T, C, H, W)
    with torch.no_grad():
        _, tokens = big.visual(masker._to_clip_input(frames, (48, 48)))  # (T, h*w, D) after ln_post
        ref = F.normalize(tokens @ big.visual.proj, dim=-1).flatten(0, 1)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_tgm_patch_mask_flips_with_the_clip(tiny_clip):
    clip, tokenizer = tiny_clip
    # piecewise-constant patches: a flipped patch is the same image, so CLIP gives it the same embedding and a
    # flipped clip must give exactly the flipped scores (for textured patches CLIP itself is not flip-invariant)
    colours = torch.rand(1, 3, 4, 3, 4, generator=torch.Generator().manual_seed(5))  # (B, C, T, h, w)
    pixels = colours.repeat_interleave(16, -1).repeat_interleave(16, -2)  # (B, C, T, 48, 64)
    video = (pixels - torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    text = frozen_clip.TextEmbedder(clip, tokenizer)(["a green field"])
    masker = masking.TextGuidedMasker(clip, "patch", ratio=0.5)
    s, sf = masker.scores(video, text).view(1, 2, 3, 4), masker.scores(video.flip(-1), text).view(1, 2, 3, 4)
    assert torch.allclose(sf, s.flip(-1), atol=1e-6)
    m, mf = masker(video, text).view(1, 2, 3, 4), masker(video.flip(-1), text).view(1, 2, 3, 4)
    assert torch.equal(mf, m.flip(-1))


def test_tgm_rejects_a_clip_that_does_not_tile(tiny_clip):
    clip, _ = tiny_clip
    with pytest.raises(ValueError, match="does not divide"):
        masking.TextGuidedMasker(clip, "patch").scores(torch.zeros(1, 3, 3, 32, 32), torch.zeros(1, 16))


# ----------------------------------------------------------------------------------------------------------------
# the picture and the command line

def test_draw_mask_shades_exactly_the_masked_tokens():
    frames = np.zeros((4, 32, 48, 3), np.uint8)  # black clip, grid (2, 2, 3) with t = 2, p = 16
    mask = torch.zeros(2, 2, 3, dtype=torch.bool)
    mask[0, 1, 2] = mask[1, 0, 0] = True
    img = np.asarray(masking.draw_mask(frames, mask.flatten(), (2, 2, 3), "title"))
    pad, top = 2, 18
    for f in range(4):
        x0 = pad + f * (48 + pad)
        tile = img[top + pad:top + pad + 32, x0:x0 + 48]  # frame f as drawn
        shaded = (tile != 0).any(-1)  # a black pixel stays black unless its token is masked
        want = mask[f // 2].repeat_interleave(16, 0).repeat_interleave(16, 1).numpy()
        assert (shaded == want).all()


def test_mask_picture_stacks_one_block_per_clip_each_under_its_title(tmp_path):
    from PIL import Image

    from model import ModelConfig

    cfg = ModelConfig(img_size=32, num_frames=4, tubelet_size=2, patch_size=16)
    video = torch.zeros(3, 3, 4, 32, 32)  # ImageNet-normalised 0 = the mean grey
    mask = torch.zeros(3, cfg.num_patches, dtype=torch.bool)
    titles = ["a", "a much longer caption that is wider than the four frames of its clip", ""]
    masking.save_mask_picture(video, mask, cfg, str(tmp_path / "m.png"), titles=titles, max_clips=2)
    img = Image.open(tmp_path / "m.png")
    blocks = [masking.draw_mask(np.zeros((4, 32, 32, 3), np.uint8), mask[0], cfg.grid, t) for t in titles[:2]]
    # two clips (max_clips), stacked; the picture is as wide as the widest block, so no title is cut off
    assert img.size == (max(b.width for b in blocks), sum(b.height for b in blocks))
    assert blocks[1].width > blocks[0].width
    assert not any(f.name.endswith(".tmp") for f in tmp_path.iterdir())  # written atomically


def test_command_line_writes_a_picture_for_each_mask(videos, tiny_clip, tmp_path, capsys, monkeypatch):
    """The picture the command writes is the drawing of the mask it made, and that mask hides k tokens a slice."""
    from PIL import Image

    drawn = []
    draw = masking.save_mask_picture
    monkeypatch.setattr(masking, "save_mask_picture", lambda *a, **kw: (drawn.append(a), draw(*a, **kw)))
    for mask in ("random", "tube", "mgm", "tgm"):
        out = tmp_path / f"{mask}.png"
        masking.main(masking.parse_args([
            "--video", videos[0], "--mask", mask, "--num-frames", "4", "--sampling-rate", "1", "--input-size", "32",
            "--caption", "a textured square", "--clip-model", "tgm-test-tiny", "--clip-pretrained", "none",
            "--out", str(out)]))
        video, m, cfg, _, titles = drawn[-1]
        assert video.shape == (1, 3, 4, 32, 32) and cfg.grid == (2, 2, 2)
        per_slice_count = m.view(2, 4).sum(1).tolist()
        assert sum(per_slice_count) == int(m.sum()) and f"{int(m.sum())} of 8 tokens masked" in titles[0]
        if mask != "random":                                   # top-k per time slice: k = int(ratio * h * w)
            assert per_slice_count == [int(masking.PAPER_RATIO[mask] * 4)] * 2
        draw(video, m, cfg, str(tmp_path / "again.png"), titles)
        assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "again.png")))
    assert "4 of 8 tokens masked" in capsys.readouterr().out  # the default ratios: tgm 0.6 of 4 = 2 per slice
    with pytest.raises(SystemExit, match="needs --caption"):
        masking.main(masking.parse_args(["--video", videos[0], "--mask", "tgm"]))
    with pytest.raises(SystemExit, match="--video .*nothing.mp4: no such file"):
        masking.main(masking.parse_args(["--video", str(tmp_path / "nothing.mp4"), "--mask", "tube"]))


def test_object_coverage_on_a_constructed_case():
    """A 2 x 2 x 2 token grid (4 frames of 32 x 32, t = 2, p = 16); the object fills the top-left patch of every
    frame and half of the top-right one: 16 * 16 + 16 * 8 = 384 pixels a frame, 1536 over the 4 frames."""
    import data
    obj = torch.zeros(4, 32, 32)
    obj[:, :16, :16] = 1
    obj[:, :16, 16:24] = 1
    full = data.Crop(0.0, 0.0, 1.0, 1.0, False)
    pixels = masking.token_sums(obj, full, (2, 2, 2), (32, 32)).flatten()[None]  # (1, N)
    assert pixels.tolist() == [[512, 256, 0, 0, 512, 256, 0, 0]]  # (t, h, w) raster: 2 frames x 256 / 128 pixels
    hide = torch.zeros(1, 8, dtype=torch.bool)
    hide[0, [0, 4]] = True                                     # the top-left token of both time slices
    assert masking.object_coverage(hide, pixels).item() == pytest.approx(1024 / 1536, rel=1e-7)
    hide[0, [1, 5]] = True
    assert masking.object_coverage(hide, pixels).tolist() == [1.0]
    assert masking.object_coverage(~hide, pixels).tolist() == [0.0]
    # flipped: the object moves to the right half, and so does its coverage
    flipped = masking.token_sums(obj, data.Crop(0.0, 0.0, 1.0, 1.0, True), (2, 2, 2), (32, 32)).flatten()[None]
    assert flipped.tolist() == [[256, 512, 0, 0, 256, 512, 0, 0]]
