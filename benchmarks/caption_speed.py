"""
Speed of caption.py (Sec. 3.2) at Kinetics-400 / SSv2 scale: how long do 3 BLIP-2 captions per video take?

    python benchmarks/caption_speed.py            # a GPU machine; random weights, nothing is downloaded

1. check: caption.py end to end on the GPU in fp16 (tiny random BLIP-2 + LM from tests/test_caption.py,
   --source blip2+llm, loader workers) on 16 demo videos.
2. BLIP-2 step: the shapes of Salesforce/blip2-opt-2.7b (ViT-g/14, Q-Former, OPT-2.7B) with random fp16
   weights, Q-Former in fp32 as from_pretrained keeps it; keyframe images/s for several --batch-size values.
   Random weights never stop early, so every caption is forced to --tokens new tokens; real captions stop
   at their EOS (a batch takes as long as its longest caption).
3. Keyframe decoding + BLIP-2 preprocessing (caption.Keyframes in DataLoader workers) on K400-like
   synthetic videos: 10 s at 30 fps, 320x568, one keyframe per 250 frames (x264's default).
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path[:0] = [os.path.join(os.path.dirname(os.path.abspath(__file__)), d) for d in ("..", "../tests")]
import caption  # noqa: E402
import data  # noqa: E402
import demo as D  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--tokens", type=int, default=20, help="new tokens per caption (BLIP-2 captions are ~10 words)")
parser.add_argument("--batch-sizes", default="16,32,64", help="videos per BLIP-2 call (x 3 keyframes)")
parser.add_argument("--workers", default="2,4,8,16", help="loader workers to time keyframe decoding with")
parser.add_argument("--videos", type=int, default=480, help="videos decoded per worker setting (8 distinct files, repeated)")
parser.add_argument("--only-decode", action="store_true", help="run part 3 alone")
args = parser.parse_args()
assert torch.cuda.is_available(), "run this on a GPU machine"
dev = torch.device("cuda")
print(f"{torch.cuda.get_device_name()} | torch {torch.__version__}")

tmp = tempfile.mkdtemp()
from tokenizers import Tokenizer, models  # noqa: E402
from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor,  # noqa: E402
                          PreTrainedTokenizerFast)

V = 50304  # blip2-opt-2.7b's padded OPT vocabulary; <image> is 50265
tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({f"w{i}": i for i in range(V)}, unk_token="w3")),
                              bos_token="w2", eos_token="w2", pad_token="w1")
processor = Blip2Processor(BlipImageProcessor(size={"height": 224, "width": 224}), tok, num_query_tokens=32)


def end_to_end_check():
    """1. caption.py end to end, fp16 on the GPU, tiny random models."""
    from test_caption import make_tiny_blip2, make_tiny_llm
    demo = D.demo_dataset()
    with open(demo["train"]) as f:
        listed = f.readlines()[::10][:16]
    with open(os.path.join(tmp, "list.txt"), "w") as f:
        f.writelines(listed)
    out = os.path.join(tmp, "caps.jsonl")
    res = caption.main(caption.parse_args([
        "--data", os.path.join(tmp, "list.txt"), "--root", demo["root"], "--class-names", demo["class_names"], "--out", out,
        "--captioner", make_tiny_blip2(os.path.join(tmp, "blip2")), "--llm", make_tiny_llm(os.path.join(tmp, "llm")),
        "--source", "blip2+llm", "--batch-size", "5", "--num-workers", "4", "--max-new-tokens", "4", "--llm-max-new-tokens", "4"]))
    rows = [__import__("json").loads(line) for line in open(out)]
    assert res["captioned"] == 16 and len(rows) == 16 and all(len(r["captions"]) == 6 for r in rows), res
    print("check: fp16 end to end OK |", rows[0])
    _, tiny = caption.load_blip2(os.path.join(tmp, "blip2"), dev, torch.float16)
    print("check: from_pretrained fp16 dtypes | vision", tiny.vision_model.dtype, "qformer", tiny.qformer.dtype,
          "query_tokens", tiny.query_tokens.dtype, "lm", tiny.language_model.dtype)


# ----------------------------------------------------------------------------- 2. BLIP-2 (opt-2.7b shapes) throughput


def timed(model, batch, beams, reps=2):
    pixels = torch.randn(batch * 3, 3, 224, 224)
    caption.blip2_captions(processor, model, pixels, torch.float16, args.tokens, beams)  # warm-up
    torch.cuda.synchronize()
    t = time.time()
    for _ in range(reps):
        caps = caption.blip2_captions(processor, model, pixels, torch.float16, args.tokens, beams)
    torch.cuda.synchronize()
    dt = (time.time() - t) / reps
    assert len(caps) == batch * 3
    print(f"BLIP-2 | {batch:3d} videos x 3 keyframes, {args.tokens} tokens, beams {beams}: {dt:.2f} s/batch, "
          f"{batch * 3 / dt:6.1f} images/s, {batch / dt:5.1f} videos/s -> K400 240K videos: {240e3 / (batch / dt) / 3600:.1f} h, "
          f"SSv2 169K: {169e3 / (batch / dt) / 3600:.1f} h | peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def blip2_speed():
    """2. BLIP-2 with blip2-opt-2.7b's shapes, random fp16 weights."""
    cfg = Blip2Config(vision_config={}, qformer_config={},  # defaults: ViT-g/14 (1408 wide, 39 blocks), Q-Former base
                      text_config=dict(model_type="opt", vocab_size=V, hidden_size=2560, ffn_dim=10240, num_hidden_layers=32,
                                       num_attention_heads=32, word_embed_proj_dim=2560, bos_token_id=2, eos_token_id=2, pad_token_id=1),
                      num_query_tokens=32, image_token_index=50265)
    t0 = time.time()
    with torch.device(dev):
        model = Blip2ForConditionalGeneration._from_config(cfg, dtype=torch.float16).eval()
    model.qformer.float()  # as from_pretrained(dtype=fp16) leaves it (part 1 prints the tiny model's dtypes)
    model.query_tokens.data = model.query_tokens.data.float()
    model.language_model.generation_config.min_new_tokens = args.tokens  # random weights: no early EOS
    print(f"blip2-opt-2.7b shapes: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params, built in {time.time() - t0:.0f} s")
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        timed(model, b, 1)
    timed(model, 32, 5, reps=1)
    del model
    torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- 3. keyframe decoding in loader workers


