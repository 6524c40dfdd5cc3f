"""
Sec. 3.1 and 3.4: the video masked autoencoder, the video-text contrastive head, and the classifiers.

The shared module: every stage imports it; it reads no video or text and needs only torch, so it can be copied alone.
  Sec. 3.1  patchify, the normalised-pixel target, VideoMAE's [38] encoder (visible tokens only) and light decoder:
            `VideoMAE.forward(video, mask) -> (loss, pred, latent)`
  Sec. 3.4  mean pooling + prediction head with global BatchNorm, the symmetric InfoNCE of Eq. (4): `info_nce(v, t)`
  Sec. 4.2  the finetuning classifier and the linear-probe classifier (MAE's protocol)
  plumbing  parameter groups, atomic checkpoints, VideoMAE weights in and out, distributed set-up, print0, autocast
The model is VideoMAE exactly: with the same weights it gives the loss of `transformers.VideoMAEForPreTraining`
(tests/test_model.py checks this to 1e-5).

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

Try it:  python -m pytest -q tests/test_model.py
"""
import contextlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass

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
        """The token grid (T', h, w)."""
        return (self.num_frames // self.tubelet_size, self.img_size // self.patch_size, self.img_size // self.patch_size)

    @property
    def num_patches(self):
        """N = T' * h * w."""
        return math.prod(self.grid)


# VideoMAE's sizes (modeling_pretrain.py); vit_tiny is timm's ViT-Ti, used by the tests and the demo.
MODEL_SIZES = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3, decoder_embed_dim=96, decoder_num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6, decoder_embed_dim=192, decoder_num_heads=3),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=384, decoder_num_heads=6),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16, decoder_embed_dim=512, decoder_num_heads=8),
}


def make_config(name="vit_base", **overrides):
    """A ModelConfig from a named size plus any field overrides (e.g. img_size=112, num_frames=8)."""
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


def unpatchify(x, tubelet, patch, grid):
    """The inverse of patchify. x: (B, N, t*p*p*C), grid (T', h, w) -> (B, C, T, H, W)."""
    B = x.shape[0]
    t, p = tubelet, patch
    tp, h, w = grid
    x = x.reshape(B, tp, h, w, t, p, p, -1)                    # (B, T', h, w, t, p, p, C)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)                     # (B, C, T', t, h, p, w, p)
    return x.reshape(B, -1, tp * t, h * p, w * p)


def denormalize(video):
    """Undo the ImageNet normalisation of clips: (..., C, T, H, W) -> pixels in [0, 1] (unclamped), float32."""
    mean = torch.tensor(IMAGENET_MEAN, device=video.device).view(-1, 1, 1, 1)  # (C, 1, 1, 1): broadcasts over T, H, W
    std = torch.tensor(IMAGENET_STD, device=video.device).view(-1, 1, 1, 1)
    return video.float() * std + mean


