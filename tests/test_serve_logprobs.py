"""Log-probabilities from `r1lab serve`'s /v1/completions (`logprobs`, `echo`): the scoring pass against the
model's own logits computed by hand, and the request lm-evaluation-harness's log-likelihood tasks send,
read the way its `local-completions` model reads the reply."""
import json

import openai
import pytest
import torch

import r1lab.serve_logprobs as serve_logprobs
from r1lab.models import load_model
from r1lab.rollout.hf import HFEngine
from r1lab.serve import APIError
from r1lab.serve_completions import parse_completion
from r1lab.serve_logprobs import openai_logprobs, score
from serving import LIMITS, start_server


def by_hand(model, ids):
    """log-softmax of the model's full logits at each position after the first, (L-1, V)."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)


@pytest.mark.parametrize("name", ["tiny-random", "tiny-random-gemma3"])    # Gemma 3: a tied head and a logit softcap
def test_score_is_the_models_own_log_softmax_chunk_by_chunk(name, monkeypatch):
    model, _ = load_model(name)
    monkeypatch.setattr(serve_logprobs, "CHUNK_BYTES", 3 * 4 * model.config.vocab_size)   # 3 positions a chunk
    ids = [5, 17, 301, 42, 42, 9, 250, 3, 77, 11]
    want = by_hand(model, ids)
    scored = score(model.train(), ids, top=3)
    assert model.training                                               # left as it was
    assert torch.allclose(torch.tensor(scored.token_logprobs), want.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0], atol=1e-5)
    for t, best in enumerate(scored.top):
        values, indices = want[t].topk(3)
        assert [i for i, _ in best] == indices.tolist()
        assert torch.allclose(torch.tensor([v for _, v in best]), values, atol=1e-5)
    monkeypatch.setattr(serve_logprobs, "lm_head", lambda model: None)          # a model whose head r1lab cannot read
    assert torch.allclose(torch.tensor(score(model, ids, 0).token_logprobs), torch.tensor(scored.token_logprobs), atol=1e-5)


def test_openai_logprobs_layout_with_and_without_echo():
    class Letters:                                     # token i decodes to one letter
        def decode(self, ids):
            return "".join(chr(ord("a") + i) for i in ids)
    scored = serve_logprobs.Scored([-1.0, -2.0, -0.5], [[(3, -0.5), (2, -1.0)], [(0, -0.1), (1, -0.2)], [(3, -0.5), (0, -0.9)]])
    ids = [0, 1, 2, 3]                                 # prompt [0, 1], completion [2, 3]
    echoed = openai_logprobs(Letters(), ids, scored, first=0)
    assert echoed == {"tokens": ["a", "b", "c", "d"], "token_logprobs": [None, -1.0, -2.0, -0.5],
                      "top_logprobs": [None, {"d": -0.5, "c": -1.0, "b": -1.0}, {"a": -0.1, "b": -0.2, "c": -2.0},
                                       {"d": -0.5, "a": -0.9}],
                      "text_offset": [0, 1, 2, 3]}
    assert openai_logprobs(Letters(), ids, scored, first=2) == {
        "tokens": ["c", "d"], "token_logprobs": [-2.0, -0.5], "top_logprobs": echoed["top_logprobs"][2:],
        "text_offset": [0, 1]}


def test_logprobs_and_echo_fields_are_checked():
    completion = lambda **fields: parse_completion(json.dumps({"model": "m", "prompt": "1 + 2 =", **fields}).encode(),  # noqa: E731
                                                   "m", LIMITS, 512)
    assert (completion(logprobs=5, echo=True).logprobs, completion(logprobs=5, echo=True).echo) == (5, True)
    assert (completion().logprobs, completion().echo) == (None, False)
    for field, value in [("logprobs", 21), ("logprobs", -1), ("logprobs", True), ("logprobs", "1"), ("echo", "yes")]:
        with pytest.raises(APIError) as error:
            completion(**{field: value})
        assert error.value.status == 400 and error.value.body["error"]["param"] == field


def test_lm_eval_loglikelihood_request_on_tiny_random():
    """lm-evaluation-harness's local-completions, a log-likelihood request: token-id prompts (context +
    continuation), echo, logprobs 1, max_tokens 1, temperature 0; it sums token_logprobs[ctxlen:-1] and
    calls the continuation greedy when each of its tokens holds its position's best log-prob."""
    model, tokenizer = load_model("tiny-random")
    server, url = start_server(HFEngine(model.eval(), tokenizer), tokenizer)
    try:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        context = tokenizer("Question: 1 + 2 = ?\nAnswer:")["input_ids"]
        continuations = [tokenizer(" 3", add_special_tokens=False)["input_ids"],
                         tokenizer(" seven", add_special_tokens=False)["input_ids"]]
        prompts = [context + c for c in continuations]
        reply = client.completions.create(model="tiny-random", prompt=prompts, echo=True, logprobs=1, max_tokens=1,
                                          temperature=0, seed=1234)
        for prompt, choice in zip(prompts, sorted(reply.choices, key=lambda c: c.index)):
            lp = choice.logprobs
            assert len(lp.tokens) == len(lp.token_logprobs) == len(prompt) + 1 and lp.token_logprobs[0] is None
            assert choice.text.startswith(tokenizer.decode(prompt)) and lp.text_offset[0] == 0
            want = by_hand(model, prompt)                      # the prompt's tokens, scored by hand
            got = sum(lp.token_logprobs[len(context):-1])
            assert got == pytest.approx(want.gather(-1, torch.tensor(prompt[1:])[:, None])[len(context) - 1:, 0].sum().item(),
                                        abs=1e-4)
            greedy = all(v == max(top.values()) for v, top in zip(lp.token_logprobs[len(context):-1],
                                                                  lp.top_logprobs[len(context):-1]))
            assert greedy == all(want[t].argmax().item() == prompt[t + 1] for t in range(len(context) - 1, len(prompt) - 1))
            assert lp.top_logprobs[-1][lp.tokens[-1]] == max(lp.top_logprobs[-1].values())   # temperature 0: greedy
        plain = client.completions.create(model="tiny-random", prompt="1 + 2 =", max_tokens=4, logprobs=0, seed=3)
        lp = plain.choices[0].logprobs                       # no echo: the sampled tokens only, each with its own
        assert all(list(top.values()) == [v] for v, top in zip(lp.token_logprobs, lp.top_logprobs))
        assert lp.text_offset[0] == 0 and len(lp.tokens) == plain.usage.completion_tokens
    finally:
        server.should_exit = True
