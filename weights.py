"""VideoMAE weights in and out, not a stage of the paper (docs/design.md "Layout"). In: the official repo's checkpoints
(.pth) and Hugging Face's (a save_pretrained folder, .bin or .safetensors), renamed to ours (= the official repo's).
Out: a checkpoint of ours as a folder that transformers' from_pretrained loads (evaluate.py --export)."""
import json
import os
import shutil

import torch

import model as M

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
HF_BLOCK_NAMES = (                                             # inside one Block (encoder or decoder): ours -> theirs
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


# -----------------------------------------------------------------------------
# In: published VideoMAE weights

def videomae_state_dict(path):
    """Published VideoMAE weights (.pth, .bin, .safetensors or a save_pretrained folder) -> a state dict in our names:
    Hugging Face's q, k, v Linears fused into one qkv matrix plus q_bias and v_bias, as the official ones store them."""
    path = os.fspath(path)
    if os.path.isdir(path):
        files = [os.path.join(path, n) for n in ("model.safetensors", "pytorch_model.bin")]
        files = [f for f in files if os.path.isfile(f)]
        if not files:
            raise M.CheckpointError(f"{path}: folder has no model.safetensors or pytorch_model.bin")
        path = files[0]
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        sd = load_file(path)
    else:
        sd = M.load_checkpoint(path)
        # the official repo saves {'model': ...} or {'module': ...}
        sd = next((sd[k] for k in ("model", "module", "state_dict") if isinstance(sd.get(k), dict)), sd)
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
    """Published VideoMAE weights into a VideoMAE, VideoClassifier or Encoder -> (missing, unexpected) keys, as
    load_state_dict; a tensor of another shape (a head for other classes) is unexpected."""
    sd = videomae_state_dict(path)
    if isinstance(module, M.Encoder):
        sd = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    own = module.state_dict()
    skipped = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    sd = {k: v for k, v in sd.items() if k not in skipped}
    missing, unexpected = module.load_state_dict(sd, strict=False)
    return list(missing), list(unexpected) + skipped


# -----------------------------------------------------------------------------
# Out: a transformers VideoMAE folder (evaluate.py --export)

def hf_state_dict(sd):
    """A VideoMAE or VideoClassifier state dict -> transformers' (the inverse of videomae_state_dict): the fused
    (3D, D) qkv matrix cut into query, key, value Linears; `projector.*` (Sec. 3.4) has no slot there: left out."""
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
    """config.json (every field the forward reads) of a VideoMAEForPreTraining, or a classifier with num_classes."""
    out = dict(
        model_type="videomae", image_size=cfg.img_size, patch_size=cfg.patch_size, num_channels=cfg.in_chans,
        num_frames=cfg.num_frames, tubelet_size=cfg.tubelet_size, hidden_size=cfg.embed_dim,
        num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
        intermediate_size=int(cfg.embed_dim * cfg.mlp_ratio),
        decoder_hidden_size=cfg.decoder_embed_dim, decoder_num_hidden_layers=cfg.decoder_depth,
        decoder_num_attention_heads=cfg.decoder_num_heads,
        decoder_intermediate_size=int(cfg.decoder_embed_dim * cfg.mlp_ratio),
        hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, qv_bias=True,
        layer_norm_eps=cfg.norm_eps,                           # transformers' default is 1e-12; VideoMAE's is 1e-6
        norm_pix_loss=cfg.norm_pix_loss, use_mean_pooling=num_classes is not None)
    if num_classes is None:
        return dict(out, architectures=["VideoMAEForPreTraining"])
    names = class_names or [f"LABEL_{i}" for i in range(num_classes)]  # transformers' own names when the run had none
    return dict(out, architectures=["VideoMAEForVideoClassification"],
                id2label={str(i): n for i, n in enumerate(names)}, label2id={n: i for i, n in enumerate(names)})


def export_info(ckpt, source=None):
    """What transformers has no slot for, read from a checkpoint and its run's saved args -> a dict for tgm.json."""
    args = ckpt.get("args") or {}
    finetuned = "num_classes" in ckpt
    info = dict(exported_from=source, epochs=args.get("epochs"), epoch=ckpt.get("epoch"))
    if finetuned:
        info.update(mode=ckpt.get("mode", "finetune"), num_classes=ckpt["num_classes"],
                    class_names=args.get("class_names"), pretrained_from=args.get("checkpoint"))
    else:
        # what trained the head of Sec. 3.4: "contrastive", "probe" (Fig. 4's online probe) or None (untrained)
        head = ckpt.get("head", "contrastive" if args.get("contrastive") else None)
        info.update(mask=args.get("mask"), ratio=args.get("ratio"), tgm_order=args.get("tgm_order"),
                    captions=args.get("captions"), contrastive_head=head, clip_model=args.get("clip_model"),
                    clip_pretrained=args.get("clip_pretrained"), step=ckpt.get("step"))
    arch = "VideoMAEForVideoClassification" if finetuned else "VideoMAEForPreTraining"
    return dict(info, architecture=arch, model_cfg=ckpt["model_cfg"], args=args)


def model_card(info):
    """The README.md of an exported folder: what it holds, how it was trained, how to load it, where it differs."""
    cfg, arch = M.ModelConfig(**info["model_cfg"]), info["architecture"]
    finetuned = arch == "VideoMAEForVideoClassification"
    rows = [f"| {k} | {'-' if v is None else v} |" for k, v in info.items()
            if k not in ("architecture", "model_cfg", "args")]     # the run's fields, as export_info lists them
    T, H, N = cfg.num_frames, cfg.img_size, cfg.num_patches
    use = ("print(model.config.id2label[model(video).logits.argmax(-1).item()])" if finetuned else
           f"mask = torch.randperm({N})[None] < {int(0.9 * N)}  # (B, N) bool, True = masked: a random 0.9\n"
           "loss = model(video, bool_masked_pos=mask).loss")
    norms = "fc_norm" if finetuned else "decoder.norm"
    return "\n".join([
        "---", "library_name: transformers", "tags: [video, videomae, masked-autoencoder, tgm]",
        *(["pipeline_tag: video-classification"] if finetuned else []), "---", "",
        f"# TGM VideoMAE ({'finetuned' if finetuned else 'pretrained'}), as transformers' `{arch}`", "",
        "Weights of a Text-Guided Video Masked Autoencoder run (TGM, ECCV 2024), exported from this project's",
        f"checkpoint with `evaluate.py --export`. Input: {T} frames of {H}x{H} pixels, ImageNet-normalised, cut",
        f"into {cfg.tubelet_size}x{cfg.patch_size}x{cfg.patch_size} tubelets (N = {N} tokens); encoder width "
        f"{cfg.embed_dim}, {cfg.depth} blocks, {cfg.num_heads} heads.", "",
        "## How it was trained", "", "| | |", "|---|---|", *rows, "",
        f"`{EXPORT_INFO}` holds the same, the model config and the run's full arguments.", "",
        "## Use", "", "```python", "import torch", f"from transformers import {arch}",
        f'model = {arch}.from_pretrained("path/to/this/folder").eval()',
        f"video = torch.randn(1, {T}, 3, {H}, {H})  # (B, T, C, H, W), ImageNet-normalised", use, "```", "",
        "## Where it differs from the trained model", "",
        f"- transformers builds `{norms}` with LayerNorm eps 1e-5 whatever `layer_norm_eps` says; the model was",
        f"  trained with {cfg.norm_eps}, which the other LayerNorms get. Outputs differ by a few 1e-6 relative",
        f"  (features of unit variance); `model.{norms}.eps = {cfg.norm_eps}` makes them equal to float rounding.",
        *([] if finetuned else [
            "- The video-text head of Sec. 3.4 (`projector.*`, trained as `contrastive_head` says) has no",
            "  slot in transformers: it is not in this folder (it stays in the checkpoint)."]), ""])


def export_videomae(ckpt, out_dir, class_names=None, source=None):
    """A pretrain.py or finetune.py (--mode finetune) checkpoint dict -> out_dir, a new folder, written whole, that
    transformers' from_pretrained loads equal to ours to float precision: model.safetensors, config.json, a README.md
    model card and tgm.json. class_names: label i's name at i (id2label); source: its path, for the card."""
    from safetensors.torch import save                         # transformers' own format; needed only here
    out_dir = os.path.abspath(out_dir)
    name = source or "the checkpoint"
    if os.path.exists(out_dir):
        raise FileExistsError(f"{out_dir} already exists: the export writes a new folder and never overwrites one; "
                              "remove it or name another")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or "model_cfg" not in ckpt:
        raise M.CheckpointError(f"{name} is not a pretrain.py or finetune.py checkpoint of this project (no 'model' "
                                "and 'model_cfg'); published VideoMAE weights load with load_videomae_weights instead")
    if ckpt.get("mode") == "linear":
        raise M.CheckpointError(f"{name} is a linear probe (finetune.py --mode linear): transformers' classifier "
                                "cannot hold it (the probe pools after the encoder's final LayerNorm and normalises "
                                "with a BatchNorm); export the pretraining checkpoint it probes, or a --mode finetune "
                                "run")
    cfg, num_classes = M.config_from_checkpoint(ckpt), ckpt.get("num_classes")
    if class_names is not None and len(class_names) != num_classes:
        raise M.CheckpointError(f"{len(class_names)} class names for the {num_classes} classes of {name}: wrong file?")
    # the weights must be exactly those of the model its config builds, or the folder would load incomplete
    with torch.device("meta"):                                 # names and shapes only: no memory, no time
        want = (M.VideoClassifier(cfg, num_classes) if num_classes else M.VideoMAE(cfg)).state_dict()
    sd = ckpt["model"]
    if sorted(want) != sorted(sd) or any(tuple(want[k].shape) != tuple(sd[k].shape) for k in want):
        raise M.CheckpointError(f"{name}: its weights are not those of the model its 'model_cfg' describes")
    info = export_info(ckpt, source)
    files = {"model.safetensors": save(hf_state_dict(sd), metadata={"format": "pt"}),
             "config.json": json.dumps(hf_config(cfg, class_names, num_classes), indent=2).encode(),
             EXPORT_INFO: json.dumps(info, indent=2, default=str).encode(),
             "README.md": model_card(info).encode()}
    tmp = f"{out_dir}.tmp{os.getpid()}"
    try:
        os.makedirs(tmp)
        for file, blob in files.items():
            M.write_whole(os.path.join(tmp, file), lambda f: f.write(blob))  # fsynced: the rename publishes whole files
        os.rename(tmp, out_dir)                                # atomic: the folder appears complete, or not at all
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return out_dir
