"""
Tests of model.py (Sec. 3.1, 3.4): parity with transformers' VideoMAE, the target, InfoNCE, training,
checkpoints; and of weights.py, the importer and the exporter. CPU, tiny shapes, no network.

    python -m pytest -q tests/test_model.py
"""
import math
import os

import pytest
import torch
import torch.nn.functional as F

import model as M
import weights

# a tiny VideoMAE: 4 frames of 32x32 -> grid (2, 2, 2), N = 8 tokens of P = 2*16*16*3 = 1536 values
TINY = dict(img_size=32, num_frames=4, tubelet_size=2, patch_size=16, embed_dim=32, depth=2, num_heads=4,
            decoder_embed_dim=16, decoder_depth=2, decoder_num_heads=2, head_hidden_dim=64, head_out_dim=16)


def tiny_cfg(**kw):
    return M.ModelConfig(**{**TINY, **kw})


def fixed_count_mask(batch, n, n_masked, seed=0):
    """(B, N) bool, True = masked, the same count in every row."""
    g = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(n, generator=g) for _ in range(batch)])
    return order < n_masked


# -----------------------------------------------------------------------------
# parity with transformers.VideoMAEForPreTraining, loaded through our importer (weights.py)

def hf_tiny(tmp_path, norm_pix_loss=True):
    from transformers import VideoMAEConfig, VideoMAEForPreTraining

    hf_cfg = VideoMAEConfig(
        image_size=32, patch_size=16, num_channels=3, num_frames=4, tubelet_size=2, hidden_size=32,
        num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, decoder_hidden_size=16,
        decoder_num_hidden_layers=2, decoder_num_attention_heads=2, decoder_intermediate_size=64,
        use_mean_pooling=False, norm_pix_loss=norm_pix_loss, layer_norm_eps=1e-6, attn_implementation="eager")
    torch.manual_seed(0)
    hf = VideoMAEForPreTraining(hf_cfg).eval()
    with torch.no_grad():  # random everything, biases and norms too, so no parameter can hide a mapping error
        for p in hf.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    hf.save_pretrained(tmp_path / "hf")
    # NOTE: HF hard-codes eps 1e-5 in the decoder's final LayerNorm; the official VideoMAE (and we) use 1e-6.
    hf.decoder.norm.eps = 1e-6
    return hf


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_parity_with_transformers_pretraining(tmp_path, norm_pix_loss):
    hf = hf_tiny(tmp_path, norm_pix_loss)
    ours = M.VideoMAE(tiny_cfg(norm_pix_loss=norm_pix_loss)).eval()
    missing, unexpected = weights.load_videomae_weights(ours, tmp_path / "hf")
    assert unexpected == []
    assert all(k.startswith("projector.") for k in missing)    # only our contrastive head is new

    torch.manual_seed(1)
    video = torch.randn(3, 3, 4, 32, 32)                       # (B, C, T, H, W)
    mask = fixed_count_mask(3, 8, 6)
    with torch.no_grad():
        loss, pred, latent = ours(video, mask)
        out = hf(video.transpose(1, 2), bool_masked_pos=mask)  # HF takes (B, T, C, H, W)
    assert pred.shape == (3, 6, 1536)
    torch.testing.assert_close(pred, out.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, out.loss, rtol=1e-5, atol=0)

    # the encoder alone against VideoMAEModel (visible tokens, final LayerNorm)
    with torch.no_grad():
        enc = hf.videomae(video.transpose(1, 2), bool_masked_pos=mask).last_hidden_state
    torch.testing.assert_close(latent, enc, rtol=1e-5, atol=1e-5)


