"""
Tests of evaluate.py (Sec. 4.2, 4.5, 4.7): the test views (5x3 and SSv2's 2x3) on hand-worked videos, the merge
over views and over ranks, top-k, retrieval recall on a constructed case, unpatchify and the reconstruction
picture, and whole runs (one process against two Gloo ranks). CPU, tiny shapes, no network.

    python -m pytest -q tests/test_evaluate.py
"""
import json
import os
import socket
from dataclasses import asdict

import numpy as np
import pytest
import torch

import data
import evaluate as EV
import model as M
from test_finetune import TINY, save_pretrain_checkpoint, write_colour_dataset, write_video


# -----------------------------------------------------------------------------
# test views: a video whose pixels say which frame and which column they come from

def coded_video(path, frames=40, H=32, W=64):
    """Red = 6 * frame index, green = 4 * column: every decoded pixel tells where it came from (lossless file)."""
    x = np.zeros((frames, H, W, 3), np.uint8)
    x[..., 0] = (6 * np.arange(frames))[:, None, None]
    x[..., 1] = (4 * np.arange(W))[None, None, :]
    write_video(path, x)


def decode_view(sample):
    """A test view -> (frame indices it holds, first source column of its crop)."""
    mean, std = torch.tensor(M.IMAGENET_MEAN).view(3, 1, 1, 1), torch.tensor(M.IMAGENET_STD).view(3, 1, 1, 1)
    px = ((sample["video"] * std + mean) * 255).round()        # (C, T, H, W) back to 0..255
    frames = (px[0, :, 0, 0] / 6).round().int().tolist()
    column = int((px[1, 0, 0, 0] / 4).round())
    return frames, column


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("coded")
    coded_video(folder / "v.mp4")
    with open(folder / "list.txt", "w") as f:
        f.write("v.mp4 0\n")
    return str(folder / "list.txt"), str(folder)


def test_kinetics_views_5x3_positions(coded):
    """40 frames at stride 2 -> 20 candidates; 5 windows of 4 start every (20 - 4) / 4 = 4 candidates, i.e. at frames
    0, 8, 16, 24, 32. A 32x64 frame at crop 32: 3 crops along the long side at columns 0, 16, 32."""
    ds = data.VideoDataset(coded[0], coded[1], mode="test", num_frames=4, sampling_rate=2, input_size=32)
    views = ds[0]
    assert len(views) == 15
    assert sorted(v["view"] for v in views) == [(t, c) for t in range(5) for c in range(3)]
    for v in views:
        t, c = v["view"]
        frames, column = decode_view(v)
        assert frames == [8 * t + 2 * i for i in range(4)], v["view"]
        assert column == 16 * c, v["view"]


def test_ssv2_tsn_views_2x3_positions(coded):
    """TSN, 4 segments of 40 frames (tick 10): view 0 takes the segment starts 0, 10, 20, 30, view 1 the mid-points
    5, 15, 25, 35 (VideoMAE's interleaved list); the same 3 crops."""
    ds = data.VideoDataset(coded[0], coded[1], mode="test", num_frames=4, input_size=32, tsn=True)
    views = ds[0]
    assert len(views) == 6
    assert sorted(v["view"] for v in views) == [(t, c) for t in range(2) for c in range(3)]
    for v in views:
        t, c = v["view"]
        frames, column = decode_view(v)
        assert frames == [10 * i + 5 * t for i in range(4)]
        assert column == 16 * c


# -----------------------------------------------------------------------------
# merging views, over ranks

