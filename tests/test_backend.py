"""Backend selection, availability reporting and `python -m ganops info`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import ganops
from ganops import _backend


@pytest.fixture
def rankings(monkeypatch, tmp_path):
    """Point auto selection at a rankings file written by the test."""

    def write(content: dict) -> None:
        path = tmp_path / "rankings.json"
        path.write_text(json.dumps(content))
        monkeypatch.setattr(_backend, "RANKINGS_PATH", path)
        _backend.measured_rankings.cache_clear()

    yield write
    _backend.measured_rankings.cache_clear()


def test_explicit_argument_beats_context_and_environment(monkeypatch):
    monkeypatch.setenv("GANOPS_BACKEND", "triton")
    with ganops.use_backend("cpp"):
        assert _backend.requested_backend("reference") == "reference"
        assert _backend.requested_backend(None) == "cpp"
    assert _backend.requested_backend(None) == "triton"
    monkeypatch.delenv("GANOPS_BACKEND")
    assert _backend.requested_backend(None) == "auto"


def test_context_managers_nest_and_restore():
    with ganops.use_backend("reference"):
        with ganops.use_backend("triton"):
            assert _backend.requested_backend(None) == "triton"
        assert _backend.requested_backend(None) == "reference"
    assert _backend.requested_backend(None) == "auto"


def test_unknown_names_are_rejected_with_the_source_named(monkeypatch):
    with pytest.raises(ValueError, match=r"use_backend\(name\) must be one of"):
        with ganops.use_backend("fast"):
            pass
    monkeypatch.setenv("GANOPS_BACKEND", "fast")
    with pytest.raises(ValueError, match="environment variable GANOPS_BACKEND must be one of"):
        ganops.minibatch_stddev(torch.randn(4, 2, 2, 2))


def test_auto_follows_measured_ranking_and_skips_unavailable(rankings, monkeypatch):
    rankings({"minibatch_stddev": {"cpu": {"ranking": ["triton", "cpp", "reference"]}}})
    monkeypatch.setattr(
        _backend, "unavailable_reason", lambda backend, device: "missing" if backend == "triton" else None
    )
    assert _backend.auto_backend("minibatch_stddev", "cpu") == "cpp"


def test_auto_without_measurement_is_reference(rankings):
    rankings({})
    assert _backend.auto_backend("minibatch_stddev", "cpu") == "reference"
    assert _backend.auto_backend("minibatch_stddev", "cuda") == "reference"


def test_explicit_unavailable_backend_raises_instead_of_falling_back(monkeypatch):
    monkeypatch.setattr(_backend, "unavailable_reason", lambda backend, device: "no such thing here")
    with pytest.raises(RuntimeError, match="backend 'cpp' is unavailable for cpu tensors: no such thing here"):
        ganops.minibatch_stddev(torch.randn(4, 2, 2, 2), backend="cpp")


def test_triton_on_cpu_requires_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET=1" in _backend.unavailable_reason("triton", "cpu")


def test_committed_rankings_name_only_real_backends():
    for op, devices in _backend.measured_rankings().items():
        for device, entry in devices.items():
            assert set(entry["ranking"]) <= set(_backend.BACKENDS), (op, device)
            assert entry["source"].startswith("benchmarks/results/")


def test_import_survives_missing_triton_and_extension():
    """`import ganops` must work when triton and the compiled extension cannot be imported."""
    code = (
        "import sys; sys.modules['triton'] = None; sys.modules['ganops._C'] = None\n"
        "import torch, ganops\n"
        "from ganops import _backend\n"
        "print(_backend.unavailable_reason('triton', 'cuda'))\n"
        "print(_backend.unavailable_reason('cpp', 'cpu'))\n"
        "print(ganops.minibatch_stddev(torch.randn(4, 2, 2, 2)).shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = result.stdout.splitlines()
    assert "triton" in lines[0]
    assert "ganops._C" in lines[1]
    assert lines[2] == "torch.Size([4, 3, 2, 2])"


def test_info_command_lists_every_backend():
    result = subprocess.run([sys.executable, "-m", "ganops", "info"], capture_output=True, text=True, check=True)
    assert "torch" in result.stdout
    for backend in _backend.BACKENDS:
        assert backend in result.stdout
    assert "minibatch_stddev on cpu: auto ->" in result.stdout