def pixel_target(video, tubelet, patch, norm_pix_loss=True):
    """What the decoder regresses, for every token. video: ImageNet-normalised (B, C, T, H, W) -> (B, N, P).
    VideoMAE's order: undo the ImageNet normalisation to [0, 1], cut into tokens, then normalise each token per
    channel over its t*p*p pixels with the unbiased std (the "norm pixel" target of MAE, Sec. 3.1)."""
    x = patchify(denormalize(video), tubelet, patch)           # (B, N, P), pixels in [0, 1]
    if not norm_pix_loss:
        return x
    B, N, P = x.shape
    C = video.shape[1]
    x = x.view(B, N, P // C, C)                                # (B, N, t*p*p, C): channel fastest
    x = (x - x.mean(dim=-2, keepdim=True)) / (x.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
    return x.view(B, N, P)


def sinusoid_table(n_position, dim):
    """The fixed 1-D sine-cosine position table of VideoMAE (Transformer-style), (1, n_position, dim).
    Built in float64 as VideoMAE's numpy code does, then cast, so it matches theirs bit for bit."""
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


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        # VideoMAE: one qkv matrix without bias, plus learned q and v biases; k has none (its bias would
        # only add a constant per query to the logits, which the softmax ignores).
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x):
        """(B, N, D) -> q, k, v, each (B, nh, N, hs)."""
        B, N, D = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)               # (B, N, 3D)
        qkv = qkv.view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]                          # each (B, nh, N, hs)

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = self.qkv_heads(x)
        if q.dtype == torch.bfloat16 and q.device.type == "cpu":
            # NOTE: torch's CPU flash kernel is slow in bf16: written out in chunks, fwd + bwd is 1.4x (decoder) to
            # 2x (encoder) faster (benchmarks/README.md). In fp32 and on GPUs the fused kernel wins.
            x = chunked_attention(q, k, v)                     # (B, nh, N, hs)
        else:
            x = F.scaled_dot_product_attention(q, k, v)        # (B, nh, N, hs); scale hs^-0.5 as VideoMAE
        x = x.transpose(1, 2).reshape(B, N, D)                 # (B, N, D)
        return self.proj(x)

    def attention_map(self, x):
        """Softmax attention weights (B, nh, N, N), for pictures (Fig. 3, row 4); not used in training."""
        q, k, _ = self.qkv_heads(x)
        return attention_weights(q, k)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
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


def take_tokens(x, ids):
    """x (B, N, K), ids (B, n) -> x's rows ids, (B, n, K)."""
    return x.gather(1, ids[..., None].expand(-1, -1, x.shape[-1]))


class PatchEmbed(nn.Module):
    """Eq. (1): V_p = P(V), a Conv3d whose kernel and stride are the tubelet (t, p, p)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.tubelet_size, self.patch_size = cfg.tubelet_size, cfg.patch_size
        k = (cfg.tubelet_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_chans, cfg.embed_dim, kernel_size=k, stride=k)

    def forward(self, video, ids=None):
        """video (B, C, T, H, W), ids (B, n) the tokens to embed (None: all N) -> (B, n, D)."""
        # NOTE: VideoMAE runs the Conv3d over all N tokens, then drops the masked ones. With stride = kernel the
        # conv is one matmul of each tubelet's pixels, so we cut tubelets and embed only those kept: 4x (ratio
        # 0.9) to 2x (0.6) less time here, and a matmul over all tokens is as fast as the conv (bench_pretrain.py).
        # The weight keeps the conv's shape (D, C, t, p, p), so checkpoints and the importer are unchanged.
        x = patchify(video, self.tubelet_size, self.patch_size)   # (B, N, P), values (t, p, p, C)
        if ids is not None:
            x = take_tokens(x, ids)                                # (B, n, P)
        w = self.proj.weight.permute(0, 2, 3, 4, 1).flatten(1)    # (D, C, t, p, p) -> (D, P) in patchify's order
        return F.linear(x, w, self.proj.bias)                      # (B, n, D)


class Encoder(nn.Module):
    """phi: patch embedding + fixed positions, then blocks over the visible tokens only (Eq. 3)."""

    def __init__(self, cfg: ModelConfig, drop_path: float = 0.0, final_norm: bool = True):
        super().__init__()
        self.cfg = cfg
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
        if mask is None:
            x = self.patch_embed(video)                        # (B, N, D)
            return x + self.pos_embed.to(x.dtype)
        ids_vis, _ = split_ids(mask)                           # (B, N_vis)
        x = self.patch_embed(video, ids_vis)                   # (B, N_vis, D): only the visible tubelets
        return x + self.pos_embed[0, ids_vis].to(x.dtype)      # each token keeps its own position

    def forward(self, video, mask=None):
        """video (B, C, T, H, W), mask (B, N) bool, True = masked (None: all tokens) -> (B, N_vis, D)."""
        x = self.tokens(video, mask)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def last_attention(self, video, mask=None):
        """Attention weights of the last block (B, nh, N_vis, N_vis), for Fig. 3's attention maps."""
        x = self.tokens(video, mask)
        for blk in self.blocks[:-1]:
            x = blk(x)
        return self.blocks[-1].attn.attention_map(self.blocks[-1].norm1(x))


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


class AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: the gradient of a sum over ranks is the sum of the ranks' gradients.
    NOTE: not torch.distributed.nn.functional.all_reduce (deprecated), whose graph node keeps the process group:
    a graph that outlives destroy_process_group() can kill the rank with SIGABRT at exit. This one keeps nothing."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the global batch, summed over all ranks; on one process
    exactly nn.BatchNorm1d. NOTE: not nn.SyncBatchNorm, which runs only on GPUs (docs/design.md "Global batch norm")."""

    def forward(self, x):
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        x = x.float()
        C = x.shape[1]
        stats = AllReduceSum.apply(torch.cat([x.sum(0), (x * x).sum(0), x.new_tensor([x.shape[0]])]))  # differentiable
        n = stats[-1]
        mean = stats[:C] / n                                   # (C,) over the global batch
        var = stats[C:2 * C] / n - mean * mean                 # biased, as BatchNorm normalises with
        with torch.no_grad():                                  # running stats keep the unbiased variance, as BatchNorm
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * n / (n - 1), self.momentum)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class ContrastiveHead(nn.Module):
    """Sec. 3.4: the prediction head on the pooled video embedding, "with global batch norm" (SimCLR)."""

    def __init__(self, dim: int, hidden: int, out: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.bn = GlobalBatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, out)

    def forward(self, x):
        return self.fc2(F.relu(self.bn(self.fc1(x))))          # (B, D) -> (B, E)


class VideoMAE(nn.Module):
    """The pretraining model: encoder, decoder, and the video-text head of Sec. 3.4. Parameter names follow the
    official VideoMAE checkpoints (`encoder.*`, `encoder_to_decoder`, `mask_token`, `decoder.*`); `projector.*`
    is ours."""

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
        # The visible tokens are not put back in place: the positions carry the order, and the masked
        # tokens go last so the predictions are the last N_mask outputs.
        x = torch.cat([x, self.mask_token.to(x.dtype).expand(B, ids_mask.shape[1], d)], dim=1)  # (B, N, D_dec)
        x = x + self.decoder_pos_embed[0, torch.cat([ids_vis, ids_mask], dim=1)].to(x.dtype)  # each its position
        return self.decoder(x, ids_mask.shape[1])

    def forward_loss(self, video, pred, mask):
        """L_MSE over the masked tokens only (Sec. 3.1). pred (B, N_mask, P); mask (B, N), True = masked."""
        with torch.no_grad():
            target = pixel_target(video, self.cfg.tubelet_size, self.cfg.patch_size, self.cfg.norm_pix_loss)
            target = take_tokens(target, split_ids(mask)[1])   # (B, N_mask, P), same order as pred
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
# Sec. 3.4, Eq. (4): symmetric InfoNCE over the global batch

def gather_with_local_grad(x):
    """All ranks' x concatenated along dim 0; this rank's slice is x itself, so its gradient is kept."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def info_nce(v, t, tau=0.07, text_ids=None, grad_sync="mean"):
    """(L_NCE(v, t) + L_NCE(t, v)) / 2 of Sec. 3.4, Eq. (4). v, t: (B, E) L2-normalised; row i is a pair.

    The negatives are all other clips (texts) of the *global* batch: both sides are gathered from every rank, so
    each rank computes the one-process value, but its graph reaches only its own clips: the ranks' gradients must
    be *summed*. grad_sync says what the caller does with them: 'mean' (DDP, FSDP's default, average them): the
    gradient is scaled by the world size so the average comes out right; 'sum' (the caller sums them): as it is.
    text_ids (B,) int, optional: row i's caption id, -1 for none. A clip without a caption takes no part, and two
    clips with the same caption are neither positive nor negative for each other: the pair leaves both denominators
    (NOTE: the paper does not say; docs/design.md "Same-caption pairs" says why).
    """
    if grad_sync not in ("mean", "sum"):
        raise ValueError(f"grad_sync must be 'mean' or 'sum', not {grad_sync!r}")
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world > 1:
        v, t = gather_with_local_grad(v), gather_with_local_grad(t)
        if text_ids is not None:
            text_ids = gather_with_local_grad(text_ids)
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
        self.cfg = cfg
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


