"""Errors a user reads: a bundle run stopped by a bad setting or a bad dataset ends with the cause."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cggm_seg.errors import root_cause, summarising_excepthook

ROOT = Path(__file__).resolve().parents[2]
BRATS = str(ROOT / "bundles" / "brats_cggm.json")
INFERENCE = str([BRATS, str(ROOT / "bundles" / "inference.json")])
INSTALL = "$cggm_seg.errors.install_excepthook()"
TINY = ["--phantom#cases", "3", "--phantom#spacing", "4.0", "--epochs", "1", "--roi_size", "[32,32,32]"]


def _raised(make):
    """The exception that ``make()`` raises."""
    with pytest.raises(BaseException) as info:
        make()
    return info.value


def test_root_cause_follows_the_chain():
    try:
        try:
            raise ValueError("rho must be > 0")
        except ValueError as inner:
            raise RuntimeError("Failed to evaluate ConfigExpression") from inner
    except RuntimeError as outer:
        assert str(root_cause(outer)) == "rho must be > 0"
    plain = KeyError("x")
    assert root_cause(plain) is plain


def test_root_cause_follows_explicit_causes_to_the_innermost():
    def make():
        try:
            try:
                raise ValueError("innermost")
            except ValueError as first:
                raise KeyError("middle") from first
        except KeyError as second:
            raise RuntimeError("outer") from second

    assert str(root_cause(_raised(make))) == "innermost"


def test_root_cause_is_not_the_exception_being_handled():
    def make():
        try:
            raise FileNotFoundError("a")
        except FileNotFoundError:
            raise PermissionError("b")  # noqa: B904 - the implicit context is the point

    error = _raised(make)
    assert isinstance(error.__context__, FileNotFoundError)
    assert root_cause(error) is error


def test_root_cause_stops_at_an_explicit_cause_raised_while_handling_another():
    def make():
        try:
            try:
                raise FileNotFoundError("runs/brats_cggm")
            except FileNotFoundError:
                raise PermissionError("runs")  # noqa: B904
        except PermissionError as denied:
            raise RuntimeError("Failed to evaluate ConfigExpression") from denied

    cause = root_cause(_raised(make))
    assert isinstance(cause, PermissionError) and str(cause) == "runs"


def test_root_cause_of_a_suppressed_context_is_the_error_itself():
    def make():
        try:
            raise ValueError("hidden")
        except ValueError:
            raise KeyError("shown") from None

    error = _raised(make)
    assert root_cause(error) is error


@pytest.mark.parametrize(
    "config, target, kind, message",
    [
        ({"x": "$1 / 0"}, "x", ZeroDivisionError, "division by zero"),
        ({"a": "$int('seven')", "b": "$@a + 1"}, "b", ValueError, "invalid literal"),
        (
            {"net": {"_target_": "torch.nn.Linear", "in_features": -1, "out_features": 2}},
            "net",
            RuntimeError,
            "Trying to create tensor with negative dimension",
        ),
    ],
    ids=["expression", "reference", "component"],
)
def test_root_cause_unwraps_monai_config_errors(config, target, kind, message):
    from monai.bundle import ConfigParser

    parser = ConfigParser(config)
    error = _raised(lambda: parser.get_parsed_content(target))
    assert str(error).startswith(("Failed to evaluate", "Failed to instantiate"))
    cause = root_cause(error)
    assert type(cause) is kind and message in str(cause)


def test_root_cause_ends_on_a_cycle():
    first, second = ValueError("first"), ValueError("second")
    first.__cause__, second.__cause__ = second, first
    assert root_cause(first) is second
    looped = ValueError("self")
    looped.__cause__ = looped
    assert root_cause(looped) is looped


def test_the_hook_repeats_the_cause_last(capsys):
    try:
        try:
            raise ValueError("roi_size [512, 512, 512] is larger than every training volume")
        except ValueError as inner:
            raise RuntimeError("Failed to evaluate ConfigExpression: $@trainer") from inner
    except RuntimeError as outer:
        summarising_excepthook(type(outer), outer, outer.__traceback__)
    lines = capsys.readouterr().err.strip().splitlines()
    cause = "ValueError: roi_size [512, 512, 512] is larger than every training volume"
    assert lines[-1] == f"cggm_seg: the run stopped: {cause}"
    assert any("Failed to evaluate ConfigExpression" in line for line in lines[:-1])  # the traceback stays


def _hook_after(code):
    """``sys.excepthook``'s module and name in a fresh interpreter once ``code`` has run."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("CGGM_SEG_PLAIN_ERRORS", None)
    script = f"import sys\n{code}\nprint(sys.excepthook.__module__, sys.excepthook.__name__)"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_importing_the_package_leaves_the_excepthook_alone():
    assert _hook_after("import cggm_seg, cggm_seg.errors, cggm_seg.cli") == "sys excepthook"


