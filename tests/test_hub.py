"""The Hub at both ends, against a loopback stand-in (tests/hub_server.py) that HF_ENDPOINT points at."""
import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from pipeline import cli, hub, to_maxtext_job
from transforms.errors import ConversionError
from tests import goldens
from tests.hub_server import HubServer
from tests.test_to_huggingface import assert_same_model, tensors, to_hf
from tests.test_to_maxtext import IN_PROCESS, convert
from transforms import hub_io, storage
from transforms.manifest import MANIFEST

TOKEN = "hf_SeCrEt0123456789abcdefTOKEN"
OTHER_TOKEN = "hf_NotGrantedButValid0000000"


@pytest.fixture
def server(monkeypatch):
  """A Hub with the qwen3 golden at me/qwen3 (public) and me/gated (gated, granted to TOKEN)."""
  srv = HubServer(tokens=(TOKEN, OTHER_TOKEN))
  srv.add_repo("me/qwen3", goldens.path("qwen3", "hf"))
  srv.add_repo("me/gated", goldens.path("qwen3", "hf"), gated=True, granted=frozenset({TOKEN}))
  monkeypatch.setenv("HF_ENDPOINT", srv.url)
  for name in hub_io.TOKEN_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(hub_io, "_RETRY_WAIT", 0.01)
  yield srv
  hub_io.configure(None)
  srv.close()


def run_cli(module, *args, env=None):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=goldens.REPO, capture_output=True, text=True,
                        timeout=300, env={**os.environ, **(env or {})})


def tensor_reads(server, file="model.safetensors"):
  return [r for r in server.requests(f"/resolve/.*/{file}$") if r.method == "GET"]


def test_hub_source_gives_the_same_checkpoint_as_the_local_dir_in_ranged_reads(tmp_path, server):
  plan, items, _ = convert("me/qwen3", tmp_path / "hub")
  _, local_items, _ = convert(goldens.path("qwen3", "hf"), tmp_path / "local")
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(local_items))
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items("qwen3", "scan")))

  reads = tensor_reads(server)
  size = os.path.getsize(goldens.path("qwen3", "hf", "model.safetensors"))
  assert reads and all(r.range and r.status == 206 and r.sent < size for r in reads)
  ranges = sorted({tuple(int(x) for x in r.range[len("bytes="):].split("-")) for r in reads})
  wanted = sorted({(ref.start, ref.end - 1) for task in plan.tasks for ref in task.sources})
  header_len = int.from_bytes(open(goldens.path("qwen3", "hf", "model.safetensors"), "rb").read(8), "little")
  assert ranges == sorted([(0, 7), (8, 7 + header_len)] + wanted)  # the header, then each tensor's own bytes
  assert sum(r.sent for r in reads) == 8 + header_len + plan.source_bytes

  manifest = json.loads((tmp_path / "hub" / "0" / MANIFEST).read_text())
  commit = server.repos["me/qwen3"].refs["main"]
  with open(goldens.path("qwen3", "hf", "model.safetensors"), "rb") as f:
    sha256 = hashlib.sha256(f.read()).hexdigest()
  assert manifest["source"] == f"hf://me/qwen3@{commit}"
  assert sorted(manifest["sources"]) == [f"hf://me/qwen3@{commit}/{n}" for n in ("config.json", "model.safetensors")]
  fingerprint = manifest["sources"][f"hf://me/qwen3@{commit}/model.safetensors"]
  assert (fingerprint["size"], fingerprint["commit"], fingerprint["sha256"]) == (size, commit, sha256)


def test_model_name_alone_reads_its_registry_repo_at_the_given_revision(tmp_path, server, monkeypatch):
  assert hub.source_repo(None, "qwen3-4b") == ("Qwen/Qwen3-4B", None)
  # The registry's repo for qwen3-0.6b, holding the tiny model; a tag points at the older commit.
  old = server.add_repo("Qwen/Qwen3-0.6B", goldens.path("qwen3", "hf"))
  repo = server.repos["Qwen/Qwen3-0.6B"]
  repo.commits["f" * 40] = {"config.json": b"{}"}  # main moves on to a commit that is not a model
  repo.refs.update(main="f" * 40, v1=old)
  args = ["--model_name=qwen3-0.6b", "--revision=v1", f"--base_output_directory={tmp_path}", "--progress=false",
          *IN_PROCESS]
  _, items, _ = to_maxtext_job.convert(to_maxtext_job.PipelineOptions(args), args)
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items("qwen3", "scan")))
  assert all(f"/resolve/{old}/" in r.path for r in server.requests("/resolve/"))  # pinned to v1's commit


