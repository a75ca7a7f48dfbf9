"""The Hugging Face Hub at both ends: which repo and commit a source is, and preparing a destination.

Sources: `--hf_model_path=org/repo` (when no such local directory exists), `hf://org/repo`, or no
path at all with a `model_name` of the registry (models/known_configs.HUB_REPOS). `--revision` is
resolved to a commit once, here, and every reader (driver and workers) uses hf://org/repo@<commit>.
Destinations: hf://user/repo, created if missing, refused if it already holds a model unless
--overwrite (or --resume of an unfinished upload).
"""
from __future__ import annotations

import os
import re
import sys

from models.known_configs import hub_repo
from transforms.errors import ConversionError
from transforms.manifest import MANIFEST
from transforms import hub_io, hub_upload, storage
from transforms.hub_io import HubAccess, is_hub
from transforms.safetensors_io import INDEX_FILE
from transforms.shard_dofns import AUX_FILES

PREFIX = hub_io.PREFIX
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def access(hf_access_token: str | None, hf_cache_dir: str | None = None) -> HubAccess:
  """The access this run uses, installed in this process; pass it to the DoFns for the workers."""
  endpoint = os.environ.get("HF_ENDPOINT")
  chosen = HubAccess(token=hf_access_token or None, endpoint=endpoint.rstrip("/") if endpoint else None,
                     cache_dir=hf_cache_dir or None)
  hub_io.configure(chosen)
  return chosen


def looks_like_path(path: str) -> bool:
  """A local path, never a Hub repo: starts with /, . or ~, or names more than two components."""
  return path.startswith(("/", ".", "~")) or len([p for p in path.split("/") if p]) > 2


def source_repo(hf_model_path: str | None, model_name: str | None,
                flag: str = "--hf_model_path") -> tuple[str, str | None] | None:
  """(repo id, revision written in the path) when the source is on the Hub, else None.

  A path that looks like one (see looks_like_path) and does not exist is an error at once, never a
  Hub request; a bare org/repo that is no local directory is a Hub repo, and a note says so."""
  if not hf_model_path:
    repo = hub_repo(model_name)
    return (repo, None) if repo else None
  if is_hub(hf_model_path):
    where = hub_io.split(hf_model_path)
    if where.file:
      raise ConversionError(f"{flag}={hf_model_path}: give the repo (hf://<org>/<repo>), not a file in it")
    explicit = "@" in hf_model_path
    return where.repo, where.revision if explicit else None
  if storage.is_gcs(hf_model_path) or os.path.exists(os.path.expanduser(hf_model_path)):
    return None
  if looks_like_path(hf_model_path):
    raise ConversionError(f"{flag}={hf_model_path}: no such directory (a Hub repo is written org/repo or "
                          "hf://org/repo)")
  if _REPO_ID.fullmatch(hf_model_path.rstrip("/")):
    repo = hf_model_path.rstrip("/")
    _note_once(f"{flag}={hf_model_path} is not a local directory: reading the Hugging Face Hub repo {repo}")
    return repo, None
  return None


_NOTED: set[str] = set()


def _note_once(note: str) -> None:
  if note not in _NOTED:
    _NOTED.add(note)
    print(f"note: {note}", file=sys.stderr)


def resolve_source(hf_model_path: str | None, model_name: str | None, revision: str | None,
                   flag: str = "--hf_model_path") -> str | None:
  """The path the plan reads: a local or gs:// path as given (~ expanded), a Hub repo as hf://org/repo@<commit>."""
  found = source_repo(hf_model_path, model_name, flag)
  if found is None:
    if revision and hf_model_path:
      raise ConversionError(f"--revision={revision} only applies to a Hub repo, and {hf_model_path} is a "
                            "local or gs:// directory")
    return os.path.expanduser(hf_model_path) if hf_model_path and hf_model_path.startswith("~") else hf_model_path
  repo, in_path = found
  if in_path and revision and in_path != revision:
    raise ConversionError(f"{flag}={hf_model_path} names revision {in_path} but --revision={revision}; "
                          "give one")
  return f"{PREFIX}{repo}@{hub_io.resolve_revision(repo, in_path or revision)}"


def prepare_destination(path: str, overwrite: bool, resume: bool) -> str:
  """Checks the token, creates the repo if needed and refuses to mix with a model already there.

  With --overwrite the repo's model files are deleted in one commit; with --resume of an
  upload that never reached config.json (it goes last), the shards already there are kept.
  Returns the repo id.
  """
  repo = hub_upload.repo_of(path)
  if not hub_io.token():
    raise ConversionError(f"{path}: uploading needs a Hugging Face token with write access: set HF_TOKEN (or "
                          "HF_AUTH_TOKEN) or pass hf_access_token=...")
  hub_upload.create_repo(repo)
  ours = [n for n in storage.list_names(f"{PREFIX}{repo}")
          if n.endswith(".safetensors") or n in (INDEX_FILE, "config.json", MANIFEST, *AUX_FILES)]
  if not ours or (resume and "config.json" not in ours):
    return repo
  if not overwrite:
    raise ConversionError(f"{path} already holds a model ({', '.join(ours[:3])}{', ...' if len(ours) > 3 else ''}); "
                          "pass --overwrite to replace it" + ("" if "config.json" in ours else ", or --resume to finish it"))
  hub_upload.commit(repo, [], "Remove the model files before a new ckptflow conversion", deletions=ours)
  hub_io.filesystem().invalidate_cache()
  return repo
