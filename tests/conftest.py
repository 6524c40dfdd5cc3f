"""Shared pytest setup: the repo root on sys.path, one thread per test process, no network; the demo dataset and
a tiny random CLIP, shared by the test files."""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The built-in demo dataset (demo.demo_dataset), generated once per test session (~45 s on 2 busy cores):
    dict(root, pretrain, train, val, class_names, captions, objects) of paths."""
    import demo as D
    return D.demo_dataset(cache_dir=str(tmp_path_factory.mktemp("tgm-cache")))


# A tiny open_clip model in open_clip's config format, random weights: the real loading path (frozen_clip.load_clip of
# a .json registers it under the file's stem, TINY_CLIP_NAME), a thousandth of ViT-B/32's cost. 32 px images in 8 px
# patches (a 4 x 4 token grid), 16-dim joint embedding.
TINY_CLIP_NAME = "tgm-test-tiny"
TINY_CLIP = {"embed_dim": 16, "quick_gelu": True,
             "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="session")
def tiny_clip_config(tmp_path_factory):
    """The path of TINY_CLIP's config file, for --clip-model and frozen_clip.load_clip."""
    path = tmp_path_factory.mktemp("clip") / f"{TINY_CLIP_NAME}.json"
    path.write_text(json.dumps(TINY_CLIP))
    return str(path)


@pytest.fixture(scope="session")
def tiny_clip_dim():
    """TINY_CLIP's embedding width E: the contrastive head's output must match it."""
    return TINY_CLIP["embed_dim"]


# -----------------------------------------------------------------------------
# torchrun runs of a stage, for the elastic-restart and start-up failure tests

def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script, argv, *torchrun_flags, timeout=300):
    """`torchrun --nproc_per_node=2 ... script argv` on the CPU, one thread per rank -> subprocess.CompletedProcess."""
    import subprocess
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           *torchrun_flags, script, *argv]
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=timeout)


def torchrun_two_nodes(script, argv, rdzv, timeout=300):
    """Two torchrun agents on this machine, as two nodes of one rank each, --max-restarts 2; rdzv: 'c10d' (one
    endpoint) or 'static' (--node-rank) -> (return codes, stdout + stderr of both). Killed at the timeout: a hang
    fails the test instead of stalling the suite."""
    import subprocess
    port, env = free_port(), {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--max-restarts=2"]
    kind = lambda i: ([f"--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=tgm-test"]
                      if rdzv == "c10d" else [f"--node-rank={i}", "--master-addr=127.0.0.1", f"--master-port={port}"])
    procs = [subprocess.Popen(launch + kind(i) + [script, *argv], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise AssertionError(f"two-node torchrun ({rdzv}) still running after {timeout} s: a hang")
    return [p.returncode for p in procs], "\n".join(outs)


# A stage whose rank 1 is SIGKILLed at the start of its second epoch, once rank 0 has written the first checkpoint,
# once per job (a marker beside the checkpoint): the restarted group (--max-restarts) then runs the stage as it is.
# Once per job, not per restart count: under c10d a node's count can stay 0 after the others' restart.
KILLED_RANK_SCRIPT = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
import {module} as stage

calls, epoch_start = [], stage.{hook}


def hooked(*a, **kw):
    calls.append(1)
    if len(calls) == 2 and os.environ["RANK"] == "1" and not os.path.exists({ckpt!r} + ".killed"):
        while not os.path.isfile({ckpt!r}):
            time.sleep(0.05)
        open({ckpt!r} + ".killed", "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return epoch_start(*a, **kw)


stage.{hook} = hooked
stage.main({parse})
"""


def killed_rank_script(path, module, hook, ckpt, parse):
    """Write KILLED_RANK_SCRIPT for module (pretrain or finetune), hooked on a function hook it calls once per epoch -> path."""
    with open(path, "w") as f:
        f.write(KILLED_RANK_SCRIPT.format(root=ROOT, module=module, hook=hook, ckpt=str(ckpt), parse=parse))
    return str(path)
