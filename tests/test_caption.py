"""caption.py (Sec. 3.2, Table 6): BLIP-2 / oracle / LLM captions, JSONL output, resume, shards, bad videos.

Tiny random BLIP-2 and GPT-2 models with a word-level tokenizer are built here, saved with
save_pretrained and loaded back through --captioner PATH / --llm PATH, as a user would. CPU, no network.
Run: python -m pytest -q tests/test_caption.py
"""
import json
import os
import time

import pytest
import torch

import caption
import data

WORDS = ("a the red blue green square circle moves up down grows spins on of background scene small "
         "Describe action What does person look like act moving growing sideways shrinking spinning "
         "bouncing staying still ? .").split()
SPECIAL = ["<pad>", "</s>", "<unk>"]


def word_tokenizer():
    """A word-level fast tokenizer built offline: ids 0-2 are pad, eos (= bos), unk."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(SPECIAL + sorted(set(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def silence(lm_head, ids):
    """Zero the output rows of special tokens: some word always scores above 0 for random hidden states, so
    greedy decoding never picks pad/eos/image and every caption of a random model has words."""
    with torch.no_grad():
        lm_head.weight[ids] = 0


def make_tiny_blip2(path):
    """A random BLIP-2 (ViT, Q-Former, OPT; 32 px images, 4 query tokens) saved to `path` as a --captioner folder."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor
    tok = word_tokenizer()
    processor = Blip2Processor(BlipImageProcessor(size={"height": 32, "width": 32}), tok, num_query_tokens=4)  # adds <image>
    image_id = tok.convert_tokens_to_ids("<image>")
    cfg = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        text_config=dict(model_type="opt", vocab_size=len(tok), hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                         num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=1, pad_token_id=0, tie_word_embeddings=False),
        num_query_tokens=4, image_token_index=image_id)
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(cfg)
    silence(model.language_model.lm_head, [0, 1, 2, image_id])
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def make_tiny_llm(path):
    """A random GPT-2 (1 layer, width 32) and the word tokenizer saved to `path` as a --llm folder."""
    from transformers import GPT2Config, GPT2LMHeadModel
    tok = word_tokenizer()
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=128,
                                    bos_token_id=1, eos_token_id=1, pad_token_id=0, tie_word_embeddings=False))
    silence(lm.lm_head, [0, 1, 2])
    lm.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_blip2(tmp_path_factory):
    return make_tiny_blip2(str(tmp_path_factory.mktemp("blip2")))


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    return make_tiny_llm(str(tmp_path_factory.mktemp("llm")))


@pytest.fixture
def videos(demo, tmp_path):
    """A list of 4 demo videos, two of class 0 and two of class 1 (paths relative to demo['root'])."""
    items = [line for line in open(demo["train"]) if line.split()[1] in ("0", "1")]
    items = items[:2] + [line for line in items if line.split()[1] == "1"][:2]
    path = tmp_path / "list.txt"
    path.write_text("".join(items))
    return str(path), [(line.split()[0], int(line.split()[1])) for line in items]


def run(demo, list_file, out, *flags):
    args = caption.parse_args(["--data", list_file, "--root", demo["root"], "--out", str(out), "--class-names",
                               demo["class_names"], "--device", "cpu", "--num-workers", "0", *flags])
    return caption.main(args)


def lines(path):
    return [json.loads(line) for line in open(path)]  # every line must be valid JSON


# ----------------------------------------------------------------------------- BLIP-2


def test_keyframes_are_uniformly_spaced():
    assert caption.keyframe_indices(72, 3).tolist() == [12, 36, 60]
    assert caption.keyframe_indices(72, 1).tolist() == [36]  # Table 5c: 1 caption = the centre frame
    assert caption.keyframe_indices(2, 3).tolist() == [0, 1, 1]  # a very short video repeats frames, in range


