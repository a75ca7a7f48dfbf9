"""hf://<org>/<repo>[@<commit>]/<file> read through huggingface_hub's HfFileSystem, one range at a time.

transforms/storage.py sends every hf:// path here, so the header, index and tensor readers work on
the Hub unchanged: a tensor costs one ranged GET of its own bytes, never a whole-file download.
Sources are pinned to a commit (pipeline/hub.py resolves --revision once), so every worker reads
the same files even if the branch moves during the run, and --hf_cache_dir can key on the commit.

Errors become one ConversionError line saying what to do; the token never appears in them.
"""
from __future__ import annotations

import dataclasses
import os
import random
import re
import threading
import time
from typing import Any, Callable, TypeVar

from transforms.errors import ConversionError
from transforms import files

PREFIX = "hf://"
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_REVISION = "main"
# The token's environment variables, in order: huggingface_hub's, then MaxText's, then the legacy one.
TOKEN_VARIABLES = ("HF_TOKEN", "HF_AUTH_TOKEN", "HUGGING_FACE_HUB_TOKEN")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
_ATTEMPTS = 5
_RETRY_WAIT = 0.5  # seconds before the first retry; doubles each time, with jitter
_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True)
class HubAccess:
  """What a worker needs to reach the Hub; DoFns carry it and install it in setup().

  `token` is only an explicit hf_access_token= (environment tokens stay in the environment and
  are read by each process), so a token is never copied anywhere the user did not put it.
  """
  token: str | None = dataclasses.field(default=None, repr=False)
  endpoint: str | None = None
  cache_dir: str | None = None


_access = HubAccess()
# (pid, thread, endpoint, token) -> HfFileSystem: its directory cache is per instance and not
# shared across threads, and a forked worker must not reuse its parent's connections.
_FILESYSTEMS: dict[tuple, Any] = {}
_LOCK = threading.Lock()


def configure(access: HubAccess | None) -> None:
  """Installs the access of this process (the driver's options, or a DoFn's copy on a worker)."""
  global _access
  _access = access or HubAccess()


def access() -> HubAccess:
  return _access


def is_hub(path: str | None) -> bool:
  return bool(path) and path.startswith(PREFIX)


def token() -> str | None:
  """hf_access_token= if given, else the first of HF_TOKEN, HF_AUTH_TOKEN, HUGGING_FACE_HUB_TOKEN."""
  if _access.token:
    return _access.token
  for name in TOKEN_VARIABLES:
    if os.environ.get(name):
      return os.environ[name]
  return None


