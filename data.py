"""Video clips for TGM: reading, frame sampling, augmentation, datasets and the built-in demo dataset.

Sec. 4.2 (pre-processing): "clips of 16 frames sampled at a temporal stride of 4 for K400 and 2 for
SSv2 ... multi-scale-crop and horizontal flip ... TSN-style sampling on SSv2 with 2 temporal x 3
spatial views during test-time ... 5 temporal x 3 spatial views" for the other datasets, all
"following [38]" (VideoMAE). Every frame sampler below reproduces a function of the official VideoMAE
code (github.com/MCG-NJU/VideoMAE, kinetics.py / ssv2.py / transforms.py), cited where it is copied;
finetuning clips also get VideoMAE's RandAugment and random erasing, as torchvision's transforms.
Sec. 3.2 / 3.3 need two more things from here: the video's captions ride along with the clip, and
every crop/flip is reported as a resolution-free `Crop` so that motion- and text-guided masks can be
moved with the clip (`apply_crop`).

NOTE: a second shared module beside model.py (docs/design.md, "Layout: why data.py"): model.py stays one
sitting of reading and can be copied without PyAV; data.py imports only the ImageNet mean/std from it.

Used by pretrain.py / finetune.py / evaluate.py / caption.py / masking.py:
    ds = VideoDataset("train.txt", root="videos/", captions="captions.jsonl", mode="pretrain")
    loader = DataLoader(ds, batch_size=8, num_workers=8, collate_fn=collate)
With no --data the scripts call `demo_dataset()`, which writes the synthetic demo once into
$TGM_CACHE (default ~/.cache/tgm). Tests: python -m pytest -q tests/test_data.py
Reader speed (seek vs decode from the start): python benchmarks/bench_decode.py
"""
import json
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter
import torch
import torch.nn.functional as F
from torchvision.transforms import v2 as T

from model import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger("tgm.data")

# ----------------------------------------------------------------------------- list and caption files


def read_list(path, root=""):
    """VideoMAE's list format: one `relative/path.mp4 label` per line. -> [(root/path, label)]."""
    items = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue  # blank lines (a trailing newline) are harmless
            fields = line.split()
            if len(fields) != 2:
                raise ValueError(f"{path}:{n}: expected 'video_path label', got {len(fields)} fields: {line.strip()!r}")
            if not fields[1].isdigit():
                raise ValueError(f"{path}:{n}: label must be an integer >= 0, got {fields[1]!r}")
            items.append((os.path.join(root, fields[0]), int(fields[1])))
    if not items:
        raise ValueError(f"{path}: the list has no videos")
    return items


def read_class_names(path):
    """Line i is the name of label i (oracle / LLM captions, zero-shot retrieval)."""
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def read_captions(path):
    """Captions JSONL -> {video as written in the list: [caption, ...]}; a later line for the same
    video replaces an earlier one, so an appended (resumed) captioning run wins."""
    captions = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("video"), str):
                raise ValueError(f"{path}:{n}: expected an object with a string 'video' field")
            caps = obj.get("captions")
            if not isinstance(caps, list) or not caps or not all(isinstance(c, str) and c.strip() for c in caps):
                raise ValueError(f"{path}:{n}: 'captions' must be a non-empty list of non-empty strings")
            captions[obj["video"]] = caps
    return captions


# ----------------------------------------------------------------------------- reading video (PyAV)


class VideoError(Exception):
    """A video that cannot be used; the message is the reason that goes into the log."""


@dataclass
class VideoInfo:
    num_frames: int
    height: int  # coded frame size: motion vectors are in these pixel coordinates
    width: int
    fps: float


def _open(path):
    """-> (container, video stream, VideoInfo); every way a file can be unusable becomes a VideoError."""
    if not os.path.isfile(path):
        raise VideoError("file not found")
    if os.path.getsize(path) == 0:
        raise VideoError("zero-byte file")
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"cannot open: {e}") from None
    if not container.streams.video:
        container.close()
        raise VideoError("no video stream")
    stream = container.streams.video[0]
    num_frames = stream.frames
    if num_frames <= 0:
        # some containers (webm, mkv, avi) do not store a frame count: count packets, which is a
        # demux without decoding (milliseconds), then come back to the start
        try:
            num_frames = sum(1 for p in container.demux(stream) if p.size > 0)
            container.seek(0, stream=stream)
        except (av.FFmpegError, OSError) as e:
            container.close()
            raise VideoError(f"cannot demux: {e}") from None
    ctx = stream.codec_context
    if num_frames <= 0 or ctx.width <= 0 or ctx.height <= 0:
        container.close()
        raise VideoError("empty video (no frames)")
    fps = float(stream.average_rate or stream.guessed_rate or 25)
    return container, stream, VideoInfo(num_frames, ctx.height, ctx.width, fps)


def probe_video(path):
    """Frame count, coded size and fps, without decoding. Raises VideoError."""
    container, _, info = _open(path)
    container.close()
    return info


def _decode(container, stream, info, wanted, motion, short_side, seek):
    """Decode the frames whose indices are in the sorted array `wanted` -> {index: (frame, mvs)}.

    With seek, jump to the keyframe before wanted[0] and number frames from their pts; without,
    decode from the start and count frames (the reference the seek path is tested against)."""
    tb = stream.time_base
    rate = Fraction(stream.average_rate) if stream.average_rate else Fraction(info.fps)  # frames per second
    start = stream.start_time or 0
    lo, hi = int(wanted[0]), int(wanted[-1])
    if seek and lo > 0:
        container.seek(start + int(lo / (rate * tb)), backward=True, any_frame=False, stream=stream)
    size = None
    if short_side and min(info.height, info.width) > short_side:
        # decode straight to the smaller size the crop needs: resizing in swscale is much cheaper than
        # carrying full-size frames through the augmentation (the Crop is in fractions, so it still fits)
        s = short_side / min(info.height, info.width)
        size = (max(1, round(info.width * s)), max(1, round(info.height * s)))
    got, want, last, count = {}, set(wanted.tolist()), None, -1
    reformatter = VideoReformatter()
    for frame in container.decode(stream):
        count += 1
        if seek:
            if frame.pts is None:
                return None  # no timestamps to number frames by: the caller decodes from the start
            i = round((frame.pts - start) * tb * rate)
            if not got and last is None and i > lo:
                return None  # the seek overshot (bad index in the file): decode from the start
        else:
            i = count
        last = frame
        if i > hi:
            break
        if i in want:
            got[i] = _convert(frame, motion, size, reformatter)
    if last is not None and (not got or max(got) < hi):
        # the header promised more frames than the file holds: the missing tail repeats the last
        # decodable frame, like VideoMAE's short-video rule, instead of losing the sample
        got.setdefault(hi, _convert(last, motion, size, reformatter))
    return got