def test_merge_over_views_and_ranks_equals_one_process():
    """5 videos x 15 views split over 2 ranks as DistributedSampler does (rank 1 gets video 0 again as padding),
    rows shuffled: the merge equals one process's, which equals the plain mean of each video's views."""
    rng = np.random.default_rng(0)
    V, views, K = 5, 15, 7
    probs = rng.dirichlet(np.ones(K), size=(V, views))         # (V, views, K) softmax outputs
    one_index, one_view = np.repeat(np.arange(V), views), np.tile(np.arange(views), V)
    one = EV.merge_views(one_index, one_view, probs.reshape(-1, K))

    sampler = [list(torch.utils.data.DistributedSampler(range(V), 2, r, shuffle=False)) for r in (0, 1)]
    assert sorted(sum(sampler, [])) == [0, 0, 1, 2, 3, 4]     # the padding repeat this test is about
    rows = [(v, w) for r in (0, 1) for v in sampler[r] for w in range(views)]
    order = rng.permutation(len(rows))
    index = np.array([rows[i][0] for i in order])
    view = np.array([rows[i][1] for i in order])
    two = EV.merge_views(index, view, probs[index, view])

    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b)
    np.testing.assert_array_equal(one[0], np.arange(V))
    np.testing.assert_allclose(one[1], probs.mean(1))
    np.testing.assert_array_equal(one[2], np.full(V, views))  # the repeat did not count twice


def test_topk_accuracy_hand_case():
    scores = np.array([[0.1, 0.5, 0.2, 0.15, 0.05, 0.0],     # label 1: first
                       [0.3, 0.1, 0.2, 0.25, 0.1, 0.05],     # label 2: third
                       [0.05, 0.1, 0.15, 0.2, 0.22, 0.28]])  # label 0: last
    acc = EV.topk_accuracy(scores, np.array([1, 2, 0]), ks=(1, 3, 5))
    assert acc[1] == pytest.approx(100 / 3) and acc[3] == pytest.approx(200 / 3) and acc[5] == pytest.approx(200 / 3)


# -----------------------------------------------------------------------------
# Table 3: retrieval recall

def test_recall_on_a_constructed_case():
    """Video i's best right text sits behind exactly i wrong ones: R@1 counts video 0, R@5 videos 0..4."""
    V, S = 8, 10
    positives = np.zeros((V, S), dtype=bool)
    positives[np.arange(V), np.arange(V)] = True               # text i is right for video i
    sim = np.zeros((V, S))
    for i in range(V):
        sim[i, i] = 1.0
        wrong = [j for j in range(S) if j != i][:i]
        sim[i, wrong] = 2.0                                    # i wrong texts outrank the right one
    r = EV.recall_at_k(sim, positives, ks=(1, 5))
    assert r[1] == pytest.approx(100 * 1 / V) and r[5] == pytest.approx(100 * 5 / V)


def test_text_gallery_classes_and_captions():
    texts, pos = EV.text_gallery(np.array([2, 0, 2]), class_names=["a", "b", "c"])
    assert texts == ["a", "b", "c"] and pos.tolist() == [[0, 0, 1], [1, 0, 0], [0, 0, 1]]
    texts, pos = EV.text_gallery(np.array([0, 1]), video_captions=[["x", "y"], ["y", "z"]])
    assert texts == ["x", "y", "z"]                            # a shared caption is one text, right for both
    assert pos.tolist() == [[1, 1, 0], [0, 1, 1]]
    # a caption shared by two videos is a hit for either
    r = EV.recall_at_k(np.array([[0.0, 1.0, 0.5], [0.0, 1.0, 0.5]]), pos, ks=(1,))
    assert r[1] == 100.0


# -----------------------------------------------------------------------------
# Fig. 3: unpatchify, reconstruction and picture

def test_patchify_round_trip_and_order():
    x = torch.randn(2, 3, 4, 32, 48)
    tokens = M.patchify(x, 2, 16)
    assert tokens.shape == (2, 2 * 2 * 3, 1536)
    assert torch.equal(EV.unpatchify(tokens, 2, 16, (2, 2, 3)), x)
    # token 1 is (t'=0, h=0, w=1); its first values are channels 0..2 of pixel (frame 0, row 0, col 16)
    assert torch.equal(tokens[0, 1, :3], x[0, :, 0, 0, 16])


