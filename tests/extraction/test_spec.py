"""RunSpec (extraction/spec.py): every option checked once when the spec is made, from the CLI or from Python, with
messages naming the option as the user gave it; the spec of an output's _run.json builds what the run built; the
typed run summary still reads like the dict it was."""

from __future__ import annotations

import json

import pytest

from vmae_fast import cli, store
from vmae_fast.extraction import extract
from vmae_fast.extraction.spec import RunSpec
from vmae_fast.extraction.summary import RunSummary
from vmae_fast.faults import InvalidOption, UnsupportedOption, UserError


def cli_spec(*args: str) -> RunSpec:
    return cli.extract_spec(cli.build_parser().parse_args(["extract", "in", "-o", "out", *args]))


# (CLI arguments, the same as Python keywords, the message's words from the CLI, from Python)
BAD = [
    (["--batch-size", "0"], {"batch_size": 0}, "--batch-size must be a positive integer, got 0",
     "batch_size= must be a positive integer, got 0"),
    (["--part-rows", "-3"], {"part_rows": -3}, "--part-rows must be a positive integer", "part_rows= must be"),
    (["--clips-per-video", "0"], {"clips_per_video": 0}, "--clips-per-video must be a positive integer",
     "clips_per_video= must be a positive integer"),
    (["--fps", "0"], {"fps": 0.0}, "--fps must be positive, got 0.0", "fps= must be positive, got 0.0"),
    (["--commit-interval-s", "-1"], {"commit_interval_s": -1.0}, "--commit-interval-s must be positive",
     "commit_interval_s= must be positive"),
    (["--timeout-s", "nan"], {"timeout_s": float("nan")}, "--timeout-s must be positive", "timeout_s= must be"),
    (["--workers", "-1"], {"workers": -1}, "--workers must be >= 0, got -1", "workers= must be >= 0, got -1"),
    (["--crops", "2"], {"crops": 2}, "--crops must be 1 (the center crop) or 3", "crops= must be 1 (the center"),
    (["--views", "5x2"], {"views": "5x2"}, "--views 5x2: crops must be 1 or 3", "views= 5x2: crops must be 1 or 3"),
    (["--views", "2x3", "--clips-per-video", "2"], {"views": "2x3", "clips_per_video": 2},
     "give --views or --clips-per-video, not both", "give views= or clips_per_video=, not both"),
    (["--keep", "bogus"], {"keep": "bogus"}, "--keep: unknown keep policy 'bogus'", "keep=: unknown keep policy"),
    (["--shard", "x"], {"shard": "x"}, "--shard must look like i/n", "shard= must look like i/n"),
    (["--shard", "2/2"], {"shard": (2, 2)}, "shard index must be in [0, 2)", "shard index must be in [0, 2)"),
    (["--engine", "ray", "--shard", "0/2"], {"engine": "ray", "shard": "0/2"},
     "--shard splits the work between static processes; --engine ray balances it",
     "shard= splits the work between static processes; engine='ray' balances it"),
    (["--engine", "ray", "--ray-group-videos", "0"], {"engine": "ray", "ray_options": {"group_videos": 0}},
     "--ray-group-videos must be a positive integer", "ray_options['group_videos'] must be a positive integer"),
    # forgotten --engine ray: a job meant for a cluster must not run on this machine alone
    (["--ray-address", "auto"], {"ray_address": "auto"},
     "--ray-address is for --engine ray; without it the run is local", "ray_address= and ray_options= are for engine"),
    (["--ray-actors", "4", "--ray-group-videos", "8"], {"ray_options": {"actors": "4", "group_videos": 8}},
     "--ray-actors and --ray-group-videos are for --engine ray", "ray_address= and ray_options= are for engine='ray'"),
    (["--engine", "ray", "--decode-device", "cuda"], {"engine": "ray", "decode_device": "cuda"},
     "--engine ray decodes on the CPUs of each actor's node (--decode-device cpu)",
     "engine='ray' decodes on the CPUs of each actor's node (decode_device= cpu)"),
]