def _convert(frame, motion, size, reformatter):
    w, h = size if size else (None, None)
    # gray / yuv444 / odd sizes all -> rgb24, through one scaler per video on one thread. frame.to_ndarray(format=...)
    # would make a scaler per frame with a thread per core, kept alive as long as the frame is: with motion vectors
    # that is until the garbage collector's next full pass (PyAV's frame and its side data refer to each other), so
    # ten MGM clips left 160 idle threads in the process, and a process that then forks DataLoader workers carries
    # them (a worker segfaulted so in CI). The shared scaler also decodes a demo clip in half the time.
    rgb = reformatter.reformat(frame, format="rgb24", width=w, height=h, threads=1).to_ndarray()
    if not motion:
        return rgb, None
    mvs = frame.side_data.get("MOTION_VECTORS")  # None on I-frames
    return rgb, (mvs.to_ndarray() if mvs is not None else None)


def read_clip(path, sample_indices, motion=False, short_side=None, seek=True):
    """Open once, choose indices from the frame count, decode only those. Raises VideoError.

    sample_indices: VideoInfo -> int array of frame indices (any order, repeats allowed).
    Returns (frames uint8 (T, H, W, 3), motion list of T arrays-or-None (None if not motion), indices, info).
    motion: each entry is PyAV's MotionVectors.to_ndarray() (fields source, w, h, src_x, src_y, dst_x,
    dst_y, flags, motion_x, motion_y, motion_scale) in coded-frame pixels, or None (e.g. an I-frame).
    short_side: decode at this shorter side when the video is larger (None: full size).
    """
    container, stream, info = _open(path)
    try:
        indices = np.asarray(sample_indices(info), dtype=np.int64)  # outside the except: a bug is no bad video
        wanted = np.unique(np.clip(indices, 0, info.num_frames - 1))
        if motion:
            # the decoder exports motion vectors as frame side data only when asked before opening
            stream.codec_context.options = {"flags2": "+export_mvs"}
        stream.thread_type = "AUTO"  # frame + slice threads; motion vectors survive (tests check)
        try:
            got = _decode(container, stream, info, wanted, motion, short_side, seek)
            if got is None:
                container.seek(0, stream=stream)
                got = _decode(container, stream, info, wanted, motion, short_side, seek=False)
        except (av.FFmpegError, OSError, ValueError, MemoryError) as e:
            raise VideoError(f"decode failed: {e}") from None
    finally:
        container.close()
    if not got:
        raise VideoError("no decodable frames")
    have = np.array(sorted(got))
    # a frame that is missing (corrupt or truncated stream) is replaced by the nearest decoded one
    nearest = have[np.abs(have[None, :] - wanted[:, None]).argmin(1)]
    lookup = dict(zip(wanted.tolist(), nearest.tolist()))
    picked = [got[lookup[i]] for i in np.clip(indices, 0, info.num_frames - 1).tolist()]
    frames = np.stack([p[0] for p in picked])
    return frames, ([p[1] for p in picked] if motion else None), indices, info


def read_frames(path, indices, motion=False, short_side=None, seek=True):
    """Frames at the given indices as uint8 (T, H, W, 3) [, per-frame motion vectors]. Raises VideoError."""
    frames, mvs, _, _ = read_clip(path, lambda info: indices, motion, short_side, seek)
    return (frames, mvs) if motion else frames


# ----------------------------------------------------------------------------- frame samplers (VideoMAE)
# Each returns an int array of frame indices. rng is a numpy Generator; rng.integers(n) is numpy's
# np.random.randint(n) that VideoMAE calls.


def pretrain_indices(num_video_frames, num_frames, sampling_rate, rng):
    """VideoMAE pretraining clip: kinetics.py `VideoMAE._sample_train_indices` (num_segments=1) and
    `_video_TSN_decord_batch_loader`. A random start, then `num_frames` frames `sampling_rate` apart; in a
    video shorter than the clip the last reachable frame repeats."""
    skip_length = num_frames * sampling_rate
    average_duration = num_video_frames - skip_length + 1
    offset = rng.integers(average_duration) + 1 if average_duration > 0 else 1  # 1-based, as VideoMAE
    ids = []
    for _ in range(num_frames):
        ids.append(offset - 1)
        # VideoMAE steps only while `offset + new_step < duration`, so the very last frame of the video
        # is never sampled and a short clip repeats the frame before it: we keep this off-by-one exactly
        if offset + sampling_rate < num_video_frames:
            offset += sampling_rate
    return np.array(ids, dtype=np.int64)