@pytest.mark.parametrize("case,flags,env,expected", [
    ("gated without a token", ["--hf_model_path=me/gated"], {},
     r"error: hf://me/gated@[0-9a-f]{40}/config.json: me/gated is gated \(401\): log in .* or set HF_TOKEN .*"
     r"accepted the license on http://127.0.0.1:\d+/me/gated"),
    ("gated, not granted", ["--hf_model_path=hf://me/gated"], {"HF_TOKEN": OTHER_TOKEN},
     r"error: .*: me/gated is gated and your account has not been granted access \(403\): accept the license on "
     r"http://127.0.0.1:\d+/me/gated and retry"),
    ("missing repo", ["--hf_model_path=me/nothing"], {},
     r"error: hf://me/nothing@main: repository me/nothing not found \(401\): check the repo id"),
    ("bad revision", ["--hf_model_path=me/qwen3", "--revision=v9"], {},
     r"error: hf://me/qwen3@v9: revision v9 not found in me/qwen3 \(404\): check --revision"),
    ("bad token", ["--hf_model_path=me/qwen3"], {"HF_AUTH_TOKEN": "hf_wrong_SECRET"},
     r"error: hf://me/qwen3@main: the Hub rejected the token \(401 invalid credentials\): set HF_TOKEN to a valid"),
    ("no config", ["--hf_model_path=me/empty"], {},
     r"error: hf://me/empty@[0-9a-f]{40}/config.json: no such file; --hf_model_path must be"),
])
def test_hub_errors_are_one_line_saying_what_to_do(tmp_path, server, monkeypatch, capsys, case, flags, env, expected):
  server.add_repo("me/empty", files={"README.md": b"hi"})
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  assert cli.run_main(to_maxtext_job.main, [*flags, f"base_output_directory={tmp_path}", "--progress=false",
                                        "--direct_running_mode=in_memory"]) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  err = [line for line in lines if not line.startswith("note: ")]  # the bare org/repo is read from the Hub:
  assert all("reading the Hugging Face Hub repo" in line for line in lines if line not in err)  # a note says so
  assert len(err) == 1 and re.fullmatch(expected + ".*", err[0]), err
  assert all(v not in err[0] for v in env.values())
  assert not (tmp_path / "0").exists()


def test_a_missing_file_and_an_unreachable_hub_are_one_line(server, monkeypatch):
  commit = server.repos["me/qwen3"].refs["main"]
  with pytest.raises(ConversionError, match=rf"hf://me/qwen3@{commit}/model-00002-of-00002.safetensors: no such file "
                                            rf"in me/qwen3 at revision {commit} \(404\): check --revision"):
    storage.read_bytes(f"hf://me/qwen3@{commit}/model-00002-of-00002.safetensors", 0, 8)
  monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
  hub.access(None)
  with pytest.raises(ConversionError, match=r"^hf://me/qwen3@main: cannot reach the Hugging Face Hub at "
                                            r"http://127.0.0.1:9 \(ConnectError\): check the network"):
    hub.resolve_source("me/qwen3", None, None)


def test_transient_5xx_are_retried_and_the_result_is_exact(tmp_path, server):
  unlucky = {"revision": 1, "tree": 1, "resolve": 2}  # first calls of each kind answer 503

  def fail(method, path, n):
    for kind in unlucky:
      if f"/{kind}/" in path and unlucky[kind] > 0:
        unlucky[kind] -= 1
        return 503
    return None
  server.fail = fail
  _, items, _ = convert("me/qwen3", tmp_path)
  assert unlucky == {"revision": 0, "tree": 0, "resolve": 0}
  assert len([r for r in server.log if r.status == 503]) == 4
  goldens.assert_same_checkpoint(goldens.restore(items), goldens.restore(goldens.items("qwen3", "scan")))


def test_a_persistent_5xx_fails_in_one_line(server):
  server.fail = lambda method, path, n: 503 if "/revision/" in path else None
  with pytest.raises(ConversionError, match=r"^hf://me/qwen3@main: Hub error 503 that persisted through retries"):
    hub.resolve_source("me/qwen3", None, None)
  assert len(server.requests("/revision/")) == hub_io._ATTEMPTS  # pylint: disable=protected-access


