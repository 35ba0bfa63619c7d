"""Consolidation as a worker: a real `chroma run` server, two agent processes writing and
scoring, one `kd-memory worker` process training; every episode is stored once and both agents
end up scoring with the worker's latest checkpoint version, without restarting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ChromaServer

from langchain_kd_memory.callbacks import ConsolidationCallback
from langchain_kd_memory.checkpoint import checkpoint_versions
from langchain_kd_memory.embeddings import LocalEmbeddings
from langchain_kd_memory.storage import EpisodeStore
from langchain_kd_memory.trigger import RetrainTrigger
from langchain_kd_memory.value_models import checkpoint_prefix
from langchain_kd_memory.worker import ConsolidationWorker

NAMESPACE = "team"
PER_AGENT = 30
EVERY = 15

AGENT = textwrap.dedent("""
    import json, sys, time
    from langchain_kd_memory import DistilledEpisodicMemory, EpisodeStore, NotTrainedError
    from langchain_kd_memory.storage import http_client
    host, port, model_dir, name, target_file = sys.argv[1:6]
    store = EpisodeStore("workerstore", client=http_client(host, int(port)))
    memory = DistilledEpisodicMemory(store=store, model_dir=model_dir, namespace="team",
                                     model_refresh_s=0.2)
    topics = ["refund for my order", "weather this weekend", "invoice copy"]
    versions = []
    for i in range(30):
        topic = topics[i % 3]
        memory.add_episode(f"{name} asks about the {topic} ({i})", "Here you go.",
                           reward=1.0 if topic != "weather this weekend" else 0.0,
                           episode_id=f"{name}-{i}")
        try:
            memory.score("Can I get a refund?")
            versions.append(memory.model_version())
        except NotTrainedError:
            versions.append(None)
    print("written", flush=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            target = int(open(target_file).read())
        except (OSError, ValueError):
            time.sleep(0.2)
            continue
        if memory.model_version() == target:
            break
        time.sleep(0.2)
    estimate = memory.score("Can I get a refund for my order?")
    print(json.dumps({"version": memory.model_version(), "seen": versions,
                      "refund": estimate.expected}), flush=True)
""")


@pytest.mark.slow
def test_two_agents_and_a_worker_share_one_server(
    restartable_server: ChromaServer, tmp_path: Path
) -> None:
    server = restartable_server
    models, target = tmp_path / "models", tmp_path / "target_version"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
    base = [sys.executable, "-m", "langchain_kd_memory.cli", "--chroma-host", server.host,
            "--chroma-port", str(server.port), "--collection", "workerstore",
            "--model-dir", str(models), "--threads", "1"]
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([*base, "worker", "--every", str(EVERY), "--poll", "0.5"],
                              env=env, stderr=log)
    agents = [
        subprocess.Popen([sys.executable, "-c", AGENT, server.host, str(server.port),
                          str(models), name, str(target)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("alice", "bob")
    ]
    try:
        for agent in agents:
            assert agent.stdout is not None and agent.stdout.readline().strip() == "written"
        trigger = RetrainTrigger(EVERY, lambda: str(models))  # reads what the worker noted
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # until no training is due any more
            if 2 * PER_AGENT - trigger.trained_at(NAMESPACE) < EVERY:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the worker did not keep up with the ratings")
        latest = checkpoint_versions(checkpoint_prefix(str(models), NAMESPACE))[-1]
        assert latest >= 2  # trained once 15+ ratings were in, and again later
        target.write_text(str(latest))
        results = []
        for agent in agents:
            out, err = agent.communicate(timeout=200)
            assert agent.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        for agent in agents:
            agent.kill()
    assert all(r["version"] == latest for r in results)  # picked up without a restart
    assert all(r["refund"] > 0.5 for r in results)
    store = EpisodeStore("workerstore", client=server.client())
    ids = [e.id for e in store.list_episodes(NAMESPACE)]
    assert len(ids) == len(set(ids)) == 2 * PER_AGENT
    assert worker.returncode == 0
    said = (tmp_path / "worker.log").read_text().splitlines()
    trained = [line for line in said if line.startswith(f"trained namespace {NAMESPACE!r}")]
    assert len(trained) == latest and trained[-1].endswith(f": v{latest}"), said
    assert said[-1] == "stopped (SIGTERM)", said


@pytest.mark.slow
def test_a_round_trains_what_is_due_and_a_restart_goes_on_where_it_stopped(
    tmp_path: Path,
) -> None:
    from test_value_models import episodes, make_memory

    from langchain_kd_memory.embeddings import default_embeddings

    memory = make_memory(tmp_path, default_embeddings())
    memory.add_episodes(episodes("a", 0) + episodes("b", 1)[:6])
    worker = ConsolidationWorker(memory, every_n_ratings=10, shared=True)
    assert [r.namespace for r in worker.run_once()] == ["a", None]  # b has 6 < 10 new ratings
    assert worker.run_once() == []
    memory.add_episodes(episodes("b", 1)[6:] + episodes("c", 0))
    restarted = ConsolidationWorker(make_memory(tmp_path, default_embeddings()),
                                    every_n_ratings=10, shared=True)
    assert [r.namespace for r in restarted.run_once()] == ["b", "c", None]
    assert memory.model_version("b") == memory.model_version("a") == 1


@pytest.mark.slow
def test_one_trigger_for_the_callback_and_the_worker(
    tmp_path: Path, embeddings: LocalEmbeddings
) -> None:
    from test_value_models import episodes, make_memory

    memory = make_memory(tmp_path, embeddings)
    callback = ConsolidationCallback(memory, every_n_episodes=12)
    memory.add_episodes(episodes("a", 0))  # 12 new ratings: the agent's callback trains "a"
    assert callback.flush(timeout=120) and callback.status.consolidations_run == 1
    worker = ConsolidationWorker(make_memory(tmp_path, embeddings), every_n_ratings=12,
                                 shared=True)
    other = worker.memory  # another process, as it were: no callback listens there
    for episode in other.store.list_episodes("a"):  # new rewards for rated episodes are no
        other.record_feedback(episode.id, 1.0 - float(episode.reward or 0.0))  # new ratings
    # A namespace named "*" (the shared model's old key) is a namespace like any other.
    other.add_episodes(episodes("*", 1))
    assert [r.namespace for r in worker.run_once()] == ["*", None]  # not "a": trained already
    other.add_episodes(episodes("*", 0))  # 12 more in "*" (36 in the store)
    assert [r.namespace for r in worker.run_once()] == ["*", None]
    assert worker.run_once() == []
    assert other.model_version("*") == 2 and other.model_version("a") == 1