def test_chunked_attention_equals_attention_at_once(monkeypatch):
    """The CPU bf16 path's query chunks (tiny here, so there are several, one of them ragged) change nothing."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8, requires_grad=True) for _ in range(3))  # (B, nh, N, hs)
    monkeypatch.setattr(M, "ATTN_CHUNK_BYTES", 2 * 3 * 10 * 4 * 3)  # 3 queries per chunk
    out = M.chunked_attention(q, k, v)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, ref)                       # up to float rounding
    for g, g_ref in zip(grads, torch.autograd.grad(ref.square().sum(), (q, k, v))):
        torch.testing.assert_close(g, g_ref)


def test_import_official_format_and_into_classifier(tmp_path):
    """Official-format keys (fused qkv, q_bias/v_bias) load exactly; a classifier takes the encoder part."""
    src = M.VideoMAE(tiny_cfg())
    torch.save({"model": src.state_dict()}, tmp_path / "official.pth")
    dst = M.VideoMAE(tiny_cfg())
    missing, unexpected = weights.load_videomae_weights(dst, tmp_path / "official.pth")
    assert missing == [] and unexpected == []
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k

    clf = M.VideoClassifier(tiny_cfg(), num_classes=5)
    missing, unexpected = weights.load_videomae_weights(clf, tmp_path / "official.pth")
    assert sorted(missing) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert "encoder.norm.weight" in unexpected                  # VideoMAE's classifier replaces it by fc_norm
    assert torch.equal(clf.encoder.blocks[1].attn.qkv.weight, src.encoder.blocks[1].attn.qkv.weight)


# -----------------------------------------------------------------------------
# Sec. 3.1: tokens and target

def test_target_is_normalised_per_token_and_channel():
    video = torch.randn(2, 3, 4, 32, 32)
    target = M.pixel_target(video, 2, 16).view(2, 8, 2 * 16 * 16, 3)
    torch.testing.assert_close(target.mean(dim=2), torch.zeros(2, 8, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(target.std(dim=2), torch.ones(2, 8, 3), atol=1e-4, rtol=0)
    raw = M.pixel_target(video, 2, 16, norm_pix_loss=False)    # [0, 1] pixels of the un-normalised clip
    mean = torch.tensor(M.IMAGENET_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(M.IMAGENET_STD).view(1, 3, 1, 1, 1)
    assert torch.allclose(raw, M.patchify(video * std + mean, 2, 16), atol=1e-6)


def test_loss_only_on_masked_tokens():
    torch.manual_seed(0)
    mae = M.VideoMAE(tiny_cfg())
    video = torch.randn(2, 3, 4, 32, 32)
    mask = fixed_count_mask(2, 8, 5)
    _, pred, _ = mae(video, mask)
    target = M.pixel_target(video, 2, 16)[mask].reshape(pred.shape)
    assert torch.allclose(mae.forward_loss(video, pred, mask), F.mse_loss(pred, target))
    # changing the pixels of a visible token changes the encoder input but not the target of the loss
    video2 = video.clone()
    vis = (~mask[0]).nonzero()[0].item()
    tp, h, w = vis // 4, (vis // 2) % 2, vis % 2
    video2[0, :, 2 * tp:2 * tp + 2, 16 * h:16 * h + 16, 16 * w:16 * w + 16] += 5.0
    assert torch.equal(mae.forward_loss(video2, pred, mask), mae.forward_loss(video, pred, mask))


def test_split_ids_refuses_rows_with_other_masked_counts():
    mask = fixed_count_mask(2, 8, 5)
    ids_vis, ids_mask = M.split_ids(mask)
    assert ids_vis.shape == (2, 3) and ids_mask.shape == (2, 5)
    assert torch.equal(torch.gather(mask, 1, ids_mask), torch.ones(2, 5, dtype=torch.bool))  # raster order kept below
    assert (ids_mask.diff(dim=1) > 0).all() and (ids_vis.diff(dim=1) > 0).all()
    mask[1, (~mask[1]).nonzero()[0]] = True                    # row 1 now masks 6 tokens, row 0 still 5
    with pytest.raises(ValueError, match="same number of tokens, got 5 to 6"):
        M.split_ids(mask)
    with pytest.raises(ValueError, match="same number"):
        M.VideoMAE(tiny_cfg())(torch.randn(2, 3, 4, 32, 32), mask)


def test_sinusoid_table_matches_videomae_formula():
    import numpy as np
    n, d = 7, 10
    angles = np.array([[pos / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for pos in range(n)])
    angles[:, 0::2], angles[:, 1::2] = np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])
    assert torch.equal(M.sinusoid_table(n, d)[0], torch.tensor(angles, dtype=torch.float32))


def test_named_sizes():
    base = M.make_config("vit_base")
    assert (base.embed_dim, base.depth, base.num_heads, base.decoder_embed_dim, base.decoder_num_heads) == (768, 12, 12, 384, 6)
    assert base.num_patches == 1568 and base.grid == (8, 14, 14)
    assert M.make_config("vit_large").decoder_embed_dim == 512
    with pytest.raises(ValueError, match="unknown model"):
        M.make_config("vit_huge2")


# -----------------------------------------------------------------------------
# Sec. 3.4: InfoNCE

def test_info_nce_hand_computed_and_symmetric():
    v = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=-1)
    t = F.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0]]), dim=-1)
    tau = 0.5
    s = [[sum(a * b for a, b in zip(vi, tj)) / tau for tj in t.tolist()] for vi in v.tolist()]
    v2t = [-math.log(math.exp(s[i][i]) / sum(math.exp(x) for x in s[i])) for i in range(2)]
    t2v = [-math.log(math.exp(s[i][i]) / sum(math.exp(s[j][i]) for j in range(2))) for i in range(2)]
    expected = (sum(v2t) / 2 + sum(t2v) / 2) / 2
    assert M.info_nce(v, t, tau).item() == pytest.approx(expected, rel=1e-6)
    assert M.info_nce(t, v, tau).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_is_minimal_for_matching_pairs():
    torch.manual_seed(0)
    t = F.normalize(torch.randn(8, 16), dim=-1)
    matched = M.info_nce(t.clone(), t, 0.07)
    shuffled = M.info_nce(t[torch.roll(torch.arange(8), 1)], t, 0.07)
    assert matched < shuffled
    assert matched < 0.5 and shuffled > 5.0


def test_video_embedding_shape_and_norm():
    mae = M.VideoMAE(tiny_cfg()).train()
    video = torch.randn(4, 3, 4, 32, 32)
    _, _, latent = mae(video, fixed_count_mask(4, 8, 6))
    v = mae.video_embedding(latent)
    assert v.shape == (4, 16)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(4))


# -----------------------------------------------------------------------------
# training, transfer heads, groups

def test_overfits_one_batch():
    torch.manual_seed(0)
    mae = M.VideoMAE(tiny_cfg())
    video = torch.randn(2, 3, 4, 32, 32)
    mask = fixed_count_mask(2, 8, 6)
    t = F.normalize(torch.randn(2, 16), dim=-1)
    opt = torch.optim.AdamW(M.param_groups(mae, 0.05), lr=1e-3, betas=(0.9, 0.95))
    losses = []
    for _ in range(60):
        loss, _, latent = mae(video, mask)
        loss = loss + M.info_nce(mae.video_embedding(latent), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_classifier_and_probe_shapes():
    clf = M.VideoClassifier(tiny_cfg(), num_classes=5, drop_path=0.1)
    video = torch.randn(2, 3, 4, 32, 32)
    assert clf(video).shape == (2, 5)
    assert clf.head.weight.abs().max() < 1e-3                  # head init scaled by 0.001
    probe = M.LinearProbe(32, 5)
    assert probe(clf.features(video)).shape == (2, 5)
    assert not probe.bn.affine


def test_param_groups_weight_decay_and_layer_decay():
    clf = M.VideoClassifier(tiny_cfg(), num_classes=5)
    groups = M.param_groups(clf, 0.05, layer_decay=0.75)
    by_param = {id(p): g for g in groups for p in g["params"]}
    depth = 2
    assert by_param[id(clf.head.weight)]["lr_scale"] == 1.0
    assert by_param[id(clf.encoder.blocks[1].mlp.fc1.weight)]["lr_scale"] == 0.75 ** (depth + 1 - 2)
    assert by_param[id(clf.encoder.blocks[0].mlp.fc1.weight)]["lr_scale"] == 0.75 ** (depth + 1 - 1)
    assert by_param[id(clf.encoder.patch_embed.proj.weight)]["lr_scale"] == 0.75 ** (depth + 1)
    assert by_param[id(clf.encoder.blocks[0].attn.q_bias)]["weight_decay"] == 0.0
    assert by_param[id(clf.encoder.blocks[0].norm1.weight)]["weight_decay"] == 0.0
    assert by_param[id(clf.encoder.blocks[0].attn.qkv.weight)]["weight_decay"] == 0.05
    mae_groups = M.param_groups(M.VideoMAE(tiny_cfg()), 0.05)
    mae = {id(p): g for g in mae_groups for p in g["params"]}
    assert all(g["weight_decay"] == 0.0 for g in mae_groups if any(p.shape == (1, 1, 16) for p in g["params"]))
    assert len(mae) == len(list(M.VideoMAE(tiny_cfg()).parameters()))


# -----------------------------------------------------------------------------
# checkpoints

def test_checkpoint_round_trip_rebuilds_identical_model(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg()
    mae = M.VideoMAE(cfg).eval()
    path = tmp_path / "ckpt.pt"
    M.save_checkpoint(path, {"model": mae.state_dict(), "model_cfg": M.model_config_dict(cfg), "step": 3})
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind
    ckpt = M.load_checkpoint(path)
    rebuilt = M.VideoMAE(M.config_from_checkpoint(ckpt)).eval()
    rebuilt.load_state_dict(ckpt["model"])
    video, mask = torch.randn(2, 3, 4, 32, 32), fixed_count_mask(2, 8, 6)
    with torch.no_grad():
        assert torch.equal(mae(video, mask)[1], rebuilt(video, mask)[1])


def test_truncated_checkpoint_gives_clear_error(tmp_path):
    path = tmp_path / "ckpt.pt"
    M.save_checkpoint(path, {"model": M.VideoMAE(tiny_cfg()).state_dict(), "model_cfg": M.model_config_dict(tiny_cfg())})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(M.CheckpointError, match="truncated"):
        M.load_checkpoint(path)
    with pytest.raises(M.CheckpointError, match="no such checkpoint"):
        M.load_checkpoint(tmp_path / "missing.pt")


# -----------------------------------------------------------------------------
# two ranks (Gloo, CPU): the head's batch norm and InfoNCE see the global batch, with exact gradients

def _two_rank_worker(rank, init_file, out_dir, grad_sync, sizes):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    head = M.ContrastiveHead(8, 16, 4)
    x = torch.randn(sum(sizes), 8)
    t = F.normalize(torch.randn(sum(sizes), 4), dim=-1)
    mine = slice(sum(sizes[:rank]), sum(sizes[:rank + 1]))
    v = F.normalize(head(x[mine]), dim=-1)
    loss = M.info_nce(v, t[mine], 0.1, grad_sync=grad_sync)
    loss.backward()
    grads = [p.grad.clone() for p in head.parameters()]
    for g in grads:
        dist.all_reduce(g)                                      # a sum over ranks ...
        if grad_sync == "mean":
            g /= 2                                             # ... or their mean, as DDP and FSDP take it
    torch.save({"loss": loss.detach(), "grads": grads, "running_mean": head.bn.running_mean}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("grad_sync, sizes", [("mean", (3, 3)), ("sum", (3, 3)), ("mean", (4, 3)), ("sum", (4, 3))])
def test_two_ranks_equal_one_process_on_the_global_batch(tmp_path, grad_sync, sizes):
    # the loss's gradient is the global batch's whether the ranks' gradients are averaged (DDP) or summed, and when
    # the ranks hold different numbers of clips (4 and 3)
    import torch.multiprocessing as mp
    mp.spawn(_two_rank_worker, args=(str(tmp_path / "init"), str(tmp_path), grad_sync, sizes), nprocs=2, join=True)
    torch.manual_seed(0)
    head = M.ContrastiveHead(8, 16, 4)
    x = torch.randn(sum(sizes), 8)
    t = F.normalize(torch.randn(sum(sizes), 4), dim=-1)
    loss = M.info_nce(F.normalize(head(x), dim=-1), t, 0.1)
    loss.backward()
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["loss"], loss.detach())
        torch.testing.assert_close(got["running_mean"], head.bn.running_mean)
        for g, p in zip(got["grads"], head.parameters()):
            torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6)


# -----------------------------------------------------------------------------
# Sec. 3.4 in practice: bf16, same-caption pairs, clips without a caption

def test_info_nce_under_bf16_autocast_matches_fp32():
    """The head's output, its normalisation and the logits stay fp32 under autocast: bf16 would round
    v t^T / 0.07 by ~0.06."""
    torch.manual_seed(0)
    mae = M.VideoMAE(tiny_cfg()).train()
    latent = torch.randn(8, 6, 32)                             # (B, N_vis, D)
    t = F.normalize(torch.randn(8, 16), dim=-1)
    fp32 = M.info_nce(mae.video_embedding(latent), t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = M.info_nce(mae.video_embedding(latent), t)
    assert bf16.dtype == torch.float32
    assert abs(bf16.item() - fp32.item()) < 1e-3


def test_info_nce_same_caption_pairs_leave_the_denominators():
    """Rows 0 and 1 carry the same caption: neither is a negative of the other, in either direction."""
    torch.manual_seed(0)
    v = F.normalize(torch.randn(4, 8), dim=-1)
    t = F.normalize(torch.randn(4, 8), dim=-1)
    t[1] = t[0]
    ids = torch.tensor([7, 7, 3, 5])
    s = (v @ t.t() / 0.1).tolist()
    allowed = [[not (i != j and ids[i] == ids[j]) for j in range(4)] for i in range(4)]
    v2t = [-s[i][i] + math.log(sum(math.exp(s[i][j]) for j in range(4) if allowed[i][j])) for i in range(4)]
    t2v = [-s[i][i] + math.log(sum(math.exp(s[j][i]) for j in range(4) if allowed[j][i])) for i in range(4)]
    expected = (sum(v2t) / 4 + sum(t2v) / 4) / 2
    assert M.info_nce(v, t, 0.1, ids).item() == pytest.approx(expected, rel=1e-6)
    assert M.info_nce(v, t, 0.1).item() > expected             # counted as negatives, they only add to the loss
    # all ids distinct: exactly the plain loss
    assert M.info_nce(v, t, 0.1, torch.arange(4)).item() == pytest.approx(M.info_nce(v, t, 0.1).item(), rel=1e-6)


def test_info_nce_leaves_out_clips_without_a_caption():
    torch.manual_seed(0)
    v = F.normalize(torch.randn(5, 8), dim=-1).requires_grad_()
    t = F.normalize(torch.randn(5, 8), dim=-1)
    ids = torch.tensor([0, -1, 2, 3, -1])
    keep = ids >= 0
    loss = M.info_nce(v, t, 0.1, ids)
    assert loss.item() == pytest.approx(M.info_nce(v[keep], t[keep], 0.1).item(), rel=1e-6)
    loss.backward()
    assert v.grad[~keep].abs().sum() == 0 and v.grad[keep].abs().sum() > 0
    none = M.info_nce(v, t, 0.1, torch.full((5,), -1))         # no caption anywhere: zero, and a graph to run
    assert none.item() == 0.0 and none.requires_grad


# -----------------------------------------------------------------------------
# export to transformers (weights.py, evaluate.py --export): the folder loads there and gives our numbers

# odd sizes, so that a mapping assuming 16 frames, 16 px patches or 224 px cannot pass: 4 frames of 48 x 48 in 8 px
# patches -> grid (2, 6, 6), N = 72 tokens of P = 2*8*8*3 = 384 values
ODD = dict(TINY, img_size=48, patch_size=8, norm_eps=1e-6)


def randomised(module, seed=0):
    """Every parameter moved off its init (norms and biases too), so no parameter can hide a mapping error."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return module.eval()


