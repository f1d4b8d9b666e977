"""SharedSoftmax: sampled vs full, unbiasedness of the sampled partition function, the
log-uniform sampler's distribution, and the adaptive softmax as a proper distribution."""
import math

import pytest
import torch

from elmo_dist.model.softmax import SharedSoftmax, log_uniform_log_q

CPU = torch.device("cpu")
EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7: twice float32's unit roundoff u


def nll_atol(h, sm, n_words, nll, log_count=None):
    """How far two float32 computations of the same NLLs (or one and the exact value) may be apart (the
    softmax casts its logits to float32, so there is no float64 path): on each side the dim-term
    logits, less their log counts, are within (dim + 1) u S (S = the largest sum |h_k w_k| + |b| +
    |log count|), which moves the true logit and the log-sum-exp alike, the log-sum-exp's sum of
    n_words exponentials <= 1 is within n_words u relative, which the log makes absolute, and the
    subtraction rounds by u |nll|; twice that between the two."""
    s = float((h.abs() @ sm.weight.detach().abs().t() + sm.bias.detach().abs()).max())
    s += 0.0 if log_count is None else float(log_count.abs().max())
    return EPS32 * (2 * (h.shape[1] + 1) * s + n_words + float(nll.detach().abs().max()))


def make(kind="sampled", v=50, dim=8, n_samples=20, seed=0, scale=1.0, cutoffs=None):
    torch.manual_seed(seed)
    sm = SharedSoftmax(kind, v, dim, n_samples, cutoffs)
    if kind != "adaptive":
        with torch.no_grad():
            sm.weight.mul_(scale)
            sm.bias.copy_(torch.randn(v) * 0.5)
    return sm


def q_exact(k, v):
    return math.log((k + 2) / (k + 1)) / math.log(v + 1)


@pytest.mark.parametrize("n_samples", [50, 51, 500])
def test_sampled_equals_full_when_samples_cover_the_vocab(n_samples):
    sm = make(v=50, n_samples=n_samples)
    h = torch.randn(17, 8)
    t = torch.randint(0, 50, (17,))
    ids, log_count = sm.sample(CPU)
    assert ids.tolist() == list(range(50))
    assert torch.equal(log_count, torch.zeros(50))
    full = sm.full_nll(h, t)
    atol = nll_atol(h, sm, 50, full)
    torch.testing.assert_close(sm.train_nll(h, t, (ids, log_count)), full, rtol=0, atol=atol)
    want = torch.nn.functional.cross_entropy(h @ sm.weight.t() + sm.bias, t, reduction="none")
    torch.testing.assert_close(full, want, rtol=0, atol=atol)


def test_full_kind_trains_on_the_full_softmax():
    sm = make("full")
    h, t = torch.randn(9, 8), torch.randint(0, 50, (9,))
    assert torch.equal(sm.train_nll(h, t), sm.full_nll(h, t))


def test_full_nll_in_blocks_of_rows_and_words_equals_cross_entropy():
    sm = make("full")
    h, t = torch.randn(11, 8), torch.randint(0, 50, (11,))
    t[:3] = torch.tensor([0, 49, 16])  # targets at both ends of the vocabulary and at a block edge
    want = torch.nn.functional.cross_entropy(h @ sm.weight.t() + sm.bias, t, reduction="none")
    for max_elements, block in ((2**22, 16384), (48, 16), (7, 7), (1, 1)):  # one block; 3 rows x 16 words; ...
        got = sm.full_nll(h, t, max_elements=max_elements, vocab_block=block)
        # the blocks' log-sum-exps are folded with logaddexp: a rounding more per block, <= 50 of them
        torch.testing.assert_close(got, want, rtol=0, atol=nll_atol(h, sm, 50 + 50, want),
                                   msg=str((max_elements, block)))
    assert sm.full_nll(h[:0], t[:0]).shape == (0,)