def test_blip2_captions_every_video_end_to_end(demo, videos, tiny_blip2, tmp_path):
    from transformers import Blip2ForConditionalGeneration, Blip2Processor
    list_file, items = videos
    out = tmp_path / "caps.jsonl"
    # --batch-size 3: one full and one partial batch, 9 + 3 keyframes per BLIP-2 call
    res = run(demo, list_file, out, "--captioner", tiny_blip2, "--max-new-tokens", "4", "--batch-size", "3")
    assert res["captioned"] == 4 and res["failed"] == 0 and not os.path.exists(res["failed_path"])
    got = lines(out)
    assert [o["video"] for o in got] == [v for v, _ in items]  # one line per video, paths as in the list
    for o in got:
        assert o["source"] == "blip2" and len(o["captions"]) == 3
        for c in o["captions"]:
            assert c and all(w in WORDS for w in c.split())  # no prompt, image or special tokens left
    assert data.read_captions(str(out)) == {o["video"]: o["captions"] for o in got}  # pretraining reads it
    # each caption is the one BLIP-2 gives its keyframe alone: batching across videos keeps the order
    processor = Blip2Processor.from_pretrained(tiny_blip2)
    model = Blip2ForConditionalGeneration.from_pretrained(tiny_blip2).eval()
    video = os.path.join(demo["root"], items[2][0])
    frames, _, _, _ = data.read_clip(video, lambda info: caption.keyframe_indices(info.num_frames, 3))
    for frame, expected in zip(frames, got[2]["captions"]):
        pixels = processor(images=[frame], return_tensors="pt")["pixel_values"]
        assert caption.blip2_captions(processor, model, pixels, torch.float32, 4, 1) == [expected]


def test_resume_after_a_stop_a_kill_and_ctrl_c(demo, videos, tiny_blip2, tmp_path, monkeypatch):
    list_file, items = videos
    out = tmp_path / "caps.jsonl"
    flags = ("--captioner", tiny_blip2, "--max-new-tokens", "3", "--batch-size", "1")
    assert run(demo, list_file, out, *flags, "--limit", "2")["captioned"] == 2  # stopped half-way
    with open(out, "a") as f:
        f.write('{"video": "' + items[2][0] + '", "capt')  # a kill in the middle of a write
    # Ctrl-C while the second batch is in flight: the first batch's line is kept, whole
    real, calls = caption.blip2_captions, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(caption, "blip2_captions", interrupted)
    with pytest.raises(SystemExit) as e:
        run(demo, list_file, out, *flags)
    assert e.value.code == 130
    assert [o["video"] for o in lines(out)] == [v for v, _ in items[:3]]  # the partial line was cut off, video 3 redone
    monkeypatch.setattr(caption, "blip2_captions", real)
    assert run(demo, list_file, out, *flags)["captioned"] == 1
    got = lines(out)
    assert sorted(o["video"] for o in got) == sorted(v for v, _ in items)  # every video exactly once
    assert all(len(o["captions"]) == 3 for o in got)


def test_bad_videos_go_to_the_side_file(demo, videos, tiny_blip2, tmp_path):
    list_file, items = videos
    (tmp_path / "garbage.mp4").write_bytes(b"\x00\x01 this is not a video" * 100)
    with open(list_file, "a") as f:
        f.write(f"{tmp_path / 'garbage.mp4'} 0\nvideos/missing.mp4 1\n")
    out = tmp_path / "caps.jsonl"
    # one loader worker process: the keyframes are decoded and preprocessed outside the main process
    res = run(demo, list_file, out, "--captioner", tiny_blip2, "--max-new-tokens", "3", "--num-workers", "1")
    assert res["captioned"] == 4 and res["failed"] == 2
    assert [o["video"] for o in lines(out)] == [v for v, _ in items]
    failed = {o["video"]: o["reason"] for o in lines(res["failed_path"])}
    assert failed.keys() == {str(tmp_path / "garbage.mp4"), "videos/missing.mp4"}
    assert failed["videos/missing.mp4"] == "file not found" and failed[str(tmp_path / "garbage.mp4")]


# ----------------------------------------------------------------------------- oracle, LLM, shards


def test_oracle_captions_and_shards(demo, videos, tmp_path):
    list_file, items = videos
    names = data.read_class_names(demo["class_names"])
    run(demo, list_file, tmp_path / "all.jsonl", "--source", "oracle")
    assert lines(tmp_path / "all.jsonl") == [dict(video=v, captions=[names[y]], source="oracle") for v, y in items]
    shards = [[o["video"] for o in lines(run(demo, list_file, tmp_path / f"s{i}.jsonl", "--source", "oracle", "--shard", f"{i}/3")["out"])]
              for i in range(3)]
    assert shards == [[items[0][0], items[3][0]], [items[1][0]], [items[2][0]]]  # every 3rd video, disjoint, complete


