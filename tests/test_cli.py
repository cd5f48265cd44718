"""The command line: models, generate, bench --json, prepare, and its error messages."""

import json

from kvlab.__main__ import main


def test_models_lists_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "random:tiny-llama" in out and "distilgpt2" in out


def test_generate_cached_and_uncached_agree(capsys):
    assert main(["generate", "random:tiny-llama", "Once upon", "-n", "5"]) == 0
    cached = capsys.readouterr().out.splitlines()[1]
    assert main(["generate", "random:tiny-llama", "Once upon", "-n", "5", "--no-cache"]) == 0
    uncached = capsys.readouterr().out.splitlines()[1]
    assert cached == uncached and cached.startswith("Once upon")


def test_bench_json(tmp_path, capsys):
    path = tmp_path / "b.json"
    assert main(["bench", "random:tiny-gpt2", "--prompt-len", "8", "--new-tokens", "4",
                 "--repeats", "1", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "kvlab-cache / hf-cache per token" in out and "tokens identical: True" in out
    data = json.loads(path.read_text())
    assert [r["mode"] for r in data["results"]] == ["kvlab-cache", "kvlab-nocache", "hf-cache",
                                                     "hf-nocache", "floor"]


def test_errors_are_one_clear_line(capsys):
    assert main(["generate", "nope-model", "hi"]) == 2
    assert "error: unknown model 'nope-model'" in capsys.readouterr().err
    assert main(["generate", "random:tiny-gpt2", "hi", "-n", "300"]) == 2
    assert "context limit of 256" in capsys.readouterr().err


def test_prepare_all_to_folder_then_offline_use(tmp_path, monkeypatch, capsys):
    """The lab-room recipe: prepare --all --to DIR, then KVLAB_HOME=DIR offline."""
    import kvlab
    from kvlab import models

    room = tmp_path / "room"
    monkeypatch.setenv("KVLAB_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as here: the hub models cannot be fetched
    code = main(["prepare", "--all", "--to", str(room)])
    out = capsys.readouterr().out
    assert code == 1  # distilgpt2 and gpt2 need the hub
    assert "distilgpt2: NOT prepared" in out and "smollm2-135m: ready (bundled" in out
    assert f"models are in KVLAB_HOME={room}" in out
    assert (room / "models" / "smollm2-135m" / "model.safetensors").exists()

    monkeypatch.setenv("KVLAB_HOME", str(room))
    monkeypatch.setattr(models, "convert_bundled", None)  # must load, not convert again
    lm = kvlab.load("smollm2-135m", verbose=False)
    assert kvlab.generate(lm, "The capital of France is", 2).text.startswith(" Paris")


def test_bench_csv_loads_back(tmp_path, capsys):
    from kvlab import results

    path = tmp_path / "b.csv"
    assert main(["bench", "random:tiny-gpt2", "--prompt-len", "8", "--new-tokens", "3",
                 "--repeats", "1", "--modes", "kvlab-cache", "--csv", str(path)]) == 0
    assert f"saved {path}" in capsys.readouterr().out
    assert results.load_csv(path).modes == ["kvlab-cache", "floor"]
    assert main(["bench", "random:tiny-gpt2", "--device", "tpu"]) == 2
    assert "device must be" in capsys.readouterr().err


def test_bench_refuses_a_bad_output_path_before_running(capsys, monkeypatch):
    from kvlab import bench

    monkeypatch.setattr(bench, "benchmark", None)  # would fail loudly if reached
    assert main(["bench", "random:tiny-gpt2", "--json", "/no/such/dir/out.json"]) == 2
    assert "folder /no/such/dir does not exist" in capsys.readouterr().err
