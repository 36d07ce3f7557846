import math

import torch

from r1lab.algorithms.sequences import pad_batch, token_logprobs
from r1lab.models import load_model


def rows():
    prompts = [[5, 6, 7, 8], [5, 6, 7, 8], [9, 10], [9, 10], [9, 10]]
    completions = [[11, 12, 13], [14], [15, 16, 17, 18], [19, 20], [21, 22, 23]]
    return prompts, completions


def test_pad_batch_shares_prompts():
    batch = pad_batch(*rows(), pad_id=0, device="cpu")
    assert batch["prompt_ids"].tolist() == [[5, 6, 7, 8], [0, 0, 9, 10]]
    assert batch["owner"].tolist() == [0, 0, 1, 1, 1]
    assert batch["completion_mask"].sum(-1).tolist() == [3, 1, 4, 2, 3]


def reference_logprobs(model, prompts, completions):
    """One unpadded forward per row: the obvious definition."""
    out = []
    for p, c in zip(prompts, completions):
        logits = model(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1:-1]
        out.append(torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(c)[:, None]).squeeze(-1))
    return out


def test_shared_prompt_and_full_rows_match_unpadded_forwards():
    model, _ = load_model("tiny-random")
    prompts, completions = rows()
    batch = pad_batch(prompts, completions, pad_id=0, device="cpu")
    expected = reference_logprobs(model, prompts, completions)
    for shared in (True, False):
        logprobs, _ = token_logprobs(model, batch, shared=shared)
        for i, e in enumerate(expected):
            assert torch.allclose(logprobs[i, :len(e)], e, atol=1e-5), (shared, i)


