"""Sec. 4.2 (pre-processing) "following [38]", VideoMAE: frame samplers (16-frame clips at a temporal stride, TSN for
SSv2), crops (multi-scale crop and flip; 5 temporal x 3 spatial test views, 2 x 3 for SSv2), finetuning augmentation,
and the dataset that serves clips to every stage; samplers and crops copy github.com/MCG-NJU/VideoMAE, cited per
function. Sec. 3.2 / 3.3: a video's captions ride along with its clip, and every crop is a resolution-free `Crop`, so
motion- and text-guided masks move with the clip. Below the dataset: list and caption files, PyAV's reader.

    loader = DataLoader(VideoDataset("train.txt", root="videos/", captions="captions.jsonl"), collate_fn=collate)
"""
import json
import logging
import math
import os
import sys
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

# ----------------------------------------------------------------------------- frame samplers (VideoMAE)
# Each returns int frame indices; rng is a numpy Generator, whose rng.integers(n) is VideoMAE's np.random.randint(n)

def pretrain_indices(num_video_frames, num_frames, sampling_rate, rng):
    """VideoMAE pretraining clip: kinetics.py `VideoMAE._sample_train_indices` (num_segments=1) and
    `_video_TSN_decord_batch_loader`, a random start, then `num_frames` frames `sampling_rate` apart."""
    skip_length = num_frames * sampling_rate
    average_duration = num_video_frames - skip_length + 1
    offset = rng.integers(average_duration) + 1 if average_duration > 0 else 1  # 1-based, as VideoMAE
    ids = []
    for _ in range(num_frames):
        ids.append(offset - 1)
        # VideoMAE steps only while `offset + new_step < duration`, so the very last frame of the video is never
        # sampled and a short clip repeats the frame before it: we keep this off-by-one exactly
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
    """TSN sampling for SSv2, one frame per segment: ssv2.py `SSVideoClsDataset.loadvideo_decord`. test_offset None:
    training, a random frame per segment; 0 / 1: a test view, VideoMAE's [chunk_nb::2] of the sorted starts and mids."""
    if test_offset is None:
        average_duration = num_video_frames // num_segments
        if average_duration > 0:
            return np.arange(num_segments) * average_duration + rng.integers(average_duration, size=num_segments)
        if num_video_frames > num_segments:
            return np.sort(rng.integers(num_video_frames, size=num_segments))
        return np.zeros(num_segments, dtype=np.int64)  # as VideoMAE: a tiny video gives frame 0 only
    tick = num_video_frames / float(num_segments)
    all_index = [int(tick / 2.0 + tick * x) for x in range(num_segments)] + [int(tick * x) for x in range(num_segments)]
    return np.sort(np.array(all_index, dtype=np.int64))[test_offset::2]


