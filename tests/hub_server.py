"""A loopback stand-in for the Hugging Face Hub, for what huggingface_hub's HfFileSystem and HfApi ask.

Tests point HF_ENDPOINT at it. It answers, the way huggingface.co does (status codes and the
X-Error-Code header that huggingface_hub turns into its exception types):
  GET  /api/models/<repo>[/revision/<rev>]          repo_info: the commit sha (and gated/private)
  GET  /api/models/<repo>/tree/<rev>[/<dir>]        listing with sizes (HfFileSystem.ls/info)
  POST /api/models/<repo>/paths-info/<rev>          info on given paths
  GET|HEAD /<repo>/resolve/<rev>/<file>             file bytes, honouring Range (206)
  POST /api/repos/create, /api/models/<repo>/preupload/<rev>, /api/models/<repo>/commit/<rev>
                                                    uploads (every file "regular": content in the commit)
Every request is logged (method, path, Range, status, bytes sent), so tests can prove that tensor
bytes came in ranged requests and that no file was downloaded whole; `fail` injects errors.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclasses.dataclass
class Repo:
  commits: dict[str, dict[str, bytes]]  # sha -> path -> content
  refs: dict[str, str]  # branch or tag -> sha
  gated: bool = False
  private: bool = False
  granted: frozenset[str] = frozenset()  # tokens allowed to read a gated or private repo
  committed: list[list[str]] = dataclasses.field(default_factory=list)  # paths of each commit, in order


@dataclasses.dataclass(frozen=True)
class Request:
  method: str
  path: str
  range: str | None
  status: int
  sent: int
  authorization: str | None


def _sha(seed: str) -> str:
  return hashlib.sha1(seed.encode()).hexdigest()


class HubServer:
  """Serves repos from memory; `add_repo` copies a model directory in as one commit on main."""

  def __init__(self, tokens: tuple[str, ...] = ()):
    self.repos: dict[str, Repo] = {}
    self.tokens = set(tokens)  # valid tokens; any other bearer token is "invalid credentials"
    self.log: list[Request] = []
    self.bodies: list[bytes] = []  # request bodies of uploads, to prove no token travels in them
    self.fail: Callable[[str, str, int], int | None] = lambda method, path, n: None
    self._lock = threading.Lock()
    self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
    self._server.daemon_threads = True
    self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
    self._thread.start()
    self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

  def close(self) -> None:
    self._server.shutdown()
    self._server.server_close()

  def add_repo(self, repo_id: str, directory: str | None = None, files: dict[str, bytes] | None = None,
               **flags) -> str:
    """A repo whose main holds `directory`'s files (or `files`); returns its commit sha."""
    content = dict(files or {})
    if directory:
      for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
          content[name] = f.read()
    sha = _sha(repo_id + "".join(sorted(content)))
    self.repos[repo_id] = Repo(commits={sha: content}, refs={"main": sha}, **flags)
    return sha

  def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
    repo = self.repos[repo_id]
    return repo.commits[repo.refs.get(revision, revision)]

  def requests(self, pattern: str = "") -> list[Request]:
    with self._lock:
      return [r for r in self.log if re.search(pattern, r.path)]

  # --- the HTTP side ---------------------------------------------------------------------------

  def _handler(self):
    hub = self

    class Handler(BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):  # quiet
        pass

      def do_GET(self):
        hub._serve(self)  # pylint: disable=protected-access

      do_HEAD = do_POST = do_GET

    return Handler

  def _serve(self, h: BaseHTTPRequestHandler) -> None:
    length = int(h.headers.get("Content-Length") or 0)
    body = h.rfile.read(length) if length else b""
    with self._lock:
      n = len(self.log) + 1
      injected = self.fail(h.command, h.path, n)
    if injected:
      status, headers, payload = injected, {}, b'{"error": "injected"}'
    else:
      if h.command == "POST":
        with self._lock:
          self.bodies.append(body)
      status, headers, payload = self._answer(h, body)
    head_only = h.command == "HEAD"
    with self._lock:
      self.log.append(Request(h.command, h.path, h.headers.get("Range"), status, 0 if head_only else len(payload),
                              h.headers.get("Authorization")))
    h.send_response(status)
    headers.setdefault("Content-Type", "application/json")
    for k, v in headers.items():
      h.send_header(k, v)
    h.send_header("Content-Length", str(len(payload)))
    h.end_headers()
    if not head_only:
      h.wfile.write(payload)

  def _token(self, h: BaseHTTPRequestHandler) -> tuple[str | None, bool]:
    auth = h.headers.get("Authorization") or ""
    token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
    return token, token is None or token in self.tokens

  def _answer(self, h: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict, bytes]:
    url = urllib.parse.urlsplit(h.path)
    path = urllib.parse.unquote(url.path)
    query = urllib.parse.parse_qs(url.query)
    token, valid = self._token(h)
    if not valid:
      return _error(401, None, "Invalid credentials in Authorization header")
    if path == "/api/repos/create" and h.command == "POST":
      return self._create(json.loads(body or b"{}"), token)
    m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/(revision|tree|paths-info|preupload|commit)/([^/]+)(/.*)?)?", path)
    if m:
      repo_id, action, revision, rest = m.group(1), m.group(2), m.group(3) or "main", (m.group(4) or "").strip("/")
      return self._api(h, repo_id, action, revision, rest, query, body, token)
    m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
    if m:
      return self._resolve(h, m.group(1), m.group(2), m.group(3), token)
    return _error(404, None, "no such endpoint")

  def _repo(self, repo_id: str, revision: str, token: str | None, reading_files: bool):
    """(repo, sha) or an error answer, in the order the Hub checks: repo, access, revision."""
    repo = self.repos.get(repo_id)
    if repo is None or (repo.private and token not in repo.granted):
      return None, _error(401 if token is None else 404, "RepoNotFound", "Repository not found")
    if repo.gated and reading_files and token not in repo.granted:
      return None, _error(401 if token is None else 403, "GatedRepo", "Access to this model is restricted")
    sha = repo.refs.get(revision, revision if revision in repo.commits else None)
    if sha is None:
      return None, _error(404, "RevisionNotFound", "Invalid rev id")
    return (repo, sha), None

  def _api(self, h, repo_id, action, revision, rest, query, body, token):
    found, error = self._repo(repo_id, revision, token, reading_files=False)
    if error:
      return error
    repo, sha = found
    files = repo.commits[sha]
    if action in (None, "revision"):
      return _json({"id": repo_id, "sha": sha, "private": repo.private, "gated": "manual" if repo.gated else False,
                    "siblings": [{"rfilename": p} for p in sorted(files)]})
    if action == "tree":
      prefix = rest + "/" if rest else ""
      if rest and not any(p.startswith(prefix) for p in files):
        return _error(404, "EntryNotFound", f"{rest} does not exist on {revision}")
      recursive = query.get("recursive", ["false"])[0].lower() == "true"
      entries, dirs = [], set()
      for p in sorted(files):
        if not p.startswith(prefix):
          continue
        tail = p[len(prefix):]
        if "/" in tail and not recursive:
          dirs.add(prefix + tail.split("/", 1)[0])
          continue
        entries.append(_entry(p, files[p]))
      entries += [{"type": "directory", "oid": _sha(d), "size": 0, "path": d} for d in sorted(dirs)]
      return _json(entries)
    if action == "paths-info":
      form = urllib.parse.parse_qs(body.decode())
      wanted = form.get("paths", [])
      return _json([_entry(p, files[p]) for p in wanted if p in files])
    if action == "preupload":
      if token is None:
        return _error(401, None, "Unauthorized")
      listed = json.loads(body)["files"]
      return _json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in listed]})
    if action == "commit":
      return self._commit(repo_id, repo, revision, body, token)
    return _error(404, None, "no such endpoint")

  def _create(self, payload: dict, token: str | None):
    if token is None:
      return _error(401, None, "Unauthorized")
    repo_id = f"{payload.get('organization') or 'me'}/{payload['name']}"
    with self._lock:
      if repo_id in self.repos:  # the Hub's 409 also names the repo's url
        status, headers, _ = _error(409, None, "You already created this model repo")
        return status, headers, json.dumps({"error": "You already created this model repo",
                                            "url": f"{self.url}/{repo_id}"}).encode()
      sha = _sha(repo_id)
      self.repos[repo_id] = Repo(commits={sha: {}}, refs={"main": sha})
    return _json({"url": f"{self.url}/{repo_id}", "name": repo_id})

  def _commit(self, repo_id: str, repo: Repo, revision: str, body: bytes, token: str | None):
    if token is None:
      return _error(401, None, "Unauthorized")
    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
    with self._lock:
      parent = repo.refs[revision]
      files = dict(repo.commits[parent])
      paths = []
      for line in lines:
        value = line["value"]
        if line["key"] == "file":
          files[value["path"]] = base64.b64decode(value["content"])
          paths.append(value["path"])
        elif line["key"] == "deletedFile":
          files.pop(value["path"], None)
          paths.append("-" + value["path"])
        elif line["key"] != "header":
          return _error(400, None, f"unsupported commit line {line['key']}")
      sha = _sha(parent + json.dumps(paths))
      repo.commits[sha] = files
      repo.refs[revision] = sha
      repo.committed.append(paths)
    return _json({"commitUrl": f"{self.url}/{repo_id}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None})

  def _resolve(self, h, repo_id, revision, file, token):
    found, error = self._repo(repo_id, revision, token, reading_files=True)
    if error:
      return error
    repo, sha = found
    data = repo.commits[sha].get(file)
    if data is None:
      return _error(404, "EntryNotFound", f"{file} does not exist on {revision}")
    headers = {"Content-Type": "application/octet-stream", "X-Repo-Commit": sha, "ETag": f'"{_sha(sha + file)}"',
               "Accept-Ranges": "bytes"}
    wanted = h.headers.get("Range")
    if not wanted:
      return 200, headers, data
    m = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())
    start = int(m.group(1))
    end = min(int(m.group(2)) + 1 if m.group(2) else len(data), len(data))
    if start >= len(data):
      return 416, {"Content-Range": f"bytes */{len(data)}"}, b""
    headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
    return 206, headers, data[start:end]


def _entry(path: str, data: bytes) -> dict:
  entry = {"type": "file", "oid": _sha(path + str(len(data))), "size": len(data), "path": path}
  if path.endswith(".safetensors"):
    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
  return entry


def _json(value) -> tuple[int, dict, bytes]:
  return 200, {}, json.dumps(value).encode()


def _error(status: int, code: str | None, message: str) -> tuple[int, dict, bytes]:
  headers = {"X-Error-Message": message}
  if code:
    headers["X-Error-Code"] = code
  return status, headers, json.dumps({"error": message}).encode()
