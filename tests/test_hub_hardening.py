"""Hub hardening: the token stays on the Hub's host, downloads are locked across processes, every file is checked
against what the Hub announced, hostile names print inert, failed downloads leave nothing behind, offline fails
fast. Against the local fake Hub (and a second local server playing the CDN or another host)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_hub import FakeHub, FakeRepo, closed_port_url

from engine import hub
from engine.downloads import DownloadManager, State
from engine.library import Library
from engine.text import check_name

pytest_plugins = ("fake_hub",)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def other_host(fake_hub):
    """A second real HTTP server on another port: the CDN the Hub redirects files to, or another host."""
    server = FakeHub()
    server.repos = fake_hub.repos
    server.signed_only = True
    server.start()
    yield server
    server.stop()


def _env(fake_hub, home: Path) -> dict:
    return dict(os.environ, HF_ENDPOINT=fake_hub.url, INGLE_HOME=str(home))


def _cli(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def _wait_for(cond, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def _leftovers(home: Path) -> list[str]:
    folder = home / "downloads"
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.exists() else []


# ------------------------------------------------------------------ 1. the token stays on the Hub's host
def test_token_never_follows_a_redirect_to_the_cdn(fake_hub, other_host, fresh_home, gguf_bytes):
    fake_hub.cdn = other_host  # LFS files: 302 from the Hub to a signed URL on another port
    hub.save_token(fake_hub.token)
    option = hub.repo_files("locked/Gated-GGUF").pick("Q4_0")
    other_host.drop_after = 150_000  # the CDN drops every connection: retries and Range resumes go there too
    manager = DownloadManager(token=hub.load_token(), retries=1, backoff=0.05)
    job = manager.wait(manager.add("locked/Gated-GGUF", option.files).id, 60)
    assert job.state is State.FAILED and "partial file is kept" in job.error
    other_host.drop_after = None
    manager.resume(job.id)
    assert manager.wait(job.id, 60).state is State.DONE, job.error
    ranges = [e.range for e in other_host.file_requests("g-Q4_0.gguf")]
    starts = [int(r.removeprefix("bytes=").rstrip("-")) for r in ranges[1:]]
    assert ranges[0] is None and len(starts) == 2 and 0 < starts[0] < starts[1], ranges
    assert other_host.requests and other_host.authorized_requests() == []
    # the Hub itself was asked with the token (the repo is gated), so the token was there to leak
    assert any(r.startswith("HEAD /locked/Gated-GGUF/resolve/") for r in fake_hub.authorized_requests())
    assert Path(Library().get("g-Q4_0").path).read_bytes() == gguf_bytes["small"]


def test_same_host_file_still_gets_the_token(fake_hub, fresh_home):
    hub.save_token(fake_hub.token)
    option = hub.repo_files("locked/Gated-GGUF").pick("Q4_0")
    manager = DownloadManager(token=hub.load_token())
    job = manager.wait(manager.add("locked/Gated-GGUF", option.files).id, 60)
    assert job.state is State.DONE, (
        job.error
    )  # the fake's /cdn path on the Hub's own host refuses a GET without it
    assert any(r.startswith("GET /cdn/locked/Gated-GGUF/") for r in fake_hub.authorized_requests())


def test_search_and_model_info_never_send_the_token_to_another_host(fake_hub, other_host, fresh_home):
    hub.save_token(fake_hub.token)
    fake_hub.next_link = f"{other_host.url}/api/models?cursor=2"  # a next page on another host
    assert [r.repo_id for r in hub.search("tiny")] == ["tiny/Tiny-Llama-GGUF", "other/Tiny-Chat-GGUF"]
    fake_hub.api_redirect = other_host.url  # every API call answered with a 302 to another host
    assert [r.repo_id for r in hub.search("tiny")][0] == "tiny/Tiny-Llama-GGUF"
    assert hub.repo_files("tiny/Tiny-Llama-GGUF").pick("Q8_0").quant == "Q8_0"
    assert any(p.startswith("/api/models/tiny/Tiny-Llama-GGUF") for _m, p, _h in other_host.requests)
    assert other_host.authorized_requests() == []
    assert any(r.startswith("GET /api/models") for r in fake_hub.authorized_requests())


def test_token_only_for_the_endpoint_origin(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://huggingface.co")
    assert hub.token_allowed("https://huggingface.co/api/models")
    assert hub.token_allowed("https://HuggingFace.co:443/x")
    for url in ("https://cdn-lfs.huggingface.co/x", "http://huggingface.co/x", "https://huggingface.co:8443/x",
                "https://huggingface.co.evil.example/x", "https://evil.example/?https://huggingface.co"):  # fmt: skip
        assert not hub.token_allowed(url), url
        assert "authorization" not in {
            k.lower() for k in hub.headers_for(url, "secret", {"Authorization": "x"})
        }


# ------------------------------------------------------------------ 6. two processes, one file
def _pull(env: dict, spec: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "app.cli", "pull", spec], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_second_process_pulling_the_same_file_is_told_and_changes_nothing(fake_hub, fresh_home, gguf_bytes):
    env = _env(fake_hub, fresh_home)
    fake_hub.bytes_per_second = 10_000  # ~90 s for the file: the first pull is still running below
    first = _pull(env, "tiny/Tiny-Llama-GGUF:Q8_0")
    try:
        parts = fresh_home / "downloads"
        _wait_for(lambda: any(p.stat().st_size > 20_000 for p in parts.glob("*.part")))
        second = _cli(env, "pull", "tiny/Tiny-Llama-GGUF:Q8_0")
        assert second.returncode == 2, second.stderr
        assert "already being downloaded by another Ingle process" in second.stderr
        assert "Traceback" not in second.stderr and first.poll() is None
        assert len(fake_hub.file_requests("tiny-llama.Q8_0.gguf")) == 1  # the second never fetched a byte
        fake_hub.bytes_per_second = None
        out, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, err
    assert Path(Library().get("tiny-llama.Q8_0").path).read_bytes() == gguf_bytes["big"]
    assert _leftovers(fresh_home) == []


def test_window_process_cannot_cancel_away_another_process_download(fake_hub, fresh_home, gguf_bytes):
    env = _env(fake_hub, fresh_home)
    fake_hub.bytes_per_second = 10_000
    pull = _pull(env, "tiny/Tiny-Llama-GGUF:Q8_0")
    try:
        _wait_for(lambda: any(p.stat().st_size > 20_000 for p in (fresh_home / "downloads").glob("*.part")))
        manager = DownloadManager()  # the download window opening meanwhile: it sees the partial download
        (job,) = manager.restore()
        manager.resume(job.id)
        assert manager.wait(job.id, 60).state is State.FAILED
        assert "already being downloaded by another Ingle process" in job.error
        manager.cancel(job.id)
        assert job.state is State.CANCELLED and "kept" in job.error
        assert [p.suffix for p in (fresh_home / "downloads").glob("*.gguf.*") if p.suffix != ".lock"] == [
            ".json",
            ".part",
        ]
        fake_hub.bytes_per_second = None
        out, err = pull.communicate(timeout=120)
    finally:
        pull.kill()
    assert pull.returncode == 0, err
    assert Path(Library().get("tiny-llama.Q8_0").path).read_bytes() == gguf_bytes["big"]


def test_same_file_twice_in_one_queue_is_refused(fake_hub, fresh_home):
    option = hub.repo_files("tiny/Tiny-Llama-GGUF").pick("Q8_0")
    fake_hub.bytes_per_second = 60_000
    manager = DownloadManager()
    job = manager.add("tiny/Tiny-Llama-GGUF", option.files, name="first-copy")
    with pytest.raises(hub.HubError, match="already in the download queue"):
        manager.add("tiny/Tiny-Llama-GGUF", option.files, name="second-copy")
    manager.cancel(job.id)
    assert manager.wait(job.id, 10).state is State.CANCELLED and _leftovers(fresh_home) == []


# ------------------------------------------------------------------ 7. size and hash, always
def _mirror(fake_hub, repo_id: str, files: dict[str, bytes], **kw) -> FakeRepo:
    return fake_hub.add(FakeRepo(repo_id, files, **kw))


def _download(repo_id: str, quant_or_file: str, **kw):
    option = hub.repo_files(repo_id).pick(quant_or_file)
    manager = DownloadManager(retries=1, backoff=0.05)
    return manager.wait(manager.add(repo_id, option.files, **kw).id, 60)


def test_more_bytes_than_announced_are_rejected_even_without_a_hash(fake_hub, fresh_home, gguf_bytes):
    data = gguf_bytes["small"]
    names = ["long-Q4_0.gguf", "chunked-Q5_0.gguf"]  # one announces its length, one streams without one
    _mirror(fake_hub, "mirror/Long-GGUF", dict.fromkeys(names, data), meta=dict.fromkeys(names, "none"),
            served=dict.fromkeys(names, data + b"\0" * 5000), no_length={"chunked-Q5_0.gguf"})  # fmt: skip
    for name, says in zip(
        names, ["sends 473544 bytes but the Hub announced 468544", "sent more than"], strict=True
    ):
        # no hash: the size alone must catch it
        job = _download("mirror/Long-GGUF", name, allow_unverified=True)
        assert job.state is State.FAILED and says in job.error and "nothing was added" in job.error
    assert Library().entries() == [] and _leftovers(fresh_home) == []


def test_fewer_bytes_than_announced_are_rejected(fake_hub, fresh_home, gguf_bytes):
    data = gguf_bytes["small"]
    names = ["short-Q4_0.gguf", "cut-Q5_0.gguf"]
    _mirror(fake_hub, "mirror/Short-GGUF", dict.fromkeys(names, data), served=dict.fromkeys(names, data[:-5000]),
            no_length={"cut-Q5_0.gguf"})  # fmt: skip
    for name, says in zip(names, ["sends 463544 bytes", "fewer bytes than the 468544"], strict=True):
        job = _download("mirror/Short-GGUF", name)
        assert job.state is State.FAILED and says in job.error, job.error
    assert Library().entries() == [] and _leftovers(fresh_home) == []


def test_etag_sha256_and_git_sha1_verify_files_without_lfs_metadata(fake_hub, fresh_home, gguf_bytes):
    data = gguf_bytes["small"]
    bad = data[:-1] + bytes([data[-1] ^ 1])  # same length, one bit flipped
    files = {"e-Q4_0.gguf": data, "g-Q5_0.gguf": data, "bad-e-Q6_K.gguf": data, "bad-g-Q8_0.gguf": data}
    meta = {
        "e-Q4_0.gguf": "etag256",
        "g-Q5_0.gguf": "git",
        "bad-e-Q6_K.gguf": "etag256",
        "bad-g-Q8_0.gguf": "git",
    }
    _mirror(
        fake_hub,
        "mirror/Etag-GGUF",
        files,
        meta=meta,
        served={"bad-e-Q6_K.gguf": bad, "bad-g-Q8_0.gguf": bad},
    )
    for name, check in (("e-Q4_0.gguf", "sha256"), ("g-Q5_0.gguf", "git-sha1")):
        job = _download("mirror/Etag-GGUF", name)
        assert job.state is State.DONE and job.check == check and job.verified, job.error
        entry = Library().get(name.removesuffix(".gguf"))
        assert entry.extra["verified"] is True and entry.sha256 == hashlib.sha256(data).hexdigest()
    for name, kind in (("bad-e-Q6_K.gguf", "its sha256"), ("bad-g-Q8_0.gguf", "its git sha1")):
        job = _download("mirror/Etag-GGUF", name)
        assert job.state is State.FAILED and "failed verification" in job.error and kind in job.error, (
            job.error
        )
    assert (
        sorted(e.name for e in Library().entries()) == ["e-Q4_0", "g-Q5_0"] and _leftovers(fresh_home) == []
    )


def test_unverifiable_file_needs_the_users_consent(fake_hub, fresh_home, gguf_bytes):
    _mirror(
        fake_hub, "mirror/NoHash-GGUF", {"n-Q4_0.gguf": gguf_bytes["small"]}, meta={"n-Q4_0.gguf": "none"}
    )
    env = _env(fake_hub, fresh_home)
    r = _cli(env, "pull", "mirror/NoHash-GGUF:Q4_0")
    assert r.returncode == 2 and "cannot be verified" in r.stderr and "--allow-unverified" in r.stderr, (
        r.stderr
    )
    assert fake_hub.file_requests("n-Q4_0.gguf") == [] and _leftovers(fresh_home) == []
    assert Library().entries() == []
    r = _cli(env, "pull", "mirror/NoHash-GGUF:Q4_0", "--allow-unverified")
    assert r.returncode == 0, r.stderr
    assert "NOT verified" in r.stdout and "sha256 verified" not in r.stdout
    entry = Library().get("n-Q4_0")
    assert entry.extra["verified"] is False and entry.extra["check"] == "size"
    assert Path(entry.path).read_bytes() == gguf_bytes["small"]


# ------------------------------------------------------------------ 14. names, failed downloads
def test_hostile_hub_names_print_inert_and_become_safe_library_names(fake_hub, fresh_home, gguf_bytes):
    evil = "sub/evil\x1b]0;pwned\x07\x1b[31m\nFAKE LINE \u202e-Q4_0.gguf"
    fake_hub.add(FakeRepo("evil/Evil-GGUF", {evil: gguf_bytes["small"]}, license="mit\x1b[2J"))
    env = _env(fake_hub, fresh_home)
    r = _cli(env, "search", "evil", "--files")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\u202e" not in r.stdout and "\x07" not in r.stdout
    assert not any(line.startswith("FAKE LINE") for line in r.stdout.splitlines())
    assert "\\x1b" in r.stdout and "\\n" in r.stdout
    r = _cli(env, "pull", "evil/Evil-GGUF:Q4_0")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout + r.stderr and "\u202e" not in r.stdout + r.stderr
    (entry,) = Library().entries()
    assert check_name(entry.name) == entry.name
    assert Path(entry.path).parent == fresh_home / "models"
    r = _cli(env, "pull", "evil/Evil-GGUF:Q4_0", "--name", "../outside")
    assert r.returncode == 2 and "not allowed" in r.stderr and not (fresh_home / "outside.gguf").exists()


def test_hostile_repo_id_in_search_results_is_not_requested(fake_hub, fresh_home, gguf_bytes):
    fake_hub.add(FakeRepo("evil/x\x1b[2J", {"a-Q4_0.gguf": gguf_bytes["small"]}))
    r = _cli(_env(fake_hub, fresh_home), "search", "x", "--files")
    assert r.returncode == 0 and "\x1b" not in r.stdout and "files not listed" in r.stdout, (
        r.stdout + r.stderr
    )
    assert not any("x\x1b" in p or "%1B" in p for _m, p, _h in fake_hub.requests if "/api/models/" in p)


def test_malformed_search_answer_is_one_line(fake_hub, fresh_home, gguf_bytes):
    fake_hub.add(
        FakeRepo("odd/Odd-GGUF", {"a-Q4_0.gguf": gguf_bytes["small"]}, last_modified="yesterday-ish")
    )
    r = _cli(_env(fake_hub, fresh_home), "search", "odd")
    assert r.returncode == 2 and "malformed" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_file_gone_from_the_hub_leaves_nothing_to_resurrect(fake_hub, fresh_home):
    option = hub.repo_files("tiny/Tiny-Llama-GGUF").pick("Q8_0")
    fake_hub.bytes_per_second = 60_000
    manager = DownloadManager(retries=0)
    job = manager.add("tiny/Tiny-Llama-GGUF", option.files)
    _wait_for(lambda: job.done_bytes > 20_000)
    manager.pause(job.id)
    assert manager.wait(job.id, 10).state is State.PAUSED and _leftovers(fresh_home)
    del fake_hub.repos["tiny/Tiny-Llama-GGUF"].files["tiny-llama.Q8_0.gguf"]  # the file is removed upstream
    manager.resume(job.id)
    assert manager.wait(job.id, 30).state is State.FAILED and "not found on the Hub" in job.error
    assert _leftovers(fresh_home) == []
    missing = manager.add("tiny/Tiny-Llama-GGUF", [hub.HubFile("missing.Q4_0.gguf", 10, "a" * 64)])
    assert manager.wait(missing.id, 30).state is State.FAILED and "not found on the Hub" in missing.error
    assert _leftovers(fresh_home) == []
    assert DownloadManager().restore() == []  # a new start shows no paused ghost


def test_tampered_sidecar_name_is_not_restored(fake_hub, fresh_home):
    folder = fresh_home / "downloads"
    folder.mkdir(parents=True)
    sidecar = {"repo_id": "tiny/Tiny-Llama-GGUF", "name": "../../escape", "files": [["x.gguf", 10, ""]]}
    (folder / "x.gguf.json").write_text(json.dumps(sidecar))
    assert DownloadManager().restore() == []


# ------------------------------------------------------------------ 20. offline fails fast, in one line
@pytest.mark.parametrize("args", [["search", "qwen"], ["search", "qwen", "--files"], ["pull", "a/b-GGUF"]])
def test_unreachable_hub_fails_at_once_with_one_line(fresh_home, args):
    env = dict(os.environ, HF_ENDPOINT=closed_port_url(), INGLE_HOME=str(fresh_home))
    t0 = time.monotonic()
    r = _cli(env, *args)
    elapsed = time.monotonic() - t0
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "could not reach" in lines[0], r.stderr
    assert "Retry" not in r.stderr and "Traceback" not in r.stderr
    assert elapsed < 30, f"took {elapsed:.1f}s"  # it took 40 s with huggingface_hub's retries


# ------------------------------------------------------------------ more of the same kind
def test_a_token_that_is_not_a_token_is_refused_in_one_line(fake_hub, fresh_home, tmp_path, monkeypatch):
    secret = "hf_abc\r\nX-Injected: 1"
    with pytest.raises(hub.HubError, match="does not hold a Hub access token") as err:
        hub.save_token(secret)
    assert "X-Injected" not in str(err.value) and not hub.token_path().exists()
    env = _env(fake_hub, fresh_home)
    binary = tmp_path / "token.bin"
    binary.write_bytes(b"\xff\xfe\x00hf")
    r = _cli(env, "pull", "locked/Gated-GGUF:Q4_0", "--token-file", str(binary))
    assert r.returncode == 2 and "Cannot read the token file" in r.stderr and "Traceback" not in r.stderr, (
        r.stderr
    )
    r = _cli(dict(env, HF_TOKEN="hf_caf\u00e9"), "search", "tiny")
    assert r.returncode == 2 and "HF_TOKEN does not hold" in r.stderr and "Traceback" not in r.stderr, (
        r.stderr
    )
    assert "caf" not in r.stderr  # the message never repeats the token
    assert fake_hub.authorized_requests() == []


def test_split_model_cannot_be_renamed_and_its_parts_must_be_complete(fake_hub, fresh_home):
    (option,) = hub.repo_files("split/Split-GGUF").models
    with pytest.raises(hub.HubError, match="keeps the names of its parts"):
        DownloadManager().add("split/Split-GGUF", option.files, name="renamed")
    with pytest.raises(hub.HubError, match="incomplete or out of order"):
        DownloadManager().add("split/Split-GGUF", option.files[:2])
    assert fake_hub.file_requests("Split-Q8_0-00001-of-00003.gguf") == []


def test_paused_copy_of_a_download_another_process_finished_is_dropped(fake_hub, fresh_home, gguf_bytes):
    option = hub.repo_files("tiny/Tiny-Llama-GGUF").pick("Q8_0")
    fake_hub.bytes_per_second = 60_000
    first = DownloadManager()
    job = first.add("tiny/Tiny-Llama-GGUF", option.files)
    _wait_for(lambda: job.done_bytes > 20_000)
    window = DownloadManager()  # another window opened meanwhile shows the partial download as paused
    (ghost,) = window.restore()
    fake_hub.bytes_per_second = None
    assert first.wait(job.id, 60).state is State.DONE, job.error
    window.resume(ghost.id)
    assert window.wait(ghost.id, 60).state is State.FAILED and "already has 'tiny-llama.Q8_0'" in ghost.error
    assert _leftovers(fresh_home) == [] and DownloadManager().restore() == []
    assert Path(Library().get("tiny-llama.Q8_0").path).read_bytes() == gguf_bytes["big"]


def test_api_answers_are_bounded(fake_hub, monkeypatch):
    monkeypatch.setattr(hub, "MAX_API_BYTES", 500)  # the model listing below is over 1 KB
    with pytest.raises(hub.HubError, match="answer is larger than"):
        hub.repo_files("tiny/Tiny-Llama-GGUF")


def test_verbose_pull_logs_no_token_and_no_signed_url(fake_hub, other_host, fresh_home, tmp_path):
    fake_hub.cdn = other_host
    token_file = tmp_path / "token.txt"
    token_file.write_text(fake_hub.token)
    r = _cli(
        _env(fake_hub, fresh_home), "-v", "pull", "locked/Gated-GGUF:Q4_0", "--token-file", str(token_file)
    )
    assert r.returncode == 0, r.stderr
    assert other_host.url in r.stderr  # the CDN request is logged ...
    assert "sig=" not in r.stderr and fake_hub.token not in r.stdout + r.stderr  # ... without its signature
    assert other_host.authorized_requests() == []


def test_file_without_any_announced_size_is_refused_before_a_byte(fake_hub, fresh_home, gguf_bytes):
    _mirror(fake_hub, "mirror/Bare-GGUF", {"b-Q4_0.gguf": gguf_bytes["small"]}, meta={"b-Q4_0.gguf": "bare"})
    job = _download("mirror/Bare-GGUF", "Q4_0", allow_unverified=True)
    assert job.state is State.FAILED and "announces no size" in job.error, job.error
    assert fake_hub.file_requests("b-Q4_0.gguf") == [] and _leftovers(fresh_home) == []
