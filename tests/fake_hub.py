"""A local fake of the Hugging Face Hub endpoints huggingface_hub uses, serving generated tiny GGUF files.

Speaks: GET /api/models (search), GET /api/models/{repo}[/revision/{rev}] (siblings, with LFS sha256/size when
`blobs` is asked), HEAD/GET /{repo}/resolve/{rev}/{file} (302 to /cdn/... like the real Hub's LFS files, with
X-Linked-Etag / X-Linked-Size / X-Repo-Commit) and GET /cdn/... with Range. Every file request is logged
(path, Range header, bytes sent) so tests can assert what a resumed download asked for.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlparse

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_test_token_secret"


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, bytes]
    gated: bool = False
    downloads: int = 0
    likes: int = 0
    last_modified: str = "2026-01-01T00:00:00.000Z"
    license: str = "apache-2.0"
    wrong_sha: set[str] = field(default_factory=set)  # files whose advertised sha256 does not match the bytes

    _digests: dict[str, str] = field(default_factory=dict, repr=False)

    def sha(self, name: str) -> str:
        if name not in self._digests:  # hashed once: big files would otherwise slow every request
            self._digests[name] = hashlib.sha256(self.files[name]).hexdigest()
        return ("0" * 64) if name in self.wrong_sha else self._digests[name]


@dataclass
class RangeLog:
    path: str
    range: str | None
    sent: int


class FakeHub:
    token = TOKEN  # the access token the gated repos accept

    def __init__(self):
        self.repos: dict[str, FakeRepo] = {}
        self.log: list[RangeLog] = []
        self.bytes_per_second: float | None = None  # throttle file bodies so tests can interrupt them
        self.drop_after: int | None = None  # close the connection after this many body bytes (server gone)
        self.server: ThreadingHTTPServer | None = None
        self.connections: set = set()
        self._thread: threading.Thread | None = None

    def add(self, repo: FakeRepo) -> FakeRepo:
        self.repos[repo.repo_id] = repo
        return repo

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        for conn in list(self.connections):  # kept-alive connections go too: the server is gone
            try:
                conn.shutdown(2)
            except OSError:
                pass

    def file_requests(self, name: str) -> list[RangeLog]:
        return [e for e in self.log if e.path.endswith("/" + name)]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def setup(self):
        super().setup()
        self.fake.connections.add(self.connection)

    def finish(self):
        self.fake.connections.discard(self.connection)
        super().finish()

    # ------------------------------------------------------------ plumbing
    def _json(self, status: int, body, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, code: str, message: str) -> None:
        self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def _authorized(self, repo: FakeRepo) -> bool:
        return not repo.gated or self.headers.get("Authorization") == f"Bearer {TOKEN}"

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urlparse(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = parse_qs(url.query)
        if parts[:2] == ["api", "models"] and len(parts) == 2:
            return self._search(query)
        if parts[:2] == ["api", "models"]:
            repo_id = "/".join(parts[2:4])
            return self._model_info(repo_id, "blobs" in query)
        if parts[0] == "cdn":
            return self._file("/".join(parts[1:3]), "/".join(parts[3:]), direct=True)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._file("/".join(parts[:2]), "/".join(parts[4:]), direct=False)
        self._error(404, "EntryNotFound", f"no route {url.path}")

    # ------------------------------------------------------------ api
    def _summary(self, repo: FakeRepo) -> dict:
        return {
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "downloads": repo.downloads,
            "likes": repo.likes,
            "lastModified": repo.last_modified,
            "createdAt": repo.last_modified,
            "gated": "manual" if repo.gated else False,
            "private": False,
            "tags": ["gguf", f"license:{repo.license}"],
            "library_name": "gguf",
        }

    def _search(self, query: dict) -> None:
        text = (query.get("search") or [""])[0].lower()
        found = [r for r in self.fake.repos.values() if text in r.repo_id.lower()]
        filters = query.get("filter", [])
        if "gguf" in filters:
            found = [r for r in found if any(n.endswith(".gguf") for n in r.files)]
        sort = (query.get("sort") or ["downloads"])[0]
        key = {"downloads": "downloads", "likes": "likes", "lastModified": "last_modified"}.get(
            sort, "downloads"
        )
        found.sort(key=lambda r: getattr(r, key), reverse=True)
        limit = int((query.get("limit") or ["50"])[0])
        self._json(200, [self._summary(r) for r in found[:limit]])

    def _model_info(self, repo_id: str, blobs: bool) -> None:
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
        if not self._authorized(repo):
            return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted.")
        siblings = []
        for name, data in sorted(repo.files.items()):
            item = {"rfilename": name}
            if blobs:
                item.update(size=len(data), blobId=hashlib.sha1(data).hexdigest())
                item["lfs"] = {"size": len(data), "sha256": repo.sha(name), "pointerSize": 134}
            siblings.append(item)
        body = self._summary(repo) | {
            "sha": COMMIT,
            "siblings": siblings,
            "cardData": {"license": repo.license},
        }
        self._json(200, body)

    # ------------------------------------------------------------ files
    def _file(self, repo_id: str, name: str, direct: bool) -> None:
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
        if not self._authorized(repo):
            return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted.")
        if name not in repo.files:
            return self._error(404, "EntryNotFound", f"{name} does not exist in {repo_id}")
        data = repo.files[name]
        linked = {
            "X-Repo-Commit": COMMIT,
            "X-Linked-Etag": f'"{repo.sha(name)}"',
            "X-Linked-Size": str(len(data)),
            "ETag": f'"{repo.sha(name)}"',
        }
        if not direct:  # like the real Hub: LFS files redirect to the CDN with the linked headers
            self.send_response(302)
            for k, v in linked.items():
                self.send_header(k, v)
            self.send_header("Location", f"{self.fake.url}/cdn/{repo_id}/{quote(name)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{repo.sha(name)}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if self.command == "HEAD":
            return
        entry = RangeLog(f"{repo_id}/{name}", rng, 0)
        self.fake.log.append(entry)
        self._send_body(body, entry)

    def _send_body(self, body: bytes, entry: RangeLog) -> None:
        chunk = 16 * 1024
        limit = self.fake.drop_after
        for i in range(0, len(body), chunk):
            piece = body[i : i + chunk]
            if limit is not None and entry.sent + len(piece) > limit:
                piece = piece[: max(0, limit - entry.sent)]
                self.wfile.write(piece)
                entry.sent += len(piece)
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # the server goes away mid-transfer
                return
            try:
                self.wfile.write(piece)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return
            entry.sent += len(piece)
            if self.fake.bytes_per_second:
                time.sleep(len(piece) / self.fake.bytes_per_second)


# ------------------------------------------------------------ fixtures (import them into a test module)
@pytest.fixture(scope="session")
def gguf_bytes(tmp_path_factory) -> dict[str, bytes]:
    from gguf_factory import write_tiny_llama

    d = tmp_path_factory.mktemp("hubfiles")
    small = write_tiny_llama(d / "a.gguf", n_layers=1, seed=1).read_bytes()
    big = write_tiny_llama(d / "b.gguf", n_layers=4, seed=2).read_bytes()
    (d / "split").mkdir()
    first = write_tiny_llama(d / "split" / "Split-Q8_0.gguf", seed=3, split_max_tensors=10)
    parts = {p.name: p.read_bytes() for p in sorted(first.parent.glob("*.gguf"))}
    return {"small": small, "big": big, "split": parts}


@pytest.fixture
def fake_hub(monkeypatch, gguf_bytes, fresh_home):
    server = FakeHub()
    server.add(FakeRepo("tiny/Tiny-Llama-GGUF", {
        "tiny-llama.Q4_K_M.gguf": gguf_bytes["small"],
        "tiny-llama.Q8_0.gguf": gguf_bytes["big"],
        "mmproj-tiny-f16.gguf": gguf_bytes["small"],
        "README.md": b"# tiny",
    }, downloads=500, likes=3))  # fmt: skip
    server.add(
        FakeRepo("other/Tiny-Chat-GGUF", {"chat-Q5_K_M.gguf": gguf_bytes["small"]}, downloads=9, likes=40)
    )
    server.add(FakeRepo("split/Split-GGUF", dict(gguf_bytes["split"])))
    server.add(FakeRepo("junk/Junk-GGUF", {"junk-Q4_0.gguf": b"GGUF" + bytes(range(256)) * 40}))
    server.add(FakeRepo("locked/Gated-GGUF", {"g-Q4_0.gguf": gguf_bytes["small"]}, gated=True))
    server.add(FakeRepo("bad/Broken-GGUF", {"b-Q4_0.gguf": gguf_bytes["small"]}, wrong_sha={"b-Q4_0.gguf"}))
    server.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield server
    server.stop()
