"""Transient storage errors are retried; persistent ones fail with the storage error in the message."""
import types

import gcsfs.retry
import pytest

from tests import goldens
from tests.flaky_proxy import FlakyProxy
from tests.gcs_emulator import upload_dir
from tests.test_to_maxtext import convert
from transforms import storage

ENV = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")


async def _no_wait(_seconds):
  """gcsfs waits 1, 2, 4, 8 and 16 s (plus up to 1 s) between its 6 tries; the count, not the wait, is tested."""


@pytest.fixture
def through(gcs_server, monkeypatch):
  """Points every GCS client of this process at a flaky proxy in front of the emulator."""
  monkeypatch.setattr(gcsfs.retry, "asyncio", types.SimpleNamespace(sleep=_no_wait))
  proxies = []

  def start(fail):
    proxy = FlakyProxy(gcs_server.url, fail)
    proxies.append(proxy)
    for key in ENV:
      monkeypatch.setenv(key, proxy.url)
    return proxy
  yield start
  for proxy in proxies:
    proxy.close()


def test_transient_503s_are_retried_and_the_result_is_exact(tmp_path, gcs_bucket, through):
  hf, out = f"gs://{gcs_bucket}/hf", f"gs://{gcs_bucket}/out"
  upload_dir(goldens.path("qwen3", "hf"), hf)
  unlucky = {5, 12, 30, 45, 70, 95}  # requests that get a 503: header and tensor reads, chunk writes, the merge
  proxy = through(lambda method, path, n: n in unlucky)
  _, items, _ = convert(hf, out)
  assert proxy.failed == len(unlucky) and proxy.count > max(unlucky)
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items("qwen3", "scan")))


def test_a_persistent_storage_error_fails_the_job_and_says_so(tmp_path, gcs_bucket, through):
  hf = f"gs://{gcs_bucket}/hf"
  upload_dir(goldens.path("qwen3", "hf"), hf)
  through(lambda method, path, n: method == "GET" and "alt=media" in path and "model.safetensors" in path)
  with pytest.raises(Exception, match=r"model.safetensors: storage error that persisted through retries: .*503"):
    convert(hf, tmp_path / "out")
  assert not (tmp_path / "out" / "0" / "commit_success.txt").exists()
  assert storage.exists(f"{hf}/config.json")
