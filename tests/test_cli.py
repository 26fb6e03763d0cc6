"""The ``sam-jax`` command line (``sam_jax.cli.main`` and ``python -m sam_jax``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from sam_jax import checkpoint
from sam_jax.cli import main
from sam_jax.convert import rules
from sam_jax.models.sam.config import get_config

from reference_model import build_reference

ROOT = Path(__file__).parents[1]
TINY = get_config("tiny")


@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory) -> tuple[Path, dict]:
    """A random ``tiny`` reference model saved as official files are, and its direct conversion."""
    state_dict = build_reference("tiny", seed=3).state_dict()
    path = tmp_path_factory.mktemp("cli") / "sam_tiny.pth"
    torch.save(state_dict, path)
    return path, rules.to_params({k: v.numpy() for k, v in state_dict.items()}, TINY)


def _python(*args: str) -> subprocess.CompletedProcess:
    """Run a fresh interpreter with the repository importable."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
        check=False,
    )


def test_convert_end_to_end(tiny_pth, tmp_path, capsys):
    path, params = tiny_pth
    assert main(["convert", str(path), str(tmp_path / "out"), "--model-type", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "model type: tiny" in out and "tensors:    174" in out and f"written to: {tmp_path / 'out'}" in out

    assert checkpoint.load_config(tmp_path / "out") == TINY
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    restored = checkpoint.load_params(tmp_path / "out", abstract)
    for (key, got), want in zip(
        jax.tree_util.tree_flatten_with_path(restored)[0], jax.tree_util.tree_leaves(params), strict=True
    ):
        np.testing.assert_array_equal(got, want, err_msg=jax.tree_util.keystr(key))


def _error_line(stderr: str) -> str:
    """The last line of stderr (progress bars come first), checked to be the only error line."""
    lines = stderr.replace("\r", "\n").splitlines()
    assert sum("error" in line for line in lines) == 1, stderr
    return lines[-1]


def test_errors_are_one_line_with_exit_code_2(tiny_pth, tmp_path, capsys):
    missing = tmp_path / "missing.pth"
    assert main(["convert", str(missing), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"sam-jax convert: error: {missing}: no such checkpoint file or directory\n"

    path, _ = tiny_pth
    assert main(["convert", str(path), str(tmp_path / "out")]) == 2  # test configs are never detected
    line = _error_line(capsys.readouterr().err)
    assert line.startswith("sam-jax convert: error: image encoder is 48 wide with 2 blocks, which matches no SAM")

    assert main(["convert", str(path), str(tmp_path / "out"), "--model-type", "tiny"]) == 0
    assert main(["convert", str(path), str(tmp_path / "out"), "--model-type", "tiny"]) == 2
    exists = f"{tmp_path / 'out'} already holds a sam_jax checkpoint; pass --force to overwrite it"
    assert _error_line(capsys.readouterr().err) == f"sam-jax convert: error: {exists}"
    assert main(["convert", str(path), str(tmp_path / "out"), "--model-type", "tiny", "--force"]) == 0


def test_usage_errors_exit_2(capsys):
    for argv in ([], ["convert"], ["convert", "a.pth", "out", "--model-type", "vit_x"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert "invalid choice: 'vit_x'" in capsys.readouterr().err


def test_python_m_sam_jax(tmp_path):
    result = _python("-m", "sam_jax", "convert", str(tmp_path / "missing.pth"), str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"sam-jax convert: error: {tmp_path / 'missing.pth'}: no such checkpoint file or directory"
    ]


def test_help_imports_neither_torch_nor_the_converter():
    script = (
        "import sys\n"
        "from sam_jax.cli import main\n"
        "try:\n"
        "    main(['convert', '--help'])\n"
        "except SystemExit as e:\n"
        "    print(e.code, 'torch' in sys.modules, 'convert' in sys.modules)\n"
    )
    result = _python("-c", script)
    assert result.stdout.splitlines()[-1] == "0 False False", result.stderr