def test_the_command_line_installs_the_hook():
    assert _hook_after("from cggm_seg.cli import main\nmain([])") == "cggm_seg.errors summarising_excepthook"


def test_every_bundle_that_initializes_installs_the_hook_first():
    initializing = {}
    for path in sorted((ROOT / "bundles").glob("*.json")):
        config = json.loads(path.read_text())
        if isinstance(config, dict) and "initialize" in config:
            initializing[path.name] = config["initialize"][:1]
    assert {"brats_cggm.json", "inference.json", "multi_gpu_train.json", "multiview_cggm.json"} <= set(
        initializing
    )
    assert all(first == [INSTALL] for first in initializing.values()), initializing


def test_the_hook_adds_nothing_when_the_error_is_its_own_cause(capsys):
    try:
        try:
            raise FileNotFoundError("No such file or directory: 'ro/runs/brats_cggm'")
        except FileNotFoundError:
            raise PermissionError("Operation not permitted: 'ro'")  # noqa: B904
    except PermissionError as error:
        summarising_excepthook(type(error), error, error.__traceback__)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == "PermissionError: Operation not permitted: 'ro'"
    assert not any(line.startswith("cggm_seg: the run stopped") for line in lines)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("phantom_cache")  # one tiny phantom for every run of this module


def _run(args, cache, tmp_path, config=BRATS, bundle_root=None):
    """The non-empty lines of the stderr of a bundle run that fails."""
    return _run_bundle(args, cache, tmp_path, config, bundle_root)[1]


