"""A local fake of the Hugging Face Hub endpoints huggingface_hub uses, serving generated tiny GGUF files.

Speaks: GET /api/models (search), GET /api/models/{repo}[/revision/{rev}] (siblings, with LFS sha256/size when
`blobs` is asked), HEAD/GET /{repo}/resolve/{rev}/{file} (302 to /cdn/... like the real Hub's LFS files, with
X-Linked-Etag / X-Linked-Size / X-Repo-Commit) and GET /cdn/... with Range. Every file request is logged
(path, Range header, bytes sent) so tests can assert what a resumed download asked for, and every request's
headers are kept (`requests`) so tests can assert who was sent the token.

A second FakeHub can play the CDN on another port (`cdn=`: the 302 goes there with a signed URL, as the real Hub's
does) or a host the API redirects to (`api_redirect`, `next_link`): tests then check it never saw the token.
Files can be listed without LFS metadata (`meta`) and served with other bytes than announced (`served`).
"""

from __future__ import annotations

import hashlib
import json
import socket
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
    tags: tuple[str, ...] = ()  # Hub tags besides gguf and the license, e.g. "sentence-similarity"
    pipeline_tag: str | None = None
    wrong_sha: set[str] = field(default_factory=set)  # files whose advertised sha256 does not match the bytes
    # how a file is described: "lfs" (LFS sha256 + size; resolve redirects to the CDN), "git" (a small file: no LFS,
    # blobId and ETag are its git blob sha1, served directly), "etag256" (no LFS metadata; the ETag is its sha256),
    # "none" (no hash at all: an opaque ETag, as some mirrors give), "bare" (no hash and no size anywhere)
    meta: dict[str, str] = field(default_factory=dict)
    served: dict[str, bytes] = field(default_factory=dict)  # bytes actually sent, when not the announced ones
    no_length: set[str] = field(default_factory=set)  # bodies sent without Content-Length, ended by closing

    _digests: dict[str, str] = field(default_factory=dict, repr=False)

    def sha(self, name: str) -> str:
        if name not in self._digests:  # hashed once: big files would otherwise slow every request
            self._digests[name] = hashlib.sha256(self.files[name]).hexdigest()
        return ("0" * 64) if name in self.wrong_sha else self._digests[name]

    def git_sha1(self, name: str) -> str:
        data = self.files[name]
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def etag(self, name: str) -> str:
        return {"git": self.git_sha1(name), "none": "1f2e-5d6c7b", "bare": "1f2e-5d6c7b"}.get(
            self.meta.get(name, "lfs"), self.sha(name)
        )


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
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers) of every request
        self.cdn: FakeHub | None = None  # LFS files redirect to this server (another port) with a signed URL
        self.signed_only = False  # a CDN: files need the URL's signature, never a token
        self.api_redirect: str | None = None  # /api/... answers 302 to this base URL (another host)
        self.next_link: str | None = None  # search answers carry `Link: <next_link>; rel="next"`

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

    def authorized_requests(self) -> list[str]:
        """'METHOD path' of every request that carried an Authorization header."""
        return [f"{m} {p}" for m, p, h in self.requests if any(k.lower() == "authorization" for k in h)]


def signature(repo_id: str, name: str) -> str:
    return hashlib.sha256(f"signed:{repo_id}/{name}".encode()).hexdigest()[:24]


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


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

    def _redirect(self, location: str, headers: dict | None = None) -> None:
        self.send_response(302)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _authorized(self, repo: FakeRepo) -> bool:
        if self.fake.signed_only:  # a CDN serves signed URLs and knows no tokens
            return True
        return not repo.gated or self.headers.get("Authorization") == f"Bearer {TOKEN}"

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        self.fake.requests.append((self.command, self.path, dict(self.headers.items())))
        url = urlparse(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = parse_qs(url.query)
        if parts[0] == "api" and self.fake.api_redirect:
            return self._redirect(self.fake.api_redirect + self.path)
        if parts[:2] == ["api", "models"] and len(parts) == 2:
            return self._search(query)
        if parts[:2] == ["api", "models"]:
            repo_id = "/".join(parts[2:4])
            return self._model_info(repo_id, "blobs" in query)
        if parts[0] == "cdn":
            repo_id, name = "/".join(parts[1:3]), "/".join(parts[3:])
            if self.fake.signed_only and (query.get("sig") or [""])[0] != signature(repo_id, name):
                return self._error(403, "Forbidden", "bad or missing signature")
            return self._file(repo_id, name, direct=True)
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
            "tags": ["gguf", f"license:{repo.license}", *repo.tags],
            "library_name": "gguf",
            **({"pipeline_tag": repo.pipeline_tag} if repo.pipeline_tag else {}),
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
        link = {"Link": f'<{self.fake.next_link}>; rel="next"'} if self.fake.next_link else {}
        self._json(200, [self._summary(r) for r in found[:limit]], link)

    def _model_info(self, repo_id: str, blobs: bool) -> None:
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
        if not self._authorized(repo):
            return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted.")
        siblings = []
        for name, data in sorted(repo.files.items()):
            item = {"rfilename": name}
            kind = repo.meta.get(name, "lfs")
            if blobs:
                if kind != "bare":
                    item.update(size=len(data))
                if kind in ("lfs", "git"):  # an LFS file's blobId is its pointer's; a small file's is its own
                    item["blobId"] = (
                        repo.git_sha1(name) if kind == "git" else hashlib.sha1(name.encode()).hexdigest()
                    )
                if kind == "lfs":
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
        announced = repo.files[name]
        data = repo.served.get(name, announced)
        small = repo.meta.get(name) == "git"  # the real Hub serves small (non-LFS) files itself
        linked = {
            "X-Repo-Commit": COMMIT,
            "X-Linked-Etag": f'"{repo.etag(name)}"',
            "X-Linked-Size": str(len(announced)),
            "ETag": f'"{repo.etag(name)}"',
        }
        if repo.meta.get(name) == "bare":
            del linked["X-Linked-Size"]
        # like the real Hub: LFS files redirect to the CDN with the linked headers
        if not direct and not small:
            if self.fake.cdn is not None:
                target = f"{self.fake.cdn.url}/cdn/{repo_id}/{quote(name)}?sig={signature(repo_id, name)}"
            else:
                target = f"{self.fake.url}/cdn/{repo_id}/{quote(name)}"
            return self._redirect(target, linked)
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
        if name in repo.no_length:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{repo.etag(name)}"')
        self.send_header("X-Repo-Commit", COMMIT)
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
