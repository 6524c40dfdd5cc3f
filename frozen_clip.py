"""Sec. 3.3, 3.4: the frozen CLIP (open_clip ViT-B-32-quickgelu, the paper's ViT-B/32) of the text-guided mask and of
the text targets, loaded with its weights checked up front, and the caption embeddings. Shared by the stages and the
demo, which must not import a stage (docs/design.md "Layout"). Tests: python -m pytest -q tests/test_masking.py"""
import contextlib
import logging
import os
import socket

import open_clip
import torch

from model import print0


class ClipWeightsError(RuntimeError):
    """CLIP weights that cannot be had: the message says what to pass instead."""


def _cached_or_reachable(name, tag, cache_dir):
    """A cached weights file, or `tag` if huggingface.co answers; else ClipWeightsError, not a minute of retries."""
    import huggingface_hub
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
    cfg = open_clip.get_pretrained_cfg(name, tag)
    repo, filename = os.path.split(cfg.get("hf_hub", ""))
    for fname in ([filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]):
        path = huggingface_hub.try_to_load_from_cache(repo, fname, cache_dir=cache_dir) if repo else None
        if isinstance(path, str):
            return path
    offline = huggingface_hub.constants.HF_HUB_OFFLINE
    proxied = any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
    if not offline and not proxied:  # behind a proxy a direct connection proves nothing: let the hub try
        try:
            socket.create_connection(("huggingface.co", 443), timeout=3).close()
        except OSError:
            offline = True
    if offline:
        raise ClipWeightsError(f"CLIP weights '{tag}' for {name} are not cached and huggingface.co cannot be reached; "
                               f"pass a local weights file (--clip-pretrained FILE) or none (random, to test code)")
    return tag


def register_config(name):
    """A model name, or the path of an open_clip config (.json) -> the name open_clip knows it by (the file's stem)."""
    if name.endswith(".json") and os.path.isfile(name):
        open_clip.add_model_config(name)  # registers the config under the file's stem
        return os.path.splitext(os.path.basename(name))[0]
    return name


@contextlib.contextmanager
def random_weights_meant():
    """open_clip's warning (every rank) on a CLIP without weights, held back where that is what was asked for."""
    level = logging.root.manager.disable
    logging.disable(max(level, logging.WARNING))
    try:
        yield
    finally:
        logging.disable(level)


def clip_weights(name, pretrained, cache_dir=None):
    """-> None ('none': random), a weights file, or an open_clip tag cached or reachable; else ClipWeightsError."""
    name = register_config(name)
    if pretrained == "none":
        return None
    if os.path.isfile(pretrained):
        return pretrained
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not cfg:
        raise ClipWeightsError(
            f"--clip-pretrained {pretrained!r} is neither a file nor a weights tag of {name} "
            f"({', '.join(open_clip.list_pretrained_tags_by_model(name))}); pass one of those, a file, or none")
    if cfg.get("quick_gelu") and not open_clip.get_model_config(name).get("quick_gelu"):
        raise ClipWeightsError(f"the {pretrained!r} weights need QuickGELU: use --clip-model {name}-quickgelu "
                               f"(open_clip's {name} builds GELU and only warns)")
    return _cached_or_reachable(name, pretrained, cache_dir)


def load_clip(name="ViT-B-32-quickgelu", pretrained="openai", device="cpu", cache_dir=None):
    """-> (clip, tokenizer), frozen. pretrained: a tag, a weights file or 'none'; name: a model or a config .json."""
    source = clip_weights(name, pretrained, cache_dir)
    name = register_config(name)
    if source is None:
        print0(f"CLIP {name} has random weights (--clip-pretrained none): text-guided masks carry no meaning")
    with random_weights_meant() if source is None else contextlib.nullcontext():
        clip = open_clip.create_model(name, pretrained=source, device=device, cache_dir=cache_dir)
    clip.eval().requires_grad_(False)  # frozen: the masks and the text targets never train CLIP (Sec. 3.3, 3.4)
    return clip, open_clip.get_tokenizer(name)


def load_clip_or_exit(prog, name, pretrained, device):
    """load_clip for a script: one sentence, "prog: ...", when the weights cannot be had (every rank loads its own)."""
    try:
        return load_clip(name, pretrained, device)
    except ClipWeightsError as e:
        raise SystemExit(f"{prog}: {e}")


def encode_text(clip, tokens):
    """CLIP's encode_text up to the batch's last [EOS], which never attends to the padding after it: ~5x less work."""
    if not (isinstance(clip, open_clip.CLIP) and clip.text_pool_type == "argmax" and clip.attn_mask is not None):
        return clip.encode_text(tokens)
    L = int(tokens.argmax(dim=-1).max()) + 1           # [EOS] has the highest id, as text_global_pool assumes
    tokens = tokens[:, :L]
    cast = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens).to(cast) + clip.positional_embedding[:L].to(cast)  # (n, L, width)
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:L, :L]))
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # (n, width): the [EOS] tokens
    return clip.text_projection(x) if isinstance(clip.text_projection, torch.nn.Linear) else x @ clip.text_projection


class TextEmbedder:
    """captions list[str] -> (n, E) L2-normalised text embeddings (Sec. 3.3), each computed once (CPU cache)."""

    def __init__(self, clip, tokenizer):
        self.clip, self.tokenizer, self.cache = clip, tokenizer, {}

    @torch.no_grad()
    def __call__(self, captions):
        device = next(self.clip.parameters()).device
        new = [c for c in dict.fromkeys(captions) if c not in self.cache]  # distinct and not yet embedded
        if new:
            emb = encode_text(self.clip, self.tokenizer(new).to(device)).float()  # (n_new, E)
            self.cache.update(zip(new, torch.nn.functional.normalize(emb, dim=-1).cpu()))
        return torch.stack([self.cache[c] for c in captions]).to(device)  # (n, E)
