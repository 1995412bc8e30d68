"""The Hydra plugin is installed for every Hydra app: it must not disturb those that are not OU."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_app(tmp_path, trainer_module: str | None):
    (tmp_path / "app.py").write_text(textwrap.dedent("""
        import sys
        import hydra
        from omegaconf import OmegaConf
        {import_trainer}

        @hydra.main(version_base=None, config_path=None, config_name=None)
        def main(cfg):
            print("APP_OK", OmegaConf.to_yaml(cfg).strip(), "torch" in sys.modules)

        main()
    """).format(import_trainer="import trainer" if trainer_module is not None else ""))
    if trainer_module is not None:
        (tmp_path / "trainer.py").write_text(trainer_module)
    return subprocess.run(
        [sys.executable, "app.py", "+x=1", "hydra.run.dir=out"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )


def test_plain_hydra_app_unaffected(tmp_path):
    done = run_app(tmp_path, None)
    assert done.returncode == 0, done.stderr
    assert "APP_OK x: 1 False" in done.stdout  # ran, and our plugin did not import torch
    assert "asu-plugin" not in done.stderr


def test_app_with_its_own_trainer_module_unaffected(tmp_path):
    done = run_app(tmp_path, "TRAINERS = {}\n")  # a `trainer` module that is not OU's
    assert done.returncode == 0, done.stderr
    assert "APP_OK" in done.stdout and "asu-plugin" not in done.stderr


def test_searchpath_lists_our_configs(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
            from hydra_plugins.asu_plugin.asu_searchpath import ASUSearchPathPlugin, configs_dir
            path = ConfigSearchPathImpl()
            for _ in range(2):
                ASUSearchPathPlugin().manipulate_search_path(path)
            entries = [e.path for e in path.get_path() if e.provider == "asu-plugin"]
            assert len(entries) == 1, entries
            assert (configs_dir() / "trainer" / "ASU_KL.yaml").is_file()
            print("OK", entries[0])
        """)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK file://")


def test_other_ou_commit_warns_naming_both(tmp_path):
    import warnings

    from asu_plugin.openunlearning import registration

    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "commit", "-q", "--allow-empty", "-m", "x"], check=True, env={**env, "PATH": "/usr/bin:/bin"})
    commit = registration.ou_commit(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert registration.warn_if_other_commit(tmp_path) == commit
    messages = [str(w.message) for w in caught]
    assert any(commit[:12] in m and registration.OU_PINNED_COMMIT in m for m in messages), messages