def test_llm_and_blip2_plus_llm_sources(demo, videos, tiny_blip2, tiny_llm, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    list_file, items = videos
    names = data.read_class_names(demo["class_names"])
    run(demo, list_file, tmp_path / "llm.jsonl", "--source", "llm", "--llm", tiny_llm, "--llm-max-new-tokens", "5")
    got = lines(tmp_path / "llm.jsonl")
    assert [o["video"] for o in got] == [v for v, _ in items] and all(o["source"] == "llm" for o in got)
    by_class = {}
    for o, (_, y) in zip(got, items):
        assert len(o["captions"]) == 3 and all(o["captions"])
        assert by_class.setdefault(y, o["captions"]) == o["captions"]  # every video of a class: its class's captions
    # the captions answer Table 6a's prompts about the class name
    tok, lm = AutoTokenizer.from_pretrained(tiny_llm), AutoModelForCausalLM.from_pretrained(tiny_llm)
    for prompt, cap in zip(caption.LLM_PROMPTS, by_class[1]):
        ids = tok(prompt.format(names[1]), return_tensors="pt")
        ref = lm.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=0)[0, ids["input_ids"].shape[1]:]
        assert cap == tok.decode(ref, skip_special_tokens=True).strip()
    # blip2+llm: the union, BLIP-2's 3 keyframe captions then the class's 3 vision-free ones
    flags = ("--captioner", tiny_blip2, "--max-new-tokens", "4", "--llm", tiny_llm, "--llm-max-new-tokens", "5")
    run(demo, list_file, tmp_path / "blip2.jsonl", *flags)
    run(demo, list_file, tmp_path / "both.jsonl", *flags, "--source", "blip2+llm")
    for b, l, both in zip(lines(tmp_path / "blip2.jsonl"), got, lines(tmp_path / "both.jsonl")):
        assert both["source"] == "blip2+llm" and both["captions"] == b["captions"] + l["captions"]


# ----------------------------------------------------------------------------- start-up errors


def test_start_up_errors_are_one_sentence(demo, videos, tmp_path):
    list_file, _ = videos
    t0 = time.time()
    with pytest.raises(SystemExit, match="pass --captioner PATH"):  # offline (conftest), not cached: no retries
        run(demo, list_file, tmp_path / "c.jsonl", "--captioner", "tgm-tests/no-such-blip2")
    assert time.time() - t0 < 30
    with pytest.raises(SystemExit, match="no such folder"):
        run(demo, list_file, tmp_path / "c.jsonl", "--captioner", "./no/such/folder")
    with pytest.raises(SystemExit, match="0 <= i < n"):
        caption.parse_args(["--shard", "3/3"])
    with pytest.raises(SystemExit, match="--class-names"):
        caption.parse_args(["--data", list_file, "--source", "oracle"])
    with pytest.raises(SystemExit, match="--llm"):
        caption.parse_args(["--source", "blip2+llm"])
    # a malformed line that is not the last one is not a killed write: stop with file:line
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"video": "a.mp4", "captions": ["x"], "source": "oracle"}\nnot json\n{"video": "b.mp4", "captions": ["y"]}\n')
    with pytest.raises(SystemExit, match=f"{bad}:2:"):
        run(demo, list_file, bad, "--source", "oracle")
    # two processes on one --out would interleave their lines: the second one stops
    import fcntl
    with open(tmp_path / "busy.jsonl", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(SystemExit, match="own --out"):
            run(demo, list_file, tmp_path / "busy.jsonl", "--source", "oracle")


def test_defaults_are_the_papers_recipe():
    """With no flags, caption.py captions what the paper did: BLIP-2 (OPT-2.7B) on 3 keyframes (Table 5c, 6b)."""
    args = caption.get_parser().parse_args([])
    assert args.source == "blip2" and args.frames == 3 and args.captioner == "Salesforce/blip2-opt-2.7b"
    assert args.shard == "0/1" and args.limit is None                    # every video of the list, in one shard
