"""
Sec. 3.2 (Tables 5c, 6): captions for every pretraining video, written once, offline. "For each pretraining video, we
uniformly sample 3 keyframes and inference a caption per frame" with BLIP-2 (--frames 1: the centre frame, Table 5c).
Table 6b's other sources: the class name ("Oracle"), "vision-free" captions per class from a local causal LM, one per
Table 6a prompt ("GPT3.5"), or both lists joined ("BLIP + GPT3.5"). Output: JSONL (docs/captions.md), resumable.

    python caption.py --source oracle                     # the built-in demo's class names as captions, one CPU process
    python caption.py --data k400/train.txt --root k400/ --out k400_captions.jsonl    # BLIP-2 on one GPU
"""
import argparse
import fcntl
import json
import os
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import data

# -----------------------------------------------------------------------------
# Flags. Defaults are the paper's (Sec. 3.2, Tables 5c and 6).

# Table 6a: the prompts given to the language model, "inspired by CuPL"; {} is the class name
LLM_PROMPTS = ("Describe the action {}.", "What does a person {} look like?", "What does the act of {} look like?")


def get_parser():
    parser = argparse.ArgumentParser(description="Captions per video for TGM (Sec. 3.2, Table 6)",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    # data
    add("--data", help="list file 'path label' per line (VideoMAE's format); none: the built-in demo's train list")
    add("--root", default="", help="folder prefixed to every path of the list (the output keeps the list's paths)")
    add("--class-names", help="one class name per line, line i = label i; needed by --source oracle/llm")
    add("--out", default="captions.jsonl", help="captions JSONL, appended and resumed (failures: "
                                                "<stem>.failed.jsonl); one --out per --shard")
    add("--shard", default="0/1", help="i/n: every n-th video of the list from the i-th (0-based): one GPU or machine")
    add("--limit", type=int, help="caption at most this many new videos in this run (a trial; rerun to go on)")
    add("--num-workers", type=int, default=min(8, os.cpu_count() or 1), help="processes decoding keyframes; 0: none")
    # captions
    add("--source", choices=("blip2", "oracle", "llm", "blip2+llm"), default="blip2",
        help="Table 6b: oracle = class names, llm = vision-free, blip2+llm = both lists joined; paper: blip2")
    add("--frames", type=int, default=3, help="uniformly spaced keyframes per video; paper: 3 (Table 5c; 1: centre)")
    add("--captioner", default="Salesforce/blip2-opt-2.7b", help="BLIP-2 hub id or local folder; paper: BLIP-2 [25]")
    add("--max-new-tokens", type=int, default=30, help="caption length limit in tokens; paper: not stated (LAVIS: 30)")
    add("--num-beams", type=int, default=1, help="beam width; paper: not stated; 1: greedy (LAVIS: 5, slower)")
    add("--llm", help="causal LM (hub id or local folder) for --source llm/blip2+llm; paper: GPT-3.5, not local")
    add("--llm-max-new-tokens", type=int, default=60, help="length limit of each vision-free caption in tokens")
    # system
    add("--batch-size", type=int, default=32, help="videos per BLIP-2 call (x --frames images); prompts per LM call")
    add("--device", help="cuda | cpu; none: cuda when available")
    add("--precision", choices=["auto", "fp16", "bf16", "fp32"], default="auto",
        help="weights dtype; auto: fp16 on a GPU (as BLIP-2 is run), fp32 on a CPU")
    return parser


def parse_args(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    data.check_flags("caption.py", args)  # what was typed, before the demo is built
    if args.data is None:
        import demo  # the built-in demo's train list and class names; typed flags win
        args = demo.fill(parser, argv, "caption")

    def fail(msg):
        raise data.UsageError(f"caption.py: {msg}")
    try:
        i, n = (int(x) for x in args.shard.split("/"))
    except ValueError:
        fail(f"--shard {args.shard!r}: expected i/n with integers, e.g. --shard 0/8")
    if not 0 <= i < n:
        fail(f"--shard {args.shard}: need 0 <= i < n, e.g. 0/8 ... 7/8")
    args.shard_index, args.num_shards = i, n
    if args.frames < 1:
        fail(f"--frames {args.frames}: caption at least one keyframe (paper: 3)")
    if "llm" in args.source and not args.llm:
        fail(f"--source {args.source} needs a local causal language model: pass --llm ID_OR_FOLDER")
    if args.source != "blip2" and not args.class_names:
        fail(f"--source {args.source} turns labels into text: pass --class-names FILE (line i = name of label i)")
    return args


# -----------------------------------------------------------------------------
# BLIP-2 on keyframes (Sec. 3.2)

def keyframe_indices(num_frames, k):
    """k uniformly spaced frames: the centres of k equal segments (k=3 of 72 frames: 12, 36, 60; k=1: the centre)."""
    return np.floor((np.arange(k) + 0.5) * num_frames / k).astype(np.int64)


def load_blip2(name, device, dtype):
    from transformers import Blip2ForConditionalGeneration, Blip2Processor
    processor = from_pretrained(Blip2Processor, name, "--captioner")
    # NOTE: transformers keeps the Q-Former (and query tokens) in fp32 when dtype is fp16, as BLIP-2 does
    model = from_pretrained(Blip2ForConditionalGeneration, name, "--captioner", dtype=dtype).to(device).eval()
    if model.config.image_token_index is None:
        raise SystemExit(f"caption.py: {name} is a BLIP-2 checkpoint saved before transformers added image tokens "
                         f"(config.image_token_index is missing): download the current Salesforce/blip2-* files")
    return processor, model


@torch.no_grad()
def blip2_captions(processor, model, pixels, dtype, max_new_tokens, num_beams):
    """pixels (V*K, 3, S, S) from the image processor -> V*K captions, one per keyframe, in order."""
    out = model.generate(pixel_values=pixels.to(model.device, dtype), max_new_tokens=max_new_tokens,
                         num_beams=num_beams, do_sample=False)
    if not model.config.text_config.is_encoder_decoder:
        # a decoder-only LM (OPT) returns its prompt too: num_query_tokens image tokens + BOS
        out = out[:, model.config.num_query_tokens + 1:]
    return [t.strip() for t in processor.batch_decode(out, skip_special_tokens=True)]


class Keyframes(Dataset):
    """List item -> {'video', 'label', 'pixels' (K, 3, S, S) or None, 'error': why it cannot be used, never raised}.
    In the loader workers, so decoding and preprocessing use the CPU cores while the main process drives the GPU."""

    def __init__(self, items, root, frames, image_processor):
        self.items, self.root, self.frames, self.image_processor = items, root, frames, image_processor

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        video, label = self.items[i]
        sample = dict(video=video, label=label, pixels=None, error=None)
        if self.image_processor is None:
            return sample
        try:
            path = os.path.join(self.root, video)
            # one seek per keyframe, not one pass from the first to the last: never slower, 2x faster at 2 s GOPs
            ids = keyframe_indices(data.probe_video(path).num_frames, self.frames)
            frames = [data.read_frames(path, [i])[0] for i in ids]
            sample["pixels"] = self.image_processor(frames, return_tensors="pt")["pixel_values"]  # (K, 3, S, S)
        except data.VideoError as e:
            sample["error"] = str(e)
        except Exception as e:  # anything else a strange file provokes is still bad input, not a reason to stop
            sample["error"] = f"{type(e).__name__}: {e}"
        return sample


# -----------------------------------------------------------------------------
# Vision-free captions per class from a language model (Table 6a prompts)

@torch.no_grad()
def llm_class_captions(name, class_names, labels, device, dtype, batch_size, max_new_tokens):
    """{label: [one caption per Table 6a prompt]} for the labels given, generated once per class (greedy)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = from_pretrained(AutoTokenizer, name, "--llm")
    lm = from_pretrained(AutoModelForCausalLM, name, "--llm", dtype=dtype).to(device).eval()
    tok.padding_side = "left"  # batched generation continues every prompt from its last token
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    labels = sorted(labels)
    prompts = [p.format(class_names[y]) for y in labels for p in LLM_PROMPTS]
    if tok.chat_template:  # an instruction-tuned LM answers questions asked as a chat turn
        prompts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                   for p in prompts]
    answers = []
    starts = range(0, len(prompts), batch_size)
    for i in tqdm(starts, desc="llm captions", unit="batch", disable=len(starts) < 2):
        enc = tok(prompts[i:i + batch_size], return_tensors="pt", padding=True,
                  add_special_tokens=not tok.chat_template).to(lm.device)
        out = lm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        # each answer up to its first blank line (a base LM rambles on), whitespace collapsed
        answers += [" ".join(t.strip().split("\n\n")[0].split())
                    for t in tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]
    k = len(LLM_PROMPTS)
    return {y: answers[j * k:(j + 1) * k] for j, y in enumerate(labels)}


# -----------------------------------------------------------------------------
# main

def main(args):
    # --- the list, this shard of it, and what is already done
    failed_path = os.path.splitext(args.out)[0] + ".failed.jsonl"
    try:
        items = data.read_list(args.data)  # root='' keeps each path as written in the list: the output's key
        class_names = data.read_class_names(args.class_names) if args.class_names else None
    except ValueError as e:
        raise SystemExit(f"caption.py: {e}") from None
    bad = [(v, y) for v, y in items if class_names is not None and y >= len(class_names)]
    if bad:
        raise SystemExit(f"caption.py: {args.data}: label {bad[0][1]} of {bad[0][0]} has no name in "
                         f"{args.class_names} ({len(class_names)} names): the list and the class names do not match")
    items = items[args.shard_index::args.num_shards]  # deterministic: every n-th video
    out, done = open_output(args.out)
    first = {}
    for video, label in items:
        first.setdefault(video, label)  # a video listed twice is captioned once
    todo = [(v, y) for v, y in first.items() if v not in done][:args.limit]  # finished videos skipped; [:None]: all
    n_done = sum(video in done for video, _ in items)
    print(f"caption.py: source {args.source} | shard {args.shard}: {len(items)} videos, {n_done} already in "
          f"{args.out}, {len(todo)} to caption" + (f" (--limit {args.limit})" if args.limit is not None else ""))

    # --- models, loaded before any video is read so that a missing model fails at once
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = args.precision if args.precision != "auto" else ("fp16" if device.type == "cuda" else "fp32")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    use_blip2 = "blip2" in args.source and bool(todo)  # nothing left to caption: no model to load
    processor = model = None
    if use_blip2:
        processor, model = load_blip2(args.captioner, device, dtype)
        print(f"caption.py: BLIP-2 {args.captioner} on {device} in {precision}, {args.frames} keyframes per video")
    class_caps = {y: [name] for y, name in enumerate(class_names or [])}  # Table 6b "Oracle": the label's name
    if "llm" in args.source and todo:
        class_caps = llm_class_captions(args.llm, class_names, {y for _, y in todo}, device, dtype,
                                        args.batch_size, args.llm_max_new_tokens)
        print(f"caption.py: {args.llm}: {len(LLM_PROMPTS)} vision-free captions for each of {len(class_caps)} classes")

    # --- the loop: decode keyframes in workers, caption a batch, append its lines
    dataset = Keyframes(todo, args.root, args.frames, processor.image_processor if use_blip2 else None)
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers if use_blip2 else 0,
                        collate_fn=list)
    n_ok, n_failed, t0 = 0, 0, time.time()
    bar = tqdm(total=len(todo), unit="video", desc="captioning", dynamic_ncols=True)
    try:
        with out, open(failed_path, "w") as failed, bar:          # closed before an except below prints
            for batch in loader:
                good = [s for s in batch if s["error"] is None]
                if use_blip2 and good:
                    flat = blip2_captions(processor, model, torch.cat([s["pixels"] for s in good]), dtype,
                                          args.max_new_tokens, args.num_beams)  # (V*K) captions, K per video in order
                for j, s in enumerate(good):
                    caps = flat[j * args.frames:(j + 1) * args.frames] if use_blip2 else []
                    if args.source != "blip2":  # the captions of the video's class: its name ("Oracle") or the LM's
                        # NOTE: Table 6b "BLIP + GPT3.5" does not say how the two were combined; we join the lists, so
                        # pretraining's random pick takes a BLIP-2 caption or a vision-free one with equal odds (3 + 3)
                        caps = caps + class_caps[s["label"]]
                    s["captions"] = [c for c in caps if c]  # a blank caption carries no text to mask or contrast with
                    if not s["captions"]:
                        s["error"] = f"{args.source} gave only empty captions"
                lines = [dict(video=s["video"], captions=s["captions"], source=args.source)
                         for s in batch if s["error"] is None]
                if lines:  # one write + fsync per batch: a kill loses at most this batch and one partial line
                    out.write("".join(json.dumps(o) + "\n" for o in lines).encode())
                    out.flush()
                    os.fsync(out.fileno())
                failed.writelines(json.dumps(dict(video=s["video"], reason=s["error"])) + "\n"
                                  for s in batch if s["error"] is not None)
                failed.flush()
                n_ok += len(lines)
                n_failed += len(batch) - len(lines)
                bar.update(len(batch))
                bar.set_postfix(failed=n_failed, refresh=False)
    except torch.cuda.OutOfMemoryError:
        raise SystemExit(f"caption.py: out of GPU memory at --batch-size {args.batch_size} videos "
                         f"({args.batch_size * args.frames} images): lower it; videos done are kept") from None
    except KeyboardInterrupt:
        print(f"caption.py: interrupted; {n_ok} videos captioned in this run are in {args.out} ({n_failed} "
              "failed): rerun the same command to go on")
        raise SystemExit(130) from None
    print(f"caption.py: done | {n_ok} captioned, {n_failed} failed, {n_done} were done before | "
          f"{n_ok / max(time.time() - t0, 1e-9):.2f} videos/s | {args.out}")
    if n_failed:
        print(f"caption.py: {n_failed} videos have no caption line (reasons in {failed_path}); pretrain.py skips each "
              f"as a bad sample: fix them and rerun, or drop them from the list you pretrain on")
    else:
        os.remove(failed_path)  # no failures: no side file to wonder about
    return dict(captioned=n_ok, failed=n_failed, out=args.out, failed_path=failed_path)


# -----------------------------------------------------------------------------
# Plumbing: models from a folder or the hub (failing in seconds offline), and the resumable output file

def from_pretrained(cls, name, flag, **kwargs):
    """A local folder or hub id -> cls.from_pretrained(name); offline and not cached: one sentence saying what to do."""
    if os.path.isdir(name):
        return cls.from_pretrained(name, **kwargs)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise SystemExit(f"caption.py: {flag} {name}: no such folder")
    try:
        return cls.from_pretrained(name, local_files_only=True, **kwargs)  # already in the Hugging Face cache
    except (OSError, ValueError):
        pass
    import huggingface_hub
    try:
        huggingface_hub.model_info(name, timeout=10)  # one quick request, instead of transformers' retries per file
    except Exception as e:
        raise SystemExit(f"caption.py: cannot load {name!r}: it is not in the local Hugging Face cache and the hub "
                         f"cannot be reached ({type(e).__name__}). Download it where there is network (`hf download "
                         f"{name}`) and pass {flag} PATH, the local folder.") from None
    return cls.from_pretrained(name, **kwargs)


def open_output(path):
    """Open `path` for appending, locked against a second writer; -> (file, videos already in it)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    f = open(path, "a+b")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"caption.py: another process is writing {path}: give each --shard its own --out") from None
    f.seek(0)
    done, end = set(), 0  # end: the byte offset after the last complete line
    for n, line in enumerate(f, 1):
        if not line.endswith(b"\n"):
            print(f"caption.py: {path}:{n}: cutting off a half-written last line (a killed run); that video is "
                  "captioned again")
            f.truncate(end)
            break
        end += len(line)
        if not line.strip():
            continue
        try:
            done.add(json.loads(line)["video"])
        except (ValueError, KeyError, TypeError):
            raise SystemExit(f"caption.py: {path}:{n}: not a caption line {{\"video\": ..., \"captions\": [...]}}; "
                             f"fix or remove that line, or pick another --out") from None
    return f, done


if __name__ == "__main__":
    main(parse_args())
