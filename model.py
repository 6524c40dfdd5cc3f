"""Sec. 3.1, 3.4 and 4.2: the video masked autoencoder, the video-text contrastive head and InfoNCE, the classifiers.

Needs only torch, so it can be copied alone (weights in and out: weights.py). With the same weights,
`VideoMAE.forward(video, mask) -> (loss, pred, latent)` gives transformers' VideoMAEForPreTraining's loss to 1e-5.

Notation (the paper's symbols, used in every shape comment):
  B  clips in a batch            C  colour channels (3)
  T  frames per clip             H, W  frame height and width
  t  tubelet size (2 frames)     p  patch size (16 pixels)
  T', h, w = T/t, H/p, W/p       the token grid
  N  = T' * h * w tokens, flattened in raster order (t, h, w)
  N_vis, N_mask  visible and masked tokens per clip (every clip of a batch masks the same number)
  D  encoder width               D_dec  decoder width        E  embedding width of the text space (512)
  P  = t * p * p * C             values per token (1536 for t=2, p=16)
Mask convention everywhere: mask is (B, N) bool, True = masked (hidden from the encoder).
"""
import contextlib
import json
import math
import os
import socket
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# -----------------------------------------------------------------------------
# Hyperparameters

@dataclass
class ModelConfig:
    img_size: int = 224            # H = W
    num_frames: int = 16           # T
    tubelet_size: int = 2          # t
    patch_size: int = 16           # p
    in_chans: int = 3              # C
    embed_dim: int = 768           # D
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    decoder_embed_dim: int = 384   # D_dec
    decoder_depth: int = 4
    decoder_num_heads: int = 6
    norm_pix_loss: bool = True     # regress per-patch normalised pixels (VideoMAE's default)
    norm_eps: float = 1e-6         # LayerNorm eps of VideoMAE (HF's config default is 1e-12: set it when comparing)
    head_hidden_dim: int = 2048    # Sec. 3.4 prediction head, SimCLR-style
    head_out_dim: int = 512        # E: CLIP ViT-B/32's text width, so video and text meet in one space

    @property
    def grid(self):
        h = self.img_size // self.patch_size                   # H = W, so h = w
        return (self.num_frames // self.tubelet_size, h, h)    # (T', h, w)

    @property
    def num_patches(self):
        return math.prod(self.grid)                            # N = T' * h * w


# VideoMAE's sizes (modeling_pretrain.py); vit_tiny is timm's ViT-Ti, used by the tests and the demo.
MODEL_SIZES = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3, decoder_embed_dim=96, decoder_num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6, decoder_embed_dim=192, decoder_num_heads=3),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=384, decoder_num_heads=6),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16, decoder_embed_dim=512, decoder_num_heads=8),
}


def make_config(name="vit_base", **overrides):
    if name not in MODEL_SIZES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_SIZES)}")
    return ModelConfig(**{**MODEL_SIZES[name], **overrides})


# -----------------------------------------------------------------------------
# Sec. 3.1: tokens, and the reconstruction target

