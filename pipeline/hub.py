"""hf://user/repo destinations: fail fast on a missing token or an unreachable Hub, upload at the end.

The shards are staged in a directory first (this issue's scope); streaming straight to the Hub
without staging whole files is a later step.
"""
from __future__ import annotations

import os
from typing import Any

from pipeline.errors import ConversionError

PREFIX = "hf://"


def is_hub(path: str) -> bool:
  return path.startswith(PREFIX)


def repo_id(path: str) -> str:
  repo = path[len(PREFIX):].strip("/")
  if repo.count("/") != 1 or not all(repo.split("/")):
    raise ConversionError(f"{path}: a Hub destination is hf://<user or org>/<repo>")
  return repo


def token(explicit: str | None) -> str:
  value = explicit or os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
  if not value:
    raise ConversionError("an hf:// destination needs a Hugging Face token: set HF_TOKEN or pass "
                          "hf_access_token=...")
  return value


def _api(access_token: str) -> Any:
  try:
    from huggingface_hub import HfApi  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConversionError("hf:// destinations need huggingface_hub: pip install huggingface_hub") from None
  return HfApi(token=access_token)


def prepare(path: str, explicit_token: str | None) -> tuple[str, str]:
  """Checks the token and that the repo can be created, before any conversion work."""
  repo, access_token = repo_id(path), token(explicit_token)
  api = _api(access_token)
  try:
    api.create_repo(repo, repo_type="model", exist_ok=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(f"cannot reach the Hugging Face Hub for {path} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}); check the network, HF_ENDPOINT and the token") from None
  return repo, access_token


def upload(staged_dir: str, repo: str, access_token: str) -> None:
  try:
    _api(access_token).upload_folder(repo_id=repo, folder_path=staged_dir, repo_type="model",
                                     commit_message="Upload converted from MaxText with ckptflow")
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(f"upload to hf://{repo} failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                          f"the converted files are in {staged_dir}") from None