class PerfectDecoder(M.VideoMAE):
    """A VideoMAE whose prediction is the true norm-pixel target: its reconstruction must give the input back."""

    def forward(self, video, mask):
        target = M.pixel_target(video, self.cfg.tubelet_size, self.cfg.patch_size, self.cfg.norm_pix_loss)
        pred = target[mask].reshape(video.shape[0], -1, target.shape[-1])
        return torch.zeros(()), pred, None


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_reconstruction_of_a_perfect_prediction_is_the_input(norm_pix_loss):
    cfg = M.make_config("vit_tiny", **TINY, norm_pix_loss=norm_pix_loss)
    model = PerfectDecoder(cfg).eval()
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, 4, 32, 32)                       # [0, 1]
    mean, std = torch.tensor(M.IMAGENET_MEAN).view(1, 3, 1, 1, 1), torch.tensor(M.IMAGENET_STD).view(1, 3, 1, 1, 1)
    mask = torch.tensor([[1, 0, 1, 1, 0, 1, 0, 1], [0, 1, 1, 0, 1, 1, 1, 0]], dtype=torch.bool)  # True = masked
    out = EV.reconstruct(model, (pixels - mean) / std, mask)
    torch.testing.assert_close(out, pixels, rtol=0, atol=1e-4)  # hidden patches rebuilt with their true mean/std


def test_visualize_draws_four_rows_of_time_slices(tmp_path):
    from PIL import Image
    mae = save_pretrain_checkpoint(tmp_path / "pre.pt").eval()
    T_, h, w = mae.cfg.grid
    sample = {"video": torch.randn(3, mae.cfg.num_frames, 32, 32)}
    mask = torch.zeros(1, mae.cfg.num_patches, dtype=torch.bool)
    mask[0, ::2] = True
    with torch.no_grad():
        img = EV.visualize(mae, sample, mask, "a caption", "tube", 0.5)
    cell = 112
    rows = [np.zeros((T_, 32, 32, 3))] * 4                     # input, mask, reconstruction, attention
    assert img.size == EV.picture(rows, [""] * 4, "", cell).size  # 4 rows of T' cells, the label column
    # the mask row shades exactly the masked tokens: the drawn tiles match the mask, token by token
    tiles = np.asarray(img.convert("RGB"), dtype=float)
    top, label_w, p = 24, 230, mae.cfg.patch_size
    frames = (sample["video"] * torch.tensor(M.IMAGENET_STD).view(3, 1, 1, 1)
              + torch.tensor(M.IMAGENET_MEAN).view(3, 1, 1, 1)).clamp(0, 1)[:, ::2].permute(1, 2, 3, 0)  # (T', H, W, 3)
    m = mask.view(T_, h, w).repeat_interleave(p, 1).repeat_interleave(p, 2)[..., None].float()
    want = (frames * (1 - 0.8 * m) + 0.8 * m * (170 / 255)).numpy()  # the mask row, as visualize shades it
    for c in range(T_):
        y, x = top + (cell + 4), label_w + c * (cell + 4)      # row 1 (the mask), column c
        got = tiles[y:y + cell, x:x + cell] / 255
        ref = np.asarray(Image.fromarray((want[c] * 255).round().astype(np.uint8)).resize((cell, cell), Image.NEAREST),
                         dtype=float) / 255
        np.testing.assert_allclose(got, ref, atol=1 / 255)
    img.save(tmp_path / "vis.png")
    att = EV.centre_attention(mae, sample["video"][None])
    torch.testing.assert_close(att.sum(dim=(1, 2, 3)), torch.ones(1))  # one softmax row over all N tokens


# -----------------------------------------------------------------------------
# whole runs: one process, and two Gloo ranks that must agree with it

def save_finetune_checkpoint(path, num_classes):
    torch.manual_seed(0)
    cfg = M.make_config("vit_tiny", **TINY)
    clf = M.VideoClassifier(cfg, num_classes, head_init_scale=1.0)  # a large head: views disagree, so merging matters
    M.save_checkpoint(path, {"model": clf.state_dict(), "model_cfg": asdict(cfg), "num_classes": num_classes,
                             "mode": "finetune", "args": {"sampling_rate": 2, "tsn": False}, "epoch": 1})


