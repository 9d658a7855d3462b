"""Metrics from the parts a scrape reads: one series per label set, health and saving exported."""

import asyncio
from collections import Counter

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from supervisor_parts import RecordingFastPath, ScriptedSaver, lan_config

from portier.supervisor.links import LinkFollower
from portier.supervisor.loops import LoopSupervisor
from portier.supervisor.metrics import MetricSources, MetricsServer
from portier.supervisor.state import ProxyState
from portier.supervisor.stats import SupervisorStats
from portier.supervisor.workerpool import WorkerHandle, WorkerPool


def scrape(sources: MetricSources) -> list[tuple[str, dict[str, str], float]]:
    text = generate_latest(MetricsServer(sources).registry).decode()
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def sources(tmp_path, pool: WorkerPool, loops: LoopSupervisor | None = None) -> MetricSources:
    config = lan_config(tmp_path)
    state = ProxyState(config)
    state.apply_config_groups(config)
    return MetricSources(
        state=state,
        pool=pool,
        stats=SupervisorStats(),
        fastpath=RecordingFastPath(),
        state_save=ScriptedSaver(),
        loops=loops or LoopSupervisor(on_fatal=lambda code: None),
        control_servers=[],
        links=LinkFollower(ignore_links),
    )


async def ignore_links(links: object) -> None:
    pass


def test_drops_are_labelled_by_the_interface_they_name_one_series_each(tmp_path):
    pool = WorkerPool("ipc:///x", worker_args=[], on_state=lambda h: None)
    # Both workers forward to vm2 and failed to send there; up0 also failed on itself.
    pool.handles["vm1"] = WorkerHandle("vm1", drops={"vm1|no_route": 2, "vm2|tx_ENOBUFS": 1})
    pool.handles["up0"] = WorkerHandle("up0", drops={"vm2|tx_ENOBUFS": 3, "up0|tx_ENOBUFS": 4})
    samples = [s for s in scrape(sources(tmp_path, pool)) if s[0] == "portier_frames_dropped_total"]
    keys = Counter(tuple(sorted(labels.items())) for _, labels, _ in samples)
    assert all(count == 1 for count in keys.values()), keys
    values = {(labels["interface"], labels["reason"]): value for _, labels, value in samples}
    assert values == {
        ("vm1", "no_route"): 2,
        ("vm2", "tx_ENOBUFS"): 4,
        ("up0", "tx_ENOBUFS"): 4,
    }
    assert {labels["group"] for _, labels, _ in samples} == {"lan"}


def test_every_sample_of_a_scrape_is_unique(tmp_path):
    pool = WorkerPool("ipc:///x", worker_args=[], on_state=lambda h: None)
    pool.handles["vm1"] = WorkerHandle("vm1", drops={"vm1|hold_timeout": 1, "vm2|hold_timeout": 2})
    pool.handles["vm2"] = WorkerHandle("vm2", drops={"vm2|hold_timeout": 5})
    samples = scrape(sources(tmp_path, pool))
    keys = Counter((name, tuple(sorted(labels.items()))) for name, labels, _ in samples)
    assert [key for key, count in keys.items() if count > 1] == []
    timed_out = {
        labels["interface"]: value
        for name, labels, value in samples
        if name == "portier_hold_total" and labels["outcome"] == "timed_out"
    }
    assert timed_out == {"vm1": 1, "vm2": 7}


def test_loop_health_and_saving_are_exported(tmp_path):
    pool = WorkerPool("ipc:///x", worker_args=[], on_state=lambda h: None)

    async def scenario() -> list:
        loops = LoopSupervisor(on_fatal=lambda code: None, backoff_min_s=5.0)
        failed = asyncio.Event()

        async def broken() -> None:
            failed.set()
            raise OSError("nft: Permission denied")

        loops.start("worker_channel", broken)
        loops.start("timers", asyncio.Event().wait)
        await failed.wait()
        await asyncio.sleep(0)
        source = sources(tmp_path, pool, loops)
        source.state_save.error = "No space left on device"  # type: ignore[attr-defined]
        samples = scrape(source)
        await loops.stop()
        return samples

    samples = {
        (name, tuple(labels.items())): value for name, labels, value in asyncio.run(scenario())
    }
    assert samples[("portier_loop_restarts_total", (("loop", "worker_channel"),))] == 1
    assert samples[("portier_loop_healthy", (("loop", "worker_channel"),))] == 0
    assert samples[("portier_loop_healthy", (("loop", "timers"),))] == 1
    assert samples[("portier_state_save_ok", ())] == 0
    assert ("portier_state_save_failures_total", ()) in samples
    assert ("portier_state_saved_timestamp_seconds", ()) in samples
    assert ("portier_fastpath_failures_total", ()) in samples
    assert samples[("portier_fastpath_enabled", ())] == 1


def test_claims_by_outcome_and_owned_addresses_per_member(tmp_path):
    pool = WorkerPool("ipc:///x", worker_args=[], on_state=lambda h: None)
    pool.handles["vm2"] = WorkerHandle("vm2", drops={"vm2|source_invalid": 5, "vm2|over_quota": 2})
    parts = sources(tmp_path, pool)
    parts.stats.claims[("vm2", "refused")] += 3
    parts.stats.claims[("vm2", "over_quota")] += 1
    for n in range(3):
        parts.state.neighbors.learn("lan", bytes(15) + bytes([n]), "vm1", b"\x02" * 6, 1.0)
    samples = scrape(parts)
    claims = {
        (labels["interface"], labels["outcome"]): value
        for name, labels, value in samples
        if name == "portier_claims_total"
    }
    assert claims == {
        ("vm2", "refused"): 3,
        ("vm2", "moved"): 0,
        ("vm2", "over_quota"): 3,
        ("vm2", "source_invalid"): 5,
    }
    owned = {
        (labels["interface"], labels["group"]): value
        for name, labels, value in samples
        if name == "portier_owned_addresses"
    }
    assert owned == {("vm1", "lan"): 3}


def test_counts_of_interfaces_that_went_are_forgotten():
    stats = SupervisorStats()
    for name in ("vm1", "vnet7"):
        stats.loops[name] += 1
        stats.probes[name] += 1
        stats.claims[(name, "refused")] += 1
        stats.announcements[(name, "sent")] += 1
    stats.learned["lan"] += 3
    stats.keep_interfaces({"vm1", "up0"})
    assert set(stats.loops) == set(stats.probes) == {"vm1"}
    assert set(stats.claims) == {("vm1", "refused")}
    assert set(stats.announcements) == {("vm1", "sent")}
    assert stats.learned["lan"] == 3