def test_cache_dir_keeps_what_was_read_and_a_second_run_reads_no_file_bytes(tmp_path, server):
  cache = tmp_path / "cache"
  _, first, _ = convert("me/qwen3", tmp_path / "a", f"--hf_cache_dir={cache}")
  fetched = len(tensor_reads(server))
  commit = server.repos["me/qwen3"].refs["main"]
  kept = sorted(os.listdir(cache / "me" / "qwen3" / commit / "model.safetensors"))
  assert len(kept) == fetched and "0-8" in kept
  _, second, _ = convert("me/qwen3", tmp_path / "b", f"--hf_cache_dir={cache}")
  assert len(tensor_reads(server)) == fetched and len(server.requests("/resolve/.*/config.json$")) == 1
  goldens.assert_same_checkpoint(goldens.restore(second), goldens.restore(first))


def test_token_never_reaches_output_manifest_or_logs_and_workers_get_the_option(tmp_path, server):
  """MaxText's command line with hf_access_token=, on the local multi-process runner: only the
  option carries the token (no environment variable), so the worker processes reading the gated
  repo prove that it reached them; it appears nowhere in stdout, stderr, the output or the manifest."""
  out = tmp_path / "out"
  p = run_cli("pipeline.to_maxtext", "model_name=qwen3-0.6b", f"base_output_directory={out}", "scan_layers=true",
              "--hf_model_path=me/gated", f"hf_access_token={TOKEN}", "--direct_num_workers=2",
              "--direct_running_mode=multi_processing", env={"HF_ENDPOINT": server.url})
  assert p.returncode == 0, p.stderr
  assert TOKEN not in p.stdout + p.stderr
  for root, _, files in os.walk(out):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        assert TOKEN.encode() not in f.read(), name
  manifest = json.loads((out / "0" / MANIFEST).read_text())
  assert manifest["source"].startswith("hf://me/gated@") and "hf_access_token" not in manifest["options"]
  workers_read = {r.authorization for r in tensor_reads(server)}
  assert workers_read == {f"Bearer {TOKEN}"}
  goldens.assert_same_checkpoint(goldens.restore(f"{out}/0/items"), goldens.restore(goldens.items("qwen3", "scan")))


def test_manifest_masks_credentials_in_urls_and_the_token(tmp_path, server, monkeypatch):
  monkeypatch.setenv("HF_TOKEN", TOKEN)
  hub.access(None)
  plan, _, _ = convert("me/gated", tmp_path)
  args = [f"--hf_model_path=https://user:{TOKEN}@mirror.example/me/gated", f"--base_output_directory={tmp_path}"]
  conv = to_maxtext_job.PipelineOptions(args).view_as(to_maxtext_job.ConversionOptions)
  manifest = json.dumps(to_maxtext_job.build_manifest(plan, conv, source=f"hf://me/gated?token={TOKEN}"))
  assert TOKEN not in manifest and "user:" not in manifest and "https://<credentials>@mirror.example" in manifest


def test_source_forms(tmp_path, monkeypatch):
  assert hub.source_repo("org/model", None) == ("org/model", None)
  assert hub.source_repo("hf://org/model", None) == ("org/model", None)
  assert hub.source_repo("hf://org/model@v2", None) == ("org/model", "v2")
  assert hub.source_repo(None, "llama3.1-8b") == ("meta-llama/Llama-3.1-8B", None)
  assert hub.source_repo(None, "no-such-model") is None
  assert hub.source_repo("gs://bucket/org", None) is None
  (tmp_path / "org" / "model").mkdir(parents=True)
  monkeypatch.chdir(tmp_path)
  assert hub.source_repo("org/model", None) is None  # an existing local directory wins
  with pytest.raises(ConversionError, match="names revision v2 but --revision=v3"):
    hub.resolve_source("hf://org/model@v2", None, "v3")
  with pytest.raises(ConversionError, match="only applies to a Hub repo"):
    hub.resolve_source(str(tmp_path), None, "v3")


# --- hf:// destinations ----------------------------------------------------------------------------

def test_upload_commits_each_shard_then_the_index_and_config(tmp_path, server, monkeypatch):
  monkeypatch.setenv("HF_TOKEN", TOKEN)
  plan, _ = to_hf(goldens.items("qwen3", "scan"), "hf://me/out", "--max_shard_size=100KB",
                  hf_model_path="hf://me/qwen3")
  to_hf(goldens.items("qwen3", "scan"), tmp_path / "local", "--max_shard_size=100KB",
        hf_model_path=goldens.path("qwen3", "hf"))
  commits = server.repos["me/out"].committed
  shards = sorted(s.file.rsplit("/", 1)[-1] for s in plan.shards)
  assert len(shards) > 2 and sorted(c[0] for c in commits[:-1]) == shards and all(len(c) == 1 for c in commits[:-1])
  assert commits[-1] == ["model.safetensors.index.json", "generation_config.json", "tokenizer.json",
                         "tokenizer_config.json", "ckptflow_manifest.json", "config.json"]
  uploaded = server.files("me/out")
  assert sorted(uploaded) == sorted(os.listdir(tmp_path / "local"))
  for name, data in uploaded.items():
    if name != "ckptflow_manifest.json":  # records its own run (time, source)
      assert data == (tmp_path / "local" / name).read_bytes(), name
  assert json.loads(uploaded["ckptflow_manifest.json"])["direction"] == "to_huggingface"
  assert_same_model(tensors("hf://me/out"), tensors(goldens.path("qwen3", "hf")), "qwen3")
  assert all(TOKEN.encode() not in body for body in server.bodies)