def save_pretrain_like(path, cfg):
    """A checkpoint with the keys pretrain.py's save writes -> the VideoMAE in it."""
    mae = randomised(M.VideoMAE(cfg))
    M.save_checkpoint(path, {
        "model": mae.state_dict(), "optimizer": {}, "scaler": {}, "step": 40, "epoch": 2,
        "model_cfg": M.model_config_dict(cfg), "head": "contrastive", "rng": [],
        "args": {"mask": "tgm", "ratio": 0.6, "tgm_order": "top", "captions": "k400_captions.jsonl", "contrastive": True,
                 "clip_model": "ViT-B-32-quickgelu", "clip_pretrained": "openai", "epochs": 2}})
    return mae


def save_finetune_like(path, cfg, num_classes=5, mode="finetune", class_names=None):
    """A checkpoint with the keys finetune.py writes (--mode finetune or linear) -> the classifier in it."""
    clf = M.VideoClassifier(cfg, num_classes, drop_path=0.0) if mode == "finetune" else M.ProbeClassifier(cfg, num_classes)
    clf = randomised(clf)
    M.save_checkpoint(path, {
        "model": clf.state_dict(), "model_cfg": M.model_config_dict(cfg), "num_classes": num_classes, "mode": mode,
        "args": {"mode": mode, "epochs": 3, "checkpoint": "runs/pre/ckpt.pt", "class_names": class_names},
        "optimizer": {}, "epoch": 3, "best_top1": 50.0})
    return clf


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_export_pretrain_checkpoint_gives_our_loss_in_transformers(tmp_path, norm_pix_loss):
    from transformers import VideoMAEForPreTraining
    mae = save_pretrain_like(tmp_path / "ckpt.pt", M.ModelConfig(**ODD, norm_pix_loss=norm_pix_loss))
    weights.export_videomae(M.load_checkpoint(tmp_path / "ckpt.pt"), tmp_path / "hf", source="ckpt.pt")
    hf, info = VideoMAEForPreTraining.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info.values())                              # no missing, unexpected or mismatched weights
    torch.manual_seed(1)
    video = torch.randn(3, 3, 4, 48, 48)                       # (B, C, T, H, W)
    mask = fixed_count_mask(3, 72, 54)                         # True = masked, 0.75
    with torch.no_grad():
        loss, pred, _ = mae(video, mask)
        out = hf.eval()(video.transpose(1, 2), bool_masked_pos=mask)  # transformers takes (B, T, C, H, W)
    assert abs(out.loss.item() - loss.item()) / loss.item() < 1e-5
    # the rest is transformers' hard-coded eps 1e-5 in decoder.norm (the model card says so): with ours, rounding only
    hf.decoder.norm.eps = 1e-6
    with torch.no_grad():
        out = hf(video.transpose(1, 2), bool_masked_pos=mask)
    torch.testing.assert_close(out.logits, pred, rtol=0, atol=2e-6)


