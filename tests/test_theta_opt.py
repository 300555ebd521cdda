"""The architecture side of the search: the commitment floor under P_theta and depth sampling."""

from __future__ import annotations


import math

import pytest
import torch

from fbnet_fast.budget import Commitment
from fbnet_fast.errors import ConfigError


def test_the_ceiling_falls_linearly_from_the_uniform_to_the_end():
    k = 8
    c = Commitment(0.2)
    assert [c.ceiling(s) for s in (-1, 0, 0.5, 1, 2)] == pytest.approx([1.0, 1.0, 0.6, 0.2, 0.2])
    h = Commitment.entropies(torch.stack([torch.full((k,), 1.0 / k), torch.eye(k)[0],
                                          torch.tensor([0.5, 0.5] + [0.0] * (k - 2))]).double())
    assert h.tolist() == pytest.approx([1.0, 0.0, math.log(2) / math.log(k)], abs=1e-12)
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ConfigError, match="--commit must be in"):
            Commitment(bad)
    # with `by`, the ceiling reaches the end at that share of the steps and holds there
    c = Commitment(0.2, by=0.5)
    assert [c.ceiling(s) for s in (0, 0.25, 0.5, 0.75, 1)] == pytest.approx([1.0, 0.6, 0.2, 0.2, 0.2])
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="--commit-by must be in"):
            Commitment(0.2, by=bad)


def test_only_the_layers_over_the_ceiling_count_and_pull():
    c = Commitment(0.1, dual_lr=1.0)
    p = torch.stack([torch.full((4,), 0.25), torch.tensor([0.97, 0.01, 0.01, 0.01])]).requires_grad_(True)
    # at half-way the ceiling is 0.55: the uniform layer is 0.45 over it, the committed one under
    g = c.gap(p, 0.5).detach()
    assert float(g) == pytest.approx(0.45 / 2)
    c.dual_step(float(g))
    assert c.mu == pytest.approx(0.225)
    c.term(p, 0.5).backward()
    assert torch.all(p.grad[1] == 0) and torch.any(p.grad[0] != 0)
    c.dual_step(-5.0)
    assert c.mu == 0.0  # never negative: a met ceiling exerts no pull
    assert float(Commitment(0.1).term(torch.full((2, 4), 0.25), 0.0)) == 0.0  # the start allows the uniform