def test_indices(num_video_frames, num_frames, sampling_rate, view, num_views=5):
    """Test window `view` of `num_views`, evenly spaced over the strided video: kinetics.py `VideoClsDataset` test."""
    all_index = list(range(0, num_video_frames, sampling_rate))
    while len(all_index) < num_frames:
        all_index.append(all_index[-1])
    # NOTE: differs from VideoMAE for num_views == 1 (it divides by zero there): we take the centre window
    temporal_step = max(1.0 * (len(all_index) - num_frames) / max(num_views - 1, 1), 0)
    temporal_start = int(view * temporal_step) if num_views > 1 else int(temporal_step / 2)
    return np.array(all_index[temporal_start:temporal_start + num_frames], dtype=np.int64)


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
    """Crop, resize (bilinear, antialiased like PIL) and flip a (..., H, W) tensor -> (..., size, size) of `dtype`
    (default x's; an integer dtype rounds). Only the crop's pixels are converted, not the whole frame's."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    H, W = x.shape[-2:]
    y0, x0 = min(int(round(crop.top * H)), H - 1), min(int(round(crop.left * W)), W - 1)
    y1 = max(int(round((crop.top + crop.height) * H)), y0 + 1)
    x1 = max(int(round((crop.left + crop.width) * W)), x0 + 1)
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
    """The short side at which the smallest multi-scale crop still spans `input_size` pixels: decode no larger."""
    return math.ceil(input_size / min(scales))


def multiscale_crop(H, W, size, scales=MULTISCALE_SCALES, flip=True, rng=None):
    """VideoMAE pretraining crop: transforms.py `GroupMultiScaleCrop` (max_distort=1, fix_crop, more_fix_crop)."""
    crop_sizes = [int(min(W, H) * x) for x in scales]
    crop_sizes = [size if abs(x - size) < 3 else x for x in crop_sizes]  # square output: VideoMAE's crop_h = crop_w
    pairs = [(w, h) for i, h in enumerate(crop_sizes) for j, w in enumerate(crop_sizes) if abs(i - j) <= 1]
    cw, ch = pairs[rng.integers(len(pairs))]
    w_step, h_step = (W - cw) // 4, (H - ch) // 4
    offsets = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2),  # corners and centre
               (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]  # `more_fix_crop`
    ow, oh = offsets[rng.integers(len(offsets))]
    # NOTE: differs from VideoMAE: its pretraining has no flip; the paper adds one (Sec. 4.2, off for SSv2)
    return _crop_from_pixels(H, W, oh * h_step, ow * w_step, ch, cw, flip and rng.random() < 0.5)


def random_resized_crop(H, W, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip=True, rng=None):
    """VideoMAE finetuning augmentation: video_transforms.py `_get_param_spatial_crop`, then a random flip."""
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
    long = int(short_side * max(H, W) / min(H, W))  # the long side after video_transforms.resize_clip
    start = (int(spatial_idx * (long - short_side) / (num_crops - 1)) if num_crops > 1
             else int(round((long - short_side) / 2)))
    if H >= W:
        return Crop(start / long, 0.0, short_side / long, 1.0)
    return Crop(0.0, start / long, 1.0, short_side / long)


def normalize(frames):
    """(T, H, W, 3) values in [0, 255] (uint8 or float) -> ImageNet-normalised float (C, T, H, W)."""
    x = torch.as_tensor(frames).float().div(255.0)
    x = (x - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    return x.permute(3, 0, 1, 2).contiguous()  # (C, T, H, W)


# ----------------------------------------------------------------------------- finetuning augmentation

def finetune_transforms(randaug_n=4, randaug_m=7, reprob=0.25):
    """VideoMAE's finetuning augmentation (run_class_finetuning.py: --aa rand-m7-n4-mstd0.5-inc1, --reprob 0.25,
    --remode pixel) as torchvision's -> (randaug, erase), None when off. NOTE: differs from VideoMAE, whose are timm's
    (docs/design.md "Finetuning augmentation" lists the differences); 11 bins: torchvision's bin m is timm's level m."""
    randaug = T.RandAugment(num_ops=randaug_n, magnitude=randaug_m, num_magnitude_bins=11,
                            interpolation=T.InterpolationMode.BILINEAR, fill=[128, 128, 128]) if randaug_n > 0 else None
    # value="random": per-pixel N(0, 1) in the normalised space (VideoMAE's --remode pixel); area and aspect: defaults
    erase = T.RandomErasing(p=reprob, value="random") if reprob > 0 else None
    return randaug, erase


def augment_clip(clip, randaug, erase, seed):
    """A (T, C, S, S) crop -> ImageNet-normalised (C, T, S, S), augmented with torch's draws seeded by `seed`.
    RandAugment acts on the [0, 255] pixels (as timm's on PIL images), random erasing on the normalised ones (as
    VideoMAE). NOTE: differs from VideoMAE, which augments the whole frames before the crop: we augment the crop."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if randaug is not None:
            clip = randaug(clip)                               # (T, C, S, S) uint8, one draw for all T (as VideoMAE)
        x = normalize(clip.permute(0, 2, 3, 1))                # (C, T, S, S)
        if erase is not None:
            x = erase(x.transpose(0, 1)).transpose(0, 1).contiguous()  # as (T, C, S, S): one box for all T
    return x


# ----------------------------------------------------------------------------- dataset