def endpoint() -> str:
  return (_access.endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


@dataclasses.dataclass(frozen=True)
class HubPath:
  repo: str
  revision: str
  file: str

  @property
  def root(self) -> str:
    return f"{PREFIX}{self.repo}@{self.revision}"


def split(path: str) -> HubPath:
  """hf://org/repo[@rev][/file] -> its parts (revision main when absent)."""
  rest = path[len(PREFIX):].strip("/")
  parts = rest.split("/", 2)
  if len(parts) < 2 or not parts[0] or not parts[1]:
    raise ConversionError(f"{path}: a Hub path is hf://<org or user>/<repo>[/<file>]")
  name, _, revision = parts[1].partition("@")
  return HubPath(f"{parts[0]}/{name}", revision or DEFAULT_REVISION, parts[2] if len(parts) > 2 else "")


def _fs_path(path: str) -> str:
  """The HfFileSystem spelling: org/repo@rev/file (always with a revision, so none is guessed).

  Listings of a commit never change and stay cached; a branch (a destination being uploaded to)
  is listed afresh each time.
  """
  p = split(path)
  if not _COMMIT.fullmatch(p.revision):
    filesystem().invalidate_cache()
  return f"{p.repo}@{p.revision}" + (f"/{p.file}" if p.file else "")


def filesystem() -> Any:
  from huggingface_hub import HfFileSystem  # pylint: disable=import-outside-toplevel
  key = (os.getpid(), threading.get_ident(), endpoint(), token())
  with _LOCK:
    fs = _FILESYSTEMS.get(key)
    if fs is None:
      fs = HfFileSystem(endpoint=endpoint(), token=token(), skip_instance_cache=True)
      _FILESYSTEMS[key] = fs
  return fs


def api() -> Any:
  from huggingface_hub import HfApi  # pylint: disable=import-outside-toplevel
  return HfApi(endpoint=endpoint(), token=token())


# --- errors --------------------------------------------------------------------------------------

def _status(e: BaseException) -> int | None:
  response = getattr(e, "response", None)
  return getattr(response, "status_code", None)


def _is_network(e: BaseException) -> bool:
  names = {c.__name__ for c in type(e).__mro__}
  return bool(names & {"TimeoutException", "NetworkError", "RemoteProtocolError", "ConnectError",
                       "ConnectionError", "TimeoutError"})


def is_transient(e: BaseException, also: tuple[int, ...] = ()) -> bool:
  cause = e.__cause__ or e
  return _status(cause) in _TRANSIENT_STATUS + also or _is_network(cause)


def redact(text: str) -> str:
  """The text without the token (and without any user:password@ in a URL)."""
  secret = token()
  if secret:
    text = text.replace(secret, "<token>")
  return re.sub(r"(://)[^/@\s]+@", r"\1<credentials>@", text)


def error(path: str, e: BaseException) -> ConversionError:
  """One line for the user: what happened to `path` on the Hub, and what to do about it."""
  from huggingface_hub import errors  # pylint: disable=import-outside-toplevel
  cause = e.__cause__ if isinstance(e, FileNotFoundError) and e.__cause__ is not None else e
  try:
    where = split(path)
  except ConversionError:
    where = HubPath(path, DEFAULT_REVISION, "")
  page = f"{endpoint()}/{where.repo}"
  status = _status(cause)
  message = str(getattr(cause, "server_message", "") or "")
  if isinstance(cause, errors.GatedRepoError) or "gated" in message.lower():
    if status == 403:
      return ConversionError(f"{path}: {where.repo} is gated and your account has not been granted access (403): "
                             f"accept the license on {page} and retry")
    return ConversionError(f"{path}: {where.repo} is gated (401): log in (`hf auth login`) or set HF_TOKEN to a token "
                           f"of an account that accepted the license on {page}")
  if status == 401 and "invalid credentials" in message.lower():
    return ConversionError(f"{path}: the Hub rejected the token (401 invalid credentials): set HF_TOKEN to a valid "
                           "token (`hf auth login`)")
  if isinstance(cause, errors.RepositoryNotFoundError):
    return ConversionError(f"{path}: repository {where.repo} not found ({status}): check the repo id; a private repo "
                           "also needs HF_TOKEN set to a token that can read it")
  if isinstance(cause, errors.RevisionNotFoundError):
    return ConversionError(f"{path}: revision {where.revision} not found in {where.repo} (404): check --revision "
                           "(a branch, tag or commit of the repo)")
  if isinstance(cause, (errors.EntryNotFoundError, FileNotFoundError)):
    return ConversionError(f"{path}: no such file in {where.repo} at revision {where.revision} (404): check "
                           "--revision, or the repo holds other files")
  if status == 401:
    return ConversionError(f"{path}: the Hub refused access (401): log in (`hf auth login`) or set HF_TOKEN")
  if status == 403:
    return ConversionError(f"{path}: the Hub refused access (403): the token lacks permission for {where.repo}; "
                           f"check it on {endpoint()}/settings/tokens")
  if _is_network(cause):
    return ConversionError(f"{path}: cannot reach the Hugging Face Hub at {redact(endpoint())} "
                           f"({type(cause).__name__}): check the network, proxy settings and HF_ENDPOINT")
  detail = redact(str(cause).splitlines()[0][:200]) if str(cause) else type(cause).__name__
  if status in _TRANSIENT_STATUS:
    return ConversionError(f"{path}: Hub error {status} that persisted through retries ({detail}); retry later")
  return ConversionError(f"{path}: Hub request failed ({status or type(cause).__name__}: {detail})")


def call(path: str, fn: Callable[[], _T], also_retry: tuple[int, ...] = ()) -> _T:
  """fn() with retries on transient failures (5xx, 429, dropped connections) and backoff; then one line.

  (Ranged GETs are also retried inside huggingface_hub, by its http_backoff.)
  """
  for attempt in range(_ATTEMPTS):
    try:
      return fn()
    except ConversionError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      if attempt + 1 < _ATTEMPTS and is_transient(e, also_retry):
        time.sleep(_RETRY_WAIT * 2**attempt * (0.5 + random.random()))
        continue
      raise error(path, e) from None
  raise AssertionError("unreachable")


def _missing(e: FileNotFoundError) -> bool:
  """A plain missing file (not a missing repo or revision, which HfFileSystem also calls FileNotFound)."""
  from huggingface_hub import errors  # pylint: disable=import-outside-toplevel
  return e.__cause__ is None or isinstance(e.__cause__, errors.EntryNotFoundError)


# --- reads ---------------------------------------------------------------------------------------

def resolve_revision(repo: str, revision: str | None) -> str:
  """The commit sha a branch, tag or commit of `repo` points at now (one API call)."""
  revision = revision or DEFAULT_REVISION
  info = call(f"{PREFIX}{repo}@{revision}", lambda: api().model_info(repo, revision=revision))
  if not info.sha:
    raise ConversionError(f"{PREFIX}{repo}@{revision}: the Hub did not say which commit this is")
  return info.sha


def _info(path: str) -> dict[str, Any] | None:
  def get():
    try:
      return filesystem().info(_fs_path(path))
    except FileNotFoundError as e:
      if _missing(e):
        return None
      raise
  return call(path, get)


def exists(path: str) -> bool:
  return _info(path) is not None


def size(path: str) -> int:
  info = _info(path)
  if info is None:
    raise error(path, FileNotFoundError(path))
  return int(info["size"])


def fingerprint(path: str) -> dict[str, Any]:
  """Size, the commit read, and the content hash the Hub lists (LFS sha256, else the git blob id)."""
  p = split(path)
  info = None
  for entry in call(path, lambda: filesystem().ls(_fs_path(_parent(path)), detail=True)):
    if entry["name"].endswith("/" + p.file):
      info = entry
  if info is None:
    raise error(path, FileNotFoundError(path))
  lfs = info.get("lfs") or {}
  sha256 = lfs.get("sha256") or lfs.get("oid") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
  return {"size": int(info["size"]), "commit": p.revision, "sha256": sha256, "blob_id": info.get("blob_id")}


def _parent(path: str) -> str:
  return path.rstrip("/").rsplit("/", 1)[0]


def list_names(path: str) -> list[str]:
  """Sorted base names directly under a repo folder; [] if it does not exist."""
  def get():
    try:
      return filesystem().ls(_fs_path(path), detail=False)
    except FileNotFoundError as e:
      if _missing(e):
        return []
      raise
  return sorted({name.rstrip("/").rsplit("/", 1)[-1] for name in call(path, get)})


def read_bytes(path: str, start: int | None = None, end: int | None = None) -> bytes:
  """[start, end) in one ranged GET (the whole file in one plain GET when both are None).

  With --hf_cache_dir, a range read before at the same commit comes from the cache instead.
  """
  if start is not None and end is not None and end <= start:
    return b""
  cached = _cache_path(path, start, end)
  if cached is not None and files.exists(cached):
    return files.read_bytes(cached)

  def get() -> bytes:
    try:
      return filesystem().cat_file(_fs_path(path), start=start, end=end, cache_type="none")
    except FileNotFoundError as e:
      if _missing(e):
        raise error(path, e) from None
      raise
  data = call(path, get)
  if cached is not None:
    files.write_bytes(cached, data)
  return data


def _cache_path(path: str, start: int | None, end: int | None) -> str | None:
  """<cache>/<org>/<repo>/<commit>/<file>/<start>-<end>: only reads pinned to a commit are kept."""
  if not _access.cache_dir:
    return None
  p = split(path)
  if not _COMMIT.fullmatch(p.revision):
    return None
  span = "all" if start is None and end is None else f"{start or 0}-{'end' if end is None else end}"
  return files.join(_access.cache_dir, p.repo, p.revision, p.file, span)
