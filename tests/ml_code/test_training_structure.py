"""Structural guard of the layout issue: train() orchestrates (about 80 lines), the parts live
in ml_code/training's modules, and no function there grows past 80 lines again."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from ml_code.training import train as train_module

TRAINING = Path(train_module.__file__).resolve().parent


def test_train_is_a_short_orchestrator() -> None:
    lines = inspect.getsource(train_module.train).splitlines()
    assert len(lines) <= 90, f"train() is {len(lines)} lines; move the work into loop/checkpoints/packaging"


def test_no_function_in_ml_code_training_exceeds_80_lines() -> None:
    too_long = []
    for path in sorted(TRAINING.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    too_long.append(f"{path.name}:{node.name} ({length} lines)")
    assert not too_long, too_long