def _rank_worker(rank, world, port, argv):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    EV.main(EV.get_parser().parse_args(argv))


def test_two_ranks_give_the_one_process_result(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    lst = write_colour_dataset(str(folder), 1, seed=3, num_classes=3)  # 3 videos over 2 ranks: one padding repeat
    save_finetune_checkpoint(tmp_path / "ft.pt", 3)
    argv = ["--checkpoint", str(tmp_path / "ft.pt"), "--data", lst, "--root", str(folder), "--num-workers", "0",
            "--batch-size", "1", "--test-num-segment", "2", "--test-num-crop", "2", "--precision", "fp32"]
    EV.main(EV.get_parser().parse_args(argv + ["--output-dir", str(tmp_path / "one")]))
    with socket.socket() as s:                                 # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the ranks inherit the imports (spawn would re-import torch and open_clip in each)
    torch.multiprocessing.start_processes(_rank_worker, args=(2, port, argv + ["--output-dir", str(tmp_path / "two")]),
                                          nprocs=2, start_method="fork")
    one, two = (json.load(open(tmp_path / d / "results.json")) for d in ("one", "two"))
    assert one["num_videos"] == two["num_videos"] == 3 and one["views"] == "2x2"
    assert one["incomplete_videos"] == two["incomplete_videos"] == 0
    for k in ("top1", "top5", "mean_view_top1"):
        assert one[k] == pytest.approx(two[k]), k
    assert [v["video"] for v in one["per_video"]] == [v["video"] for v in two["per_video"]]
    for a, b in zip(one["per_video"], two["per_video"]):
        assert a["top5"] == b["top5"]
        np.testing.assert_allclose(a["top5_prob"], b["top5_prob"], atol=1e-5)
    # and the merged scores are the plain mean of each video's softmaxed views, computed here directly
    ckpt = M.load_checkpoint(tmp_path / "ft.pt")
    model, mode = EV.load_classifier(ckpt)
    ds = data.VideoDataset(lst, str(folder), mode="test", num_frames=4, sampling_rate=2, input_size=32,
                           test_num_segment=2, test_num_crop=2)
    for i, got in enumerate(one["per_video"]):
        batch = data.collate([ds[i]])
        assert len(batch["view"]) == 4
        with torch.no_grad():
            p = model(batch["video"]).softmax(-1).mean(0)
        np.testing.assert_allclose(p[got["top5"]].numpy(), got["top5_prob"], atol=1e-5)
        assert got["top5"][0] == int(p.argmax())


def test_a_bad_video_is_skipped_and_reported(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    lst = write_colour_dataset(str(folder), 1, seed=4, num_classes=3)
    (folder / "broken.mp4").write_bytes(b"\x00" * 100)       # not a video
    with open(lst, "a") as f:
        f.write("broken.mp4 1\n")
    save_finetune_checkpoint(tmp_path / "ft.pt", 3)
    EV.main(EV.get_parser().parse_args(["--checkpoint", str(tmp_path / "ft.pt"), "--data", lst, "--root", str(folder),
                                  "--num-workers", "0", "--test-num-segment", "1", "--test-num-crop", "1"]))
    res = json.load(open(tmp_path / "results.json"))
    assert res["num_listed"] == 4 and res["num_videos"] == 3   # the three readable ones, each once
    assert len(res["bad_videos"]) == 1 and "broken.mp4" in res["bad_videos"][0]
    assert "broken.mp4" not in [v["video"] for v in res["per_video"]]


@pytest.fixture(scope="module")
def tiny_clip(tiny_clip_config, tmp_path_factory):
    """conftest's tiny random CLIP, with its weights saved, so that --clip-pretrained FILE loads exactly it."""
    import frozen_clip
    torch.manual_seed(0)
    clip, tokenizer = frozen_clip.load_clip(tiny_clip_config, "none")
    weights = tmp_path_factory.mktemp("clip-weights") / "weights.pt"
    torch.save(clip.state_dict(), weights)
    return tiny_clip_config, str(weights), clip, tokenizer


def test_text_retrieval_run_matches_its_definition(tmp_path, tiny_clip, tiny_clip_dim):
    """The --retrieval --text run (videos embedded by encoder + head, class names by CLIP) gives the recall of
    recall_at_k on those embeddings: the wiring of texts, positives and video order is right."""
    import frozen_clip
    folder = tmp_path / "videos"
    folder.mkdir()
    lst = write_colour_dataset(str(folder), 2, seed=5, num_classes=3)
    (folder / "classes.txt").write_text("red\ngreen\nblue\n")
    mae = save_pretrain_checkpoint(tmp_path / "pre.pt", head_out_dim=tiny_clip_dim).eval()
    clip_cfg, clip_weights, clip, tokenizer = tiny_clip
    EV.main(EV.get_parser().parse_args(["--retrieval", "--text", "classes", "--checkpoint", str(tmp_path / "pre.pt"), "--data", lst,
                                  "--root", str(folder), "--class-names", str(folder / "classes.txt"),
                                  "--clip-model", clip_cfg, "--clip-pretrained", clip_weights,
                                  "--num-workers", "0", "--precision", "fp32"]))
    res = json.load(open(tmp_path / "retrieval_classes.json"))
    assert res["text"] == "classes" and res["num_texts"] == 3 and res["num_videos"] == 6

    ds = data.VideoDataset(lst, str(folder), mode="val", num_frames=4, sampling_rate=2, input_size=32)
    batch = data.collate([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        v = mae.video_embedding(mae.encoder(batch["video"]))   # all tokens, no mask
    t = frozen_clip.TextEmbedder(clip, tokenizer)(["red", "green", "blue"])
    positives = np.eye(3, dtype=bool)[batch["label"].numpy()]
    want = EV.recall_at_k((v @ t.T).numpy(), positives)
    assert res["R1"] == pytest.approx(want[1]) and res["R5"] == pytest.approx(want[5])
    assert res["R5"] == 100.0                                  # 3 texts: the right one is always in the top 5


def test_visualize_run_with_a_text_guided_mask(tmp_path, tiny_clip, tiny_clip_dim):
    folder = tmp_path / "videos"
    folder.mkdir()
    lst = write_colour_dataset(str(folder), 1, seed=6, num_classes=2)
    with open(folder / "captions.jsonl", "w") as f:
        for line in open(lst):
            f.write(json.dumps({"video": line.split()[0], "captions": ["a tinted clip with a grey square"]}) + "\n")
    save_pretrain_checkpoint(tmp_path / "pre.pt", head_out_dim=tiny_clip_dim)
    clip_cfg, clip_weights, _, _ = tiny_clip
    EV.main(EV.get_parser().parse_args(["--visualize", "--checkpoint", str(tmp_path / "pre.pt"), "--data", lst,
                                  "--root", str(folder), "--captions", str(folder / "captions.jsonl"),
                                  "--mask", "tgm", "--clip-model", clip_cfg, "--clip-pretrained", clip_weights,
                                  "--num-videos", "2", "--output-dir", str(tmp_path / "vis")]))
    from PIL import Image
    pictures = sorted(os.listdir(tmp_path / "vis"))
    assert pictures == ["vis_00_tgm.png", "vis_01_tgm.png"]
    T_ = M.make_config("vit_tiny", **TINY).grid[0]
    assert Image.open(tmp_path / "vis" / pictures[0]).size == EV.picture([np.zeros((T_, 32, 32, 3))] * 4, [""] * 4, "").size


def test_evaluate_rejects_the_wrong_checkpoint_kind(tmp_path):
    save_pretrain_checkpoint(tmp_path / "pre.pt")
    save_finetune_checkpoint(tmp_path / "ft.pt", 3)
    with pytest.raises(SystemExit, match="finetune it first"):
        EV.load_classifier(M.load_checkpoint(tmp_path / "pre.pt"))
    args = EV.get_parser().parse_args(["--retrieval", "--checkpoint", str(tmp_path / "ft.pt")])
    with pytest.raises(SystemExit, match="need the pretraining checkpoint"):
        EV.load_pretrained(args.checkpoint, args)
    with pytest.raises(SystemExit, match="needs --checkpoint"):
        EV.main(EV.parse_args([]))


# -----------------------------------------------------------------------------
# Table 3: video -> video retrieval with the frozen encoder

def test_video_recall_on_a_constructed_case():
    """Queries on a circle, gallery clips at known angles: the k nearest are known, so every recall is exact."""
    def at(deg):
        r = np.deg2rad(np.asarray(deg, dtype=float))
        return np.stack([np.cos(r), np.sin(r)], 1)
    gallery = at([0, 10, 30, 60, 100, 150])
    gallery_labels = np.array([0, 1, 1, 0, 2, 2])
    query = at([2, 27, 95, 200])                               # nearest first: see each comment
    query_labels = np.array([1, 0, 0, 1])
    # q0 (2 deg): 0(c0) 10(c1) ...   -> a hit at k=2
    # q1 (27 deg): 30(c1) 10(c1) 60(c0) -> a hit at k=3
    # q2 (95 deg): 100(c2) 60(c0)    -> a hit at k=2
    # q3 (200 deg): 150(c2) 100(c2) 60(c0) 0(c0) 10(c1) -> a hit at k=5
    r = EV.video_recall(query, query_labels, gallery, gallery_labels, ks=(1, 2, 3, 4, 5))
    assert r == {1: 0.0, 2: 50.0, 3: 75.0, 4: 75.0, 5: 100.0}
    assert EV.video_recall(gallery, gallery_labels, gallery, gallery_labels, ks=(1,))[1] == 100.0  # itself, nearest


def test_retrieval_leaves_out_the_k_at_or_above_the_gallery_size(tmp_path, retrieval_lists, capsys):
    """A gallery of 9 clips: R@10 and R@20 would count every query a hit; they are left out, with the reason."""
    gallery = np.eye(3)[[0, 1, 2, 0, 1, 2, 0, 1, 2]]
    assert set(EV.video_recall(gallery[:3], [0, 1, 2], gallery, [0, 1, 2] * 3)) == {1, 5}
    folder, gallery_list, queries = retrieval_lists
    save_pretrain_checkpoint(tmp_path / "pre.pt")
    EV.main(EV.get_parser().parse_args(["--retrieval", "--checkpoint", str(tmp_path / "pre.pt"), "--data", gallery_list,
                                  "--val-data", queries, "--root", str(folder), "--num-workers", "0",
                                  "--precision", "fp32", "--output-dir", str(tmp_path / "out")]))
    out = capsys.readouterr().out
    assert "| R@1 | R@5 |\n" in out and "R@10 |" not in out
    assert "R@10, R@20 left out: the gallery holds 9 clips" in out


def hf_videomae_folder(path):
    """Published-style weights: a random transformers VideoMAEForPreTraining of our vit_tiny size, saved with
    save_pretrained (4 frames of 32 x 32, as TINY). -> the HF model."""
    from transformers import VideoMAEConfig, VideoMAEForPreTraining
    size = M.MODEL_SIZES["vit_tiny"]
    torch.manual_seed(0)
    hf = VideoMAEForPreTraining(VideoMAEConfig(
        image_size=32, num_frames=4, tubelet_size=2, patch_size=16, hidden_size=size["embed_dim"],
        num_hidden_layers=size["depth"], num_attention_heads=size["num_heads"], intermediate_size=4 * size["embed_dim"],
        decoder_hidden_size=size["decoder_embed_dim"], decoder_num_hidden_layers=4,
        decoder_num_attention_heads=size["decoder_num_heads"], decoder_intermediate_size=4 * size["decoder_embed_dim"],
        use_mean_pooling=False, layer_norm_eps=1e-6, attn_implementation="eager")).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(path)
    return hf


@pytest.fixture(scope="module")
def retrieval_lists(tmp_path_factory):
    folder = tmp_path_factory.mktemp("retrieval")
    gallery = write_colour_dataset(str(folder), 3, seed=7, num_classes=3)   # 9 training clips
    queries = write_colour_dataset(str(folder), 2, seed=8, num_classes=3)   # 6 test clips
    return folder, gallery, queries


def test_retrieval_with_hugging_face_weights(tmp_path, retrieval_lists):
    """A Hugging Face VideoMAE folder runs through --retrieval; the recalls are those of transformers' own encoder
    (VideoMAEModel, all tokens, final LayerNorm) mean-pooled, so the whole path is checked against the reference."""
    folder, gallery, queries = retrieval_lists
    # the gallery's labels dealt round-robin, not by tint: the recalls then hang on the exact neighbour order
    lines = open(gallery).read().split()[::2]
    gallery = str(tmp_path / "relabelled.txt")
    with open(gallery, "w") as f:
        f.writelines(f"{os.path.relpath(os.path.join(folder, rel), folder)} {i % 3}\n" for i, rel in enumerate(lines))
    hf = hf_videomae_folder(tmp_path / "hf")
    EV.main(EV.get_parser().parse_args(["--retrieval", "--checkpoint", str(tmp_path / "hf"), "--model", "vit_tiny",
                                  "--num-frames", "4", "--input-size", "32", "--sampling-rate", "2",
                                  "--data", gallery, "--val-data", queries, "--root", str(folder),
                                  "--num-workers", "0", "--precision", "fp32", "--output-dir", str(tmp_path / "out")]))
    res = json.load(open(tmp_path / "out" / "retrieval_video.json"))
    assert res["num_gallery"] == 9 and res["num_queries"] == 6

    def features(list_file):
        ds = data.VideoDataset(list_file, str(folder), mode="val", num_frames=4, sampling_rate=2, input_size=32)
        batch = data.collate([ds[i] for i in range(len(ds))])
        with torch.no_grad():
            x = hf.videomae(batch["video"].transpose(1, 2)).last_hidden_state  # (B, N, D), HF's (B, T, C, H, W)
        return torch.nn.functional.normalize(x.mean(1), dim=-1).numpy(), batch["label"].numpy()

    want = EV.video_recall(*features(queries), *features(gallery))
    assert 0 < want[1] < 100 or 0 < want[5] < 100              # the check can tell neighbour orders apart
    for k in (1, 5):
        assert res[f"R{k}"] == pytest.approx(want[k]), k
    assert "R10" not in res and "R20" not in res and "R@10, R@20 left out" in res["left_out"]  # 9 clips
    with pytest.raises(SystemExit, match="--model vit_small"):  # the wrong size: a sentence, not a traceback
        EV.main(EV.get_parser().parse_args(["--retrieval", "--checkpoint", str(tmp_path / "hf"), "--model", "vit_small",
                                      "--data", gallery, "--val-data", queries, "--root", str(folder)]))
    with pytest.raises(SystemExit, match="no trained contrastive head"):  # video->text needs a head
        EV.main(EV.get_parser().parse_args(["--retrieval", "--text", "classes", "--checkpoint", str(tmp_path / "hf"),
                                      "--model", "vit_tiny", "--num-frames", "4", "--input-size", "32",
                                      "--data", gallery, "--root", str(folder), "--class-names", gallery]))


def test_retrieval_two_ranks_give_the_one_process_result(tmp_path, retrieval_lists):
    folder, gallery, queries = retrieval_lists
    save_pretrain_checkpoint(tmp_path / "pre.pt")
    argv = ["--retrieval", "--checkpoint", str(tmp_path / "pre.pt"), "--data", gallery, "--val-data", queries,
            "--root", str(folder), "--num-workers", "0", "--batch-size", "1", "--precision", "fp32"]
    EV.main(EV.get_parser().parse_args(argv + ["--output-dir", str(tmp_path / "one")]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.start_processes(_rank_worker, args=(2, port, argv + ["--output-dir", str(tmp_path / "two")]),
                                          nprocs=2, start_method="fork")
    one, two = (json.load(open(tmp_path / d / "retrieval_video.json")) for d in ("one", "two"))
    assert one["num_gallery"] == two["num_gallery"] == 9 and one["num_queries"] == two["num_queries"] == 6
    for k in (1, 5):
        assert one[f"R{k}"] == pytest.approx(two[f"R{k}"]), k


# -----------------------------------------------------------------------------
# --export: the checkpoint as a transformers VideoMAE folder (its numbers are checked in tests/test_model.py)

def test_export_command_writes_a_folder_and_refuses_with_sentences(tmp_path, capsys):
    names = ["red", "green", "blue"]
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    save_finetune_checkpoint(tmp_path / "ft.pt", 3)
    ckpt = M.load_checkpoint(tmp_path / "ft.pt")
    ckpt["args"]["class_names"] = str(tmp_path / "classes.txt")  # as finetune.py saves a run that had them
    M.save_checkpoint(tmp_path / "ft.pt", ckpt)
    EV.main(EV.get_parser().parse_args(["--checkpoint", str(tmp_path / "ft.pt"), "--export", str(tmp_path / "hf_ft")]))
    assert "wrote" in capsys.readouterr().out
    config = json.load(open(tmp_path / "hf_ft" / "config.json"))
    assert config["architectures"] == ["VideoMAEForVideoClassification"] and config["use_mean_pooling"]
    assert config["id2label"] == {"0": "red", "1": "green", "2": "blue"}
    info = json.load(open(tmp_path / "hf_ft" / "tgm.json"))
    assert info["mode"] == "finetune" and info["exported_from"] == str(tmp_path / "ft.pt")

    save_pretrain_checkpoint(tmp_path / "pre.pt")
    EV.main(EV.get_parser().parse_args(["--checkpoint", str(tmp_path / "pre.pt"), "--export", str(tmp_path / "hf_pre")]))
    config = json.load(open(tmp_path / "hf_pre" / "config.json"))
    assert config["architectures"] == ["VideoMAEForPreTraining"] and not config["use_mean_pooling"]
    info = json.load(open(tmp_path / "hf_pre" / "tgm.json"))
    assert (info["mask"], info["ratio"], info["contrastive_head"], info["clip_model"]) == (
        "tube", 0.75, "contrastive", "ViT-B-32-quickgelu")
    assert "| mask | tube |" in open(tmp_path / "hf_pre" / "README.md").read()

    with pytest.raises(SystemExit, match="already exists"):    # never over an existing folder
        EV.main(EV.get_parser().parse_args(["--checkpoint", str(tmp_path / "ft.pt"), "--export", str(tmp_path / "hf_pre")]))
    ckpt.update(mode="linear")                                 # a linear probe's checkpoint
    M.save_checkpoint(tmp_path / "probe.pt", ckpt)
    with pytest.raises(SystemExit, match="evaluate.py: .*is a linear probe"):
        EV.main(EV.get_parser().parse_args(["--checkpoint", str(tmp_path / "probe.pt"), "--export", str(tmp_path / "hf_lp")]))
    torch.save({"model": ckpt["model"]}, tmp_path / "other.pth")  # weights that are not ours
    with pytest.raises(SystemExit, match="not a pretrain.py or finetune.py checkpoint"):
        EV.main(EV.get_parser().parse_args(["--checkpoint", str(tmp_path / "other.pth"), "--export", str(tmp_path / "hf_x")]))
    assert not (tmp_path / "hf_lp").exists() and not (tmp_path / "hf_x").exists()
