"""FastHFLM gives stock HFLM's log-likelihoods and greedy flags, on tiny random models built here."""

from __future__ import annotations

import logging
import random

import pytest
import torch
import transformers
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from tokenizers import Tokenizer, models, pre_tokenizers

from companion.experiments.fastlm import FastHFLM, make_lm, target_logprobs

WORDS = [f"w{i}" for i in range(300)]
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
VOCAB = 320
MAX_LENGTH = 24
TOL = 1e-4

_TINY = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=8, initializer_range=0.5,
             pad_token_id=0, bos_token_id=1, eos_token_id=2)
CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**_TINY),
    "gemma2": lambda: transformers.Gemma2Config(**_TINY, final_logit_softcapping=3.0, sliding_window=8),
    "gemma3": lambda: transformers.Gemma3TextConfig(**_TINY, final_logit_softcapping=3.0, sliding_window=8),
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer over ``WORDS`` (ids 4..303), made without any download."""
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>",
                                                eos_token="<eos>", unk_token="<unk>")


@pytest.fixture(scope="module", params=[(arch, device) for arch in sorted(CONFIGS) for device in DEVICES],
                ids="-".join)
def model(request) -> transformers.PreTrainedModel:
    arch, device = request.param
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(CONFIGS[arch]()).eval().to(device)


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _greedy_continuation(model: transformers.PreTrainedModel, tokenizer, context: str, n: int) -> str:
    """The model's own greedy ``n``-word continuation of ``context`` (so some requests are greedy)."""
    ids = tokenizer(context, return_tensors="pt").input_ids.to(model.device)
    with torch.no_grad():
        for _ in range(n):
            scores = model(ids).logits[0, -1, 4 : 4 + len(WORDS)]
            ids = torch.cat([ids, 4 + scores.argmax().view(1, 1)], dim=1)
    return " " + tokenizer.decode(ids[0, -n:])


def _requests(model: transformers.PreTrainedModel, tokenizer) -> list[Instance]:
    rng = random.Random(0)
    pairs = []
    for _ in range(3):  # multiple choice: one context, several multi-token continuations
        context = _text(rng, rng.randint(3, 12))
        pairs += [(context, " " + _text(rng, rng.randint(1, 6))) for _ in range(4)]
    for _ in range(2):  # partial evaluation (WinoGrande): contexts share their start, not their end
        start, rest = _text(rng, rng.randint(4, 10)), " " + _text(rng, rng.randint(2, 5))
        pairs += [(f"{start} {word}", rest) for word in rng.sample(WORDS, 2)]
    for _ in range(2):  # one-token continuations of one context: stock reuses one forward pass
        context = _text(rng, rng.randint(2, 8))
        pairs += [(context, " " + word) for word in rng.sample(WORDS, 4)]
    pairs += [(_text(rng, rng.randint(MAX_LENGTH, 2 * MAX_LENGTH)), " " + _text(rng, rng.randint(1, 8)))
              for _ in range(4)]  # truncated from the left at max_length
    for n in (1, 3, 4):  # the model's own greedy continuations
        context = _text(rng, rng.randint(3, 8))
        pairs.append((context, _greedy_continuation(model, tokenizer, context, n)))
    return [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]


def _lm(model, tokenizer, fast: bool, batch_size: int) -> HFLM:
    return make_lm(model, tokenizer, batch_size=batch_size, fast=fast, max_length=MAX_LENGTH)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_loglikelihood_matches_stock(model, tokenizer, batch_size: int) -> None:
    requests = _requests(model, tokenizer)
    stock = _lm(model, tokenizer, False, batch_size).loglikelihood(requests, disable_tqdm=True)
    fast = _lm(model, tokenizer, True, batch_size).loglikelihood(requests, disable_tqdm=True)
    assert len(fast) == len(stock) == len(requests)
    for (stock_ll, stock_greedy), (fast_ll, fast_greedy) in zip(stock, fast):
        assert fast_ll == pytest.approx(stock_ll, abs=TOL)
        assert fast_greedy == stock_greedy
    assert any(greedy for _, greedy in stock), "no greedy request: the is_greedy check would be vacuous"


@pytest.mark.parametrize("batch_size", [1, 4])
def test_loglikelihood_rolling_matches_stock(model, tokenizer, batch_size: int) -> None:
    rng = random.Random(1)
    requests = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(_text(rng, n),), idx=i)
                for i, n in enumerate([3, MAX_LENGTH - 1, MAX_LENGTH + 5, 3 * MAX_LENGTH])]
    stock = _lm(model, tokenizer, False, batch_size).loglikelihood_rolling(requests, disable_tqdm=True)
    fast = _lm(model, tokenizer, True, batch_size).loglikelihood_rolling(requests, disable_tqdm=True)
    assert fast == pytest.approx(stock, abs=TOL)