class VideoDataset(torch.utils.data.Dataset):
    """A list file (+ captions) -> clips with label, captions and crop; unreadable videos are skipped and reported.
    mode: 'pretrain', 'finetune', 'val' (the centre view) or 'test' (every test view from one decode). repeat_aug R: R
    differently cropped clips of one decode (VideoMAE's `num_sample`). randaug_n/m, reprob: 'finetune' only; off (0)
    gives exactly the clips without them. text_maps (maps.TextMaps): a caption drawn per video rides with its map at
    the clip's frames ('caption', 'text_map'). __getitem__ -> a list of R sample dicts ('test': one per view)."""

    def __init__(self, list_file, root="", captions=None, mode="pretrain", num_frames=16, sampling_rate=4,
                 input_size=224, repeat_aug=1, flip=True, tsn=False, motion=False, mask_fn=None, seed=0,
                 test_num_segment=5, test_num_crop=3, short_side=None, require_captions=False,
                 randaug_n=0, randaug_m=7, reprob=0.0, text_maps=None):
        if mode not in ("pretrain", "finetune", "val", "test"):
            raise ValueError(f"mode must be pretrain, finetune, val or test, not {mode!r}")
        self.list_file = list_file
        listed = read_list(list_file)
        self.rel = [p for p, _ in listed]  # the paths as written in the list, without --root: the captions' keys
        self.items = [(os.path.join(root, p), y) for p, y in listed]
        self.captions = read_captions(captions) if isinstance(captions, (str, os.PathLike)) else (captions or {})
        self.mode, self.num_frames, self.sampling_rate = mode, num_frames, sampling_rate
        self.input_size, self.repeat_aug, self.flip, self.tsn = input_size, repeat_aug, flip, tsn
        self.motion, self.mask_fn, self.seed, self.short_side = motion, mask_fn, seed, short_side
        self.text_maps, self.require_captions = text_maps, require_captions or text_maps is not None
        self.test_num_segment = 2 if tsn else test_num_segment  # SSv2: the two interleaved samplings
        self.test_num_crop = test_num_crop
        augment = mode == "finetune"  # VideoMAE's RandAugment and random erasing: when finetuning only
        self.randaug, self.erase = finetune_transforms(randaug_n, randaug_m, reprob) if augment else (None, None)
        self.bad, self.epoch = {}, 0  # bad: index -> reason, per process (each DataLoader worker keeps its own)

    def __len__(self):
        return len(self.items)

    def set_epoch(self, epoch):
        """Call before each epoch's DataLoader iterator is made (the workers get a copy of the dataset then)."""
        self.epoch = epoch

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
        views = [tsn_indices(n, F_, rng, t) if self.tsn else test_indices(n, F_, r, t, self.test_num_segment)
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
        frames, mvs, indices, info = read_clip(path, lambda i: self._indices(i, rng), self.motion, self.short_side)
        x = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, C, H, W) uint8
        T = self.num_frames
        if self.text_maps is not None:  # TGM from maps made offline: the caption is drawn here, with its map
            captions = self.captions[self.rel[index]]
            maps, map_frames = self.text_maps.load(self.rel[index], captions)  # (n, F, g_h, g_w), (F,)
            pick = int(rng.integers(len(captions)))
            nearest = np.abs(map_frames[None, :] - indices[:, None]).argmin(1)  # each clip frame's stored frame
        crops = self._crops(info, rng)
        samples = []
        # RandAugment works on uint8 pixels, so the crop is rounded to them; without it the crop stays float
        dtype = torch.uint8 if self.randaug is not None else torch.float32
        # 'test' decodes every window at once: view t is frames [t*T, (t+1)*T); VideoMAE's order: window, then crop
        for t in range(self.test_num_segment) if self.mode == "test" else [0]:
            for c, crop in enumerate(crops):
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
                    s["caption"] = captions[pick]
                    s["text_map"] = maps[pick, nearest[t * T:(t + 1) * T]]  # (T, g_h, g_w)
                if self.mode == "test":
                    s["view"] = (t, c)
                if self.mask_fn is not None:
                    with torch.random.fork_rng(devices=[]):  # the masker draws from torch: seed it from rng too
                        torch.manual_seed(int(rng.integers(2 ** 62)))
                        s["mask"], s["mask_fallback"] = self.mask_fn(s)  # (N,) bool, True = masked; in the worker
                samples.append(s)
        return samples

    def __getitem__(self, index):
        # every draw for this video comes from (seed, epoch, index), not from the worker: a clip does not depend on
        # which worker made it, how many there are, or where a resumed run restarted (what makes --resume exact)
        rng, skipped = np.random.default_rng([self.seed, self.epoch, index]), []
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


# ----------------------------------------------------------------------------- a command line's mistakes

class UsageError(SystemExit):
    """A command line that cannot work: its one sentence goes to stderr (rank 0), the exit code is 2 (argparse's)."""

    def __init__(self, msg):
        super().__init__(2)
        self.msg = msg
        if int(os.environ.get("RANK", 0)) == 0:
            print(msg, file=sys.stderr, flush=True)

    def __str__(self):
        return self.msg