def test_export_finetune_checkpoint_gives_our_logits_in_transformers(tmp_path):
    from transformers import VideoMAEForVideoClassification
    names = ["archery", "bowling", "cartwheel", "diving", "eating"]
    clf = save_finetune_like(tmp_path / "ckpt.pt", M.ModelConfig(**ODD))
    weights.export_videomae(M.load_checkpoint(tmp_path / "ckpt.pt"), tmp_path / "hf", class_names=names)
    hf, info = VideoMAEForVideoClassification.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info.values())
    assert hf.config.id2label == dict(enumerate(names)) and hf.config.label2id["diving"] == 3
    torch.manual_seed(1)
    video = torch.randn(3, 3, 4, 48, 48)
    with torch.no_grad():
        ours, theirs = clf(video), hf.eval()(video.transpose(1, 2)).logits  # (B, K)
    assert ours.abs().max() > 0.1                              # a head big enough for errors to show
    assert (ours - theirs).abs().max().item() < 1e-5


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_export_round_trip_is_exact(tmp_path, kind):
    """Exported, then imported back through load_videomae_weights: every tensor bit for bit (the head of Sec. 3.4
    aside, which transformers has no slot for)."""
    cfg = M.ModelConfig(**ODD)
    src = (save_pretrain_like if kind == "pretrain" else save_finetune_like)(tmp_path / "ckpt.pt", cfg)
    weights.export_videomae(M.load_checkpoint(tmp_path / "ckpt.pt"), tmp_path / "hf")
    dst = M.VideoMAE(cfg) if kind == "pretrain" else M.VideoClassifier(cfg, 5)
    missing, unexpected = weights.load_videomae_weights(dst, tmp_path / "hf")
    assert unexpected == [] and all(k.startswith("projector.") for k in missing)
    want = {k: v for k, v in src.state_dict().items() if not k.startswith("projector.")}
    got = dst.state_dict()
    assert want.keys() <= got.keys()
    for k, v in want.items():
        assert torch.equal(got[k], v), k


def test_export_refuses_with_a_sentence(tmp_path):
    cfg = M.ModelConfig(**ODD)
    save_finetune_like(tmp_path / "probe.pt", cfg, mode="linear")
    with pytest.raises(M.CheckpointError, match="is a linear probe"):
        weights.export_videomae(M.load_checkpoint(tmp_path / "probe.pt"), tmp_path / "hf")
    save_pretrain_like(tmp_path / "ckpt.pt", cfg)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="already exists"):
        weights.export_videomae(M.load_checkpoint(tmp_path / "ckpt.pt"), tmp_path / "hf")
    assert os.listdir(tmp_path / "hf") == ["mine.txt"]         # untouched
    official = {"model": M.load_checkpoint(tmp_path / "ckpt.pt")["model"]}  # weights without our model_cfg
    with pytest.raises(M.CheckpointError, match="not a pretrain.py or finetune.py checkpoint"):
        weights.export_videomae(official, tmp_path / "hf2")
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", "hf", "probe.pt"]  # nothing written


def test_export_crash_leaves_no_half_folder(tmp_path, monkeypatch):
    save_pretrain_like(tmp_path / "ckpt.pt", M.ModelConfig(**ODD))
    ckpt = M.load_checkpoint(tmp_path / "ckpt.pt")
    write_whole = M.write_whole

    def crash_at_the_card(path, write):
        if path.endswith("README.md"):
            raise OSError("disk full")
        write_whole(path, write)
    monkeypatch.setattr(M, "write_whole", crash_at_the_card)
    with pytest.raises(OSError, match="disk full"):
        weights.export_videomae(ckpt, tmp_path / "hf")
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]         # neither the folder nor its temporary copy
    monkeypatch.undo()
    weights.export_videomae(ckpt, tmp_path / "hf")
    assert sorted(os.listdir(tmp_path / "hf")) == ["README.md", "config.json", "model.safetensors", "tgm.json"]
