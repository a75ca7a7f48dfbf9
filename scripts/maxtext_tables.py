"""Writes pipeline/maxtext_config.json: the config keys and model names MaxText knows, at one commit.

  python scripts/maxtext_tables.py --maxtext_git=/path/to/maxtext/.git [--commit=e591f30]

Run once per MaxText commit the goldens come from (tests/data/goldens/README.md names it); the
JSON is checked in, so nothing reads MaxText at run time. Keys are the top-level keys of
src/maxtext/configs/base.yml, plus the fields of MaxText's pydantic config (configs/types.py: the
classes MaxTextConfig is made of, and its nested sections such as lora.* as dotted keys), which
MaxText's pyconfig accepts on the command line as well. Model names are configs/models/*.yml and
types.py's ModelName, the names MaxText's own validation accepts (-Instruct variants included). Each model config's dimensions
(base_emb_dim, base_num_query_heads, ...) are kept too, to say which overrides load a model whose
config.json differs.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess

import yaml

BASE_YML = "src/maxtext/configs/base.yml"
TYPES_PY = "src/maxtext/configs/types.py"
MODELS_DIR = "src/maxtext/configs/models"
# The dimension keys of a model config that pipeline/maxtext_config.py compares config.json with
# (its MAXTEXT_DIMENSIONS; repeated here so this script runs without ckptflow's dependencies).
DIMENSIONS = ("base_emb_dim", "base_num_query_heads", "base_num_kv_heads", "vocab_size", "num_experts",
              "num_experts_per_tok", "shared_experts", "first_num_dense_layers", "q_lora_rank", "kv_lora_rank",
              "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "head_dim", "base_num_decoder_layers",
              "base_mlp_dim", "base_moe_mlp_dim")
OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pipeline", "maxtext_config.json")


def git(repo: str, *args: str) -> str:
  return subprocess.run(["git", "--git-dir", repo, *args], check=True, capture_output=True, text=True).stdout


def pydantic_keys(text: str) -> tuple[set[str], list[str]]:
  """(MaxTextConfig's field names, nested sections as section.field), and types.py's ModelName."""
  tree = ast.parse(text)
  classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}

  def fields(name: str, seen: set[str]) -> set[str]:
    if name not in classes or name in seen:
      return set()
    seen.add(name)
    cls = classes[name]
    found = {s.target.id for s in cls.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    for base in cls.bases:
      if isinstance(base, ast.Name):
        found |= fields(base.id, seen)
    return found - {"model_config"}

  keys = fields("MaxTextConfig", set())
  for stmt in classes["MaxTextConfig"].body:
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.annotation, ast.Name) and stmt.annotation.id in classes:
      keys |= {f"{stmt.target.id}.{f}" for f in fields(stmt.annotation.id, set())}
  names: list[str] = []
  for stmt in tree.body:
    if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "ModelName" for t in stmt.targets):
      names = [e.value for e in stmt.value.slice.elts]  # Literal["default", "llama2-7b", ...]
  return keys, names


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--maxtext_git", required=True, help="a git directory of AI-Hypercomputer/maxtext")
  parser.add_argument("--commit", default="e591f30", help="the MaxText commit (default e591f30, the goldens')")
  parser.add_argument("--out", default=OUT)
  args = parser.parse_args()
  commit = git(args.maxtext_git, "rev-parse", f"{args.commit}^{{commit}}").strip()
  base = yaml.safe_load(git(args.maxtext_git, "show", f"{commit}:{BASE_YML}"))
  keys = set(base)
  fields, literal = pydantic_keys(git(args.maxtext_git, "show", f"{commit}:{TYPES_PY}"))
  files = git(args.maxtext_git, "ls-tree", "--name-only", f"{commit}:{MODELS_DIR}").split()
  names = {f[:-4] for f in files if f.endswith(".yml")} | set(literal)
  names.discard("default")
  dims = {}
  for f in sorted(files):
    if f.endswith(".yml"):
      model = yaml.safe_load(git(args.maxtext_git, "show", f"{commit}:{MODELS_DIR}/{f}")) or {}
      merged = {**base, **model}  # as MaxText merges them: what the model's yml leaves out, base.yml sets
      dims[f[:-4]] = {k: merged[k] for k in DIMENSIONS if isinstance(merged.get(k), int)}
  table = {"source": "github.com/AI-Hypercomputer/maxtext", "commit": commit,
           "keys": sorted(keys | fields), "model_names": sorted(names), "model_dimensions": dims}
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(table, f, indent=0)
    f.write("\n")
  print(f"{args.out}: {len(table['keys'])} keys ({len(keys)} in base.yml), {len(names)} model names at {commit[:9]}")


if __name__ == "__main__":
  main()
