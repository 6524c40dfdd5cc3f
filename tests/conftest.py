"""Shared pytest setup: the repo root on sys.path, one thread per test process, no network."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The built-in demo dataset (data.demo_dataset), generated once per test session (~7 s):
    dict(root, train, val, class_names, captions) of paths."""
    import data
    return data.demo_dataset(cache_dir=str(tmp_path_factory.mktemp("tgm-cache")))