@pytest.mark.parametrize("args,keywords,from_cli,from_python", BAD, ids=[" ".join(case[0]) for case in BAD])
def test_a_bad_option_is_named_as_the_user_gave_it(args, keywords, from_cli, from_python):
    with pytest.raises(InvalidOption) as e:
        cli_spec(*args)
    assert from_cli in str(e.value)
    with pytest.raises(InvalidOption) as e:
        RunSpec.from_keywords(["in"], "out", **keywords)
    assert from_python in str(e.value)
    assert isinstance(e.value, ValueError) and isinstance(e.value, UserError)  # `except ValueError` still catches


def test_an_empty_out_is_refused_not_taken_for_the_current_folder():
    with pytest.raises(InvalidOption, match="--out must name an output folder or URL, got ''"):
        cli_spec("-o", "")
    with pytest.raises(InvalidOption, match="out= must name an output folder or URL, got ''"):
        RunSpec.from_keywords(["in"], "")


def test_the_cli_and_python_make_the_same_spec():
    spec = cli_spec("--views", "5x3", "--keep", "tube:0.5", "--batch-size", "4", "--shard", "1/3", "--fps", "5")
    same = RunSpec.from_keywords(["in"], "out", views="5x3", keep="tube:0.5", batch_size=4, shard=(1, 3), fps=5.0)
    assert spec == same  # the origin only changes how messages name options
    assert (spec.origin, same.origin) == ("cli", "python")
    assert (spec.clips_per_video, spec.crops, spec.shard, spec.keep) == (5, 3, (1, 3), "tube:0.5")
    sampling = spec.sampling(16)
    assert (sampling.num_frames, sampling.clips_per_video, sampling.crops, sampling.fps) == (16, 5, 3, 5.0)
    ray = cli_spec("--engine", "ray", "--ray-actors", "2-4", "--ray-group-videos", "8")
    assert ray.ray_options == {"actors": "2-4", "group_videos": 8} and ray.ray_address is None


def test_an_unknown_keyword_or_a_loaded_model_for_ray_is_a_type_error_too(model):
    with pytest.raises(UnsupportedOption, match="does not support frobnicate=") as e:
        RunSpec.from_keywords(["in"], "out", frobnicate=True)
    assert isinstance(e.value, TypeError) and isinstance(e.value, ValueError)
    with pytest.raises(TypeError, match="loads the model on every actor"):
        RunSpec.from_keywords(["in"], "out", model=model, engine="ray")
    with pytest.raises(InvalidOption, match="ray_address= and ray_options= are for engine='ray'"):
        RunSpec.from_keywords(["in"], "out", ray_address="auto")
    for pair in (("frame_step", 2, "fps", 4.0), ("clip_stride_s", 1.0, "clips_per_video", 2)):  # argparse's own
        with pytest.raises(InvalidOption, match=f"give {pair[0]}= or {pair[2]}=, not both"):  # check on the CLI
            RunSpec.from_keywords(["in"], "out", **{pair[0]: pair[1], pair[2]: pair[3]})


def test_the_spec_of_an_outputs_run_file_builds_what_the_run_built(tmp_path, ckpt, videos):
    out = tmp_path / "out"
    summary = extract([videos], out, model=str(ckpt), frame_step=2, keep="tube:0.5", embedding_dtype="float16",
                      workers=0, progress=False)
    run = store.load_run(out)
    spec = RunSpec.from_run(out)
    assert (spec.model, spec.frame_step, spec.keep, spec.embedding_dtype, spec.dtype) == \
        (str(ckpt.resolve()), 2, "tube:0.5", "float16", "fp32")
    loaded = spec.load()
    assert loaded.run()["config_hash"] == run["config_hash"] and loaded.sampling.to_dict() == run["config"]["sampling"]
    assert loaded.keep_policy.spec == "tube:0.5"
    # the summary: a typed object that reads like the dict of earlier versions
    assert isinstance(summary, RunSummary) and summary["videos_ok"] == summary.videos_ok == 3
    assert summary.get("engine") == "local" and summary.get("nope", 7) == 7 and "clips" in summary
    with pytest.raises(KeyError):
        summary["nope"]
    assert json.loads(json.dumps(dict(summary))) == json.loads(json.dumps(summary.to_dict()))
    assert dict(summary)["clips"] == store.read_clips(out).num_rows == 8  # frame step 2: twice the clips
