"""The one-pass scores equal a straightforward recomputation at every block boundary."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_model, make_tiny_tokenizer

from companion import store
from companion.analysis import diagnostics
from companion.errors import CompanionError
from companion.method import criteria, estimators
from companion.method.calibration import Documents, Windows
from companion.method.scoring import ScoreSettings, collect, read_scores, score
from companion.model import layouts
from companion.model.loading import LoadedModel

SETTINGS = ScoreSettings(params={"knn": {"k": 3}, "bucket": {"bins": 5}, "renyi": {"alpha": 4.0}}, batch_size=3)


def _loaded(model) -> LoadedModel:
    return LoadedModel(model, make_tiny_tokenizer(), "tiny", "memory", "test", torch.device("cpu"), torch.float32)


def _windows(samples: int = 5, seqlen: int = 12) -> Windows:
    generator = torch.Generator().manual_seed(1)
    return Windows(torch.randint(3, 96, (samples, seqlen), generator=generator), list(range(samples)),
                   [0] * samples, 1)


def _reference_points(model, input_ids):
    """Layer inputs/outputs from plain hooks on the layers, post-attention residual as input + attention."""
    family = layouts.layer_blocks(model)[0]
    inputs, outputs, attn = {}, {}, {}
    handles = []
    for i, layer in enumerate(layouts.decoder_layers(model)):
        handles.append(layer.register_forward_pre_hook(
            lambda m, a, k, i=i: inputs.__setitem__(i, (a[0] if a else k["hidden_states"]).clone()), with_kwargs=True))
        handles.append(layer.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o.clone())))
        handles.append(getattr(layer, family.attn).register_forward_hook(
            lambda m, a, o, i=i: attn.__setitem__(i, o[0].clone())))
    with torch.no_grad():
        model(input_ids=input_ids, use_cache=False)
    for h in handles:
        h.remove()
    mids = {}
    for i, layer in enumerate(layouts.decoder_layers(model)):
        contribution = attn[i]
        if len(family.attn_norms) > 1:  # sandwich norm: the attention output is normed before the residual add
            contribution = getattr(layer, family.attn_norms[1])(contribution)
        mids[i] = inputs[i] + contribution
    return inputs, mids, outputs


def test_one_pass_matches_recomputation(family):
    model = make_tiny_model(family)
    windows = _windows()
    values = collect(_loaded(model), windows, SETTINGS, progress=False)
    inputs, mids, outputs = _reference_points(model, windows.input_ids)
    num_layers = len(inputs)
    boundaries = [inputs[i] for i in range(num_layers)] + [outputs[num_layers - 1]]
    for name in ("knn", "bucket", "renyi", "knn_unit", "bucket_mm"):
        fn = criteria.get(name).bind(**SETTINGS.estimator_params(name))
        for i, hidden in enumerate(boundaries):
            torch.testing.assert_close(values[("entropy", name, "boundary", i)], fn(hidden), rtol=1e-4, atol=1e-4)
        for i in range(num_layers):
            torch.testing.assert_close(values[("entropy", name, "mid", i)], fn(mids[i]), rtol=1e-4, atol=1e-4)
    for i, hidden in enumerate(boundaries):
        torch.testing.assert_close(values[("norm", "rms", "boundary", i)], estimators.rms(hidden))
    for name in criteria.names(kind="similarity"):
        fn = criteria.get(name).bind()
        for i in range(num_layers):
            expected = {"attn": fn(inputs[i], mids[i]), "mlp": fn(mids[i], outputs[i]),
                        "layer": fn(inputs[i], outputs[i])}
            for granularity, value in expected.items():
                torch.testing.assert_close(values[("similarity", name, granularity, i)], value, rtol=1e-4, atol=1e-5)


def test_batch_size_does_not_change_scores():
    model = make_tiny_model("llama")
    one = collect(_loaded(model), _windows(), ScoreSettings(params=SETTINGS.params, batch_size=1), progress=False)
    many = collect(_loaded(model), _windows(), ScoreSettings(params=SETTINGS.params, batch_size=5), progress=False)
    for key in one:
        torch.testing.assert_close(one[key], many[key], rtol=1e-4, atol=1e-4)


def test_scores_file_content(tmp_path):
    model = make_tiny_model("gemma3")
    docs = Documents(["a"], "toy", "file", "local", "toy.txt", "0" * 64)
    result = score(_loaded(model), docs, _windows(), SETTINGS, progress=False)
    assert result["num_layers"] == 4
    assert len(result["blocks"]) == 4 * 3 * 7  # knn, bucket, renyi, knn_unit, bucket_mm, cosine, angular
    knn_attn = [b for b in result["blocks"] if b["method"] == "knn" and b["granularity"] == "attn"]
    for block in knn_attn:
        assert block["value"] == pytest.approx(block["h_out"] - block["h_in"], abs=1e-4)
    layer0 = [b for b in result["blocks"] if b["method"] == "knn" and b["layer"] == 0]
    by_granularity = {b["granularity"]: b for b in layer0}
    assert by_granularity["attn"]["h_out"] == pytest.approx(by_granularity["mlp"]["h_in"])
    assert by_granularity["layer"]["h_out"] == pytest.approx(by_granularity["mlp"]["h_out"])
    assert len(result["profiles"]["knn"]) == 5
    rms_boundary = result["per_sample"]["norm"]["rms"]["boundary"]
    assert len(rms_boundary) == 5 and len(result["per_sample"]["norm"]["rms"]["mid"]) == 4
    assert result["norms"]["rms"] == pytest.approx([sum(v) / len(v) for v in rms_boundary])
    counts = result["model"]["parameters"]
    assert counts["embedding"] == model.get_input_embeddings().weight.numel() < counts["total"]
    assert counts["layer"] == sum(p.numel() for p in layouts.decoder_layers(model)[0].parameters())
    assert result["settings"]["params"]["knn_unit"] == {"k": 3}  # a diagnostic shares its estimator's parameters
    assert result["data"]["windows"] == [[i, 0] for i in range(5)]
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(result))
    with pytest.raises(CompanionError, match="'key'"):  # a scores file always records what it was computed for
        read_scores(path)
    store.write(path, {"kind": "scores"}, result)
    assert read_scores(path)["num_layers"] == 4


def test_diagnostic_numbers_read_a_real_scores_file():
    model = make_tiny_model("llama")
    docs = Documents(["a"], "toy", "file", "local", "toy.txt", "0" * 64)
    result = {**score(_loaded(model), docs, _windows(), SETTINGS, progress=False), "model": {"spec": "gemma-3-270m",
              "parameters": {"total": 100, "embedding": 63, "layer": 2}}}
    numbers = {**diagnostics.model_numbers(result), **diagnostics.norm_numbers(result),
               **diagnostics.bucket_numbers(result), **diagnostics.noise_numbers(result)}
    assert numbers["bucket_tokens_per_bin"] == pytest.approx(12 / 5)
    assert numbers["bucket_bias_mean"] < 0 and numbers["rms_growth"] > 0
    assert numbers["embedding_share_pct"] == 63 and "Gemma-3-270M" in numbers["model_description"]
    assert "Q4_1 GGUF (Llama architecture, 30 layers)" in numbers["description_smollm2_135m"]
    assert numbers["renyi_noise_verdict"].startswith(("no", "only", "yes"))


def test_nan_hidden_states_are_reported():
    model = make_tiny_model("llama")
    with torch.no_grad():
        layouts.decoder_layers(model)[2].mlp.down_proj.weight.fill_(float("nan"))
    with pytest.raises(CompanionError, match="NaN or Inf.*dtype"):
        collect(_loaded(model), _windows(), SETTINGS, progress=False)


def test_unknown_estimator_and_bad_scores_file(tmp_path):
    with pytest.raises(CompanionError, match="unknown estimator 'entropyx'"):
        ScoreSettings(estimators=["entropyx"]).validate()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CompanionError, match="cannot read scores file"):
        read_scores(bad)
    bad.write_text("{}")
    with pytest.raises(CompanionError, match="not a companion scores file"):
        read_scores(bad)


def test_same_inputs_give_the_same_file():
    model = make_tiny_model("qwen3")
    docs = Documents(["a"], "toy", "file", "local", "toy.txt", "0" * 64)
    first = score(_loaded(model), docs, _windows(), SETTINGS, progress=False)
    second = score(_loaded(model), docs, _windows(), SETTINGS, progress=False)
    first.pop("created"), second.pop("created")
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
