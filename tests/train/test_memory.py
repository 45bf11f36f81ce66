"""The allocator set-up of training subprocesses and the memory figures in reports."""

import os
import subprocess
import sys

import pytest

from bsrnn.train import memory


def test_allocator_env_preloads_jemalloc_once_and_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(memory, "jemalloc_path", lambda: "/lib/libjemalloc.so.2")
    env = memory.allocator_env({"LD_PRELOAD": "/other.so"})
    assert env["LD_PRELOAD"] == "/lib/libjemalloc.so.2 /other.so"
    assert memory.allocator_env(env)["LD_PRELOAD"] == env["LD_PRELOAD"]  # not twice
    assert "LD_PRELOAD" not in memory.allocator_env({"BSRNN_ALLOCATOR": "system"})
    with pytest.raises(ValueError, match="BSRNN_ALLOCATOR must be one of jemalloc, system"):
        memory.allocator_env({"BSRNN_ALLOCATOR": "tcmalloc"})
    monkeypatch.setattr(memory, "jemalloc_path", lambda: None)  # not installed: the system allocator
    assert "LD_PRELOAD" not in memory.allocator_env({})


@pytest.mark.skipif(memory.jemalloc_path() is None, reason="libjemalloc2 not installed")
def test_a_child_started_with_allocator_env_runs_on_jemalloc():
    code = ("import torch; from bsrnn.train import memory; x = torch.randn(1000, 1000); memory.release_free_memory();"
            "print(memory.allocator_name(), open('/proc/self/maps').read().count('jemalloc') > 0)")
    out = subprocess.run([sys.executable, "-c", code], env=memory.allocator_env(), capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["jemalloc", "True"]


@pytest.mark.skipif(memory.jemalloc_path() is None, reason="libjemalloc2 not installed")
def test_jemalloc_keeps_freed_pages_until_the_epoch_end_purge():
    """allocator_env turns jemalloc's decay off (freed pages stay for the next step's tensors,
    no page faults) and release_free_memory hands them back."""
    code = ("import os, torch; from bsrnn.train import memory\n"
            "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20\n"
            "x = torch.ones(100_000_000); x += 1; del x\n"  # 400 MB touched, then freed
            "kept = rss(); memory.release_free_memory(); print(kept - rss())")
    env = memory.allocator_env()
    assert env["MALLOC_CONF"] == memory.JEMALLOC_CONF
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert float(out.stdout) > 300  # MB the purge gave back
    assert memory.allocator_env({"MALLOC_CONF": "narenas:1"})["MALLOC_CONF"] == "narenas:1"  # the user's wins


def test_peak_rss_is_a_plausible_number_of_megabytes():
    assert 10 < memory.peak_rss_mb() < 64 * 1024
    memory.release_free_memory()  # safe to call anywhere


def test_peak_rss_of_a_child_is_its_own_not_its_parents():
    # ru_maxrss survives execve: a small child of a large parent would report the parent's peak
    code = "from bsrnn.train import memory; print(memory.peak_rss_mb())"
    big = bytearray(600 * 2**20)  # the parent's peak rises by 600 MB
    big[::4096] = b"x" * len(big[::4096])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    del big
    assert float(out.stdout) < memory.peak_rss_mb() - 300


def test_onednn_primitive_cache_is_bounded_for_training_but_a_users_setting_wins():
    from bsrnn.train.memory import ONEDNN_CACHE_ENV, allocator_env, bound_primitive_cache

    env = allocator_env({"PATH": "/bin"})
    assert env[ONEDNN_CACHE_ENV] == "64"
    assert allocator_env({ONEDNN_CACHE_ENV: "1024"})[ONEDNN_CACHE_ENV] == "1024"
    own = {}
    assert bound_primitive_cache(own) is own and own[ONEDNN_CACHE_ENV] == "64"


def test_both_training_loops_bound_the_cache_before_anything_else(monkeypatch):
    """oneDNN reads the capacity once, at its first primitive: the loops set it first thing."""
    from bsrnn.train import lm, loop

    class First(Exception):
        pass

    def called():
        raise First

    for module, fn in ((loop, loop.train), (lm, lm.train_lm)):
        monkeypatch.setattr(module, "bound_primitive_cache", called)
        with pytest.raises(First):
            fn(None)  # raised before the config is even read
