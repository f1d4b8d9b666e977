"""LinearChainCRF: exact nll and Viterbi against brute-force enumeration, gradients, padding
invariance, and a small learning task where the transitions carry the signal."""
import itertools

import pytest
import torch
from torch import nn

from elmo_dist.model.crf import LinearChainCRF

K = 3
LENGTHS = [5, 3, 1, 4]  # different lengths in one batch, including a single token


def make(seed=0, dtype=torch.float64, lengths=LENGTHS):
    """A CRF with random (not small) parameters, emissions, gold tags (-100 at padding) and the mask."""
    g = torch.Generator().manual_seed(seed)
    crf = LinearChainCRF(K).to(dtype)
    with torch.no_grad():
        for p in crf.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype))
    steps = max(lengths)
    emissions = torch.randn(len(lengths), steps, K, generator=g, dtype=dtype)
    mask = torch.arange(steps) < torch.tensor(lengths).unsqueeze(1)
    tags = torch.randint(0, K, (len(lengths), steps), generator=g).masked_fill(~mask, -100)
    return crf, emissions, tags, mask


def path_score(crf, em, path):
    """The unnormalised score of one tag sequence over one sequence's emissions [L, K]."""
    s = crf.start[path[0]] + crf.end[path[-1]] + sum(em[t, y] for t, y in enumerate(path))
    return s + sum(crf.transitions[a, b] for a, b in zip(path[:-1], path[1:]))


def brute_force(crf, emissions, tags, mask):
    """(nll, best path) per sequence by enumerating all K^L tag sequences of each one's length L."""
    out = []
    for b in range(emissions.shape[0]):
        n = int(mask[b].sum())
        paths = list(itertools.product(range(K), repeat=n))
        scores = torch.stack([path_score(crf, emissions[b], p) for p in paths])
        nll = torch.logsumexp(scores, 0) - path_score(crf, emissions[b], tags[b, :n].tolist())
        out.append((nll.item(), list(paths[int(scores.argmax())])))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_nll_and_decode_match_brute_force(seed):
    crf, emissions, tags, mask = make(seed)
    with torch.no_grad():
        nll = crf.nll(emissions, tags, mask)
        paths = crf.decode(emissions, mask)
        want = brute_force(crf, emissions, tags, mask)
    assert nll.shape == (len(LENGTHS),)
    for b, (want_nll, want_path) in enumerate(want):
        assert abs(nll[b].item() - want_nll) < 1e-10, (b, nll[b].item(), want_nll)
        assert paths[b] == want_path
        assert len(paths[b]) == LENGTHS[b]


def test_gradcheck_wrt_emissions_and_parameters():
    crf, emissions, tags, mask = make(1)
    names = ["transitions", "start", "end"]

    def f(em, *params):
        return torch.func.functional_call(crf, dict(zip(names, params)), (em, tags, mask))

    inputs = [emissions.requires_grad_()] + [getattr(crf, n).detach().clone().requires_grad_() for n in names]
    assert torch.autograd.gradcheck(f, inputs)


def test_padding_changes_nothing():
    crf, emissions, tags, mask = make(2)
    extra = 4
    more_mask = torch.cat([mask, torch.zeros(len(LENGTHS), extra, dtype=torch.bool)], 1)
    more_em = torch.cat([emissions, torch.zeros(len(LENGTHS), extra, K, dtype=emissions.dtype)], 1)
    more_em = torch.where(more_mask.unsqueeze(2), more_em, 50.0)  # big garbage scores at padding
    more_tags = torch.cat([tags, tags.new_zeros(len(LENGTHS), extra)], 1).masked_fill(~more_mask, 7)  # bad index
    with torch.no_grad():
        assert torch.allclose(crf.nll(emissions, tags, mask), crf.nll(more_em, more_tags, more_mask),
                              rtol=0, atol=1e-12)
        assert crf.decode(emissions, mask) == crf.decode(more_em, more_mask)


def test_float32_agrees_with_float64():
    crf, emissions, tags, mask = make(3)
    crf32 = LinearChainCRF(K)
    crf32.load_state_dict({k: v.float() for k, v in crf.state_dict().items()})
    with torch.no_grad():
        nll32 = crf32.nll(emissions.float(), tags, mask)
        assert nll32.dtype == torch.float32
        assert torch.allclose(nll32.double(), crf.nll(emissions, tags, mask), rtol=1e-5, atol=1e-5)
        assert crf32.decode(emissions.float(), mask) == crf.decode(emissions, mask)


def test_rejects_masks_that_are_not_left_aligned():
    crf, emissions, tags, mask = make(4)
    bad = mask.clone()
    bad[0, 0] = False
    with pytest.raises(ValueError, match="left-aligned"):
        crf.nll(emissions, tags, bad)
    bad = mask.clone()
    bad[1, 4] = True  # a gap after the end of a length-3 sequence
    with pytest.raises(ValueError, match="left-aligned"):
        crf.decode(emissions, bad)


def markov_task(n, steps, g):
    """Tags follow y_t = y_{t-1} + 1 (mod K) with prob 0.9; the input shows y_t one-hot only half the
    time and a 'blank' symbol otherwise, so per-token scores alone are at chance on blanks."""
    tags = torch.empty(n, steps, dtype=torch.long)
    tags[:, 0] = torch.randint(0, K, (n,), generator=g)
    for t in range(1, steps):
        follow = torch.rand(n, generator=g) < 0.9
        tags[:, t] = torch.where(follow, (tags[:, t - 1] + 1) % K, torch.randint(0, K, (n,), generator=g))
    symbols = torch.where(torch.rand(n, steps, generator=g) < 0.5, tags, K)
    return nn.functional.one_hot(symbols, K + 1).float(), tags


def test_learns_transitions_beyond_per_token_scores():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, tags = markov_task(128, 8, g)
    x_test, tags_test = markov_task(512, 8, g)
    mask = torch.ones(tags.shape, dtype=torch.bool)
    mask_test = torch.ones(tags_test.shape, dtype=torch.bool)

    emit, crf = nn.Linear(K + 1, K), LinearChainCRF(K)
    softmax_emit = nn.Linear(K + 1, K)  # baseline: the same emissions trained token by token
    opt = torch.optim.Adam([*emit.parameters(), *crf.parameters(), *softmax_emit.parameters()], lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        loss = crf.nll(emit(x), tags, mask).mean()
        ce = nn.functional.cross_entropy(softmax_emit(x).flatten(0, 1), tags.flatten(), reduction="sum")
        (loss + ce / len(tags)).backward()
        opt.step()

    with torch.no_grad():
        em = emit(x_test)
        crf_nll = crf.nll(em, tags_test, mask_test).mean().item()
        token_nll = nn.functional.cross_entropy(softmax_emit(x_test).flatten(0, 1), tags_test.flatten(),
                                                reduction="sum").item() / len(tags_test)
        viterbi = (torch.tensor(crf.decode(em, mask_test)) == tags_test).float().mean().item()
        argmax = (em.argmax(2) == tags_test).float().mean().item()
        softmax_argmax = (softmax_emit(x_test).argmax(2) == tags_test).float().mean().item()
    # per-token best is about 0.5 + 0.5 / 3 = 0.67; following the chain through blanks does much better
    assert crf_nll < token_nll - 1.0, (crf_nll, token_nll)
    assert viterbi > max(argmax, softmax_argmax) + 0.15, (viterbi, argmax, softmax_argmax)