def test_shared_prompt_gradient_matches_full_rows():
    model, _ = load_model("tiny-random")
    batch = pad_batch(*rows(), pad_id=0, device="cpu")
    grads = []
    for shared in (True, False):
        model.zero_grad()
        logprobs, _ = token_logprobs(model, batch, shared=shared)
        (logprobs * batch["completion_mask"]).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_bf16_decoder_follows_the_policy_weights():
    from r1lab.rollout import Sampling
    from r1lab.rollout.hf import HFEngine
    model, tokenizer = load_model("tiny-random")
    model.eval()                                  # as in serving (a training policy's copy: the next test)
    engine = HFEngine(model, tokenizer, decode_dtype="bfloat16")
    engine.generate(["Calculate 1 + 2"], 2, Sampling(max_new_tokens=4))
    assert engine.model is not model and next(engine.model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    samples = engine.generate(["Calculate 1 + 2"], 2, Sampling(max_new_tokens=4))
    assert torch.equal(engine.model.lm_head.weight, model.lm_head.weight.to(torch.bfloat16))
    assert next(model.parameters()).dtype == torch.float32 and len(samples[0]) == 2


def test_a_training_policys_bf16_copy_holds_no_weights_between_rollouts(monkeypatch):
    """While the policy trains, the decoding copy's weights are freed after each rollout and refilled from the
    policy's current weights by the next: the same samples as a copy that keeps its weights."""
    from r1lab.rollout import Sampling
    from r1lab.rollout.hf import HFEngine
    model, tokenizer = load_model("tiny-random")
    model.train()
    dropping = HFEngine(model, tokenizer, decode_dtype="bfloat16", seed=3)
    keeping = HFEngine(model, tokenizer, decode_dtype="bfloat16", seed=3)
    monkeypatch.setattr(keeping, "_drop_decoder_weights", lambda: None)
    for _ in range(2):
        ours, theirs = (engine.generate(["Calculate 1 + 2"], 3, Sampling(max_new_tokens=6)) for engine in (dropping, keeping))
        assert [s.token_ids for s in ours[0]] == [s.token_ids for s in theirs[0]]
        assert all(w.numel() == 0 for w in dropping.model.parameters())
        assert torch.equal(keeping.model.lm_head.weight, model.lm_head.weight.to(torch.bfloat16))
        with torch.no_grad():
            model.lm_head.weight.add_(0.5)                    # a training step between rollouts
    model.eval()                                              # serving: the copy keeps its weights between calls
    dropping.generate(["Calculate 1 + 2"], 1, Sampling(max_new_tokens=2))
    assert torch.equal(dropping.model.lm_head.weight, model.lm_head.weight.to(torch.bfloat16))


def test_sample_tokens_draws_from_the_distribution_and_the_nucleus():
    from r1lab.rollout.hf import sample_tokens
    generator = torch.Generator().manual_seed(0)
    logprobs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().repeat(20000, 1)
    share = torch.bincount(sample_tokens(logprobs, 1.0, generator), minlength=4) / 20000
    assert torch.allclose(share, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.015)
    share = torch.bincount(sample_tokens(logprobs, 0.7, generator), minlength=4) / 20000   # nucleus {0.5, 0.3}
    assert torch.allclose(share, torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=0.015)


def test_chunked_logprobs_and_entropy_equal_the_whole_logits_with_their_gradients():
    """The head by vocabulary slices (recomputed in backward) against log_softmax over the whole (N, V) logits."""
    from r1lab.algorithms.sequences import chunked_logprobs, logprobs_from_logits
    torch.manual_seed(0)
    for softcap in (None, 5.0):
        hidden, weight = torch.randn(23, 16, requires_grad=True), torch.randn(40, 16, requires_grad=True)
        ids = torch.randint(0, 40, (23,))
        logits = hidden @ weight.T
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        whole = torch.log_softmax(logits / 0.7, -1)
        expected, expected_entropy = whole.gather(-1, ids[:, None]).squeeze(-1), -(whole.exp() * whole).sum(-1)
        expected_grads = torch.autograd.grad((expected * torch.arange(23.0)).sum(), (hidden, weight))
        for rows, keep_bytes in ((1, 0), (7, 0), (40, 0), (100, 0), (None, 0), (None, 23 * 40 * 4)):  # sliced; kept
            got, entropy = chunked_logprobs(hidden, weight, ids, 0.7, softcap, with_entropy=True, rows=rows,
                                            keep_bytes=keep_bytes)
            grads = torch.autograd.grad((got * torch.arange(23.0)).sum(), (hidden, weight))
            assert torch.allclose(got, expected, atol=1e-5) and torch.allclose(entropy, expected_entropy, atol=1e-5)
            assert all(torch.allclose(g, e, atol=1e-5) for g, e in zip(grads, expected_grads)), (softcap, rows)
        plain, _ = logprobs_from_logits(logits, ids, 0.7)
        assert torch.allclose(plain, expected, atol=1e-6)


def test_logits_are_kept_only_when_they_fit_and_recomputed_otherwise(monkeypatch):
    from r1lab.algorithms import sequences
    calls = []
    monkeypatch.setattr(sequences, "head_logprobs", lambda *args: calls.append(args[-1]) or (None, None))
    hidden, weight, ids = torch.randn(10, 4, requires_grad=True), torch.randn(8, 4), torch.randint(0, 8, (10,))
    sequences.chunked_logprobs(hidden, weight, ids, rows=4, keep_bytes=10 * 8 * 4)          # 320 bytes fit
    assert calls == []
    sequences.chunked_logprobs(hidden, weight, ids, rows=4, keep_bytes=10 * 8 * 4 - 1)      # one byte short
    assert calls == [4]


def test_the_sliced_head_writes_each_weight_gradient_row_once_and_skips_unwanted_gradients():
    """Backward makes no (V, H) gradient per slice: the weight's gradient is written slice by slice, and a frozen
    weight (LoRA) or hidden states without grad get none; the entropy has no gradient."""
    from r1lab.algorithms.head_logprobs import head_logprobs
    torch.manual_seed(0)
    hidden, weight, ids = torch.randn(6, 8, requires_grad=True), torch.randn(30, 8), torch.randint(0, 30, (6,))
    logprobs, entropy = head_logprobs(hidden, weight, ids, with_entropy=True, rows=7)
    assert not entropy.requires_grad and logprobs.requires_grad
    logprobs.sum().backward()
    expected = torch.autograd.grad(torch.log_softmax(hidden @ weight.T, -1).gather(-1, ids[:, None]).sum(), hidden)[0]
    assert weight.grad is None and torch.allclose(hidden.grad, expected, atol=1e-5)


def test_the_sliced_head_under_bf16_autocast_matches_autograd_through_the_cast():
    """Under autocast the matmuls run in bf16 as `hidden @ weight.T` would; gradients come back in fp32."""
    from r1lab.algorithms.head_logprobs import head_logprobs
    torch.manual_seed(0)
    hidden, weight, ids = torch.randn(12, 16, requires_grad=True), torch.randn(50, 16, requires_grad=True), torch.randint(0, 50, (12,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head_logprobs(hidden, weight, ids, rows=9)[0]
        expected = torch.log_softmax((hidden @ weight.T).float(), -1).gather(-1, ids[:, None]).squeeze(-1)
    grads = torch.autograd.grad(got.sum(), (hidden, weight))
    expected_grads = torch.autograd.grad(expected.sum(), (hidden, weight))
    assert got.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads)
    assert torch.allclose(got, expected, atol=1e-4)
    assert all(torch.allclose(g, e, atol=2e-2, rtol=2e-2) for g, e in zip(grads, expected_grads))


def test_model_logprobs_chunked_match_the_models_own_logits(monkeypatch):
    """Through a whole model, both prompt layouts: values, entropy and every parameter's gradient."""
    from r1lab.algorithms import sequences
    model, _ = load_model("tiny-random")
    batch = pad_batch(*rows(), pad_id=0, device="cpu")
    results, kept = {}, sequences.chunked_logprobs
    for mode in ("kept", "sliced", "own"):
        if mode == "sliced":                                                    # by vocabulary slices of 97 rows
            monkeypatch.setattr(sequences, "chunked_logprobs", lambda *args: kept(*args, rows=97, keep_bytes=0))
        if mode == "own":
            monkeypatch.setattr(sequences, "lm_head", lambda model: None)       # the model's own (B, C, V) logits
        for shared in (True, False):
            model.zero_grad()
            logprobs, entropy = token_logprobs(model, batch, 0.8, with_entropy=True, shared=shared)
            (torch.where(batch["completion_mask"].bool(), logprobs, 0.0)).sum().backward()
            results[mode, shared] = logprobs.detach(), entropy, torch.cat([p.grad.flatten() for p in model.parameters()])
    mask = batch["completion_mask"].bool()
    for mode, shared in [("kept", True), ("kept", False), ("sliced", True), ("sliced", False)]:
        (a, ea, ga), (b, eb, gb) = results[mode, shared], results["own", shared]
        assert torch.allclose(a[mask], b[mask], atol=1e-5) and abs(ea - eb) < 1e-5 and torch.allclose(ga, gb, atol=1e-5)


def test_a_model_with_a_logit_scale_keeps_its_own_logits():
    from r1lab.algorithms.sequences import lm_head
    model, _ = load_model("tiny-random")
    assert lm_head(model)[0] is model.lm_head.weight
    model.config.logit_scale = 0.5
    assert lm_head(model) is None


def test_two_level_sampling_is_the_inverse_cdf_of_the_nucleus(monkeypatch):
    """Small blocks and candidate sets, so every path runs: a block boundary, the top-k nucleus, the full sort."""
    from r1lab.rollout import hf
    monkeypatch.setattr(hf, "CDF_BLOCK", 3)
    generator = torch.Generator().manual_seed(1)
    probs = torch.tensor([0.05, 0.3, 0.15, 0.02, 0.4, 0.08])
    logprobs = probs.log().repeat(40000, 1)
    share = torch.bincount(hf.sample_tokens(logprobs, 1.0, generator), minlength=6) / 40000
    assert torch.allclose(share, probs, atol=0.01)
    for candidates in (2, 6):                                         # 2: mass 0.7 < 0.8, the full sort is used
        monkeypatch.setattr(hf, "NUCLEUS_CANDIDATES", candidates)
        share = torch.bincount(hf.sample_tokens(logprobs, 0.8, generator), minlength=6) / 40000
        assert torch.allclose(share, torch.tensor([0, 0.3, 0.15, 0, 0.4, 0]) / 0.85, atol=0.01)   # {0.4, 0.3, 0.15}


def test_length_buckets_pad_each_bucket_to_its_longest_only_where_that_saves_more_than_a_forward():
    from r1lab.algorithms.sequences import length_buckets
    assert length_buckets([10, 11, 9, 12], overhead=32) == [[3, 1, 0, 2]]          # alike: one bucket
    # 200, 190 | 20, 15, 10 costs 2 x 200 + 3 x 20 + 2 x 20 = 500; one bucket 1020; 200 | 190 | 20, 15, 10: 510;
    # 200, 190 | 20 | 15, 10: 510
    assert length_buckets([20, 200, 10, 190, 15], overhead=20) == [[1, 3], [0, 4, 2]]
    assert length_buckets([20, 200, 10, 190, 15], overhead=1000) == [[1, 3, 0, 4, 2]]  # a forward costs more
    assert length_buckets([3, 2, 1], overhead=0) == [[0], [1], [2]]                 # no padding at all
    assert length_buckets([20, 200], overhead=math.inf) == [[1, 0]]                # a GPU: one bucket
    assert length_buckets([], overhead=32) == []


def test_length_buckets_give_the_same_logprobs_and_gradients_as_one_padded_batch(monkeypatch):
    """Completions of very different lengths over two prompts (GRPO's shared prompt pass), and rows of their own
    prompts of different lengths (SFT's full rows, prompt then completion with no padding between): split into
    buckets (overhead 0: every length its own), against one bucket padded to the longest and against one unpadded
    forward per row."""
    from r1lab.algorithms import sequences
    model, _ = load_model("tiny-random")
    layouts = {True: ([[5, 6, 7, 8]] * 3 + [[9, 10]] * 3,
                      [[11, 12, 13, 14, 15, 16, 17, 18, 19], [14], [15, 16], [20, 21, 22, 23, 24, 25], [26], []]),
               False: ([[5, 6, 7, 8, 9, 10, 11, 12], [9], [30, 31, 32], [40, 41, 42, 43, 44, 45], [50, 51]],
                       [[11, 12], [13, 14, 15, 16, 17, 18, 19, 20, 21], [22], [], [23, 24, 25, 26]])}
    for shared, (prompts, completions) in layouts.items():
        batch = pad_batch(prompts, completions, pad_id=0, device="cpu")
        expected = reference_logprobs(model, prompts, completions)
        weights = torch.arange(1.0, batch["completion_ids"].shape[1] + 1)
        results = []
        for overhead in (0, 10 ** 6):
            monkeypatch.setattr(sequences, "BUCKET_OVERHEAD", overhead)
            model.zero_grad()
            logprobs, entropy = token_logprobs(model, batch, with_entropy=True, shared=shared)
            (logprobs * weights).sum().backward()
            results.append((logprobs.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
            for i, e in enumerate(expected):
                assert torch.allclose(logprobs[i, :len(e)], e, atol=1e-5), (shared, overhead, i)
            assert (logprobs[batch["completion_mask"] == 0] == 0).all()                 # 0 at padding
        assert torch.allclose(results[0][0], results[1][0], atol=1e-5)
        assert torch.allclose(results[0][1], results[1][1], atol=1e-5)
        if not shared:                                                 # the buckets split these rows
            assert len(sequences.length_buckets([len(p) + len(c) for p, c in zip(prompts, completions)], 0)) > 1


def test_a_tied_embeddings_lookups_add_their_gradient_in_place_and_sum_to_autograds(monkeypatch):
    """r1lab/algorithms/tied_lookup.py: over two accumulated micro-batches, by the sliced head and with kept logits,
    the same gradients as autograd's dense lookup gradient; the embedding keeps its Parameter; no-op without grad
    and for an untied embedding."""
    from r1lab.algorithms import sequences
    from r1lab.algorithms.sequences import CompletionLogits
    from r1lab.algorithms.tied_lookup import lookups_into_gradient, tied_lookup
    model, _ = load_model("tiny-random")
    lookup, weight = model.get_input_embeddings(), model.get_output_embeddings().weight
    assert tied_lookup(model) is lookup
    policy = CompletionLogits(model)
    batches = [pad_batch(*rows(), pad_id=0, device="cpu"), pad_batch([[7, 8, 9]] * 2, [[30, 31], [32]], pad_id=0, device="cpu")]
    for keep_bytes in (0, 10 ** 9):                                     # the sliced head, then whole logits
        defaults = list(sequences.chunked_logprobs.__defaults__)
        monkeypatch.setattr(sequences.chunked_logprobs, "__defaults__", tuple(defaults[:-1] + [keep_bytes]))
        grads = []
        for in_place in (False, True):
            policy.lookups_into_gradient = in_place
            model.zero_grad(set_to_none=True)
            for batch in batches:
                logprobs, _ = policy(batch)
                (logprobs * batch["completion_mask"]).sum().backward()
            assert lookup.weight is weight and not lookup.sparse and not weight.grad.is_sparse
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        assert torch.allclose(grads[0], grads[1], atol=1e-5), keep_bytes
    with torch.no_grad(), lookups_into_gradient(model):
        assert lookup.weight is weight                                   # nothing to route without gradients
    model.get_output_embeddings().weight = torch.nn.Parameter(weight.detach().clone())
    assert tied_lookup(model) is None


def test_gradient_checkpointing_gives_the_same_gradients_with_the_tied_lookup():
    """Full rows (what gradient checkpointing runs, prompt then completion in length buckets) with recomputed
    activations and the tied lookup's in-place gradient, against the shared prompt pass without either."""
    from r1lab.algorithms.sequences import CompletionLogits
    model, _ = load_model("tiny-random")
    batch = pad_batch(*rows(), pad_id=0, device="cpu")
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
        model.train()
        policy = CompletionLogits(model, shared=not checkpointing)
        policy.lookups_into_gradient = checkpointing
        model.zero_grad(set_to_none=True)
        logprobs, _ = policy(batch)
        (logprobs * batch["completion_mask"]).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert any(getattr(layer, "gradient_checkpointing", False) for layer in model.modules())
    assert torch.allclose(grads[0], grads[1], atol=1e-5)