def test_make_lm_picks_the_class(model, tokenizer, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="companion.experiments.fastlm"):
        assert type(make_lm(model, tokenizer, fast=True)) is FastHFLM
    assert "scoring as stock" not in caplog.text, "the tiny models must take the fast path"
    assert type(make_lm(model, tokenizer, fast=False)) is HFLM


def test_model_without_logits_mask_is_scored_as_stock(tokenizer, monkeypatch, caplog) -> None:
    """transformers releases before boolean ``logits_to_keep`` masks index ``hidden_states[:, logits_to_keep, :]``."""
    from transformers.models.llama import modeling_llama

    monkeypatch.setattr(modeling_llama, "slice_logits_to_keep",
                        lambda hidden, keep: hidden[:, slice(-keep, None) if isinstance(keep, int) else keep, :])
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(CONFIGS["llama"]()).eval()
    requests = _requests(model, tokenizer)
    with caplog.at_level(logging.WARNING, logger="companion.experiments.fastlm"):
        fast = _lm(model, tokenizer, True, 4).loglikelihood(requests, disable_tqdm=True)
    assert "scoring as stock" in caplog.text
    assert fast == _lm(model, tokenizer, False, 4).loglikelihood(requests, disable_tqdm=True)


@pytest.mark.parametrize("granularity,layers", [("attn", [0]), ("mlp", [1]), ("layer", [0])])
def test_pruned_model_matches_stock(tokenizer, granularity: str, layers: list[int]) -> None:
    """Dropped attention keeps a placeholder in the KV cache that the shared-context pass copies per row."""
    from companion.model.surgery import Pruning, temporarily_pruned

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS["gemma3"]()).eval()
    requests = _requests(model, tokenizer)
    with temporarily_pruned(model, Pruning(granularity, layers)):
        stock = _lm(model, tokenizer, False, 4).loglikelihood(requests, disable_tqdm=True)
        fast = _lm(model, tokenizer, True, 4).loglikelihood(requests, disable_tqdm=True)
    assert [ll for ll, _ in fast] == pytest.approx([ll for ll, _ in stock], abs=TOL)
    assert [greedy for _, greedy in fast] == [greedy for _, greedy in stock]


@pytest.mark.parametrize("tokens", [1, 8, 37])
def test_target_logprobs_equal_the_full_log_softmax(tokens: int) -> None:
    torch.manual_seed(tokens)
    logits = torch.randn(tokens, 5000) * 30  # a wide range: most exponentials underflow
    targets = torch.randint(0, 5000, (tokens,))
    logprobs, greedy = target_logprobs(logits, targets)
    full = torch.log_softmax(logits.double(), dim=-1)
    assert torch.allclose(logprobs.double(), full.gather(1, targets[:, None]).squeeze(1), atol=1e-4, rtol=0)
    assert torch.equal(greedy, logits.argmax(-1))


def _forward_inputs(model) -> tuple[list[list[list[int]]], object]:
    """The input ids of every forward pass of ``model`` from now on (a list filled in place) and the hook's handle."""
    runs: list[list[list[int]]] = []

    def record(module, args, kwargs):
        runs.append((args[0] if args else kwargs["input_ids"]).tolist())

    return runs, model.register_forward_pre_hook(record, with_kwargs=True)


def test_probe_runs_once_per_model_and_module_classes(tokenizer, caplog) -> None:
    """A sweep's prunings reuse the probe: dense and layer-pruned share module classes, attention adds one."""
    from companion.model.surgery import Pruning, temporarily_pruned

    def probed(model) -> bool:
        """Whether making an lm runs forward passes (the probe); it must take the fast path."""
        runs, handle = _forward_inputs(model)
        with caplog.at_level(logging.WARNING, logger="companion.experiments.fastlm"):
            lm = _lm(model, tokenizer, True, 4)
        handle.remove()
        assert type(lm) is FastHFLM and "scoring as stock" not in caplog.text
        return bool(runs)

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS["gemma3"]()).eval()
    assert probed(model) and not probed(model)
    found = []
    for granularity, layers in [("attn", [0]), ("attn", [1]), ("layer", [0])]:
        with temporarily_pruned(model, Pruning(granularity, layers)):
            found.append(probed(model))
    assert found == [True, False, False]
    assert probed(transformers.AutoModelForCausalLM.from_config(CONFIGS["gemma3"]()).eval())