def check_flags(prog, args):
    """What every script's flags must hold, checked before any work: counts of at least 1, a mask ratio in (0, 1),
    files and folders that exist (the flags a script has of these)."""
    for k in ("batch_size", "epochs"):
        if getattr(args, k, 1) < 1:
            raise UsageError(f"{prog}: --{k.replace('_', '-')} {getattr(args, k)}: it must be at least 1")
    if getattr(args, "ratio", None) is not None and not 0 < args.ratio < 1:
        raise UsageError(f"{prog}: --ratio {args.ratio}: the share of tokens hidden lies strictly between 0 and 1 "
                         "(paper: 0.6 tgm, 0.75 mgm, 0.9 tube and random)")
    for k in ("data", "val_data", "captions", "class_names", "checkpoint", "resume", "video"):
        path = getattr(args, k, None)
        if path not in (None, "auto", "none") and not os.path.exists(path):
            raise UsageError(f"{prog}: --{k.replace('_', '-')} {path}: no such file or folder")


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
        # webm, mkv, avi may store no frame count: count packets (a demux, no decoding: milliseconds), then rewind
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
    """Decode the frames whose indices are in the sorted array `wanted` -> {index: (frame, mvs)}. With seek, jump to
    the keyframe before wanted[0] and number frames from their pts; without, decode from the start and count them."""
    tb = stream.time_base
    rate = Fraction(stream.average_rate) if stream.average_rate else Fraction(info.fps)  # frames per second
    start = stream.start_time or 0
    lo, hi = int(wanted[0]), int(wanted[-1])
    if seek and lo > 0:
        container.seek(start + int(lo / (rate * tb)), backward=True, any_frame=False, stream=stream)
    size = (None, None)  # (width, height); None: the coded size
    if short_side and min(info.height, info.width) > short_side:
        # decode straight to the size the crop needs, far cheaper in swscale than later (a Crop in fractions still fits)
        s = short_side / min(info.height, info.width)
        size = (max(1, round(info.width * s)), max(1, round(info.height * s)))
    got, want, last = {}, set(wanted.tolist()), None
    reformatter = VideoReformatter()
    for count, frame in enumerate(container.decode(stream)):
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
        # the header promised more frames than the file holds: the tail repeats the last one (VideoMAE's short videos)
        got.setdefault(hi, _convert(last, motion, size, reformatter))
    return got


def _convert(frame, motion, size, reformatter):
    # any format -> rgb24 through one scaler per video, on one thread: frame.to_ndarray(format=...) makes a scaler per
    # frame with a thread per core, alive until a full GC pass (160 idle threads in forked workers: a segfault in CI)
    rgb = reformatter.reformat(frame, format="rgb24", width=size[0], height=size[1], threads=1).to_ndarray()
    mvs = frame.side_data.get("MOTION_VECTORS") if motion else None  # None on I-frames too
    return rgb, (mvs.to_ndarray() if mvs is not None else None)


def read_clip(path, sample_indices, motion=False, short_side=None, seek=True):
    """Open once, choose indices from the frame count, decode only those. Raises VideoError.
    sample_indices: VideoInfo -> int array of frame indices (any order, repeats allowed); short_side: decode at this
    shorter side when the video is larger (None: full size). -> (frames uint8 (T, H, W, 3), motion, indices, info).
    motion (None if not asked): T entries, each PyAV's MotionVectors.to_ndarray() in coded-frame pixels, or None."""
    container, stream, info = _open(path)
    try:
        indices = np.asarray(sample_indices(info), dtype=np.int64)  # outside the except: a bug is no bad video
        wanted, slot = np.unique(np.clip(indices, 0, info.num_frames - 1), return_inverse=True)
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
    picked = [got[i] for i in nearest[slot].tolist()]
    frames = np.stack([p[0] for p in picked])
    return frames, ([p[1] for p in picked] if motion else None), indices, info


def read_frames(path, indices, motion=False, short_side=None, seek=True):
    """Frames at the given indices as uint8 (T, H, W, 3) [, per-frame motion vectors]. Raises VideoError."""
    frames, mvs, _, _ = read_clip(path, lambda info: indices, motion, short_side, seek)
    return (frames, mvs) if motion else frames