def test_full_nll_memory_does_not_grow_with_the_vocabulary():
    """1,280 rows (64 lanes x 20 steps) over 400k words: 2 GB of float32 logits in one piece."""
    code = """
import resource, torch
from elmo_dist.model.softmax import SharedSoftmax
torch.manual_seed(0)
sm = SharedSoftmax("full", 400_000, 16).requires_grad_(False)
h, t = torch.randn(1280, 16), torch.randint(0, 400_000, (1280,))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
nll = sm.full_nll(h, t)
assert torch.isfinite(nll).all()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    import subprocess
    import sys

    grown = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert grown < 200, f"full_nll grew the peak resident memory by {grown} MiB"


def test_sampled_loss_by_hand_with_accidental_hits_removed():
    sm = make(v=50, n_samples=6)
    h = torch.randn(2, 8)
    t = torch.tensor([3, 7])
    ids = torch.tensor([0, 3, 3, 12, 7, 40])
    log_count = torch.tensor([0.1, -0.2, -0.2, 0.3, 0.0, 1.5])
    logits = h @ sm.weight.t() + sm.bias
    got = sm.train_nll(h, t, (ids, log_count))
    for r in range(2):
        neg = [logits[r, k] - lc for k, lc in zip(ids.tolist(), log_count) if k != t[r].item()]
        assert len(neg) == (4 if r == 0 else 5)
        want = torch.logsumexp(torch.stack([logits[r, t[r]]] + neg), 0) - logits[r, t[r]]
        torch.testing.assert_close(got[r], want, rtol=0, atol=nll_atol(h, sm, 6, got, log_count))


def test_log_count_is_log_n_samples_times_q():
    sm = make(v=1000, n_samples=64)
    torch.manual_seed(1)
    ids, log_count = sm.sample(CPU)
    assert ids.shape == log_count.shape == (64,)
    assert ids.dtype == torch.int64
    want = torch.tensor([math.log(64 * q_exact(k, 1000)) for k in ids.tolist()], dtype=torch.float64)
    # log q is computed in float64 and rounded to float32 once (u |log q|), log 64 added in float32
    # (u |log count|): within EPS32 x (|log q| + |log count|), about 2e-6
    log_q = log_uniform_log_q(ids, 1000)
    assert (log_count.double() - want).abs().le(EPS32 * (log_q.abs() + log_count.abs()).double()).all()
    # exp turns log q's rounding (u |log q|) into a relative error of q
    got = log_uniform_log_q(torch.tensor([0, 1, 998, 999]), 1000).double()
    exact = torch.tensor([q_exact(k, 1000) for k in (0, 1, 998, 999)], dtype=torch.float64)
    torch.testing.assert_close(got.exp(), exact, rtol=EPS32 * float(got.abs().max()), atol=0)


def test_q_sums_to_one():
    for v in (10, 1000, 793471):
        log_q = log_uniform_log_q(torch.arange(v), v)
        q = log_q.double().exp()
        # the telescoping sum is exactly 1; each q carries log q's float32 rounding, a relative u |log q|
        assert abs(q.sum().item() - 1) < EPS32 * float(log_q.abs().max())


def test_log_uniform_sampler_frequencies():
    v, s, calls = 1000, 500, 200
    sm = make(v=v, n_samples=s)
    torch.manual_seed(123)
    ids = torch.cat([sm.sample(CPU)[0] for _ in range(calls)])
    n = ids.numel()
    assert ids.min() >= 0 and ids.max() <= v - 1
    counts = torch.bincount(ids, minlength=v).double()
    # bins: ids 0..19 one each, then [20, 100), [100, 500), [500, 1000)
    edges = list(range(21)) + [100, 500, v]
    obs, exp = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        obs.append(counts[lo:hi].sum().item())
        exp.append(n * sum(q_exact(k, v) for k in range(lo, hi)))
    chi2 = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    assert chi2 < 60  # 22 degrees of freedom: p < 1e-5 beyond 60
    for k in range(5):
        assert abs(counts[k].item() / n - q_exact(k, v)) / q_exact(k, v) < 0.05
    # a wrong sampler (uniform) fails the same test by a mile
    uni = torch.bincount(torch.randint(0, v, (n,)), minlength=v).double()
    chi2_uni = sum((uni[lo:hi].sum().item() - e) ** 2 / e for (lo, hi), e in zip(zip(edges[:-1], edges[1:]), exp))
    assert chi2_uni > 1000


def partition_estimates(sm, h, t, draws):
    """Per draw: exp(true logit) + sum_k exp(logit_k - log(n q_k)) over negatives k != target."""
    logits = (h @ sm.weight.t() + sm.bias).double()
    true = logits.gather(1, t[:, None]).squeeze(1)
    out = []
    for _ in range(draws):
        ids, log_count = sm.sample(CPU)
        neg = logits[:, ids] - log_count.double()
        neg = neg.masked_fill(ids[None, :] == t[:, None], float("-inf"))
        z_hat = true.exp() + neg.exp().sum(1)
        # train_nll is log(z_hat) - true logit, for the very same negatives
        if len(out) < 20:  # float32 against float64, over the true word and n_samples negatives
            got = sm.train_nll(h, t, (ids, log_count))
            torch.testing.assert_close(got.double(), z_hat.log() - true, rtol=0,
                                       atol=nll_atol(h, sm, 1 + len(ids), got, log_count))
        out.append(z_hat)
    return torch.stack(out), logits.exp().sum(1)


def test_sampled_partition_function_is_unbiased():
    # 40 negatives from 50 words: a real sample (with repeats and misses), std ~0.3 Z per draw,
    # so the mean of 2000 draws is within ~1% of Z; 3% is a > 4 sigma bound
    sm = make(v=50, dim=8, n_samples=40)
    g = torch.Generator().manual_seed(7)
    h = torch.randn(4, 8, generator=g)
    t = torch.tensor([0, 5, 23, 49])  # frequent, middle and rarest targets
    torch.manual_seed(2024)
    with torch.no_grad():
        z_hat, z = partition_estimates(sm, h, t, 2000)
    rel = (z_hat.mean(0) / z - 1).abs()
    assert (rel < 0.03).all(), rel
    # the estimate really varies from draw to draw (it is a sample, not the exact sum)
    assert (z_hat.std(0) / z > 0.02).all()


def test_uncorrected_estimate_is_biased():
    """Without the -log(n q) correction the same average is far off (the test above can fail)."""
    sm = make(v=50, dim=8, n_samples=20)
    h = torch.randn(4, 8, generator=torch.Generator().manual_seed(7))
    t = torch.tensor([0, 5, 23, 49])
    logits = (h @ sm.weight.t() + sm.bias).double()
    z = logits.exp().sum(1)
    true = logits.gather(1, t[:, None]).squeeze(1)
    torch.manual_seed(2024)
    no_corr = torch.zeros(4, dtype=torch.float64)
    for _ in range(300):
        ids, _ = sm.sample(CPU)
        no_corr += true.exp() + logits[:, ids].exp().masked_fill(ids[None] == t[:, None], 0).sum(1)
    assert ((no_corr / 300 / z - 1).abs() > 0.1).all()


@pytest.mark.parametrize("v, cutoffs", [(50, [10, 30]), (50, [2000, 10000]), (120, [20, 60, 100])])
def test_adaptive_log_prob_is_a_distribution(v, cutoffs):
    # in float64 (the adaptive softmax keeps its input's dtype): 1.1e-16 x ~V + 2 x 64 terms is ~1e-13;
    # 1e-10 fails on a float32 rounding (~1e-7) or any missing term
    sm = make("adaptive", v=v, dim=64, cutoffs=cutoffs).double()
    h = torch.randn(13, 64, dtype=torch.float64)
    logp = sm.adaptive.log_prob(h)
    assert logp.shape == (13, v) and logp.dtype == torch.float64
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(13, dtype=torch.float64), rtol=0, atol=1e-10)
    t = torch.randint(0, v, (13,))
    nll = sm.full_nll(h, t)
    torch.testing.assert_close(nll, -logp[torch.arange(13), t], rtol=0, atol=1e-10)
    assert (nll > 0).all()
    # training on the adaptive softmax is exact: the same NLL
    torch.testing.assert_close(sm.train_nll(h, t), nll, rtol=0, atol=1e-10)


def test_adaptive_cutoffs_beyond_the_vocab_fall_back_to_half():
    sm = make("adaptive", v=50, dim=32, cutoffs=[2000, 10000])
    assert sm.adaptive.cutoffs == [25, 50]
    sm = make("adaptive", v=50, dim=32, cutoffs=[10, 49, 60])
    assert sm.adaptive.cutoffs == [10, 50]