def finetune_indices(num_video_frames, num_frames, sampling_rate, rng):
    """VideoMAE finetuning clip: kinetics.py `VideoClsDataset.loadvideo_decord` (train, num_segment=1)."""
    converted_len = num_frames * sampling_rate
    seg_len = num_video_frames
    if seg_len <= converted_len:
        # short video: spread what there is over the clip, then pad with the last frame
        index = np.linspace(0, seg_len, num=seg_len // sampling_rate)
        index = np.concatenate((index, np.ones(num_frames - seg_len // sampling_rate) * seg_len))
        return np.clip(index, 0, seg_len - 1).astype(np.int64)
    end_idx = rng.integers(converted_len, seg_len)
    str_idx = end_idx - converted_len
    index = np.linspace(str_idx, end_idx, num=num_frames)
    return np.clip(index, str_idx, end_idx - 1).astype(np.int64)


def tsn_indices(num_video_frames, num_segments, rng, test_offset=None):
    """TSN sampling for SSv2 (one frame per segment): ssv2.py `SSVideoClsDataset.loadvideo_decord`.
    test_offset None: training, a random frame in each segment. test_offset 0 / 1: the test views,
    VideoMAE's interleaved list of segment starts and mid-points, sorted, every second one."""
    if test_offset is None:
        average_duration = num_video_frames // num_segments
        if average_duration > 0:
            return np.arange(num_segments) * average_duration + rng.integers(average_duration, size=num_segments)
        if num_video_frames > num_segments:
            return np.sort(rng.integers(num_video_frames, size=num_segments))
        return np.zeros(num_segments, dtype=np.int64)  # as VideoMAE: a tiny video gives frame 0 only
    tick = num_video_frames / float(num_segments)
    all_index = [int(tick / 2.0 + tick * x) for x in range(num_segments)] + [int(tick * x) for x in range(num_segments)]
    # VideoMAE then takes buffer[chunk_nb::2] of the sorted list (test_num_segment = 2)
    return np.sort(np.array(all_index, dtype=np.int64))[test_offset::2]


def test_indices(num_video_frames, num_frames, sampling_rate, view, num_views=5):
    """Kinetics-style test window `view` of `num_views`: kinetics.py `VideoClsDataset` test mode. The whole
    video at the stride (padded with its last frame), cut into `num_views` evenly spaced windows."""
    all_index = list(range(0, num_video_frames, sampling_rate))
    while len(all_index) < num_frames:
        all_index.append(all_index[-1])
    # NOTE: differs from VideoMAE for num_views == 1 (it divides by zero there): we take the centre window
    temporal_step = max(1.0 * (len(all_index) - num_frames) / max(num_views - 1, 1), 0)
    temporal_start = int(view * temporal_step) if num_views > 1 else int(temporal_step / 2)
    return np.array(all_index[temporal_start:temporal_start + num_frames], dtype=np.int64)


test_indices.__test__ = False  # a sampler, not a pytest test, even when a test module imports it by name


# ----------------------------------------------------------------------------- spatial transforms


@dataclass(frozen=True)
class Crop:
    """A crop box in fractions (0..1) of the source frame, then an optional horizontal flip. Fractions
    keep it valid at any decode size, for frames and for per-pixel maps (motion, CLIP similarity)."""
    top: float
    left: float
    height: float
    width: float
    flip: bool = False


def _crop_from_pixels(H, W, y, x, h, w, flip):
    return Crop(float(y / H), float(x / W), float(h / H), float(w / W), bool(flip))


def apply_crop(x, crop, size, dtype=None):
    """Crop, resize (bilinear, antialiased like PIL) and flip a (..., H, W) tensor -> (..., size, size).

    dtype: of the result (default x's; an integer dtype rounds). uint8 frames with dtype=torch.float32 are
    converted after cropping, so only the crop's pixels are, not the whole frame's."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    H, W = x.shape[-2:]
    y0, x0 = min(int(round(crop.top * H)), H - 1), min(int(round(crop.left * W)), W - 1)
    y1, x1 = max(int(round((crop.top + crop.height) * H)), y0 + 1), max(int(round((crop.left + crop.width) * W)), x0 + 1)
    lead = x.shape[:-2]
    out = x[..., y0:min(y1, H), x0:min(x1, W)]
    out = out.reshape(-1, 1, *out.shape[-2:])  # (prod(...), 1, h, w): interpolate wants 4-D
    dtype = dtype or out.dtype
    out = F.interpolate(out.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    if not dtype.is_floating_point:
        out = out.round().to(dtype)
    out = out.reshape(*lead, *size)
    return out.flip(-1) if crop.flip else out


MULTISCALE_SCALES = (1, .875, .75, .66)  # VideoMAE's GroupMultiScaleCrop scales, of the short side


def multiscale_short_side(input_size, scales=MULTISCALE_SCALES):
    """The shortest frame side at which even the smallest multi-scale crop still spans `input_size` pixels:
    decoding a larger video at this size loses nothing the crop would keep (Sec. 5, data loading)."""
    return math.ceil(input_size / min(scales))


def multiscale_crop(H, W, size, scales=MULTISCALE_SCALES, flip=True, rng=None):
    """VideoMAE pretraining augmentation: transforms.py `GroupMultiScaleCrop` (max_distort=1, fix_crop,
    more_fix_crop): a crop side from `scales` x the short side, at one of 13 fixed offsets."""
    input_size = (size, size) if isinstance(size, int) else size  # (w, h) as VideoMAE
    base_size = min(W, H)
    crop_sizes = [int(base_size * x) for x in scales]
    crop_h = [input_size[1] if abs(x - input_size[1]) < 3 else x for x in crop_sizes]
    crop_w = [input_size[0] if abs(x - input_size[0]) < 3 else x for x in crop_sizes]
    pairs = [(w, h) for i, h in enumerate(crop_h) for j, w in enumerate(crop_w) if abs(i - j) <= 1]
    cw, ch = pairs[rng.integers(len(pairs))]
    w_step, h_step = (W - cw) // 4, (H - ch) // 4
    offsets = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2),  # corners and centre
               (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]  # `more_fix_crop`
    ow, oh = offsets[rng.integers(len(offsets))]
    # NOTE: differs from VideoMAE: its pretraining has no flip; the paper adds one (Sec. 4.2, off for SSv2)
    return _crop_from_pixels(H, W, oh * h_step, ow * w_step, ch, cw, flip and rng.random() < 0.5)


def random_resized_crop(H, W, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip=True, rng=None):
    """VideoMAE finetuning augmentation: video_transforms.py `_get_param_spatial_crop` (10 tries at a
    random area and log-uniform aspect ratio, else a centre crop), then a random flip."""
    for _ in range(10):
        target_area = rng.uniform(*scale) * H * W
        aspect_ratio = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= W and 0 < h <= H:
            i, j = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)
            return _crop_from_pixels(H, W, i, j, h, w, flip and rng.random() < 0.5)
    in_ratio = W / H
    if in_ratio < min(ratio):
        w, h = W, int(round(W / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(H * max(ratio))), H
    else:
        w, h = W, H
    return _crop_from_pixels(H, W, (H - h) // 2, (W - w) // 2, h, w, flip and rng.random() < 0.5)


def uniform_crop(H, W, short_side, spatial_idx, num_crops=3):
    """Test crop `spatial_idx` of `num_crops` along the long side: kinetics.py test mode (resize the
    short side to `short_side`, then a square window at `int(idx * step)`). num_crops=1: the centre."""
    if H < W:
        ow, oh = int(short_side * W / H), short_side  # video_transforms.resize_clip
    else:
        ow, oh = short_side, int(short_side * H / W)
    long = max(ow, oh)
    start = int(spatial_idx * (long - short_side) / (num_crops - 1)) if num_crops > 1 else int(round((long - short_side) / 2))
    if H >= W:
        return Crop(start / oh, 0.0, short_side / oh, 1.0)
    return Crop(0.0, start / ow, 1.0, short_side / ow)


def normalize(frames):
    """(T, H, W, 3) values in [0, 255] (uint8 or float) -> ImageNet-normalised float (C, T, H, W)."""
    x = torch.as_tensor(frames).float().div(255.0)
    x = (x - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    return x.permute(3, 0, 1, 2).contiguous()  # (C, T, H, W)


# ----------------------------------------------------------------------------- finetuning augmentation


def finetune_transforms(randaug_n=4, randaug_m=7, reprob=0.25):
    """VideoMAE's finetuning augmentation (run_class_finetuning.py: --aa rand-m7-n4-mstd0.5-inc1, --reprob 0.25,
    --remode pixel) as torchvision transforms -> (randaug, erase); None for one that is off (n = 0, reprob = 0).

    NOTE: differs from VideoMAE: its RandAugment is timm's. torchvision's has the same maximum shear (0.3),
    rotation (30 degrees) and enhancement (1 +- 0.9) and nearly the same translation (0.453 of the side, timm 0.45),
    and with 11 magnitude bins its bin m is timm's level m of 10 (the same fraction m/10 of each maximum); we use
    it because it works on a (T, C, H, W) tensor with one draw for all frames and is maintained. It differs in:
    (1) no magnitude noise (mstd0.5 draws each op's m from N(7, 0.5)); (2) each of the n ops is always applied,
    where timm applies each with chance 0.5, so ours is the stronger (--randaug-n 2 gives timm's mean number of
    ops); (3) the op set: no Invert and no SolarizeAdd, an Identity instead; posterize at m=7 keeps 5 bits, not 2;
    (4) bilinear, not bicubic, resampling (torchvision's tensor kernels have no bicubic affine). Pixels moved in
    by rotation, shear or translation are grey 128, as timm's default fill.
    NOTE: differs from VideoMAE: its erasing (random_erasing.py, cube mode) puts the same box on every frame but
    fresh noise in each frame, and tries 100 boxes; torchvision's puts the same noise in every frame (one
    (C, h, w) draw broadcast over T) and tries 10: a box that fits is found in the first tries anyway.
    """
    randaug = erase = None
    if randaug_n > 0:
        randaug = T.RandAugment(num_ops=randaug_n, magnitude=randaug_m, num_magnitude_bins=11,
                                interpolation=T.InterpolationMode.BILINEAR, fill=[128, 128, 128])
    if reprob > 0:
        # value="random": per-pixel N(0, 1) in the normalised space (VideoMAE's mode 'pixel'); area 2-33 %,
        # aspect 0.3-3.3, the defaults of both
        erase = T.RandomErasing(p=reprob, value="random")
    return randaug, erase


def augment_clip(clip, randaug, erase, seed):
    """A (T, C, S, S) crop -> ImageNet-normalised (C, T, S, S) with VideoMAE's finetuning augmentation.

    RandAugment acts on the [0, 255] pixels (uint8, as timm's acts on PIL images), random erasing on the
    normalised ones (VideoMAE erases after normalising). A torchvision transform given a (T, C, H, W) tensor
    makes one draw and applies it to every leading index, so every frame gets the same operations, magnitudes
    and erased box: one draw per clip, as VideoMAE applies one draw to the clip's list of frames.
    Their draws come from torch's global generator: seeded here, inside fork_rng, from the dataset's
    per-(seed, epoch, index) rng, so they do not depend on the worker and a resumed run redraws the same clips.
    NOTE: differs from VideoMAE, which augments the whole decoded frames before the random-resized crop: we
    augment the crop, which is cheaper (S x S pixels, not the frame's). The geometric ops scale with the image,
    so a translation moves the content by a share of the crop's side, not of the frame's (less, after a small
    crop), and the grey fill of a rotation or shear shows in the crop's corners instead of being cropped away.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if randaug is not None:
            clip = randaug(clip)                               # (T, C, S, S) uint8, one draw for all T frames
        x = normalize(clip.permute(0, 2, 3, 1))                # (C, T, S, S)
        if erase is not None:
            x = erase(x.transpose(0, 1)).transpose(0, 1).contiguous()  # torchvision wants (T, C, S, S): one box for all T
    return x


# ----------------------------------------------------------------------------- dataset


class VideoDataset(torch.utils.data.Dataset):
    """A list file (+ captions) -> augmented clips with label, captions, crop and the bad videos skipped.

    mode: 'pretrain' (VideoMAE pretraining clip, multi-scale crop), 'finetune' (finetuning clip or TSN,
    random-resized crop), 'val' (one deterministic view: centre window, centre crop), 'test' (every test
    view from one decode: 5 windows x 3 crops, or with tsn 2 interleaved samplings x 3 crops).
    repeat_aug R: decode once, return R differently cropped/flipped clips of the same frames (VideoMAE's
    `num_sample`, ST-MAE / MGMAE repeated augmentation) to amortise decoding.
    randaug_n, randaug_m, reprob: VideoMAE's finetuning RandAugment and random erasing (`finetune_transforms`),
    'finetune' mode only; off by default (0), and off means the clips are exactly those without them.
    text_maps: a masking.TextMaps (TGM from maps made offline): one of the video's captions is drawn per video and
    each sample carries it ('caption') and its map at the clip's frames ('text_map', for the mask_fn).
    __getitem__ returns a list of dicts (R of them; in 'test' mode one per view); see `collate`.
    """

    def __init__(self, list_file, root="", captions=None, mode="pretrain", num_frames=16, sampling_rate=4,
                 input_size=224, repeat_aug=1, flip=True, tsn=False, motion=False, mask_fn=None, seed=0,
                 test_num_segment=5, test_num_crop=3, short_side=None, require_captions=False,
                 randaug_n=0, randaug_m=7, reprob=0.0, text_maps=None):
        if mode not in ("pretrain", "finetune", "val", "test"):
            raise ValueError(f"mode must be pretrain, finetune, val or test, not {mode!r}")
        self.list_file = list_file
        self.items = read_list(list_file, root)
        prefix = os.path.join(root, "") if root else ""
        # captions are keyed by the path as written in the list, without --root
        self.rel = [p[len(prefix):] if prefix and p.startswith(prefix) else p for p, _ in self.items]
        self.captions = read_captions(captions) if isinstance(captions, (str, os.PathLike)) else (captions or {})
        self.mode, self.num_frames, self.sampling_rate = mode, num_frames, sampling_rate
        self.input_size, self.repeat_aug, self.flip, self.tsn = input_size, repeat_aug, flip, tsn
        self.motion, self.mask_fn, self.seed, self.short_side = motion, mask_fn, seed, short_side
        self.require_captions = require_captions or text_maps is not None
        self.text_maps = text_maps
        self.test_num_segment = 2 if tsn else test_num_segment  # SSv2: the two interleaved samplings
        self.test_num_crop = test_num_crop
        self.randaug, self.erase = finetune_transforms(randaug_n, randaug_m, reprob) if mode == "finetune" else (None, None)
        self.bad = {}  # index -> reason, per process (each DataLoader worker keeps its own)
        self.epoch = 0

    def __len__(self):
        return len(self.items)

    def set_epoch(self, epoch):
        """Call before each epoch's DataLoader iterator is made (the workers get a copy of the dataset then)."""
        self.epoch = epoch

    def rng(self, index):
        """The generator of every random draw for video `index` this epoch: seeded by (seed, epoch, index), not
        by the worker, so a clip does not depend on which worker made it, how many workers there are, or where
        a resumed run restarted: that is what makes `pretrain.py --resume` continue the same trajectory."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def _indices(self, info, rng):
        n, F_, r = info.num_frames, self.num_frames, self.sampling_rate
        if self.mode == "pretrain":
            return pretrain_indices(n, F_, r, rng)
        if self.mode == "finetune":
            return tsn_indices(n, F_, rng) if self.tsn else finetune_indices(n, F_, r, rng)
        if self.mode == "val":
            # NOTE: differs from VideoMAE, whose 'validation' mode draws a random clip: a fixed centre
            # view makes the per-epoch validation number reproducible
            return tsn_indices(n, F_, rng, test_offset=1) if self.tsn else test_indices(n, F_, r, 0, num_views=1)
        views = [tsn_indices(n, F_, rng, test_offset=t) if self.tsn else test_indices(n, F_, r, t, self.test_num_segment)
                 for t in range(self.test_num_segment)]
        return np.concatenate(views)  # decoded together, split per view below

    def _crops(self, info, rng):
        H, W, S = info.height, info.width, self.input_size
        if self.mode == "pretrain":
            return [multiscale_crop(H, W, S, flip=self.flip, rng=rng) for _ in range(self.repeat_aug)]
        if self.mode == "finetune":
            return [random_resized_crop(H, W, flip=self.flip, rng=rng) for _ in range(self.repeat_aug)]
        if self.mode == "val":
            return [uniform_crop(H, W, S, 0, num_crops=1)]
        return [uniform_crop(H, W, S, s, self.test_num_crop) for s in range(self.test_num_crop)]

    def _load(self, index, rng):
        path, label = self.items[index]
        if self.require_captions and not self.captions.get(self.rel[index]):
            # a video caption.py could not caption: text-guided masks and L_NCE have nothing to use
            raise VideoError("no caption for it in the captions file")
        frames, mvs, indices, info = read_clip(path, lambda info: self._indices(info, rng), self.motion, self.short_side)
        x = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, C, H, W) uint8
        T = self.num_frames
        if self.text_maps is not None:  # TGM from maps made offline: the caption is drawn here, with its map
            captions = self.captions[self.rel[index]]
            maps, map_frames = self.text_maps.load(self.rel[index], captions)  # (n, F, g_h, g_w), (F,)
            pick = int(rng.integers(len(captions)))
            nearest = np.abs(map_frames[None, :] - indices[:, None]).argmin(1)  # each clip frame's stored frame
        samples = []
        for crop in self._crops(info, rng):
            # 'test' decodes all windows at once: view t is frames [t*T, (t+1)*T), crops vary fastest
            views = range(self.test_num_segment) if self.mode == "test" else [0]
            for t in views:
                # RandAugment works on uint8 pixels, so the crop is rounded to them; without it the crop stays float
                dtype = torch.uint8 if self.randaug is not None else torch.float32
                clip = apply_crop(x[t * T:(t + 1) * T], crop, self.input_size, dtype)  # (T, C, S, S)
                if self.randaug is not None or self.erase is not None:
                    video = augment_clip(clip, self.randaug, self.erase, seed=int(rng.integers(2 ** 62)))
                else:
                    video = normalize(clip.permute(0, 2, 3, 1))  # (C, T, S, S)
                s = {"video": video, "label": label, "index": index,
                     "captions": self.captions.get(self.rel[index], []), "crop": crop,
                     "frame_size": (info.height, info.width), "bad": []}
                if self.motion:
                    s["motion"] = mvs[t * T:(t + 1) * T]
                if self.text_maps is not None:
                    s["caption"], s["text_map"] = captions[pick], maps[pick, nearest[t * T:(t + 1) * T]]  # (T, g_h, g_w)
                if self.mode == "test":
                    s["view"] = (t, len(samples) // self.test_num_segment)
                if self.mask_fn is not None:
                    with torch.random.fork_rng(devices=[]):  # the masker draws from torch: seed it from rng too
                        torch.manual_seed(int(rng.integers(2 ** 62)))
                        s["mask"], s["mask_fallback"] = self.mask_fn(s)  # (N,) bool, True = masked; in the worker
                samples.append(s)
        if self.mode == "test":
            # VideoMAE's order: temporal window outer, crop inner
            samples.sort(key=lambda s: s["view"])
        return samples

    def __getitem__(self, index):
        rng, skipped = self.rng(index), []
        while True:
            if index not in self.bad:
                try:
                    samples = self._load(index, rng)
                    samples[0]["bad"] = skipped  # once per video, not per augmented copy
                    return samples
                except VideoError as e:
                    self.bad[index] = str(e)
                    log.warning("skipping bad video %s: %s", self.items[index][0], e)
            skipped.append((self.items[index][0], self.bad[index]))
            if len(self.bad) == len(self.items):
                raise RuntimeError(f"every video in {self.list_file} is unreadable (e.g. {skipped[-1][0]}: "
                                   f"{skipped[-1][1]}); check --data and --root")
            # another random video that is not known to be bad: at most len(items) tries in all
            good = np.setdiff1d(np.arange(len(self.items)), np.fromiter(self.bad, dtype=np.int64))
            index = int(good[rng.integers(len(good))])


def collate(batch):
    """Flatten the per-video lists (repeat_aug copies or test views) and stack into one batch dict."""
    flat = [s for samples in batch for s in samples]
    out = {"video": torch.stack([s["video"] for s in flat]),  # (B, C, T, H, W)
           "label": torch.tensor([s["label"] for s in flat]),
           "index": torch.tensor([s["index"] for s in flat]),
           "captions": [s["captions"] for s in flat], "crop": [s["crop"] for s in flat],
           "frame_size": [s["frame_size"] for s in flat], "bad": [b for s in flat for b in s["bad"]]}
    if "mask" in flat[0]:
        out["mask"] = torch.stack([s["mask"] for s in flat])  # (B, N) bool, True = masked
    for key in ("motion", "view", "mask_fallback", "caption"):
        if key in flat[0]:
            out[key] = [s[key] for s in flat]
    return out


# ----------------------------------------------------------------------------- the demo dataset
# Shaded, patterned shapes doing one of 8 actions over a lit background that drifts, with a small distractor. The
# actor glows: its white light falls on the background around it, so the patches next to it carry smooth structure
# that says where it is. Shading, pattern and glow give the paper's normalised-pixel target something to predict inside
# a patch; flat colours left it nothing beyond the mean (loss_mse stalled at 1.0), and so did high-contrast
# background textures (nothing in the visible 10% says what lies under a masked tube). The actions are chosen to
# survive horizontal flip (no left vs right), so the default flip augmentation never turns one class into another,
# and each caption stays true of the flipped clip.

DEMO_VERSION = 4  # 3: shading, patterns, the actor's glow, a lit drifting background, frame captions, 40 + 10 a class;
                  # 4: the glow is white light, not the actor's colour
DEMO_ACTIONS = [("moving up", "moves up"), ("moving down", "moves down"), ("moving sideways", "moves sideways"),
                ("growing", "grows"), ("shrinking", "shrinks"), ("spinning", "spins"),
                ("bouncing", "bounces"), ("staying still", "stays still")]
DEMO_COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 230), "yellow": (235, 215, 40),
                "purple": (150, 60, 200), "orange": (245, 140, 30), "white": (240, 240, 240), "pink": (240, 120, 190)}
DEMO_BACKGROUNDS = {"dark blue": (20, 30, 80), "dark green": (20, 70, 35), "grey": (90, 90, 90), "brown": (90, 60, 30)}
DEMO_SHAPES = ["circle", "square", "triangle", "diamond"]
DEMO_TEXTURES = ["striped", "checkered", "dotted", "speckled"]
DEMO_SIZE, DEMO_FRAMES = (96, 128), 72  # (H, W); 72 frames: a 16 x 4 clip fits, with a little room to move
# the renderer's knobs: motion speed; the actor's radius (px); the background's light (+- grey levels across the
# frame) and drift (px per frame, the camera pans); the objects' pattern contrast and frequency (radians per
# radius); one-sided shading; the actor's glow (grey levels at its centre), its reach (in radii) and how much of the
# actor's colour it carries (0: white light; in the actor's colour it tinted a wide ring of background with the colour
# the caption names, and the demo CLIP's text-guided masks then covered the actor no better than chance: 0.50-0.53)
DEMO_KNOBS = dict(speed=1.0, radius=(16, 22), light=45, bg_drift=0.3, obj_tex=0.4, obj_f=(1.5, 2.5), shade=0.45,
                  glow=60, glow_sigma=2.0, glow_tint=0.0)


def _shape_mask(shape, u, v):
    """Inside-test in the object's own coordinates (radius 1)."""
    if shape == "circle":
        return u * u + v * v <= 1
    if shape == "square":
        return np.maximum(abs(u), abs(v)) <= 0.8
    if shape == "diamond":
        return abs(u) + abs(v) <= 1
    return (v <= 0.6) & (v >= 1.8 * abs(u) - 1.0)  # triangle, apex up


def _texture(kind, u, v, params):
    """A two-tone pattern (+1 / -1) of an object's own coordinates u, v (radius 1)."""
    f, phi, grid = params
    u, v = f * u, f * v  # one period of the pattern is 2 pi
    if kind == "striped":
        return np.sign(np.sin(u * np.cos(phi) + v * np.sin(phi)))
    if kind == "checkered":
        return np.sign(np.sin(u) * np.sin(v))
    if kind == "dotted":
        return np.where(np.cos(u) + np.cos(v) > 1.0, 1.0, -1.0)
    n = grid.shape[0]  # speckled: a fixed random grid of +-1 cells, half a period wide, tiled
    return grid[np.floor(u / np.pi).astype(int) % n, np.floor(v / np.pi).astype(int) % n]


def _texture_params(rng, f_range):
    return rng.uniform(*f_range), rng.uniform(0, np.pi), rng.choice([-1.0, 1.0], size=(8, 8))


def _render_demo(rng, label):
    """One clip as uint8 (T, H, W, 3), the main object's mask (T, H, W) bool (the object that performs the action,
    which the captions name first), and the words its captions use."""
    K = DEMO_KNOBS
    (H, W), T = DEMO_SIZE, DEMO_FRAMES
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    bg_name = list(DEMO_BACKGROUNDS)[rng.integers(len(DEMO_BACKGROUNDS))]
    # the background: its colour, lit by a spot of light falling off across it, on a canvas larger than the frame
    # that drifts in one direction (the camera pans)
    drift = rng.normal(size=2) * K["bg_drift"]
    pad = int(np.ceil(np.abs(drift).max() * T)) + 1
    cy, cx = np.mgrid[0:H + 2 * pad, 0:W + 2 * pad].astype(np.float32)
    ly, lx = rng.uniform(0, H + 2 * pad), rng.uniform(0, W + 2 * pad)
    light = K["light"] * (1 - 2 * np.sqrt((cy - ly) ** 2 + (cx - lx) ** 2) / np.hypot(H, W))
    canvas = np.array(DEMO_BACKGROUNDS[bg_name], np.float32) + light[..., None]
    video = np.empty((T, H, W, 3), np.float32)
    for f in range(T):
        oy, ox = (pad + np.round(drift * (f - T / 2))).astype(int)
        video[f] = canvas[oy:oy + H, ox:ox + W]
    colours = list(DEMO_COLOURS)
    ci, di = rng.choice(len(colours), size=2, replace=False)
    shape, dshape = DEMO_SHAPES[rng.integers(4)], DEMO_SHAPES[rng.integers(4)]
    tex, dtex = DEMO_TEXTURES[rng.integers(4)], DEMO_TEXTURES[rng.integers(4)]
    # the actor: centre, radius and angle per frame, by action
    action = DEMO_ACTIONS[label][0]
    sp = K["speed"] * rng.uniform(0.8, 1.2)  # a random speed
    t = np.arange(T) - T / 2  # frames from the middle
    R = rng.uniform(*K["radius"])
    cx0, cy0 = W / 2 + rng.uniform(-12, 12), H / 2 + rng.uniform(-8, 8)
    x, y, r, ang = np.full(T, cx0), np.full(T, cy0), np.full(T, R), np.full(T, rng.uniform(0, 2 * np.pi))
    if action == "moving up":
        y = cy0 - 0.9 * sp * t
    elif action == "moving down":
        y = cy0 + 0.9 * sp * t
    elif action == "moving sideways":
        x = cx0 + 1.3 * sp * t * rng.choice([-1, 1])
    elif action == "growing":
        r = R + 0.2 * sp * t
    elif action == "shrinking":
        r = R - 0.2 * sp * t
    elif action == "spinning":
        ang = ang + 0.12 * sp * t * rng.choice([-1, 1])
    elif action == "bouncing":
        y = cy0 + 15 - 30 * np.abs(np.sin(np.pi * (t / 28 * sp + rng.uniform())))
    r = np.maximum(r, 3.0)
    # the distractor: small, drifting slowly in a random direction
    d0, dv = np.array([rng.uniform(15, W - 15), rng.uniform(15, H - 15)]), rng.normal(size=2) * 0.1
    objects = [(d0[0] + dv[0] * t, d0[1] + dv[1] * t, np.full(T, rng.uniform(7, 9)), np.zeros(T) + rng.uniform(0, 6),
                colours[di], dshape, dtex, _texture_params(rng, K["obj_f"])),
               (x, y, r, ang, colours[ci], shape, tex, _texture_params(rng, K["obj_f"]))]
    if K["glow"]:  # the actor's light on the background, falling off over a few radii
        col = K["glow_tint"] * np.array(DEMO_COLOURS[colours[ci]], np.float32) / 255 + (1 - K["glow_tint"])
        for f in range(T):
            fall = np.exp(-((xx - x[f]) ** 2 + (yy - y[f]) ** 2) / (2 * (K["glow_sigma"] * r[f]) ** 2))
            video[f] += (K["glow"] * fall)[..., None] * col
    main_mask = np.zeros((T, H, W), bool)
    for n, (x0, y0, rad, a, name, shp, tx, tp) in enumerate(objects):
        col = np.array(DEMO_COLOURS[name], np.float32)
        for f in range(T):
            # draw inside the object's bounding box only
            ya, yb = max(int(y0[f] - rad[f]) - 1, 0), min(int(y0[f] + rad[f]) + 2, H)
            xa, xb = max(int(x0[f] - rad[f]) - 1, 0), min(int(x0[f] + rad[f]) + 2, W)
            if ya >= yb or xa >= xb:
                continue
            dx, dy = xx[ya:yb, xa:xb] - x0[f], yy[ya:yb, xa:xb] - y0[f]
            c, sn = np.cos(a[f]), np.sin(a[f])
            u, v = (c * dx + sn * dy) / rad[f], (-sn * dx + c * dy) / rad[f]
            inside = _shape_mask(shp, u, v)
            # lit from one side in the object's own frame (so spinning turns the shading), its pattern, a dark rim
            shade = (1 - K["shade"] * (1 - u.clip(-1, 1)) / 2) * (1 + K["obj_tex"] * 0.5 * (_texture(tx, u, v, tp) - 1))
            shade = np.where(_shape_mask(shp, u * 1.15, v * 1.15), shade, 0.35)
            box = video[f, ya:yb, xa:xb]
            box[inside] = (col * shade[..., None])[inside]
            if n == len(objects) - 1:                          # the actor, drawn last: what it covers is its own
                main_mask[f, ya:yb, xa:xb] |= inside
    words = dict(colour=colours[ci], shape=shape, texture=tex, action=DEMO_ACTIONS[label], bg=bg_name,
                 dcolour=colours[di], dshape=dshape, dtexture=dtex)
    return np.clip(video, 0, 255).astype(np.uint8), main_mask, words


# What one frame shows, the main object first, as BLIP-2 captions a keyframe: objects, colours, textures, the scene.
DEMO_CAPTIONS = ["a {texture} {colour} {shape} and a small {dcolour} {dshape} on a {bg} background",
                 "a glowing {colour} {shape} with a {texture} pattern in front of a {bg} wall",
                 "a picture of a {colour} {texture} {shape} next to a small {dcolour} {dshape}",
                 "a {colour} {shape} lighting up a {bg} surface",
                 "an image of a {texture} {colour} {shape}",
                 "a {colour} {shape} and a {dtexture} {dcolour} {dshape} on a {bg} background"]
DEMO_ACTION_CAPTION = "a {colour} {shape} that {verb} on a {bg} background"
DEMO_ACTION_RATE = 0.1  # the share of videos with one caption that names the action (one frame rarely shows it)


def _demo_captions(w, rng):
    """Three captions, as BLIP-2 gives for three keyframes: what one frame shows, and for about one video in ten
    one caption that names the action."""
    caps = [DEMO_CAPTIONS[i].format(**w) for i in rng.choice(len(DEMO_CAPTIONS), size=3, replace=False)]
    if rng.random() < DEMO_ACTION_RATE:
        caps[rng.integers(3)] = DEMO_ACTION_CAPTION.format(verb=w["action"][1], **w)
    return [re.sub(r"\ba (?=[aeiou])", "an ", c) for c in caps]  # "an orange square"


def write_video(path, frames, fps=25, gop=16):
    """uint8 (T, H, W, 3) -> H.264 mp4. No B-frames and no scene-cut keyframes: the P-frames carry the
    motion vectors that motion-guided masking reads, and keyframes come every `gop` frames."""
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = "yuv420p"
        s.options = {"g": str(gop), "bf": "0", "sc_threshold": "0", "preset": "ultrafast", "crf": "20"}
        for a in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
        c.mux(s.encode())


def demo_dataset(cache_dir=None, seed=0, train_per_class=40, val_per_class=10):
    """The built-in demo dataset, generated on first use -> dict(root, train, val, class_names, captions, objects).
    objects: one .npz, key = a video's file stem, value = its main object's mask, bool (T, H, W) as stored."""
    cache_dir = cache_dir or os.environ.get("TGM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tgm")
    name = f"demo-v{DEMO_VERSION}-seed{seed}" + ("" if (train_per_class, val_per_class) == (40, 10) else f"-{train_per_class}x{val_per_class}")
    root = os.path.join(cache_dir, name)
    paths = {k: os.path.join(root, f) for k, f in
             [("train", "train.txt"), ("val", "val.txt"), ("class_names", "class_names.txt"), ("captions", "captions.jsonl"),
              ("objects", "objects.npz")]}
    paths["root"] = root
    if os.path.isdir(root):
        return paths
    os.makedirs(cache_dir, exist_ok=True)
    # build in a temporary folder and rename it into place: a crash never leaves a half dataset, and
    # several processes (DDP ranks) starting at once each build one and the first rename wins
    tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir)
    try:
        os.makedirs(os.path.join(tmp, "videos"))
        lists, caps, objects = {"train": [], "val": []}, [], {}
        k = 0
        for split, per_class in (("train", train_per_class), ("val", val_per_class)):
            for label in range(len(DEMO_ACTIONS)):
                for _ in range(per_class):
                    rng = np.random.default_rng([seed, k])  # one stream per video: deterministic, order-free
                    frames, main_mask, words = _render_demo(rng, label)
                    rel = f"videos/{split}_{k:05d}.mp4"
                    write_video(os.path.join(tmp, rel), frames)
                    objects[f"{split}_{k:05d}"] = main_mask
                    lists[split].append(f"{rel} {label}\n")
                    caps.append(json.dumps({"video": rel, "captions": _demo_captions(words, rng), "source": "demo"}) + "\n")
                    k += 1
        for split in lists:
            with open(os.path.join(tmp, f"{split}.txt"), "w") as f:
                f.writelines(lists[split])
        with open(os.path.join(tmp, "class_names.txt"), "w") as f:
            f.writelines(a[0] + "\n" for a in DEMO_ACTIONS)
        with open(os.path.join(tmp, "captions.jsonl"), "w") as f:
            f.writelines(caps)
        np.savez_compressed(os.path.join(tmp, "objects.npz"), **objects)  # a few hundred kB: masks compress well
        os.rename(tmp, root)
    except OSError:
        if not os.path.isdir(root):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths
