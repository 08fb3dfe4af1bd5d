"""The declared public surface (issue 19 item 7): `vmae_fast.__all__` is what `import vmae_fast` offers, every public
module declares `__all__` and every name in it resolves, the module paths of 0.1's flat layout (16c2a40) still
import for one release with one warning each and hand out the new objects, `import vmae_fast` and the model work
with torch and triton alone, and tools/ reach only public names (or the declared helpers of vmae_fast.testing).

Public modules: vmae_fast, the modules its `__all__` names, vmae_fast.testing, and the submodules each public
package's `__all__` names (found here, not listed twice)."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

import vmae_fast

REPO = Path(__file__).resolve().parents[2]
HELPERS = "vmae_fast.testing"  # declared internals for the tests and tools/: no compatibility promise


def public_modules() -> dict[str, types.ModuleType]:
    """{name: module} of every public module: vmae_fast and vmae_fast.testing, then each module a public package's
    __all__ names."""
    found, todo = {}, ["vmae_fast", HELPERS]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        module = found[name] = importlib.import_module(name)
        for attr in getattr(module, "__all__", ()):
            value = getattr(module, attr)
            if isinstance(value, types.ModuleType) and value.__name__ == f"{name}.{attr}":
                todo.append(value.__name__)
    return found


def run_python(code: str, timeout: float = 240) -> dict:
    """Run `code` in a fresh interpreter (from the repository root) and return the JSON it prints last."""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                            check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- vmae_fast.__all__ --------------------------------------------------------------------------------------------
def test_all_is_exactly_what_import_vmae_fast_offers():
    """In a fresh interpreter: dir() lists __all__ (and the module's dunders), the module holds no public name outside
    it (no `annotations`, no `importlib`), every name resolves, and resolving all of them adds no other name."""
    got = run_python("""
import json, vmae_fast
public = lambda names: sorted(n for n in names if not n.startswith("_"))
before = public(vars(vmae_fast))
for name in vmae_fast.__all__:
    getattr(vmae_fast, name)
try:
    vmae_fast.annotations
    missing = None
except AttributeError as e:
    missing = str(e)
print(json.dumps({"all": vmae_fast.__all__, "dir": dir(vmae_fast), "before": before, "missing": missing,
                  "after": public(vars(vmae_fast))}))
""")
    names = got["all"]
    assert len(names) == len(set(names)), f"__all__ repeats names: {sorted(n for n in names if names.count(n) > 1)}"
    assert [n for n in names if n.startswith("_")] == ["__version__"]
    offered = {n for n in got["dir"] if not (n.startswith("__") and n.endswith("__"))} | {"__version__"}
    assert offered == set(names), f"dir() - __all__: {offered - set(names)}, __all__ - dir(): {set(names) - offered}"
    assert set(got["before"]) <= set(names), f"public names outside __all__: {set(got['before']) - set(names)}"
    assert set(got["after"]) == {n for n in names if not n.startswith("_")}, set(got["after"]) ^ set(names)
    assert got["missing"] == "module 'vmae_fast' has no attribute 'annotations'"


def test_top_level_names_are_the_public_objects_of_their_modules():
    for name, home in vmae_fast._NAMES.items():
        module = importlib.import_module(home)
        assert name in module.__all__, f"vmae_fast.{name} re-exports {home}.{name}, which {home}.__all__ does not list"
        assert getattr(vmae_fast, name) is getattr(module, name), name
    for name in vmae_fast._MODULES:
        assert getattr(vmae_fast, name) is importlib.import_module(f"vmae_fast.{name}"), name
    assert vmae_fast.VmaeFastDeprecationWarning.__module__ == "vmae_fast._compat"


def test_every_public_module_declares_all_and_every_name_resolves():
    modules = public_modules()
    assert {"vmae_fast.kernels", "vmae_fast.store", "vmae_fast.faults", "vmae_fast.ids", "vmae_fast.testing.kernels",
            "vmae_fast.testing.video"} <= set(modules), sorted(modules)
    for name, module in modules.items():
        declared = module.__dict__.get("__all__")
        assert isinstance(declared, list) and all(isinstance(n, str) for n in declared), f"{name} has no __all__ list"
        assert len(declared) == len(set(declared)), f"{name}.__all__ repeats a name"
        assert not [n for n in declared if n.startswith("_") and n != "__version__"], f"{name}.__all__: {declared}"
        unresolved = [n for n in declared if not hasattr(module, n)]
        assert not unresolved, f"{name}.__all__ names what {name} does not have: {unresolved}"


@pytest.mark.parametrize("name", ["config", "model", "vjepa2", "tokens", "checkpoint", "cuda_graphs", "faults", "ids",
                                  "demo", "cli"])
def test_top_level_modules_write_their_public_api_in_the_docstring(name):
    """What each top-level module promises is written where a reader (and the API reference) looks first."""
    module = importlib.import_module(f"vmae_fast.{name}")
    doc = module.__doc__ or ""
    assert "Public API" in doc, f"vmae_fast.{name}'s docstring has no 'Public API' paragraph"
    unnamed = [n for n in module.__all__ if n not in doc]
    assert not unnamed, f"vmae_fast.{name}'s docstring does not name {unnamed} (its __all__)"


def test_docs_page_names_every_public_module():
    page = (REPO / "docs" / "public-api.md").read_text()
    unnamed = [name for name in public_modules() if f"`{name}`" not in page]
    assert not unnamed, f"docs/public-api.md does not name the public modules {unnamed}"


# --- the module paths of 16c2a40 ----------------------------------------------------------------------------------
# The public names each old module offered at 16c2a40: its top-level functions, classes and constants, and the
# names it imported from the package (users could reach those through it too). Taken from the module's AST with
# `git show 16c2a40:vmae_fast/<module>.py` (names without a leading underscore).
OLD_NAMES = {
    "pipeline": ["build_run", "decode_pool_options", "extract", "feed", "load_run_model", "parse_keep_spec",
                 "Discovery", "ModelRunner", "ShardLock", "committed_ids", "resolve_device", "resolve_shard",
                 "store", "use_device"],
    "inputs": ["BATCH_ROWS", "Discovery", "Inputs", "LIST_EXTENSIONS", "PRIME_ENTRIES", "PROGRESS_EVERY_S",
               "WALK_BATCH", "discover_inputs", "iter_tasks", "resolve_shard", "shard_of", "shards_of", "split_list",
               "is_url", "url_video_id"],
    "committed": ["KeySet", "SAMPLE", "committed_ids", "id_keys"],
    "views": ["EMBEDDING_NOTE", "PROBS_NOTE", "TOP", "VIDEOS_DIR", "VideoAccumulator", "aggregate_clip_part",
              "aggregate_video", "columns_table", "format_labels", "has_video_table", "iter_videos", "label_names",
              "parse_views", "read_videos", "run_labels", "softmax", "top_indices", "video_columns", "video_labels",
              "video_parts", "video_schema"],
    "ray_engine": ["GROUP_VIDEOS", "REPORT_EVERY_S", "RUN_TOKEN", "ZOMBIE_GRACE_S", "extract_ray", "format_actors",
                   "store"],
    "index": ["FORMAT_VERSION", "INDEX_DIR", "Index", "LEVELS", "META_COLUMNS", "Match", "RETRAIN_GROWTH",
              "StaleIndexError", "clip_files", "clip_vector", "data_fingerprint", "normalize", "KINDS", "RECALL_K",
              "SEARCH_PARAMS", "TARGET_RECALL", "TUNE_QUERIES", "default_memory", "estimate_bytes", "exact_top_k",
              "faiss_search", "human_bytes", "latency", "new_faiss_index", "parse_memory", "plan_index", "tune"],
    "search": ["describe_query", "embed_video_at", "format_results", "load_vectors", "parse_clip_id",
               "resolve_media_path", "run_query", "video_duration", "Index", "clip_vector"],
}
# old path -> where the name is public now, for the names that have a public home
NEW_HOMES = {
    ("pipeline", "extract"): "vmae_fast.extract",
    ("pipeline", "committed_ids"): "vmae_fast.store.committed_ids",
    ("pipeline", "ShardLock"): "vmae_fast.store.ShardLock",
    ("pipeline", "store"): "vmae_fast.store",
    ("inputs", "split_list"): "vmae_fast.extraction.split_list",
    ("inputs", "discover_inputs"): "vmae_fast.extraction.discover_inputs",
    ("inputs", "iter_tasks"): "vmae_fast.extraction.iter_tasks",
    ("inputs", "Discovery"): "vmae_fast.extraction.Discovery",
    ("inputs", "shard_of"): "vmae_fast.ids.shard_of",
    ("inputs", "shards_of"): "vmae_fast.ids.shards_of",
    ("committed", "committed_ids"): "vmae_fast.store.committed_ids",
    ("committed", "KeySet"): "vmae_fast.ids.KeySet",
    ("committed", "id_keys"): "vmae_fast.ids.id_keys",
    ("views", "read_videos"): "vmae_fast.read_videos",
    ("views", "video_schema"): "vmae_fast.store.video_schema",
    ("views", "VideoAccumulator"): "vmae_fast.store.VideoAccumulator",
    ("views", "aggregate_video"): "vmae_fast.store.aggregate_video",
    ("views", "VIDEOS_DIR"): "vmae_fast.store.VIDEOS_DIR",
    ("index", "Index"): "vmae_fast.Index",
    ("index", "Match"): "vmae_fast.retrieval.Match",
    ("index", "StaleIndexError"): "vmae_fast.retrieval.StaleIndexError",
    ("index", "clip_vector"): "vmae_fast.retrieval.clip_vector",
    ("index", "plan_index"): "vmae_fast.retrieval.plan_index",
    ("search", "embed_video_at"): "vmae_fast.embed_video_at",
    ("search", "run_query"): "vmae_fast.retrieval.run_query",
}


def test_old_module_paths_import_warn_once_each_and_hand_out_the_new_objects():
    got = run_python(f"""
import importlib, json, types, warnings
import vmae_fast
OLD_NAMES = {OLD_NAMES!r}
report = {{"warnings": [], "missing": {{}}, "not_new": {{}}}}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for old, names in OLD_NAMES.items():
        module = importlib.import_module(f"vmae_fast.{{old}}")
        exec(f"import vmae_fast.{{old}}")  # the import statement, and again: still one warning
        assert importlib.import_module(f"vmae_fast.{{old}}") is module
        report["missing"][old] = [n for n in names if not hasattr(module, n)]
        # a function, class or module at the old path is the object of the module that defines it now
        report["not_new"][old] = [n for n in names if isinstance(getattr(module, n, None), (type, types.FunctionType))
                                  and getattr(module, n).__module__ in (module.__name__, None)]
        getattr(module, names[0])  # attribute access warns no more
report["warnings"] = [(w.category.__name__, issubclass(w.category, vmae_fast.VmaeFastDeprecationWarning),
                       str(w.message)) for w in caught]
print(json.dumps(report))
""")
    assert not any(got["missing"].values()), f"old names that no longer resolve: {got['missing']}"
    assert not any(got["not_new"].values()), got["not_new"]
    ours = [w for w in got["warnings"] if w[1]]  # (others, e.g. SWIG's DeprecationWarnings from faiss, are not ours)
    modules = {name for name in public_modules() if not name.startswith(HELPERS)}
    for old in OLD_NAMES:
        said = [text for _, _, text in ours if text.startswith(f"vmae_fast.{old} moved to vmae_fast.")]
        assert len(said) == 1, f"vmae_fast.{old}: {len(said)} warnings, expected exactly one: {said}"
        assert "works until vmae_fast 0.3" in said[0], said[0]
        # it names public places only: it once sent users to internal modules (vmae_fast.retrieval.index, ...),
        # which docs/public-api.md says may change in any release
        for home in said[0].split(" moved to ")[1].split(";")[0].split(", "):
            parent, _, name = home.rpartition(".")
            public = (parent == "vmae_fast" and name in vmae_fast.__all__) or home in modules
            assert public, f"vmae_fast.{old}'s warning names {home}, which is not public: {said[0]}"
    assert len(ours) == len(OLD_NAMES) and {w[0] for w in ours} == {"VmaeFastDeprecationWarning"}, ours
    for (old, name), new in NEW_HOMES.items():
        home, _, attr = new.rpartition(".")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vmae_fast.VmaeFastDeprecationWarning)
            moved = getattr(importlib.import_module(f"vmae_fast.{old}"), name)
        assert moved is getattr(importlib.import_module(home), attr), (old, name, new)


# --- torch and triton alone ---------------------------------------------------------------------------------------
BLOCKED = ("pyarrow", "av", "faiss", "decord", "tqdm", "PIL", "ray", "fsspec", "transformers", "torchcodec")
TINY = {"image_size": 32, "num_frames": 4, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 128}


def tiny_forward(vmae_fast_module):
    """The embeddings of two seeded uint8 clips (one keeping half its tokens) through random:small at TINY."""
    torch.set_num_threads(1)
    model = vmae_fast_module.load_model("random:small", device="cpu", config=TINY, backend="torch")
    frames = torch.randint(0, 256, (2, 4, 32, 32, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with torch.inference_mode():
        return model(frames).embeddings, model(frames, keep="tube:0.5").embeddings


def test_import_and_the_model_work_with_torch_and_triton_alone():
    """A fresh interpreter where pyarrow, av, faiss, decord, tqdm, PIL (and ray, fsspec, transformers, torchcodec)
    cannot be imported (None in sys.modules, Python's own way to block an import): vmae_fast, its model modules, the
    kernels and vmae_fast.testing.kernels import, random:small builds at a tiny config and a forward gives the same
    embeddings as here; the blocker does block (read_clips needs pyarrow and says so)."""
    got = run_python(f"""
import json, sys
BLOCKED = {BLOCKED!r}
assert not [m for m in sys.modules if m.partition(".")[0] in BLOCKED]
for name in BLOCKED:  # as if not installed: `import` raises ModuleNotFoundError, importlib.util.find_spec gives None
    sys.modules[name] = None
import torch
import vmae_fast
import vmae_fast.kernels, vmae_fast.testing.kernels
for name in ("config", "model", "vjepa2", "tokens", "checkpoint", "cuda_graphs", "faults", "ids", "kernels"):
    getattr(vmae_fast, name)
for name in ("VideoMAEConfig", "VideoMAE", "VideoMAEOutput", "load_model", "CUDAGraphRunner", "UserError",
             "EnvironmentFault", "VideoError"):
    getattr(vmae_fast, name)
sys.path.insert(0, "tests/project")
from test_public_api import tiny_forward
full, half = tiny_forward(vmae_fast)
try:
    vmae_fast.read_clips
    blocked = None
except ModuleNotFoundError as e:
    blocked = e.name
print(json.dumps({{"full": full.tolist(), "half": half.tolist(), "blocked": blocked,
                   "loaded": sorted(m for m, v in sys.modules.items() if m.partition(".")[0] in BLOCKED and v)}}))
""")
    assert got["blocked"] == "pyarrow" and got["loaded"] == [], got
    full, half = tiny_forward(vmae_fast)
    # the same ops on one thread in both processes: equal to the last bit
    torch.testing.assert_close(torch.tensor(got["full"]), full, atol=0, rtol=0)
    torch.testing.assert_close(torch.tensor(got["half"]), half, atol=0, rtol=0)
    assert full.shape == (2, 64) and not torch.allclose(full, half, atol=1e-3)  # tube:0.5 really drops tokens


# --- tools/ use public names --------------------------------------------------------------------------------------
def tool_violations(path: Path, public: dict[str, types.ModuleType]) -> list[str]:
    """What in one tool reaches past the public surface: an import of a module that is not public, of a name its
    module's __all__ does not list or that starts with "_" (also through importlib.import_module("...") and attribute
    chains on public modules: vmae_fast.kernels.X, import_vmae_fast().kernels.X), and a private attribute (`x._y`)
    of anything but another library's module or the tool's own `self`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    bound: dict[str, str] = {"vmae_fast": "vmae_fast"}  # local name -> public module it holds
    foreign: set[str] = {"self", "cls"}  # names bound to other libraries' modules, and the tool's own objects
    problems: list[str] = []

    def say(node, text):
        problems.append(f"tools/{path.name}:{node.lineno}: {text}")

    def module_ok(name: str, node) -> bool:
        if name not in public:
            say(node, f"imports {name}, which is not a public module (import from its package, or declare the "
                      f"internal in {HELPERS})")
            return False
        return True

    def name_ok(module: str, name: str, node) -> None:
        if name.startswith("_") or (name not in public[module].__all__ and f"{module}.{name}" not in public):
            say(node, f"uses {module}.{name}, which is not in {module}.__all__")

    def resolve(expr) -> str | None:
        """The public module `expr` evaluates to, if it is one."""
        if isinstance(expr, ast.Name):
            return bound.get(expr.id)
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == "import_vmae_fast":
            return "vmae_fast"  # tools/bench_env.py: the package, installed or from this checkout
        if isinstance(expr, ast.Attribute):
            base = resolve(expr.value)
            return f"{base}.{expr.attr}" if base and f"{base}.{expr.attr}" in public else None
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.partition(".")[0] != "vmae_fast":
                    foreign.add(alias.asname or alias.name.partition(".")[0])
                elif module_ok(alias.name, node) and alias.asname:
                    bound[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.partition(".")[0] != "vmae_fast":
                foreign.update(a.asname or a.name for a in node.names
                               if isinstance(getattr(sys.modules.get(node.module), a.name, None), types.ModuleType))
            elif module_ok(node.module, node):
                for alias in node.names:
                    name_ok(node.module, alias.name, node)
                    if f"{node.module}.{alias.name}" in public:
                        bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Call) and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and str(arg.value).partition(".")[0] == "vmae_fast":
                module_ok(arg.value, node)
    for _ in range(3):  # assignments of public modules (x = import_vmae_fast().kernels), chained
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                module = resolve(node.value)
                if module:
                    bound[node.targets[0].id] = module
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or (node.attr.startswith("__") and node.attr.endswith("__")):
            continue
        base = resolve(node.value)
        if base is not None:
            name_ok(base, node.attr, node)
        elif node.attr.startswith("_"):
            root = node.value
            while isinstance(root, (ast.Attribute, ast.Call, ast.Subscript)):
                root = root.func if isinstance(root, ast.Call) else root.value
            if not (isinstance(root, ast.Name) and root.id in foreign):
                say(node, f"reaches the private attribute .{node.attr}")
    return problems


TOOLS = sorted((REPO / "tools").glob("*.py"))


@pytest.mark.parametrize("path", TOOLS, ids=[p.name for p in TOOLS])
def test_tools_use_only_public_names(path):
    problems = tool_violations(path, public_modules())
    assert not problems, "\n".join(problems)


def test_the_tools_check_finds_what_it_must(tmp_path):
    """The check above on a tool written to break every rule once (a check that finds nothing proves nothing)."""
    bad = tmp_path / "bad_tool.py"
    bad.write_text('''
import importlib
import torch
import vmae_fast
import vmae_fast.video.pool as pool
from vmae_fast.kernels.patch_embed import prepare_weight
from vmae_fast.kernels import _dispatch
from vmae_fast.store import read_clips, reader
from bench_env import import_vmae_fast

kernels = import_vmae_fast().kernels
importlib.import_module("vmae_fast.video.crop")
torch._dynamo.config.cache_size_limit = 8
vmae_fast.kernels.patch_embed
kernels.layer_norm
kernels._dispatch
vmae_fast.store.layout
model = vmae_fast.load_model("random:small")
model._patch_weight(True)
''')
    problems = [p.split(": ", 1)[1] for p in tool_violations(bad, public_modules())]
    assert problems == [
        "imports vmae_fast.video.pool, which is not a public module (import from its package, or declare the "
        f"internal in {HELPERS})",
        "imports vmae_fast.kernels.patch_embed, which is not a public module (import from its package, or declare "
        f"the internal in {HELPERS})",
        "uses vmae_fast.kernels._dispatch, which is not in vmae_fast.kernels.__all__",
        "uses vmae_fast.store.reader, which is not in vmae_fast.store.__all__",
        "imports vmae_fast.video.crop, which is not a public module (import from its package, or declare the internal "
        f"in {HELPERS})",
        "uses vmae_fast.kernels._dispatch, which is not in vmae_fast.kernels.__all__",
        "uses vmae_fast.store.layout, which is not in vmae_fast.store.__all__",
        "reaches the private attribute ._patch_weight",
    ], problems