def test_requests_sharing_a_context_start_run_it_once(tokenizer) -> None:
    """Contexts that share their start (a question's choices, WinoGrande's partial contexts) run that start
    in one forward pass; a context that shares too little runs whole, on its own."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS["llama"]()).eval()
    pairs = [("w1 w2 w3 w4", " w5"), ("w1 w2 w3 w6", " w5 w0"), ("w1 w2 w3 w4", " w7"), ("w8 w2 w3 w4", " w5"),
             ("w1 w9", " w5")]
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]
    ids = {text: tokenizer(text, add_special_tokens=False)["input_ids"]
           for text in ("w1 w2 w3", "w8 w2 w3 w4", "w1 w9")}

    def run(fast: bool) -> tuple[list, list[list[list[int]]]]:
        lm = _lm(model, tokenizer, fast, 1)
        runs, handle = _forward_inputs(model)
        try:
            return lm.loglikelihood(requests, disable_tqdm=True), runs
        finally:
            handle.remove()

    def holding(runs: list[list[list[int]]], tokens: list[int]) -> int:
        """Rows of all forward passes that hold ``tokens`` in a row."""
        return sum(any(row[i:i + len(tokens)] == tokens for i in range(len(row))) for batch in runs for row in batch)

    (fast, fast_runs), (stock, stock_runs) = run(True), run(False)
    assert [ll for ll, _ in fast] == pytest.approx([ll for ll, _ in stock], abs=TOL)
    assert holding(stock_runs, ids["w1 w2 w3"]) >= 2  # stock runs the shared start for each distinct context
    assert holding(fast_runs, ids["w1 w2 w3"]) == 1
    assert holding(fast_runs, ids["w8 w2 w3 w4"]) == holding(fast_runs, ids["w1 w9"]) == 1


def test_auto_batch_size_matches_stock(tokenizer) -> None:
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS["llama"]()).eval()
    requests = _requests(model, tokenizer)
    stock = _lm(model, tokenizer, False, 4).loglikelihood(requests, disable_tqdm=True)
    fast = make_lm(model, tokenizer, batch_size="auto", max_length=MAX_LENGTH, max_batch_size=8)
    assert [ll for ll, _ in fast.loglikelihood(requests, disable_tqdm=True)] == pytest.approx(
        [ll for ll, _ in stock], abs=TOL)


# bf16 keeps 8 significant bits (relative rounding 2**-8 ≈ 0.4 %). Both sides run the same bf16 weights, but
# FastHFLM batches, pads and slices differently (shared contexts, LM head only on continuation positions),
# so matmuls round differently: each token log-probability (magnitude 1-20 here) can differ by a few
# rounding steps, and a continuation sums up to 8 of them. Relative 1e-2 of the log-likelihood covers that
# with margin; the absolute 0.1 covers likelihoods near zero (greedy continuations), where a relative bound
# means nothing. A real bug (a wrong position, a dropped token) moves a log-likelihood by a whole token's
# log-probability, far outside both. Measured here: log-likelihoods from -77 to -1.5, largest differences
# 0.65 % (llama) and 0.71 % (gemma3) relative, 0.5 absolute at -76.5.
BF16_REL, BF16_ABS = 1e-2, 0.1


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_loglikelihood_matches_stock_in_bf16(tokenizer, arch: str) -> None:
    """FastHFLM and stock HFLM on the same bf16 model agree within bf16 rounding (tolerance above)."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS[arch]()).eval().to(torch.bfloat16)
    requests = _requests(model, tokenizer)
    stock = _lm(model, tokenizer, False, 4).loglikelihood(requests, disable_tqdm=True)
    fast = _lm(model, tokenizer, True, 4).loglikelihood(requests, disable_tqdm=True)
    assert len(fast) == len(stock) == len(requests)
    for (stock_ll, _), (fast_ll, _) in zip(stock, fast):
        assert fast_ll == pytest.approx(stock_ll, rel=BF16_REL, abs=BF16_ABS)
    assert max(abs(ll) for ll, _ in stock) > 10 * BF16_ABS, "log-likelihoods too small to test the tolerance"
    agree = sum(f == s for (_, f), (_, s) in zip(fast, stock))
    assert agree >= 0.9 * len(requests)  # greedy flags may flip only at bf16 near-ties
