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