def test_the_ceiling_commits_every_layer_of_a_distribution_the_objective_keeps_mixed():
    """A stand-in objective that *wants* a mixture (its optimum is P = 0.6/0.4 on two blocks of every
    layer, entropy 0.31 of log 9): alone, P stays mixed; with the ceiling every layer's entropy follows
    it down (within 0.06) and ends within 0.03 of ``end``, by the last step."""
    torch.manual_seed(0)
    L, K, N = 6, 9, 300
    pair = torch.stack([torch.randperm(K)[:2] for _ in range(L)])
    rows = torch.arange(L)

    def objective(p):  # its pull at 1/10 of its squared distance: the ceiling's defaults are weak on purpose
        return 0.1 * ((p[rows, pair[:, 0]] - 0.6) ** 2 + (p[rows, pair[:, 1]] - 0.4) ** 2).sum()

    ends = {}
    for use in (False, True):
        c = Commitment(0.05) if use else None
        theta = (0.01 * torch.randn(L, K)).requires_grad_(True)
        opt = torch.optim.Adam([theta], lr=0.05)
        seen = []
        for i in range(N):
            p = torch.softmax(theta, 1)
            loss = objective(p) + (c.term(p, (i + 1) / N) if c else 0.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                p = torch.softmax(theta, 1)
                if c:
                    c.dual_step(float(c.gap(p, (i + 1) / N)))
                seen.append(float(Commitment.entropies(p).max()))
        ends[use] = seen[-1]
        if use:  # it follows the falling ceiling all along, not only at the end
            assert all(h <= c.ceiling((i + 1) / N) + 0.06 for i, h in enumerate(seen)), seen[::30]
    assert ends[False] >= 0.3, ends
    assert ends[True] <= 0.05 + 0.03, ends


def test_the_search_records_the_ceiling_and_ends_on_it(tmp_path, tiny_space, tiny_lut):
    """metrics.jsonl states every epoch how committed P_theta is and what the ceiling allowed; the last
    soft epoch's ceiling is ``commit`` itself. Without ``commit`` no ceiling is recorded."""
    import json

    from fbnet_fast.data import build_datasets
    from fbnet_fast.search import SearchConfig, run_search

    data = build_datasets("synthetic", image_size=16, seed=0, num_train=200, num_val=32)
    for commit in (0.4, None):
        out = tmp_path / str(commit)
        cfg = SearchConfig(epochs=3, warmup_epochs=1, batch_size=20, progress=False, plots=False, kernel="reference",
                           commit=commit, target_fraction=0.8)
        run_search(cfg, out, space=tiny_space, lut=tiny_lut, data=data, log=lambda m: None)
        hist = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
        assert all(0.0 <= h["entropy_mean"] <= h["entropy_max"] <= 1.0 + 1e-6 for h in hist)
        assert hist[0]["entropy_max"] == pytest.approx(1.0)  # the warm-up leaves theta uniform
        if commit is None:
            assert "entropy_ceiling" not in hist[-1]
        else:
            assert [h["entropy_ceiling"] for h in hist] == pytest.approx([1.0, 0.7, 0.4])
            assert hist[-1]["commit_mu"] >= 0.0


def test_layers_are_decided_on_schedule_most_certain_first_and_then_train_alone(tmp_path, tiny_space, tiny_lut):
    """--decide-by: after every theta step ceil(L * s / by) layers are fixed (s: share of the theta steps
    done; the undecided layers with the lowest entropy of P_theta first, each to its most likely block;
    the last ones with the repair that lands the net in the budget); a decided layer's weights are exactly
    one-hot in every later step and its P_theta one-hot; once all are decided the epochs have no theta
    steps; the returned architecture is the decisions; an interrupted run resumes with them bit-identically."""
    import json

    from fbnet_fast.data import build_datasets
    from fbnet_fast.search import SearchConfig, Searcher

    data = build_datasets("synthetic", image_size=16, seed=0, num_train=200, num_val=32)
    L = tiny_space.num_layers
    cfg = SearchConfig(epochs=5, warmup_epochs=1, batch_size=20, progress=False, plots=False, kernel="reference",
                       decide_by=0.75, target_fraction=0.8)
    s = Searcher(cfg, tmp_path / "a", space=tiny_space, lut=tiny_lut, data=data, log=lambda m: None)
    seen_weights, calls = [], []
    fix, decide = s._fix, s._decide

    def spy_fix(w):
        out = fix(w)
        seen_weights.append((list(s.decided), out.detach().clone()))
        return out

    def spy_decide(progress):
        before = list(s.decided)
        ent = Commitment.entropies(s.model.probabilities().double())
        decide(progress)
        calls.append((progress, before, list(s.decided), ent))

    s._fix, s._decide = spy_fix, spy_decide
    s._run_epoch()  # warm-up: nothing decided, no theta steps
    assert s.decided == [-1] * L and not calls
    for _ in range(3):
        s._run_epoch()
    assert all(k >= 0 for k in s.decided) and s._phases() == ["w"]
    for i, (progress, before, after, ent) in enumerate(calls):
        assert sum(k >= 0 for k in after) == min(L, math.ceil(L * progress / 0.75 - 1e-9)), (progress, after)
        new = [l for l in range(L) if before[l] < 0 <= after[l]]
        und = [l for l in range(L) if after[l] < 0]
        if new and und:  # the new ones were the most certain of those left
            assert max(float(ent[l]) for l in new) <= min(float(ent[l]) for l in und) + 1e-12
        if any(k < 0 for k in after):  # decisions stay (the last step may change any layer for the budget)
            assert all(before[l] < 0 or after[l] == before[l] for l in range(L))
    assert len({p for p, *_ in calls}) > 3  # decided step by step, not per epoch
    for decided, w in seen_weights:
        for l, k in enumerate(decided):
            if k >= 0:
                assert w[l].tolist() == [1.0 if j == k else 0.0 for j in range(w.shape[1])]
    assert float(s.model.probabilities().max(1).values.min()) > 1 - 1e-6
    s._run_epoch()  # the last epoch: weights only
    hist = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [h["decided"] for h in hist] == [0, math.ceil(L / 3 - 1e-9), math.ceil(2 * L / 3 - 1e-9), L, L]
    assert hist[-1]["theta_loss"] is None
    assert list(s.model.most_likely().indices(tiny_space)) == s.decided
    lo, hi = s.budget.window  # the last decisions landed the net in the budget
    assert lo - 1e-9 <= s.lut.architecture_latency(s.model.most_likely().blocks) <= hi + 1e-9

    # killed after the second soft epoch, resumed: the same decisions and weights at the end
    r = Searcher(cfg, tmp_path / "b", space=tiny_space, lut=tiny_lut, data=data, log=lambda m: None)
    for _ in range(3):
        r._run_epoch()
    again = Searcher(cfg, tmp_path / "b", space=tiny_space, lut=tiny_lut, data=data, log=lambda m: None)
    assert again.resume() is not None and again.decided == r.decided
    again.run()
    assert again.decided == s.decided
    for k, v in s.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