def _run_bundle(args, cache, tmp_path, config=BRATS, bundle_root=None):
    """The stdout and the non-empty stderr lines of a bundle run that fails."""
    env = dict(os.environ, CGGM_SEG_CACHE=str(cache), OMP_NUM_THREADS="1")
    env.pop("CGGM_SEG_PLAIN_ERRORS", None)
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        config,
        "--bundle_root",
        str(bundle_root or tmp_path),
    ]
    done = subprocess.run(
        [*command, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode != 0
    return done.stdout, [line for line in done.stderr.strip().splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, last",
    [
        (
            ["--method", "cgmm"],
            "ValueError: method must be one of ['cggm', 'joint', 'mmpareto', 'none', 'ogmge'], got 'cgmm'.",
        ),
        (
            ["--methods#cggm#head_options#score", "dise"],
            "ValueError: unknown score 'dise'; available: ['accuracy',",
        ),
        (["--methods#cggm#tracker#rho", "0"], "ValueError: rho must be a positive finite number, got 0."),
        (
            ["--sequences", "['t1','pd']"],
            "ValueError: sequences must be distinct names out of ['t1', 't1ce', 't2', 'flair'], "
            "got ['t1', 'pd']",
        ),
        (
            ["--roi_size", "[512,512,512]"],
            "ValueError: roi_size [512, 512, 512] is larger than every training volume (largest per axis:",
        ),
    ],
    ids=["method", "score", "rho", "sequences", "crop"],
)
def test_bad_settings_end_the_run_with_the_setting_and_what_is_expected(args, last, cache, tmp_path):
    lines = _run([*TINY, *args], cache, tmp_path)
    assert lines[-1].startswith(f"cggm_seg: the run stopped: {last}"), lines[-3:]
    assert not list(tmp_path.glob("runs/*/models/*.pt"))  # nothing was trained


@pytest.mark.slow
def test_a_dataset_that_fails_its_check_ends_the_run_with_the_report(cache, tmp_path):
    from cggm_seg.apps.brats.phantom import PhantomConfig, write_phantom_dataset

    data = tmp_path / "data"
    write_phantom_dataset(data, 2, seed=0, config=PhantomConfig(spacing=4.0), progress=False)
    missing = sorted(data.glob("*/*_t2.nii.gz"))[0]
    missing.unlink()
    lines = _run(["--dataset_dir", str(data), "--epochs", "1"], cache, tmp_path)
    start = [
        i for i, line in enumerate(lines) if line.startswith("cggm_seg: the run stopped: DatasetCheckError")
    ]
    assert start, lines[-5:]
    tail = "\n".join(lines[start[-1] :])
    assert "t2 sequence file not found" in tail and missing.name in tail
    assert lines[-1].startswith("FAILED: 1 problem")


@pytest.mark.slow
def test_an_inference_run_without_its_checkpoint_ends_naming_the_file(cache, tmp_path):
    from cggm_seg.apps.brats.phantom import PhantomConfig, write_phantom_dataset

    data = tmp_path / "data"
    write_phantom_dataset(data, 1, seed=0, config=PhantomConfig(spacing=4.0), progress=False)
    lines = _run(["--dataset_dir", str(data)], cache, tmp_path, config=INFERENCE)
    checkpoint = tmp_path / "runs" / "brats_data_joint_robust" / "models" / "model.pt"
    assert lines[-1].startswith("cggm_seg: the run stopped: FileNotFoundError: "), lines[-3:]
    assert str(checkpoint) in lines[-1]


@pytest.mark.parametrize("cases", [1, 2])
def test_a_dataset_too_small_to_split_stops_before_the_first_epoch(cases, cache, tmp_path):
    args = [*TINY, "--phantom#cases", str(cases)]
    out, lines = _run_bundle(args, cache, tmp_path)
    assert f"{cases} brats2021 case{'s' * (cases > 1)} found; {cases} labelled case" in out  # the log line
    assert "Epoch[1]" not in out
    assert lines[-1].startswith(f"cggm_seg: the run stopped: ValueError: {cache}"), lines[-3:]
    assert (
        "fractions 0.55 / 0.15 / 0.3 give" in lines[-1] and "empty; expected at least one case" in lines[-1]
    )
    assert lines[-1].endswith("; nothing was trained")
    assert not list(tmp_path.glob("runs/*/models/*.pt"))


@pytest.mark.slow
def test_an_unwritable_bundle_root_ends_the_run_with_the_error_that_stopped_it(cache, tmp_path):
    # sysfs refuses new folders even to root, where a chmod'ed folder would stay writable.
    unwritable = Path("/sys/cggm_seg_test_unwritable")
    try:
        (unwritable / "run").mkdir(parents=True)
    except OSError as error:
        refused = error
    else:
        pytest.skip(f"{unwritable} could be created on this system")
    # mkdir(parents=True) raises it while handling the FileNotFoundError of the folder below.
    assert isinstance(refused.__context__, FileNotFoundError)
    lines = _run(TINY, cache, tmp_path, bundle_root=unwritable / "run")
    assert any(line.startswith("FileNotFoundError") for line in lines)
    stopped = f"cggm_seg: the run stopped: {type(refused).__name__}: "
    assert lines[-1].startswith(stopped) and str(unwritable) in lines[-1], lines[-3:]