def test_existing_model_repo_is_refused_unless_overwrite(tmp_path, server, monkeypatch):
  monkeypatch.setenv("HF_TOKEN", TOKEN)
  server.add_repo("me/out", files={"config.json": b"{}", "model-00001-of-00009.safetensors": b"old", "README.md": b"x"})
  with pytest.raises(ConversionError, match=r"^hf://me/out already holds a model \(config.json, "
                                            r"model-00001-of-00009.safetensors\); pass --overwrite to replace it$"):
    to_hf(goldens.items("qwen3", "scan"), "hf://me/out", hf_model_path=goldens.path("qwen3", "hf"))
  assert server.repos["me/out"].committed == []
  to_hf(goldens.items("qwen3", "scan"), "hf://me/out", "--overwrite", hf_model_path=goldens.path("qwen3", "hf"))
  assert sorted(server.files("me/out")) == ["README.md", "ckptflow_manifest.json", "config.json", "generation_config.json", "model.safetensors",
                                             "tokenizer.json", "tokenizer_config.json"]
  assert server.repos["me/out"].committed[0] == ["-config.json", "-model-00001-of-00009.safetensors"]
  assert_same_model(tensors("hf://me/out"), tensors(goldens.path("qwen3", "hf")), "qwen3")


def test_upload_needs_a_token_and_says_so_before_any_work(tmp_path, server):
  with pytest.raises(ConversionError, match=r"^hf://me/out: uploading needs a Hugging Face token with write access: "
                                            r"set HF_TOKEN"):
    to_hf(goldens.items("qwen3", "scan"), "hf://me/out", hf_model_path=goldens.path("qwen3", "hf"))
  with pytest.raises(ConversionError, match=r"a Hub destination is hf://<user or org>/<repo>"):
    to_hf(goldens.items("qwen3", "scan"), "hf://me/out/sub", "--hf_access_token=" + TOKEN,
          hf_model_path=goldens.path("qwen3", "hf"))
  assert "me/out" not in server.repos


def test_resume_uploads_only_the_missing_shards(tmp_path, server, monkeypatch):
  monkeypatch.setenv("HF_TOKEN", TOKEN)
  to_hf(goldens.items("qwen3", "scan"), tmp_path / "local", "--max_shard_size=100KB",
        hf_model_path=goldens.path("qwen3", "hf"))
  first = sorted(n for n in os.listdir(tmp_path / "local") if n.endswith(".safetensors"))[0]
  server.add_repo("me/out", files={first: (tmp_path / "local" / first).read_bytes()})
  to_hf(goldens.items("qwen3", "scan"), "hf://me/out", "--max_shard_size=100KB", "--resume",
        hf_model_path=goldens.path("qwen3", "hf"))
  committed = [name for c in server.repos["me/out"].committed for name in c]
  assert first not in committed and len(committed) == len(os.listdir(tmp_path / "local")) - 1
  kept = [n for n in os.listdir(tmp_path / "local") if n != "ckptflow_manifest.json"]  # records its own run
  assert {n: server.files("me/out")[n] for n in kept} == {n: (tmp_path / "local" / n).read_bytes() for n in kept}


def test_verify_reads_its_source_from_the_gated_hub_repo(server, capsys):
  from pipeline import verify  # pylint: disable=import-outside-toplevel
  assert verify.main([f"load_parameters_path={goldens.items('qwen3', 'scan')}", "--hf_model_path=hf://me/gated",
                      f"hf_access_token={TOKEN}", *IN_PROCESS, "--progress=false"]) == 0
  out = capsys.readouterr()
  assert out.out.splitlines()[-1].endswith(" bit-identical") and TOKEN not in out.out + out.err
  assert {r.authorization for r in tensor_reads(server)} == {f"Bearer {TOKEN}"}
