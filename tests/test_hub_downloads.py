"""Hub search, quant grouping, fit verdicts and verified resumable downloads, against a local fake Hub."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import fit, hub
from engine.downloads import DownloadManager, State
from engine.library import Library

pytest_plugins = ("fake_hub",)  # the fake Hub server and its tiny GGUF files, as fixtures

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_search_sorts_and_reports_card_facts(fake_hub):
    found = hub.search("tiny")
    assert [r.repo_id for r in found] == ["tiny/Tiny-Llama-GGUF", "other/Tiny-Chat-GGUF"]
    assert [r.repo_id for r in hub.search("tiny", sort="likes")][0] == "other/Tiny-Chat-GGUF"
    assert found[0].downloads == 500 and found[0].license == "apache-2.0" and not found[0].gated
    assert hub.search("nothing-like-this") == []


def test_repo_files_grouped_by_quant_with_projector_flagged(fake_hub, gguf_bytes):
    files = hub.repo_files("tiny/Tiny-Llama-GGUF")
    assert [o.quant for o in files.models] == ["Q4_K_M", "Q8_0"]
    assert [o.label for o in files.projectors] == ["mmproj-tiny-f16.gguf"]
    q8 = files.pick("Q8_0")
    assert q8.size == len(gguf_bytes["big"]) and len(q8.files[0].sha256) == 64
    assert files.pick("tiny-llama.Q4_K_M.gguf").quant == "Q4_K_M"
    with pytest.raises(hub.HubError, match="has no 'Q2_K'. Available: Q4_K_M"):
        files.pick("Q2_K")


def test_split_files_are_one_model():
    parts = [hub.HubFile(f"big/Model-Q4_K_M-0000{i}-of-00003.gguf", 10, "x") for i in (2, 1, 3)]
    options = hub.group_files([*parts, hub.HubFile("Model-Q8_0.gguf", 50, "y")])
    split = next(o for o in options if o.split)
    assert split.quant == "Q4_K_M" and split.size == 30 and split.label == "Model-Q4_K_M.gguf"
    assert [f.path.split("-")[-3] for f in split.files] == ["00001", "00002", "00003"]


def test_fit_verdicts_and_recommendation():
    gib = 2**30
    opts = hub.group_files([hub.HubFile(f"m-{q}.gguf", int(s * gib), "") for q, s in
                            [("Q2_K", 2.5), ("Q4_K_M", 4.6), ("Q6_K", 6.1), ("Q8_0", 8.0), ("F16", 15.0)]])  # fmt: skip
    assert fit.estimate(int(4.6 * gib), "Q4_K_M", 4096, available=16 * gib).verdict is fit.Verdict.FITS
    assert fit.estimate(int(8 * gib), "Q8_0", 4096, available=9 * gib).verdict is fit.Verdict.TIGHT
    assert fit.estimate(int(15 * gib), "F16", 4096, available=9 * gib).verdict is fit.Verdict.WONT_FIT
    assert fit.recommend(opts, 4096, available=10 * gib).quant == "Q6_K"  # largest that fits (80% rule)
    assert (
        fit.recommend(opts, 4096, available=5 * gib).quant == "Q2_K"
    )  # below Q4 only when nothing else fits
    assert fit.recommend(opts, 4096, available=1 * gib).quant == "Q2_K"  # nothing fits: the smallest


def test_search_pick_download_then_loads_in_engine(fake_hub, fresh_home):
    from engine.runtime import Runtime
    from engine.settings import LoadSettings

    repo = hub.search("llama")[0]
    files = hub.repo_files(repo.repo_id)
    option = files.pick("Q4_K_M")
    manager = DownloadManager()
    job = manager.wait(manager.add(repo.repo_id, option.files, revision=files.revision).id, 30)
    assert job.state is State.DONE, job.error
    entry = Library().get("tiny-llama.Q4_K_M")
    assert entry.source == "hub:tiny/Tiny-Llama-GGUF" and entry.sha256 == option.files[0].sha256
    assert not list((fresh_home / "downloads").glob("*.part"))
    events = list(Runtime().load(entry.path, LoadSettings(n_ctx=128)))
    assert events, "the downloaded model loaded"


def test_wrong_sha256_rejected_nothing_in_library(fake_hub, fresh_home):
    option = hub.repo_files("bad/Broken-GGUF").pick("Q4_0")
    manager = DownloadManager()
    job = manager.wait(manager.add("bad/Broken-GGUF", option.files).id, 30)
    assert job.state is State.FAILED
    assert "failed verification" in job.error and "nothing was added to the library" in job.error
    assert Library().entries() == []
    assert not list((fresh_home / "downloads").glob("*.part"))


def test_gated_repo_needs_token_which_is_stored_private(fake_hub, fresh_home):
    with pytest.raises(hub.HubError, match="is gated: accept its terms"):
        hub.repo_files("locked/Gated-GGUF")
    path = hub.save_token(fake_hub.token)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    option = hub.repo_files("locked/Gated-GGUF").pick("Q4_0")
    manager = DownloadManager(token=hub.load_token())
    assert fake_hub.token not in repr(manager.__dict__.get("_jobs")) and fake_hub.token not in repr(manager)
    job = manager.wait(manager.add("locked/Gated-GGUF", option.files).id, 30)
    assert job.state is State.DONE, job.error
    # a download without the token is refused with the same clear message
    hub.clear_token()
    job = DownloadManager().add("locked/Gated-GGUF", option.files, name="again")
    job._finished.wait(30)
    assert job.state is State.FAILED and "is gated" in job.error


def test_unknown_repo_and_file_are_clear(fake_hub):
    with pytest.raises(hub.HubError, match="was not found on the Hub"):
        hub.repo_files("nobody/Nothing-GGUF")
    manager = DownloadManager(retries=0)
    job = manager.wait(manager.add("tiny/Tiny-Llama-GGUF", [hub.HubFile("missing.Q4_0.gguf", 10, "")]).id, 30)
    assert job.state is State.FAILED and "not found on the Hub" in job.error


def test_server_gone_mid_transfer_keeps_part_and_resume_finishes(fake_hub, fresh_home, gguf_bytes):
    option = hub.repo_files("tiny/Tiny-Llama-GGUF").pick("Q8_0")
    fake_hub.drop_after = 100_000
    manager = DownloadManager(retries=1, backoff=0.05)
    job = manager.wait(manager.add("tiny/Tiny-Llama-GGUF", option.files).id, 30)
    assert job.state is State.FAILED and "connection to" in job.error and "partial file is kept" in job.error
    assert manager.partial_bytes("tiny/Tiny-Llama-GGUF", option.files) >= 100_000
    fake_hub.drop_after = None
    manager.resume(job.id)
    assert manager.wait(job.id, 30).state is State.DONE, job.error
    ranges = [e.range for e in fake_hub.file_requests("tiny-llama.Q8_0.gguf")]
    assert ranges[0] is None and all(r and r.startswith("bytes=") for r in ranges[1:])


def test_disk_too_small_is_refused_before_start(fake_hub, fresh_home, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    option = hub.repo_files("tiny/Tiny-Llama-GGUF").pick("Q4_K_M")
    manager = DownloadManager()
    job = manager.wait(manager.add("tiny/Tiny-Llama-GGUF", option.files).id, 30)
    assert job.state is State.FAILED and "Not enough disk space" in job.error
    assert fake_hub.file_requests("tiny-llama.Q4_K_M.gguf") == []


def test_pause_and_cancel_take_effect_within_a_second(fake_hub, fresh_home):
    option = hub.repo_files("tiny/Tiny-Llama-GGUF").pick("Q8_0")
    fake_hub.bytes_per_second = 50_000
    manager = DownloadManager()
    job = manager.add("tiny/Tiny-Llama-GGUF", option.files)
    _wait_for(lambda: job.done_bytes > 20_000)
    t0 = time.monotonic()
    manager.pause(job.id)
    assert manager.wait(job.id, 30).state is State.PAUSED and time.monotonic() - t0 < 30
    kept = manager.partial_bytes("tiny/Tiny-Llama-GGUF", option.files)
    assert kept > 0
    manager.resume(job.id)
    _wait_for(lambda: job.state is State.RUNNING and job.done_bytes > kept)
    t0 = time.monotonic()
    manager.cancel(job.id)
    assert manager.wait(job.id, 30).state is State.CANCELLED and time.monotonic() - t0 < 30
    assert manager.partial_bytes("tiny/Tiny-Llama-GGUF", option.files) == 0
    assert fake_hub.file_requests("tiny-llama.Q8_0.gguf")[1].range == f"bytes={kept}-"


def _wait_for(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def _pull(spec: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "app.cli", "pull", spec], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_cli_pull_killed_midway_resumes_from_partial_file(fake_hub, fresh_home, gguf_bytes):
    env = dict(os.environ, HF_ENDPOINT=fake_hub.url, INGLE_HOME=str(fresh_home))
    fake_hub.bytes_per_second = 60_000
    proc = _pull("tiny/Tiny-Llama-GGUF:Q8_0", env)
    _wait_for(lambda: any(p.stat().st_size > 100_000 for p in (fresh_home / "downloads").glob("*.part")), 30)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    part = next((fresh_home / "downloads").glob("*.part"))
    kept = part.stat().st_size
    assert 0 < kept < len(gguf_bytes["big"])
    fake_hub.bytes_per_second = None
    done = subprocess.run([sys.executable, "-m", "app.cli", "pull", "tiny/Tiny-Llama-GGUF:Q8_0"], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stderr and "sha256 verified" in done.stdout
    requests = fake_hub.file_requests("tiny-llama.Q8_0.gguf")
    assert requests[-1].range == f"bytes={kept}-"
    assert requests[-1].sent == len(gguf_bytes["big"]) - kept
    entry = Library().get("tiny-llama.Q8_0")
    assert Path(entry.path).read_bytes() == gguf_bytes["big"]


def test_cli_errors_are_one_line(fake_hub, fresh_home):
    env = dict(os.environ, HF_ENDPOINT=fake_hub.url, INGLE_HOME=str(fresh_home))
    for spec, text in [("nobody/None-GGUF", "not found on the Hub"), ("locked/Gated-GGUF", "is gated"),
                       ("tiny/Tiny-Llama-GGUF:mmproj-tiny-f16.gguf", "projector"), ("justaname", "owner/name")]:  # fmt: skip
        r = subprocess.run([sys.executable, "-m", "app.cli", "pull", spec], cwd=REPO_ROOT, env=env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        assert r.returncode == 2 and text in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "app.cli", "search", "tiny", "--files"], cwd=REPO_ROOT, env=env,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0 and "tiny/Tiny-Llama-GGUF" in r.stdout and "projector" in r.stdout


def test_partial_download_survives_restart_as_paused_job(fake_hub, fresh_home):
    option = hub.repo_files("tiny/Tiny-Llama-GGUF").pick("Q8_0")
    fake_hub.bytes_per_second = 60_000
    first = DownloadManager()
    job = first.add("tiny/Tiny-Llama-GGUF", option.files)
    _wait_for(lambda: job.done_bytes > 30_000)
    first.shutdown()
    first.wait(job.id, 2)
    fake_hub.bytes_per_second = None
    later = DownloadManager()  # a new app run
    (restored,) = later.restore()
    assert restored.state is State.PAUSED and restored.name == "tiny-llama.Q8_0" and restored.done_bytes > 0
    later.resume(restored.id)
    assert later.wait(restored.id, 30).state is State.DONE, restored.error
    assert fake_hub.file_requests("tiny-llama.Q8_0.gguf")[-1].range == f"bytes={restored.resumed_from}-"


def test_cli_pull_without_quant_takes_the_recommended_one(fake_hub, fresh_home):
    env = dict(os.environ, HF_ENDPOINT=fake_hub.url, INGLE_HOME=str(fresh_home))
    r = subprocess.run([sys.executable, "-m", "app.cli", "pull", "tiny/Tiny-Llama-GGUF"], cwd=REPO_ROOT, env=env,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "tiny-llama.Q8_0.gguf (Q8_0" in r.stderr  # the largest that fits; the projector is never picked
    assert [e.name for e in Library().entries()] == ["tiny-llama.Q8_0"]


def test_split_model_downloads_as_one_and_loads(fake_hub, fresh_home):
    from engine.runtime import Runtime
    from engine.settings import LoadSettings

    files = hub.repo_files("split/Split-GGUF")
    (option,) = files.models
    assert option.split and len(option.files) == 3 and option.label == "Split-Q8_0.gguf"
    manager = DownloadManager()
    job = manager.wait(manager.add("split/Split-GGUF", option.files, revision=files.revision).id, 30)
    assert job.state is State.DONE, job.error
    assert job.entry.name == "Split-Q8_0-00001-of-00003"
    parts = sorted(p.name for p in (fresh_home / "models").glob("Split-Q8_0-*.gguf"))
    assert parts == [f"Split-Q8_0-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    rt = Runtime()
    loaded = list(rt.load(job.entry.path, LoadSettings(n_ctx=64)))[-1]
    assert loaded.info["layers"] == 2
    rt.unload()
    library = Library()
    on_disk = sum((fresh_home / "models" / name).stat().st_size for name in parts)
    assert library.get(job.entry.name).disk_bytes == on_disk == library.disk_usage()
    library.remove(job.entry.name)  # removing the model removes every part
    assert not list((fresh_home / "models").glob("Split-Q8_0-*"))


def test_verified_file_that_is_not_a_model_is_deleted_with_a_message(fake_hub, fresh_home):
    option = hub.repo_files("junk/Junk-GGUF").pick("Q4_0")
    manager = DownloadManager()
    job = manager.wait(manager.add("junk/Junk-GGUF", option.files).id, 30)
    assert (
        job.state is State.FAILED and "Ingle cannot use it" in job.error and "nothing was added" in job.error
    )
    assert Library().entries() == [] and not list((fresh_home / "downloads").glob("*.part"))


def test_name_already_in_library_is_refused_before_downloading(fake_hub, fresh_home, tiny_model):
    Library().import_file(tiny_model, name="tiny-llama.Q4_K_M")
    option = hub.repo_files("tiny/Tiny-Llama-GGUF").pick("Q4_K_M")
    with pytest.raises(hub.HubError, match="already has 'tiny-llama.Q4_K_M'"):
        DownloadManager().add("tiny/Tiny-Llama-GGUF", option.files)
    assert fake_hub.file_requests("tiny-llama.Q4_K_M.gguf") == []


def test_queue_runs_at_most_concurrency_jobs(fake_hub, fresh_home):
    files = hub.repo_files("tiny/Tiny-Llama-GGUF")
    fake_hub.bytes_per_second = 400_000
    manager = DownloadManager(concurrency=1)
    first = manager.add("tiny/Tiny-Llama-GGUF", files.pick("Q8_0").files)
    second = manager.add("tiny/Tiny-Llama-GGUF", files.pick("Q4_K_M").files)
    _wait_for(lambda: first.done_bytes > 0)
    assert first.state is State.RUNNING and second.state is State.QUEUED
    assert manager.wait(first.id, 30).state is State.DONE
    assert manager.wait(second.id, 30).state is State.DONE
    assert sorted(e.name for e in Library().entries()) == ["tiny-llama.Q4_K_M", "tiny-llama.Q8_0"]


def test_cli_gated_pull_with_token_file_never_prints_the_token(fake_hub, fresh_home, tmp_path):
    env = dict(os.environ, HF_ENDPOINT=fake_hub.url, INGLE_HOME=str(fresh_home))
    token_file = tmp_path / "token.txt"
    token_file.write_text(fake_hub.token + "\n")
    r = subprocess.run([sys.executable, "-m", "app.cli", "-v", "pull", "locked/Gated-GGUF:Q4_0", "--token-file",
                        str(token_file)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert fake_hub.token not in r.stdout + r.stderr
    saved = fresh_home / "hf_token"
    assert saved.read_text() == fake_hub.token and stat.S_IMODE(saved.stat().st_mode) == 0o600