def decode_speed():
    """3. caption.Keyframes (PyAV decode of 3 keyframes + BLIP-2 resize/normalise) on K400-like videos."""
    H, W, T = 320, 568, 300
    vids = os.path.join(tmp, "k400like")
    os.makedirs(vids)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W]
    t0 = time.time()
    for v in range(8):
        base = ((xx[..., None] * [1, 2, 3] + yy[..., None] * [3, 1, 2] + 40 * v) % 256).astype(np.uint8)
        frames = np.repeat(base[None], T, 0)
        for t in range(T):  # a moving block and camera-noise-like texture, so P-frames carry real residuals
            frames[t, 100:180, (t * 2) % (W - 80):(t * 2) % (W - 80) + 80] = (200, 50, 50)
        frames = np.clip(frames.astype(np.int16) + rng.integers(-6, 7, frames.shape, dtype=np.int16), 0, 255).astype(np.uint8)
        D.write_video(os.path.join(vids, f"{v}.mp4"), frames, fps=30, gop=250)
    print(f"made 8 K400-like videos ({H}x{W}, {T} frames, gop 250) in {time.time() - t0:.0f} s, "
          f"{os.path.getsize(os.path.join(vids, '0.mp4')) / 1e6:.1f} MB each")
    # one process: where the time goes
    paths = [os.path.join(vids, f"{v}.mp4") for v in range(8)] * 2
    t = time.time()
    clips = [data.read_clip(p, lambda info: caption.keyframe_indices(info.num_frames, 3))[0] for p in paths]
    t_dec = (time.time() - t) / len(paths)
    t = time.time()
    for c in clips:
        processor.image_processor(list(c), return_tensors="pt")
    t_pre = (time.time() - t) / len(paths)
    print(f"keyframes | one process: decode {t_dec * 1e3:.0f} ms + preprocess {t_pre * 1e3:.0f} ms per video")
    items = [(f"{v % 8}.mp4", 0) for v in range(args.videos)]
    ds = caption.Keyframes(items, vids, 3, processor.image_processor)
    for w in [int(x) for x in args.workers.split(",")]:
        loader = DataLoader(ds, batch_size=16, num_workers=w, collate_fn=list)
        t = time.time()
        n = sum(len([s for s in b if s["error"] is None]) for b in loader)
        print(f"keyframes | {w:2d} workers: {n / (time.time() - t):6.1f} videos/s decoded + preprocessed ({n} videos)")


if not args.only_decode:
    end_to_end_check()
    blip2_speed()
decode_speed()
