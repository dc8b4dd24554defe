"""Encoder instances: several batcher workers share one model version's queue and run batches at once,
and the watchdog's restart, the admission estimate and the engines (OpenVINO streams) follow."""

from __future__ import annotations

import importlib.util
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from polling import wait_for
from repo_fixtures import running_server, write_cllm4rec

from common.openvino import compile_config
from server import errors
from server.batching import DynamicBatcher
from server.config import ServeConfig
from server.machine import detect, usable_cpus

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


def _meeting(parties: int):
    """A run_batch that returns only once `parties` batches are running at the same time."""
    barrier = threading.Barrier(parties, timeout=2.0)

    def run(payloads):
        barrier.wait()
        return [[float(p)] for p in payloads]

    return run


@pytest.mark.parametrize("instances", [1, 2])
def test_instances_run_batches_at_the_same_time(instances: int) -> None:
    b = DynamicBatcher("m", _meeting(2), max_batch_size=1, max_wait_ms=0, queue_size=8, instances=instances)
    futures = [b.submit(1), b.submit(2)]
    if instances == 2:
        assert [f.result(5) for f in futures] == [[1.0], [2.0]]
    else:  # one worker runs one batch at a time: the two never meet
        with pytest.raises(threading.BrokenBarrierError):
            futures[0].result(5)
    b.close()
    b.join(5)


def test_restart_replaces_every_instance_and_idle_ones_do_not_swallow_wakeups() -> None:
    release = threading.Event()
    calls: list[int] = []

    def run(payloads):
        calls.extend(payloads)
        if payloads == [1]:
            release.wait(10)  # a worker stuck in native code
        return [[float(p)] for p in payloads]

    b = DynamicBatcher("m", run, max_batch_size=1, max_wait_ms=0, queue_size=8, instances=2)
    stuck = b.submit(1)
    wait_for(lambda: b.running == 1, "the stuck job to run")
    wait_for(lambda: b.check(stall_seconds=0.05) == "stalled", "the stall to be seen")  # the other worker idles
    b.restart("stalled")
    with pytest.raises(errors.ServingError, match="restarted"):
        stuck.result(5)
    b.mark_available()
    # The idle worker of the old generation was waiting first; it must not take this wake-up and leave
    # the request with nobody to run it.
    assert b.submit(2).result(5) == [2.0]
    assert b.workers_alive and b.restarts == 1 and b.check(stall_seconds=5.0) is None
    release.set()
    b.close()
    b.join(5)


def test_expected_wait_is_shared_among_the_instances() -> None:
    gate = threading.Event()

    def run(payloads):
        gate.wait(10)
        return [[float(p)] for p in payloads]

    b = DynamicBatcher("m", run, max_batch_size=1, max_wait_ms=0, queue_size=8, max_queue_wait_s=2.7, instances=2)
    b.observe(1.0, 1)  # one second per request, as measured
    running = [b.submit(1), b.submit(2)]  # one per worker
    wait_for(lambda: b.running == 2, "both workers to run a job")
    queued = [b.submit(3), b.submit(4)]  # (2 running + 0 / 1 queued) / 2 workers + 1 s = 2.0 / 2.5 s: admitted
    with pytest.raises(errors.ServingError, match="--max-queue-wait-ms"):
        b.submit(5)  # (2 + 2) / 2 + 1 = 3 s > 2.7 s (with one worker the third request would already wait 3 s)
    gate.set()
    assert [f.result(5) for f in running + queued] == [[1.0], [2.0], [3.0], [4.0]]
    b.close()
    b.join(5)


def test_openvino_gets_a_stream_per_instance() -> None:
    assert compile_config("bf16", 1, 1) == {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": "1",
                                            "PERFORMANCE_HINT": "LATENCY"}
    assert compile_config("fp32", 2, 3) == {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": "6",
                                            "NUM_STREAMS": "3"}


@pytest.mark.parametrize("engine", ["onnxruntime-cpu:fp32"]
                         + (["openvino-cpu:fp32"] if HAS_OPENVINO else []))
def test_a_server_with_two_instances_answers_concurrent_histories_like_one(tmp_path: Path, engine: str) -> None:
    write_cllm4rec(tmp_path)
    histories = [[f"i{(3 * k + j) % 30}" for j in range(1 + k % 7)] for k in range(24)]
    answers = []
    for instances in (1, 2):
        with running_server(tmp_path, engine=engine, encoder_instances=instances) as (srv, client):
            with srv.registry.use("tiny-cllm") as mv:
                assert mv.batcher is not None and mv.batcher.instances == instances
            (model,) = [m for m in client.list_models().models if m.name == "tiny-cllm"]
            assert model.versions[-1].encoder_instances == instances
            with ThreadPoolExecutor(8) as pool:
                answers.append(list(pool.map(lambda h: client.recommend("tiny-cllm", history=h, top_k=5), histories)))
    for one, two in zip(*answers, strict=True):
        assert np.allclose([s for _, s in one.items], [s for _, s in two.items], atol=1e-4)


def test_auto_instances_are_the_usable_cores_over_the_threads_and_one_on_a_gpu_or_a_fast_encoder() -> None:
    auto = ServeConfig().encoders
    assert auto.encoder_instances == 0  # the default
    assert [auto.instances(c) for c in (1, 2, 8)] == [1, 2, 8]
    assert ServeConfig.flat(ort_threads=2).encoders.instances(8) == 4 and ServeConfig.flat(ort_threads=4).encoders.instances(2) == 1
    assert auto.instances(8, device="cuda") == 1
    assert auto.instances(8, encode_ms=0.3) == 1 and auto.instances(8, encode_ms=40.0) == 8
    assert ServeConfig.flat(instances_min_encode_ms=0.1).encoders.instances(8, encode_ms=0.3) == 8
    assert ServeConfig.flat(encoder_instances=3).encoders.instances(1, device="cuda", encode_ms=0.1) == 3  # a set flag wins
    with pytest.raises(ValueError, match="encoder_instances must be >= 0"):
        ServeConfig.flat(encoder_instances=-1)


def test_usable_cpus_follow_the_affinity_and_the_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import subprocess
    import sys

    code = "from server.machine import usable_cpus; print(usable_cpus())"
    one_core = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    assert one_core.stdout.strip() == "1"
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "1")  # how loky takes an explicit limit, like a CPU quota
    assert usable_cpus() == 1
    assert detect().cpus >= 1


# 1000 ms: a threshold the tiny model stays under even on a loaded machine (it measured 6 ms under a CPU hog,
# over the 5 ms default), so the outcome does not depend on how fast this machine is right now
@pytest.mark.parametrize("min_ms", [1000.0, 0.0])
def test_an_auto_sized_server_measures_its_encoder_and_reports_its_instances(tmp_path: Path, min_ms: float) -> None:
    write_cllm4rec(tmp_path)
    with running_server(tmp_path, encoder_instances=0, instances_min_encode_ms=min_ms) as (srv, client):
        with srv.registry.use("tiny-cllm") as mv:
            (chosen,) = [t for t in mv.gate_trials["user_encoder"] if t.label() == mv.engines["user_encoder"]]
            assert chosen.one_ms is not None and 0 < chosen.one_ms < 1000.0  # measured, and a tiny model
            expected = 1 if min_ms else detect().cpus  # a fast encoder gets one worker; else one per core
            assert mv.batcher is not None and mv.batcher.instances == expected
        (model,) = [m for m in client.list_models().models if m.name == "tiny-cllm"]
        assert model.versions[-1].encoder_instances == expected