def patchify(video, tubelet, patch):
    """Cut clips into tubelets, one row per token. video: (B, C, T, H, W) -> (B, N, t*p*p*C). Tokens in raster
    order (t, h, w), as the patch embedding's; values (t, p, p, C), channel fastest, as VideoMAE's decoder predicts."""
    B, C, T, H, W = video.shape
    t, p = tubelet, patch
    x = video.reshape(B, C, T // t, t, H // p, p, W // p, p)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)                     # (B, T', h, w, t, p, p, C)
    return x.reshape(B, (T // t) * (H // p) * (W // p), t * p * p * C)


def denormalize(video):
    """Undo the ImageNet normalisation of clips: (..., C, T, H, W) -> pixels in [0, 1] (unclamped), float32."""
    mean = torch.tensor(IMAGENET_MEAN, device=video.device).view(-1, 1, 1, 1)  # (C, 1, 1, 1): broadcasts over T, H, W
    std = torch.tensor(IMAGENET_STD, device=video.device).view(-1, 1, 1, 1)
    return video.float() * std + mean


def pixel_target(video, tubelet, patch, norm_pix_loss=True):
    """What the decoder regresses: ImageNet-normalised video (B, C, T, H, W) -> (B, N, P). As VideoMAE: back to
    [0, 1], cut into tokens, each normalised per channel over its t*p*p pixels, unbiased std (MAE's norm pixels)."""
    x = patchify(denormalize(video), tubelet, patch)           # (B, N, P), pixels in [0, 1]
    if not norm_pix_loss:
        return x
    x = x.unflatten(-1, (-1, video.shape[1]))                  # (B, N, t*p*p, C): channel fastest
    x = (x - x.mean(dim=-2, keepdim=True)) / (x.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
    return x.flatten(-2)                                       # (B, N, P)


def sinusoid_table(n_position, dim):
    """VideoMAE's fixed sine-cosine positions (1, n_position, dim), in float64 as its numpy code: bit for bit."""
    pos = torch.arange(n_position, dtype=torch.float64)[:, None]
    freq = torch.pow(10000.0, 2 * (torch.arange(dim, dtype=torch.float64) // 2) / dim)
    table = pos / freq                                         # (n_position, dim)
    table[:, 0::2] = torch.sin(table[:, 0::2])                 # even dims: sine
    table[:, 1::2] = torch.cos(table[:, 1::2])                 # odd dims: cosine
    return table.float().unsqueeze(0)


# -----------------------------------------------------------------------------
# The transformer: one pre-norm block of VideoMAE

def drop_path(x, p, training):
    """Stochastic depth: drop the residual branch for whole samples (used when finetuning, Sec. 4.2)."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - p)
    return x * keep / (1 - p)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        # VideoMAE: a bias-free qkv matrix plus learned q and v biases (a k bias would shift a softmax row: a no-op)
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x):
        B, N, D = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)               # (B, N, 3D)
        qkv = qkv.view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]                          # each (B, nh, N, hs)

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = self.qkv_heads(x)
        if q.dtype == torch.bfloat16 and q.device.type == "cpu":
            # NOTE: torch's CPU kernel is slow in bf16: chunked, fwd + bwd run 1.4-2x faster (benchmarks/README.md)
            x = chunked_attention(q, k, v)                     # (B, nh, N, hs)
        else:
            x = F.scaled_dot_product_attention(q, k, v)        # (B, nh, N, hs); scale hs^-0.5 as VideoMAE
        x = x.transpose(1, 2).reshape(B, N, D)                 # (B, N, D)
        return self.proj(x)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict(fc1=nn.Linear(dim, hidden), act=nn.GELU(), fc2=nn.Linear(hidden, dim)))
        self.drop_path = drop_path

    def forward(self, x):
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        x = x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)
        return x


def init_weights(m):
    """VideoMAE's init: xavier-uniform Linear with zero bias, LayerNorm (1, 0). The Conv3d keeps PyTorch's."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# -----------------------------------------------------------------------------
# Sec. 3.1, Eq. (1)-(3): encoder phi over the visible tokens, decoder xi over all of them

def split_ids(mask):
    """mask (B, N) bool, True = masked, the same count per row -> token ids (B, N_vis), (B, N_mask), each in
    raster order: the order boolean indexing (x[~mask], x[mask]) gives, at one host sync instead of one per use.
    Rows with other counts cannot share one (B, N_vis) tensor: a ValueError, not a silent misalignment."""
    ids = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)  # (B, N): visible (False) first, stable = raster
    lo, hi = torch.stack(mask.sum(dim=1).aminmax()).tolist()  # fewest and most masked tokens of a row: one sync
    if lo != hi:
        raise ValueError(f"every clip of a batch must mask the same number of tokens, got {lo} to {hi}")
    n_vis = mask.shape[1] - hi
    return ids[:, :n_vis], ids[:, n_vis:]


class PatchEmbed(nn.Module):
    """Eq. (1): V_p = P(V), a Conv3d whose kernel and stride are the tubelet (t, p, p)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.tubelet_size, self.patch_size = cfg.tubelet_size, cfg.patch_size
        k = (cfg.tubelet_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_chans, cfg.embed_dim, kernel_size=k, stride=k)

    def forward(self, video, ids=None):
        """video (B, C, T, H, W), ids (B, n) the tokens to embed (None: all N) -> (B, n, D)."""
        # NOTE: VideoMAE runs the Conv3d over all N tokens, then drops the masked ones. With stride = kernel the conv
        # is one matmul of each tubelet's pixels, so we embed only the kept ones: 4x (ratio 0.9) to 2x (0.6) less time,
        # and over all N as fast as the conv (bench_pretrain.py). The weight keeps the conv's shape (D, C, t, p, p).
        x = patchify(video, self.tubelet_size, self.patch_size)   # (B, N, P), values (t, p, p, C)
        if ids is not None:
            x = torch.take_along_dim(x, ids[..., None], dim=1)    # (B, n, P)
        w = self.proj.weight.permute(0, 2, 3, 4, 1).flatten(1)    # (D, C, t, p, p) -> (D, P) in patchify's order
        return F.linear(x, w, self.proj.bias)                      # (B, n, D)


class Encoder(nn.Module):
    """phi: patch embedding + fixed positions, then blocks over the visible tokens only (Eq. 3)."""

    def __init__(self, cfg: ModelConfig, drop_path: float = 0.0, final_norm: bool = True):
        super().__init__()
        self.patch_embed = PatchEmbed(cfg)
        # fixed, not learned and not saved: rebuilt from the config on load
        self.register_buffer("pos_embed", sinusoid_table(cfg.num_patches, cfg.embed_dim), persistent=False)
        dpr = [drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # linearly rising, as VideoMAE
        self.blocks = nn.ModuleList(
            [Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.norm_eps, dpr[i]) for i in range(cfg.depth)])
        # NOTE: the finetuning classifier drops this norm for the fc_norm after pooling, as VideoMAE does
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps) if final_norm else nn.Identity()

    def tokens(self, video, mask=None):
        """Embedded tokens with positions, the masked ones removed: (B, N_vis, D). mask: True = masked."""
        ids_vis = None if mask is None else split_ids(mask)[0]  # (B, N_vis)
        x = self.patch_embed(video, ids_vis)                   # (B, N_vis, D): only the visible tubelets
        pos = self.pos_embed if mask is None else self.pos_embed[0, ids_vis]  # each token keeps its own position
        return x + pos.to(x.dtype)

    def forward(self, video, mask=None):
        """video (B, C, T, H, W), mask (B, N) bool, True = masked (None: all tokens) -> (B, N_vis, D)."""
        x = self.tokens(video, mask)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class Decoder(nn.Module):
    """xi: a narrow transformer over [visible tokens, mask tokens], predicting the masked tokens' pixels."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.decoder_embed_dim
        self.blocks = nn.ModuleList(
            [Block(d, cfg.decoder_num_heads, cfg.mlp_ratio, cfg.norm_eps) for _ in range(cfg.decoder_depth)])
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.head = nn.Linear(d, cfg.tubelet_size * cfg.patch_size ** 2 * cfg.in_chans)  # D_dec -> P

    def forward(self, x, num_masked):
        """x: (B, N, D_dec) with the masked tokens last -> predictions (B, N_mask, P)."""
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x[:, -num_masked:]))        # only the masked tokens are predicted


class VideoMAE(nn.Module):
    """The pretraining model: encoder, decoder, and the video-text head of Sec. 3.4 (`projector.*`); the other
    parameter names are those of the official VideoMAE checkpoints."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.encoder_to_decoder = nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", sinusoid_table(cfg.num_patches, cfg.decoder_embed_dim),
                             persistent=False)
        self.decoder = Decoder(cfg)
        self.projector = ContrastiveHead(cfg.embed_dim, cfg.head_hidden_dim, cfg.head_out_dim)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward_encoder(self, video, mask):
        """E = phi(V_p_visible), Eq. (3). mask: (B, N) bool, True = masked -> (B, N_vis, D)."""
        return self.encoder(video, mask)

    def forward_decoder(self, latent, mask):
        """V' = xi(E u V_p_masked), Eq. (3). mask: (B, N) bool, True = masked -> (B, N_mask, P)."""
        x = self.encoder_to_decoder(latent)                    # (B, N_vis, D_dec)
        B, _, d = x.shape
        ids_vis, ids_mask = split_ids(mask)                    # (B, N_vis), (B, N_mask)
        # visible tokens not put back in place: positions carry the order; masked ones last = the last N_mask outputs
        x = torch.cat([x, self.mask_token.to(x.dtype).expand(B, ids_mask.shape[1], d)], dim=1)  # (B, N, D_dec)
        x = x + self.decoder_pos_embed[0, torch.cat([ids_vis, ids_mask], dim=1)].to(x.dtype)  # each its position
        return self.decoder(x, ids_mask.shape[1])

    def forward_loss(self, video, pred, mask):
        """L_MSE over the masked tokens only (Sec. 3.1). pred (B, N_mask, P); mask (B, N), True = masked."""
        with torch.no_grad():
            target = pixel_target(video, self.cfg.tubelet_size, self.cfg.patch_size, self.cfg.norm_pix_loss)
            ids_mask = split_ids(mask)[1]                      # (B, N_mask)
            target = torch.take_along_dim(target, ids_mask[..., None], dim=1)  # (B, N_mask, P), same order as pred
        return F.mse_loss(pred.float(), target)

    def forward(self, video, mask):
        """video (B, C, T, H, W), mask (B, N) bool, True = masked -> (loss_mse, pred, latent)."""
        latent = self.forward_encoder(video, mask)             # (B, N_vis, D)
        pred = self.forward_decoder(latent, mask)              # (B, N_mask, P)
        loss = self.forward_loss(video, pred, mask)
        return loss, pred, latent

    def video_embedding(self, latent):
        """Sec. 3.4: v_i = head(mean over the visible tokens of phi's output), L2-normalised. -> (B, E)."""
        # NOTE: fp32 even under bf16 autocast: bf16 would round the logits v t^T / 0.07 by ~0.06 (docs/design.md)
        with torch.autocast(latent.device.type, enabled=False):
            return F.normalize(self.projector(latent.float().mean(dim=1)), dim=-1)


# -----------------------------------------------------------------------------
# Sec. 3.4: the prediction head "with global batch norm", and Eq. (4), the symmetric InfoNCE over the global batch

class ContrastiveHead(nn.Sequential):
    def __init__(self, dim: int, hidden: int, out: int):      # (B, D) -> (B, E), SimCLR's
        super().__init__(OrderedDict(
            fc1=nn.Linear(dim, hidden), bn=GlobalBatchNorm1d(hidden), act=nn.ReLU(), fc2=nn.Linear(hidden, out)))


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the global batch, summed over all ranks; on one process
    exactly nn.BatchNorm1d. NOTE: not nn.SyncBatchNorm, which runs only on GPUs (docs/design.md "Global batch norm")."""

    def forward(self, x):
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        x = x.float()
        stats = AllReduceSum.apply(torch.cat([x.sum(0), (x * x).sum(0), x.new_tensor([x.shape[0]])]))  # differentiable
        s, ss, n = stats.split([x.shape[1], x.shape[1], 1])    # sums of x and x * x over the global batch, its size
        mean = s / n                                           # (C,) over the global batch
        var = ss / n - mean * mean                             # biased, as BatchNorm normalises with
        with torch.no_grad():                                  # running stats keep the unbiased variance, as BatchNorm
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * n / (n - 1), self.momentum)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks. NOTE: not torch.distributed.nn.functional.all_reduce (deprecated): its graph
    node keeps the process group, and a graph outliving destroy_process_group() can SIGABRT the rank at exit."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x)
        return x

    backward = forward                                         # the gradient of a sum over ranks: the sum of theirs


def gather_with_local_grad(x, counts):
    """All ranks' x concatenated along dim 0, in rank order; this rank's slice is x itself, so its gradient is kept.
    counts: every rank's number of rows; ranks may differ (a last, smaller batch): each is padded to the largest."""
    parts = [x.new_empty(max(counts), *x.shape[1:]) for _ in counts]
    dist.all_gather(parts, torch.cat([x.detach(), x.new_zeros(max(counts) - len(x), *x.shape[1:])]))
    parts = [p[:c] for p, c in zip(parts, counts)]
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def info_nce(v, t, tau=0.07, text_ids=None, grad_sync="mean"):
    """(L_NCE(v, t) + L_NCE(t, v)) / 2 of Sec. 3.4, Eq. (4). v, t: (B, E) L2-normalised; row i is a pair.
    The negatives are all other clips (texts) of the *global* batch: both sides are gathered from every rank, so
    each rank computes the one-process value, but its graph reaches only its own clips: the ranks' gradients must
    be *summed*. grad_sync says what the caller does with them: 'mean' (DDP, FSDP's default, average them): the
    gradient is scaled by the world size so the average comes out right; 'sum' (the caller sums them): as it is.
    text_ids (B,) int, optional: row i's caption id, -1 for none. A clip without a caption takes no part; two clips
    of one caption leave each other's denominators (NOTE: not in the paper; docs/design.md "Same-caption pairs")."""
    if grad_sync not in ("mean", "sum"):
        raise ValueError(f"grad_sync must be 'mean' or 'sum', not {grad_sync!r}")
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world > 1:
        n = torch.tensor([len(v)], device=v.device)
        counts = [torch.empty_like(n) for _ in range(world)]
        dist.all_gather(counts, n)                             # every rank's clip count, once for the three gathers
        counts = [int(c) for c in counts]                      # one host sync
        v, t = gather_with_local_grad(v, counts), gather_with_local_grad(t, counts)
        if text_ids is not None:
            text_ids = gather_with_local_grad(text_ids, counts)
    # NOTE: logits in fp32 even under bf16 autocast: bf16 would round v t^T / 0.07 by ~0.06
    with torch.autocast(v.device.type, enabled=False):
        logits = v.float() @ t.float().t() / tau               # (B_global, B_global): sim(q, k) / tau, cosine
    if text_ids is not None:
        same = text_ids[:, None] == text_ids[None, :]          # (B_global, B_global): the same caption
        same.fill_diagonal_(False)                             # ... except the pair itself, the positive
        logits = logits.masked_fill(same, float("-inf"))       # out of both denominators
        has_text = text_ids >= 0
        logits = logits[has_text][:, has_text]                 # clips without a caption take no part
        if logits.numel() == 0:                                # no caption anywhere: a zero that keeps the graph
            return v.sum() * 0.0
    labels = torch.arange(logits.shape[0], device=logits.device)  # the positive k+ sits on the diagonal
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2  # video->text, text->video
    if world > 1 and grad_sync == "mean":
        # the average over ranks would divide this term's gradient by `world`: scale the gradient (not the value)
        # by `world`, so every clip gets exactly the gradient of the global-batch loss
        loss = loss * world - loss.detach() * (world - 1)
    return loss


# -----------------------------------------------------------------------------
# Sec. 4.2: transfer heads

class VideoClassifier(nn.Module):
    """Finetuning: encoder over all tokens -> mean pool -> LayerNorm -> Linear (VideoMAE's ViT classifier)."""

    def __init__(self, cfg: ModelConfig, num_classes: int, drop_path: float = 0.1, head_init_scale: float = 1e-3):
        super().__init__()
        self.encoder = Encoder(cfg, drop_path=drop_path, final_norm=False)
        self.fc_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.embed_dim, num_classes)
        self.apply(init_weights)
        # VideoMAE: a tiny head at start (trunc-normal .02 times 0.001) so early logits are near uniform
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        with torch.no_grad():
            self.head.weight.mul_(head_init_scale)             # (the bias is zero already: init_weights)

    def features(self, video):
        """Mean-pooled tokens (B, D), before fc_norm."""
        return self.encoder(video).mean(dim=1)

    def forward(self, video):
        return self.head(self.fc_norm(self.features(video)))  # (B, K)


class LinearProbe(nn.Sequential):
    """MAE's linear probe, (B, D) -> (B, K): BatchNorm without affine (a per-feature whitening), then Linear."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__(OrderedDict(bn=nn.BatchNorm1d(dim, affine=False, eps=1e-6), head=nn.Linear(dim, num_classes)))
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)


class ProbeClassifier(nn.Module):
    """MAE's linear-probe protocol: the frozen encoder (its final LayerNorm kept), mean-pooled, then a LinearProbe."""

    def __init__(self, cfg: ModelConfig, num_classes: int):
        super().__init__()
        self.encoder = Encoder(cfg, final_norm=True)
        self.probe = LinearProbe(cfg.embed_dim, num_classes)
        self.encoder.apply(init_weights)                       # VideoMAE's init: where --checkpoint none starts
        self.encoder.requires_grad_(False)

    def forward(self, video):
        with torch.no_grad():                                  # frozen: no graph through the encoder
            x = self.encoder(video).mean(dim=1)                # (B, N, D) -> (B, D): mean over all tokens
        return self.probe(x.float())                           # (B, K)


def param_groups(model, weight_decay, layer_decay=None):
    """AdamW groups: no weight decay on biases, norms and mask_token (VideoMAE's rule). With layer_decay
    (finetuning), lr_scale = layer_decay ** (depth + 1 - layer): the patch embedding is layer 0, block i layer i + 1,
    all after the encoder depth + 1."""
    depth = len(model.encoder.blocks)
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith("mask_token")
        if name.startswith("encoder.blocks."):
            layer = int(name.split(".")[2]) + 1
        elif name.startswith("encoder.patch_embed"):            # (pos_embed is a fixed buffer, not a parameter)
            layer = 0
        else:
            layer = depth + 1
        scale = layer_decay ** (depth + 1 - layer) if layer_decay is not None else 1.0
        key = (no_decay, scale, name.startswith("projector."))  # the video-text head: groups of its own
        group = {"params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale}
        groups.setdefault(key, group)["params"].append(param)
    return list(groups.values())


def lr_at(step, total_steps, warmup_steps, lr, min_lr):
    """Linear warmup from 0, then per-step cosine decay to min_lr (VideoMAE's cosine_scheduler)."""
    if step < warmup_steps:
        return lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer, lr):
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


# -----------------------------------------------------------------------------
# Plumbing: checkpoints (one plain dict, written whole), the CPU bf16 attention, DDP, print0, log, autocast

class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, said in one sentence."""


def write_whole(path, write):
    """write(f) (a binary file) into a temporary file in the same folder, then rename: a crash never leaves half a
    file, and processes writing the same file at once leave one whole copy."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"                           # one per process
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)                                  # atomic on POSIX
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(path, obj):
    write_whole(path, lambda f: torch.save(obj, f))


def load_checkpoint(path, mmap=False):
    """Load a checkpoint dict onto the CPU, with a sentence (not a traceback) when the file is unusable. mmap: its
    tensors are read only when used (a look at its args costs no load)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # zip errors, EOF, unpickling: all mean the file is not a whole checkpoint
        raise CheckpointError(
            f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "it may be truncated by an interrupted copy, or not a PyTorch checkpoint") from None


def check_shape_flags(cfg, num_frames=None, input_size=None):
    """--num-frames and --input-size may only repeat the checkpoint's clip shape, else one sentence stops the run."""
    for flag, want, have in (("--num-frames", num_frames, cfg.num_frames), ("--input-size", input_size, cfg.img_size)):
        if want is not None and want != have:
            raise SystemExit(f"{flag} {want} differs from the checkpoint's {have}: its fixed position table is laid "
                             f"out for that token grid; leave {flag} out")


def config_from_checkpoint(ckpt):
    if "model_cfg" not in ckpt:
        raise CheckpointError("checkpoint has no 'model_cfg': it was not written by this project's scripts "
                              "(for published VideoMAE weights use weights.load_videomae_weights)")
    return ModelConfig(**ckpt["model_cfg"])


def model_config_dict(cfg):
    return asdict(cfg)


def attention_weights(q, k):
    """softmax(q k^T / sqrt(hs)): q (B, nh, N_q, hs), k (B, nh, N, hs) -> (B, nh, N_q, N)."""
    return (q * q.shape[-1] ** -0.5 @ k.transpose(-2, -1)).softmax(dim=-1)  # hs = 64: the scale 1/8 is exact


# NOTE: a chunk's weights stay under glibc's mmap threshold (at most 32 MiB), above which every step would page-fault
# fresh memory in again; smaller blocks also stay in cache (docs/design.md "Plumbing", benchmarks/README.md).
ATTN_CHUNK_BYTES = 2 ** 23


def chunked_attention(q, k, v):
    """softmax(q k^T / sqrt(hs)) v, a chunk of queries at a time: q, k, v (B, nh, N, hs) -> (B, nh, N, hs)."""
    B, nh, N, _ = q.shape
    n = max(1, ATTN_CHUNK_BYTES // (B * nh * N * q.element_size()))  # queries whose weights (B, nh, n, N) fit
    return torch.cat([attention_weights(qc, k) @ v for qc in q.split(n, dim=2)], dim=2)  # softmax is per query


def setup_distributed(device=None):
    """torchrun sets RANK: join its process group (NCCL on GPUs, Gloo on CPUs) -> (rank, world, device). A plain
    `python X.py` is rank 0 of 1. device: 'cuda' | 'cpu' | None (a GPU when there is one)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if "RANK" not in os.environ:
        return 0, 1, device
    # NOTE: torchrun's store outlives a restart with the addresses of dead ranks, and each node counts its own restarts
    # (docs/pretraining.md "Faults"): rank 0 of each attempt serves a fresh store, found through the job's store
    store, rank, world = next(dist.rendezvous("env://"))
    if rank == 0:
        host = socket.getfqdn()
        fresh = dist.TCPStore(host, 0, world, is_master=True, wait_for_workers=False)
        store.set("tgm/store", f"{host} {fresh.port}")
    while rank != 0:
        host, port = store.get("tgm/store").decode().split()
        try:
            fresh = dist.TCPStore(host, int(port), world, is_master=False, timeout=timedelta(seconds=10))
            break
        except (RuntimeError, OSError):                        # a dead attempt's address: wait for rank 0's
            time.sleep(1)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=fresh, rank=rank, world_size=world)
    if device.type == "cuda":  # LOCAL_RANK: torchrun's; SLURM_LOCALID: srun's
        local = os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID"))
        if local is None:
            raise SystemExit("set LOCAL_RANK to this process's GPU on its node (torchrun and srun set it for you)")
        device = torch.device("cuda", int(local))
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def resume_path(resume, output_dir, device):
    """--resume auto | PATH | None -> the checkpoint to load, or None: 'auto' is output_dir/ckpt.pt where it exists.
    After a torchrun restart (--max-restarts) always output_dir/ckpt.pt, the newest: a typed path would redo steps.
    Every rank decides alike: a restart anywhere in the job (a node's count can stay 0 under c10d) counts for all."""
    last = os.path.join(output_dir, "ckpt.pt")
    restarts = torch.tensor([int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(restarts, op=dist.ReduceOp.MAX)
    if restarts.item() > 0 and os.path.isfile(last):
        print0(f"torchrun restart {restarts.item()}: resuming from the run's last checkpoint, {last}")
        return last
    return (last if os.path.isfile(last) else None) if resume == "auto" else resume


def print0(*args, **kwargs):
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs, flush=True)


def log(path, record, write=print):
    """Rank 0: record as one `|`-separated line (write: tqdm.write above a progress bar) and as a JSON line in path."""
    if int(os.environ.get("RANK", 0)) == 0:
        write(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def autocast(device, precision):
    """--precision as a context: bf16 or fp16 autocast, nothing for fp32. bf16 on a GPU without it runs fp32."""
    if precision == "fp32" or (precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported()):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