class LinearProbe(nn.Module):
    """MAE's linear probe: BatchNorm without affine (a per-feature whitening) then Linear (std .01)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.head(self.bn(x))                           # (B, D) -> (B, K)


class ProbeClassifier(nn.Module):
    """The linear-probe classifier (MAE's protocol): the encoder, frozen (its final LayerNorm kept), mean-pooled
    features, then a LinearProbe; only the probe trains. Keep the encoder in eval mode (no drop path)."""

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


def param_groups(model, weight_decay, layer_decay=None, base_lr=None):
    """AdamW groups: no weight decay on biases, norms and mask_token (every 1-D parameter, VideoMAE's rule).
    The contrastive head (`projector.*`) has groups of its own: without --contrastive it is an online probe.

    With layer_decay (finetuning), block i of the encoder gets lr_scale = layer_decay ** (depth + 1 - layer),
    where the patch embedding is layer 0, block i is layer i + 1 and everything after the encoder is depth + 1.
    """
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
    """Linear warmup from 0, then per-step cosine decay to min_lr (VideoMAE's cosine_scheduler); pretraining and
    finetuning share it."""
    if step < warmup_steps:
        return lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


# -----------------------------------------------------------------------------
# Checkpoints: one plain dict, written atomically

class CheckpointError(RuntimeError):
    pass


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
    """torch.save, written whole (write_whole)."""
    write_whole(path, lambda f: torch.save(obj, f))


def load_checkpoint(path):
    """Load a checkpoint dict onto the CPU, with a sentence (not a traceback) when the file is unusable."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip errors, EOF, unpickling: all mean the file is not a whole checkpoint
        raise CheckpointError(
            f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "it may be truncated by an interrupted copy, or not a PyTorch checkpoint") from None


def check_shape_flags(cfg, num_frames=None, input_size=None):
    """A checkpoint's model fixes the clip's shape (its position table is laid out for its token grid): the
    --num-frames and --input-size flags may only repeat it. Anything else stops with one sentence."""
    for flag, want, have in (("--num-frames", num_frames, cfg.num_frames), ("--input-size", input_size, cfg.img_size)):
        if want is not None and want != have:
            raise SystemExit(f"{flag} {want} differs from the checkpoint's {have}: its fixed position table is laid "
                             f"out for that token grid; leave {flag} out")


def config_from_checkpoint(ckpt):
    """Rebuild the ModelConfig stored in a checkpoint written by this project."""
    if "model_cfg" not in ckpt:
        raise CheckpointError("checkpoint has no 'model_cfg': it was not written by this project's scripts "
                              "(for published VideoMAE weights use load_videomae_weights)")
    return ModelConfig(**ckpt["model_cfg"])


def model_config_dict(cfg):
    return asdict(cfg)


# -----------------------------------------------------------------------------
# VideoMAE weights in (official repo and Hugging Face) and out (transformers' VideoMAE, evaluate.py --export)

# Our (= the official repo's) key prefix -> transformers' prefix, read one way to export and the other to import; the
# fused qkv matrix is cut apart in hf_state_dict and joined in videomae_state_dict. Names not listed
# (encoder_to_decoder, mask_token, decoder.norm, decoder.head, fc_norm) are the same in both.
HF_PREFIXES = (
    ("encoder.patch_embed.proj.", "videomae.embeddings.patch_embeddings.projection."),
    ("encoder.blocks.", "videomae.encoder.layer."),
    ("encoder.norm.", "videomae.layernorm."),                  # pretraining only: the classifier has fc_norm instead
    ("decoder.blocks.", "decoder.decoder_layers."),
    ("head.", "classifier."),                                  # the finetuning classifier's Linear
)
# Inside one Block (encoder or decoder): our name -> transformers'.
HF_BLOCK_NAMES = (
    ("norm1.", "layernorm_before."), ("attn.q_bias", "attention.attention.query.bias"),
    ("attn.v_bias", "attention.attention.value.bias"), ("attn.proj.", "attention.output.dense."),
    ("norm2.", "layernorm_after."), ("mlp.fc1.", "intermediate.dense."), ("mlp.fc2.", "output.dense."),
)
EXPORT_INFO = "tgm.json"                                       # what transformers has no slot for (export_videomae)


def _rename_key(key, to_hf):
    """One key from our names to transformers' (to_hf) or back, by the tables above (the qkv matrix aside)."""
    flip = (lambda pairs: pairs) if to_hf else (lambda pairs: [(b, a) for a, b in pairs])
    for src, dst in flip(HF_PREFIXES):
        if key.startswith(src):
            key = dst + key[len(src):]
            break
    blocks = ("videomae.encoder.layer.", "decoder.decoder_layers.") if to_hf else ("encoder.blocks.", "decoder.blocks.")
    if key.startswith(blocks):
        for src, dst in flip(HF_BLOCK_NAMES):
            key = key.replace(src, dst)
    return key


def _read_state_dict(path):
    """A state dict from a .pth/.bin/.safetensors file or a save_pretrained folder."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in ("model.safetensors", "pytorch_model.bin"):
            if os.path.isfile(os.path.join(path, name)):
                return _read_state_dict(os.path.join(path, name))
        raise CheckpointError(f"{path}: folder has no model.safetensors or pytorch_model.bin")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    sd = load_checkpoint(path)
    for k in ("model", "module", "state_dict"):                # the official repo saves {'model': ...} or {'module': ...}
        if isinstance(sd.get(k), dict):
            return sd[k]
    return sd


def videomae_state_dict(path):
    """Published VideoMAE weights as a state dict in this project's (= the official repo's) names: Hugging Face's
    q, k, v Linears fused into one qkv matrix plus q_bias and v_bias, as the official checkpoints store them."""
    sd = _read_state_dict(path)
    out = {}
    for k, v in sd.items():
        k = _rename_key(k, to_hf=False)
        if k.startswith(("patch_embed.", "blocks.", "norm.")):  # official finetuned checkpoints: no 'encoder.' prefix
            k = "encoder." + k
        out[k] = v
    for k in [k for k in out if k.endswith("attention.attention.query.weight")]:
        stem = k[: -len("attention.attention.query.weight")]
        q, kk, v = (out.pop(f"{stem}attention.attention.{n}.weight") for n in ("query", "key", "value"))
        out[f"{stem}attn.qkv.weight"] = torch.cat([q, kk, v])
        for n in ("q", "v"):                                   # the hub's q_bias (query.bias was renamed above)
            if f"{stem}attention.attention.{n}_bias" in out:
                out[f"{stem}attn.{n}_bias"] = out.pop(f"{stem}attention.attention.{n}_bias")
    return out


def load_videomae_weights(module, path):
    """Load official or Hugging Face VideoMAE weights into a VideoMAE, VideoClassifier or Encoder -> (missing,
    unexpected) keys, as load_state_dict; a tensor of another shape (a head for other classes) is unexpected."""
    sd = videomae_state_dict(path)
    if isinstance(module, Encoder):
        sd = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    own = module.state_dict()
    skipped = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    sd = {k: v for k, v in sd.items() if k not in skipped}
    missing, unexpected = module.load_state_dict(sd, strict=False)
    return list(missing), list(unexpected) + skipped


def hf_state_dict(sd):
    """A VideoMAE or VideoClassifier state dict -> transformers' names and layout (the inverse of videomae_state_dict):
    the fused (3D, D) qkv matrix cut into query, key, value Linears; `projector.*` (Sec. 3.4) has no slot: left out."""
    out = {}
    for k, v in sd.items():
        if k.startswith("projector."):
            continue
        k = _rename_key(k, to_hf=True)
        if k.endswith("attn.qkv.weight"):
            stem = k[: -len("attn.qkv.weight")]
            for name, w in zip(("query", "key", "value"), v.chunk(3)):  # (3D, D) -> 3 x (D, D)
                out[f"{stem}attention.attention.{name}.weight"] = w.clone()  # its own storage, as safetensors needs
        else:
            out[k] = v.clone()
    return out


def hf_config(cfg, class_names=None, num_classes=None):
    """transformers' VideoMAEConfig for our ModelConfig, as the dict of config.json: every field its forward reads.
    num_classes None: VideoMAEForPreTraining; else VideoMAEForVideoClassification, labelled by class_names if given."""
    out = dict(
        model_type="videomae", image_size=cfg.img_size, patch_size=cfg.patch_size, num_channels=cfg.in_chans,
        num_frames=cfg.num_frames, tubelet_size=cfg.tubelet_size, hidden_size=cfg.embed_dim,
        num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads, intermediate_size=int(cfg.embed_dim * cfg.mlp_ratio),
        decoder_hidden_size=cfg.decoder_embed_dim, decoder_num_hidden_layers=cfg.decoder_depth,
        decoder_num_attention_heads=cfg.decoder_num_heads,
        decoder_intermediate_size=int(cfg.decoder_embed_dim * cfg.mlp_ratio),
        hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, qv_bias=True,
        layer_norm_eps=cfg.norm_eps,                           # transformers' default is 1e-12; VideoMAE's is 1e-6
        norm_pix_loss=cfg.norm_pix_loss, use_mean_pooling=num_classes is not None)
    if num_classes is None:
        return dict(out, architectures=["VideoMAEForPreTraining"])
    names = class_names or [f"LABEL_{i}" for i in range(num_classes)]  # transformers' own names when the run had none
    return dict(out, architectures=["VideoMAEForVideoClassification"], id2label={str(i): n for i, n in enumerate(names)},
                label2id={n: i for i, n in enumerate(names)})


def export_info(ckpt, source=None):
    """What transformers has no slot for, read from a checkpoint and its run's saved args -> a dict for tgm.json."""
    args = ckpt.get("args") or {}
    finetuned = "num_classes" in ckpt
    info = dict(exported_from=source, architecture="VideoMAEForVideoClassification" if finetuned else "VideoMAEForPreTraining",
                epoch=ckpt.get("epoch"), epochs=args.get("epochs"))
    if finetuned:
        info.update(mode=ckpt.get("mode", "finetune"), num_classes=ckpt["num_classes"], class_names=args.get("class_names"),
                    pretrained_from=args.get("checkpoint"))
    else:
        # what trained the video-text head (Sec. 3.4): "contrastive" (L_NCE, into the encoder), "probe" (Fig. 4's
        # online probe, stop-gradient) or None (untrained); its weights stay in the checkpoint
        head = ckpt.get("head", "contrastive" if args.get("contrastive") else None)
        info.update(step=ckpt.get("step"), mask=args.get("mask"), ratio=args.get("ratio"), tgm_order=args.get("tgm_order"),
                    captions=args.get("captions"), contrastive_head=head, clip_model=args.get("clip_model"),
                    clip_pretrained=args.get("clip_pretrained"))
    return dict(info, model_cfg=ckpt["model_cfg"], args=args)


def model_card(info):
    """The README.md of an exported folder: what it holds, how it was trained, how to load it, where it differs."""
    cfg, arch = ModelConfig(**info["model_cfg"]), info["architecture"]
    finetuned = arch == "VideoMAEForVideoClassification"
    trained = ["mode", "num_classes", "class_names", "pretrained_from"] if finetuned else [
        "mask", "ratio", "tgm_order", "captions", "contrastive_head", "clip_model", "clip_pretrained", "step"]
    rows = [f"| {k} | {'-' if info[k] is None else info[k]} |" for k in ["exported_from", "epochs", "epoch"] + trained]
    T, H, N = cfg.num_frames, cfg.img_size, cfg.num_patches
    use = ("print(model.config.id2label[model(video).logits.argmax(-1).item()])" if finetuned else
           f"mask = torch.randperm({N})[None] < {int(0.9 * N)}  # (B, N) bool, True = masked: a random 0.9\n"
           "loss = model(video, bool_masked_pos=mask).loss")
    norms = "fc_norm" if finetuned else "decoder.norm"
    return "\n".join([
        "---", "library_name: transformers", "tags: [video, videomae, masked-autoencoder, tgm]",
        *(["pipeline_tag: video-classification"] if finetuned else []), "---", "",
        f"# TGM VideoMAE ({'finetuned' if finetuned else 'pretrained'}), as transformers' `{arch}`", "",
        "Weights of a Text-Guided Video Masked Autoencoder run (TGM, ECCV 2024), exported from this project's checkpoint",
        f"with `evaluate.py --export`. Input: {T} frames of {H}x{H} pixels, ImageNet-normalised, cut into",
        f"{cfg.tubelet_size}x{cfg.patch_size}x{cfg.patch_size} tubelets (N = {cfg.num_patches} tokens); encoder width "
        f"{cfg.embed_dim}, {cfg.depth} blocks, {cfg.num_heads} heads.", "",
        "## How it was trained", "", "| | |", "|---|---|", *rows, "",
        f"`{EXPORT_INFO}` holds the same, the model config and the run's full arguments.", "",
        "## Use", "", "```python", "import torch", f"from transformers import {arch}",
        f'model = {arch}.from_pretrained("path/to/this/folder").eval()',
        f"video = torch.randn(1, {T}, 3, {H}, {H})  # (B, T, C, H, W), ImageNet-normalised", use, "```", "",
        "## Where it differs from the trained model", "",
        f"- transformers builds `{norms}` with LayerNorm eps 1e-5 whatever `layer_norm_eps` says; the model was trained",
        f"  with {cfg.norm_eps}, which the other LayerNorms get. Outputs differ by a few 1e-6 relative (features of unit",
        f"  variance); `model.{norms}.eps = {cfg.norm_eps}` makes them equal to float rounding.",
        *([] if finetuned else ["- The video-text head of Sec. 3.4 (`projector.*`, trained as `contrastive_head` says) has no",
                                "  slot in transformers: it is not in this folder (it stays in the checkpoint)."]), ""])


def export_videomae(ckpt, out_dir, class_names=None, source=None):
    """A pretrain.py or finetune.py (--mode finetune) checkpoint dict -> a folder out_dir that transformers'
    VideoMAEForPreTraining / VideoMAEForVideoClassification.from_pretrained loads, equal to ours to float precision:
    model.safetensors, config.json, a README.md model card and tgm.json. class_names: label i's name at i (id2label);
    source: the checkpoint's path, for the card. Returns out_dir, written whole (a temporary folder, then renamed).
    One sentence for an existing out_dir (FileExistsError) and a checkpoint not ours or a probe's (CheckpointError)."""
    from safetensors.torch import save                         # transformers' own format; needed only here
    out_dir = os.path.abspath(out_dir)
    name = source or "the checkpoint"
    if os.path.exists(out_dir):
        raise FileExistsError(f"{out_dir} already exists: the export writes a new folder and never overwrites one; "
                              "remove it or name another")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or "model_cfg" not in ckpt:
        raise CheckpointError(f"{name} is not a pretrain.py or finetune.py checkpoint of this project (no 'model' and "
                              "'model_cfg'); published VideoMAE weights are loaded with load_videomae_weights instead")
    if ckpt.get("mode") == "linear":
        raise CheckpointError(f"{name} is a linear probe (finetune.py --mode linear): transformers' classifier cannot hold "
                              "it (the probe pools after the encoder's final LayerNorm and normalises with a BatchNorm); "
                              "export the pretraining checkpoint it probes, or a --mode finetune run")
    cfg, num_classes = config_from_checkpoint(ckpt), ckpt.get("num_classes")
    if class_names is not None and len(class_names) != num_classes:
        raise CheckpointError(f"{len(class_names)} class names for the {num_classes} classes of {name}: wrong file?")
    # the weights must be exactly those of the model its config builds, or the folder would load incomplete
    with torch.device("meta"):                                 # names and shapes only: no memory, no time
        want = (VideoClassifier(cfg, num_classes) if num_classes else VideoMAE(cfg)).state_dict()
    sd = ckpt["model"]
    if sorted(want) != sorted(sd) or any(tuple(want[k].shape) != tuple(sd[k].shape) for k in want):
        raise CheckpointError(f"{name}: its weights are not those of the model its 'model_cfg' describes")
    info = export_info(ckpt, source)
    files = {"model.safetensors": save(hf_state_dict(sd), metadata={"format": "pt"}),
             "config.json": json.dumps(hf_config(cfg, class_names, num_classes), indent=2).encode(),
             EXPORT_INFO: json.dumps(info, indent=2, default=str).encode(),
             "README.md": model_card(info).encode()}
    tmp = f"{out_dir}.tmp{os.getpid()}"
    try:
        os.makedirs(tmp)
        for file, blob in files.items():
            write_whole(os.path.join(tmp, file), lambda f: f.write(blob))  # fsynced: the rename publishes whole files
        os.rename(tmp, out_dir)                                # atomic: the folder appears complete, or not at all
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return out_dir


# -----------------------------------------------------------------------------
# Plumbing the scripts share, spelled once: distributed set-up, rank-0 printing, autocast

def setup_distributed(device=None):
    """torchrun sets RANK: join its process group (NCCL on GPUs, Gloo on CPUs) -> (rank, world, device). A plain
    `python X.py` is rank 0 of 1. device: 'cuda' | 'cpu' | None (a GPU when there is one)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if "RANK" not in os.environ:
        return 0, 1, device
    # NOTE: torchrun's static rendezvous keeps one store for the whole job: after a restart (--max-restarts) a rank
    # would read the addresses its dead predecessors wrote there, so each attempt sees it under a prefix of its own
    # (docs/pretraining.md "Faults").
    store, rank, world = next(dist.rendezvous("env://"))
    store = dist.PrefixStore(f"attempt{elastic_restarts()}/", store)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank, world_size=world)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def elastic_restarts():
    """How many times torchrun restarted this group after a rank died (0: the first attempt, or no torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))


def resume_on_restart(resume):
    """--resume as typed; or, after torchrun restarted the group (--max-restarts), 'auto': the restarted run goes on
    from its last checkpoint, not from step 0."""
    if resume is None and elastic_restarts() > 0:
        print0(f"torchrun restart {elastic_restarts()}: resuming from the run's last checkpoint, as --resume auto")
        return "auto"
    return resume


@contextlib.contextmanager
def stop_together(world):
    """Start-up work that may fail on some rank (CLIP weights, a list or captions file, the maps): the ranks meet at
    the end of the block, and when any failed, every rank stops there at once (a rank that just died would leave
    the others waiting until the job's timeout). The lowest failed rank raises its own error; the others exit 1."""
    def failed_ranks(failed):                                  # one all_gather: the ranks that failed, in order
        flags = [failed] * world
        if world > 1:
            dist.all_gather_object(flags, failed)
        return [r for r, f in enumerate(flags) if f]
    try:
        yield
    except BaseException:
        if failed_ranks(True)[0] == (dist.get_rank() if world > 1 else 0):
            raise
        raise SystemExit(1) from None
    if failed_ranks(False):
        raise SystemExit(1)


def print0(*args, **kwargs):
    """print on rank 0 only, so that N ranks do not say everything N times."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs, flush=True)


def autocast(device, precision):
    """--precision as a context: bf16 or fp16 autocast, nothing for fp32. bf16 on a GPU without it runs fp32."""
    if precision == "fp32" or (precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported()):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
