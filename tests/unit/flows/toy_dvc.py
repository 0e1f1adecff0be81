"""A toy DVC repository (stages named like the real ones, trivial commands) for the flow tests.

Not a conftest.py: tests elsewhere `from conftest import ...` the top-level one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]

# fetch -> shard -> features -> train@x|y -> evaluate@x|y -> compare; each stage copies its
# input and appends a param, so that a changed param re-runs exactly the stages below it.
TOY_DVC = {
    "stages": {
        "fetch": {
            "cmd": "python -c \"open('raw.txt', 'w').write('raw')\"",
            "params": ["fetch.source"],
            "outs": ["raw.txt"],
        },
        "shard": {
            "cmd": "python -c \"open('shards.txt', 'w').write(open('raw.txt').read())\"",
            "deps": ["raw.txt"],
            "outs": ["shards.txt"],
        },
        "features": {
            "cmd": "python -c \"open('features.txt', 'w').write(open('shards.txt').read())\"",
            "deps": ["shards.txt"],
            "params": ["features.encoder"],
            "outs": ["features.txt"],
        },
        "train": {
            "foreach": ["x", "y"],
            "do": {
                "cmd": "python -c \"open('model_${item}.txt', 'w').write('${item}')\"",
                "deps": ["features.txt"],
                "params": ["train.epochs"],
                "outs": ["model_${item}.txt"],
            },
        },
        "evaluate": {
            "foreach": ["x", "y"],
            "do": {
                "cmd": "python -c \"open('metrics_${item}.txt', 'w').write('1')\"",
                "deps": ["model_${item}.txt"],
                "outs": ["metrics_${item}.txt"],
            },
        },
        "compare": {
            "cmd": "python -c \"open('compare.txt', 'w').write('x y')\"",
            "deps": ["metrics_x.txt", "metrics_y.txt"],
            "outs": ["compare.txt"],
        },
    }
}


def write_cmd(path: str, text: str) -> str:
    """A stage command writing ``text`` to ``path`` (its folder made first)."""
    return (
        "python -c \"import pathlib; p = pathlib.Path('" + path + "'); "
        "p.parent.mkdir(parents=True, exist_ok=True); p.write_text('" + text + "')\""
    )


# The real DAG's shape over params.yaml's own train.decoders: one train@/evaluate@/register@
# per decoder, its files under reports/<decoder>/, and a comparison of the reports/ folder.
TOY_DECODERS_DVC = {
    "stages": {
        "features": {
            "cmd": write_cmd("features.txt", "f"),
            "params": ["features.encoder"],
            "outs": ["features.txt"],
        },
        "train": {
            "foreach": "${train.decoders}",
            "do": {
                "cmd": write_cmd("reports/${item}/model.txt", "${item}"),
                "deps": ["features.txt"],
                "params": ["train.epochs"],
                "outs": ["reports/${item}/model.txt"],
            },
        },
        "evaluate": {
            "foreach": "${train.decoders}",
            "do": {
                "cmd": write_cmd("reports/${item}/metrics.txt", "1"),
                "deps": ["reports/${item}/model.txt"],
                "outs": ["reports/${item}/metrics.txt"],
            },
        },
        "register": {
            "foreach": "${train.decoders}",
            "do": {
                "cmd": write_cmd("reports/${item}/registered.txt", "${item}"),
                "deps": ["reports/${item}/metrics.txt"],
                "outs": ["reports/${item}/registered.txt"],
            },
        },
        "compare": {
            "cmd": write_cmd("comparison.txt", "all"),
            "deps": ["reports"],
            "params": ["train.decoders"],
            "outs": ["comparison.txt"],
        },
    }
}


def git_env() -> dict[str, str]:
    return {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }


def dvc(root: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=root,
        env=git_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def make_toy_repo(root: Path, dvc_yaml: dict = TOY_DVC) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    shutil.copy(REPO / "params.yaml", root / "params.yaml")  # the real, validated params
    env = git_env()
    subprocess.run(["git", "init", "-q"], cwd=root, env=env, check=True)
    dvc(root, "init", "-q")
    subprocess.run(["git", "add", "-A"], cwd=root, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "toy"], cwd=root, env=env, check=True)
    return root
