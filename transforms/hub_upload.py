"""Uploads to an hf:// model repo through huggingface_hub's HfApi: a finished file per commit.

A shard is uploaded by the worker that wrote it, as soon as it is whole (one commit each), so no
disk ever holds more than one shard; the index, tokenizer files and config.json follow in one last
commit after every shard is in. Commits are retried on transient errors and on the conflicts that
concurrent commits to one branch can meet.
"""
from __future__ import annotations

from typing import Sequence

from transforms.errors import ConversionError
from transforms import hub_io

# Concurrent commits to one branch may meet 409/412 on the Hub; retrying re-applies on the new head.
_COMMIT_CONFLICTS = (409, 412)


def repo_of(path: str) -> str:
  """The repo id of an hf:// destination (no revision: uploads always go to main)."""
  where = hub_io.split(path)
  if where.revision != hub_io.DEFAULT_REVISION or where.file:
    raise ConversionError(f"{path}: a Hub destination is hf://<user or org>/<repo>")
  return where.repo


def create_repo(repo: str) -> None:
  hub_io.call(f"hf://{repo}", lambda: hub_io.api().create_repo(repo, repo_type="model", exist_ok=True))


def commit(repo: str, files: Sequence[tuple[str, str]], message: str, deletions: Sequence[str] = ()) -> None:
  """One commit on main: (name in repo, local file) additions and deletions of names."""
  from huggingface_hub import CommitOperationAdd, CommitOperationDelete  # pylint: disable=import-outside-toplevel

  def send():
    operations = ([CommitOperationDelete(path_in_repo=name) for name in deletions]
                  + [CommitOperationAdd(path_in_repo=name, path_or_fileobj=local) for name, local in files])
    return hub_io.api().create_commit(repo, operations, commit_message=message, repo_type="model")
  names = [name for name, _ in files] or list(deletions)
  hub_io.call(f"hf://{repo}/{names[0] if len(names) == 1 else ''}".rstrip("/"), send, also_retry=_COMMIT_CONFLICTS)
