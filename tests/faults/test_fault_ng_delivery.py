"""Nothing accepted is lost: NG results survive an archiver killed mid-run and a daemon SIGKILLed
with a full spool. Archivers run as real processes and are killed with SIGKILL."""

from __future__ import annotations

import json
from pathlib import Path

from harness import (
    NGRecorder,
    archive_ledger,
    daemon_config,
    kill,
    spooled,
    start_archiver,
    start_daemon,
    terminate,
    wait_for,
    write_config,
)
from proad.edge.config import PipelineConfig
from proad.edge.daemon import Daemon
from proad.edge.ports import free_ports


def test_archiver_killed_and_restarted_loses_no_ng(board_model, backend, tmp_path: Path) -> None:
    cfg = PipelineConfig.model_validate(daemon_config(board_model[1], tmp_path, {"fps": 30, "max_frames": 150}))
    daemon = Daemon(cfg, backend=backend)
    ng_endpoint = daemon.ng_channel.endpoint
    recorder = NGRecorder(daemon.publisher.endpoint)
    recorder.start()
    archive = tmp_path / "archive"
    log = tmp_path / "archiver.log"
    archiver = start_archiver(archive, ng_endpoint, log)
    assert daemon.publisher.wait_for_subscriptions(1, 60)  # the recorder sees every result
    daemon.start()
    try:
        assert wait_for(lambda: len(recorder.ng) >= 30, 30), "no NG results"
        kill(archiver)  # mid-run, mid-delivery
        depth_while_down = []
        wait_for(lambda: depth_while_down.append(daemon.spool.depth()) or len(recorder.ng) >= 90, 30)
        archiver = start_archiver(archive, ng_endpoint, log)
        assert daemon.wait(60), "camera did not finish"
        assert wait_for(lambda: daemon.spool.depth() == 0, 30), f"spool still holds {daemon.spool.depth()}"
    finally:
        daemon.stop()
        recorder.stop()
        assert terminate(archiver) == 0
    stored, duplicates = archive_ledger(archive)
    published_ng = daemon.telemetry.snapshot()["ng"]["cam0"]
    assert published_ng == 150 and len(recorder.ng) == 150  # threshold 0: every frame an NG
    assert stored == recorder.ng  # zero lost, nothing made up
    assert max(depth_while_down) > 10  # the spool really held them while no archiver was there
    events = daemon.telemetry.snapshot()["events"]
    assert events["ng_delivered"] == published_ng  # each record left the spool exactly once, on its ACK
    print(f"archiver restart: {published_ng} NG, {len(stored)} archived, {duplicates} duplicates, "
          f"{events.get('ng_redelivered', 0)} sent again")


def test_daemon_sigkilled_with_full_spool_delivers_after_restart(board_model, tmp_path: Path) -> None:
    pub, ng, status = free_ports(3)
    cfg = daemon_config(board_model[1], tmp_path, {"fps": 30})
    cfg["publish"]["endpoint"] = f"tcp://127.0.0.1:{pub}"
    cfg["ng_channel"]["endpoint"] = f"tcp://127.0.0.1:{ng}"
    cfg["status"]["endpoint"] = f"tcp://127.0.0.1:{status}"
    config = write_config(tmp_path / "edge.json", cfg)
    log = tmp_path / "daemon.log"
    recorder = NGRecorder(f"tcp://127.0.0.1:{pub}")
    recorder.start()
    daemon = start_daemon(config, log)  # no archiver yet: every NG waits in the spool
    try:
        assert wait_for(lambda: len(recorder.ng) >= 40, 60), log.read_text()
        kill(daemon)
    finally:
        if daemon.poll() is None:
            kill(daemon)
    seen_first_run = set(recorder.ng)
    on_disk = spooled(tmp_path / "spool")
    assert seen_first_run <= on_disk  # every NG anyone saw was on disk before it was published
    # restart: the camera runs briefly, an archiver appears, and the old spool is delivered too
    cfg["cameras"][0]["source"]["max_frames"] = 20
    write_config(config, cfg)
    archive = tmp_path / "archive"
    archiver = start_archiver(archive, f"tcp://127.0.0.1:{ng}", tmp_path / "archiver.log")
    daemon = start_daemon(config, log)
    try:  # its camera ends after 20 frames; it drains the spool to the archiver, then exits by itself
        assert daemon.wait(90) == 0, log.read_text()
    finally:
        if daemon.poll() is None:
            kill(daemon)
        recorder.stop()
        assert terminate(archiver) == 0
    stored, duplicates = archive_ledger(archive)
    assert on_disk <= stored and recorder.ng <= stored  # zero lost, across the SIGKILL
    assert len(stored - on_disk) == 20 and not spooled(tmp_path / "spool")  # and the second run's 20 too
    final = json.loads(log.read_text().strip().splitlines()[-1])
    assert final["ng"]["cam0"] == 20 and final["gauges"]["spool_depth"] == 0
    print(f"daemon SIGKILL: {len(on_disk)} spooled at the kill, {len(stored)} archived, {duplicates} duplicates")
