"""DPO: the loss against its formula, the reply-only sequence log-prob, one step's effect, the pairs, the stage."""
import math

import pytest
import torch
import torch.nn.functional as F

from nanosdm import dpo
from nanosdm.dualstream import DualStream, load_model

K, CARD, VOCAB = 2, 16, 40
S = 1 + 2 * K


def tiny():
    torch.manual_seed(0)
    return DualStream(VOCAB, CARD, K, n_layer=2, n_head=2, d_model=32, context=32,
                      depth_layers=1, depth_heads=2, depth_d_model=16).eval()


def random_tokens(B, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randint(VOCAB, (B, T, 1), generator=g), torch.randint(CARD, (B, T, 2 * K), generator=g)], 2)


def window(B, T, start, end):
    reply = torch.zeros(B, T, dtype=torch.bool)
    reply[:, start:end] = True
    return reply


# -----------------------------------------------------------------------------
# the loss

def test_loss_is_ln2_with_accuracy_half_when_policy_is_reference():
    lp = torch.randn(2, 50) * 30 - 200
    loss, stats = dpo.dpo_loss(lp[0], lp[1], lp[0].clone(), lp[1].clone(), beta=0.1)
    assert abs(loss.item() - math.log(2)) < 1e-6
    assert stats["acc"] == 0.5 and stats["margin"] == 0 and stats["chosen"] == 0 and stats["rejected"] == 0


def test_dpo_loss_equals_the_formula_on_random_values():
    g = torch.Generator().manual_seed(3)
    pc, pr, rc, rr = (torch.randn(64, generator=g) * 5 - 100 for _ in range(4))
    beta = 0.3
    loss, stats = dpo.dpo_loss(pc, pr, rc, rr, beta)
    z = beta * ((pc - rc) - (pr - rr))
    direct = torch.mean(-torch.log(1 / (1 + torch.exp(-z))))
    assert torch.allclose(loss, direct, atol=1e-5)
    assert abs(stats["chosen"] - (beta * (pc - rc)).mean().item()) < 1e-5
    assert abs(stats["rejected"] - (beta * (pr - rr)).mean().item()) < 1e-5
    assert abs(stats["margin"] - z.mean().item()) < 1e-5
    assert abs(stats["acc"] - (z > 0).float().mean().item()) < 1e-6
    # a very confident pair gives no overflow
    big, _ = dpo.dpo_loss(torch.tensor([0.0]), torch.tensor([-1e5]), torch.tensor([0.0]), torch.tensor([0.0]), 1.0)
    assert big.item() == 0 and torch.isfinite(big)


# -----------------------------------------------------------------------------
# log pi(y | x) of the reply window

def test_sequence_logprob_counts_reply_tokens_only():
    m = tiny()
    B, T, start, end = 2, 12, 5, 9
    x, reply = random_tokens(B, T), window(B, T, start, end)
    base = dpo.sequence_logprob(m, x, reply)
    # a prompt token's *target* changed (its inputs kept): nothing changes
    inputs, targets = m.inputs_targets(x)
    mask = dpo.reply_token_mask(m, reply)
    t2 = targets.clone()
    t2[:, :start, :1 + K] = (t2[:, :start, :1 + K] + 1) % CARD
    a = (dpo.token_logprobs(m, inputs, targets) * mask).sum((1, 2))
    b = (dpo.token_logprobs(m, inputs, t2) * mask).sum((1, 2))
    assert torch.allclose(a, base) and torch.allclose(a, b)
    # padding after the window (beyond the last delayed code of the reply): nothing changes
    y = x.clone()
    y[:, end + 1:] = random_tokens(B, T - end - 1, seed=5)
    assert torch.allclose(dpo.sequence_logprob(m, y, reply), base)
    # the user's stream inside the window is heard, never counted as the reply's tokens
    assert mask.shape == (B, T, 1 + K) and mask[:, :, :].sum() == B * (end - start) * (1 + K)
    # a reply token changed: the log-prob changes (so the checks above can fail)
    z = x.clone()
    z[0, start + 1, 0] = (z[0, start + 1, 0] + 1) % VOCAB
    changed = dpo.sequence_logprob(m, z, reply)
    assert not torch.allclose(changed[0], base[0]) and torch.allclose(changed[1], base[1])
    # the delayed codebooks of the window's last frame are targets one step later: counted
    assert mask[0, end, 2] and not mask[0, end, 1] and not mask[0, start, 2] and mask[0, start, 1]
    # the whole sequence as the reply: the text part is minus the text cross-entropy, summed
    full = window(B, T, 0, T)
    logits, _ = m(inputs)
    text_nll = F.cross_entropy(logits.flatten(0, 1), targets[..., 0].flatten(), reduction="none").view(B, T).sum(1)
    lp = dpo.token_logprobs(m, inputs, targets)
    assert torch.allclose(lp[..., 0].sum(1), -text_nll, atol=1e-4)
    assert (lp[:, 0, 2:] == 0).all()          # INIT targets of the delayed codebooks: nothing predicted
    assert torch.allclose(dpo.sequence_logprob(m, x, full), lp.sum((1, 2)))


def test_one_gradient_step_raises_the_chosen_reply_against_the_rejected():
    m = tiny().train()
    T, start = 14, 6
    prompt = random_tokens(1, T, seed=1)
    chosen, rejected = prompt.clone(), prompt.clone()
    chosen[:, start:, :1 + K] = random_tokens(1, T - start, seed=2)[..., :1 + K]
    rejected[:, start:, :1 + K] = random_tokens(1, T - start, seed=3)[..., :1 + K]
    reply = window(1, T, start, T - 1)
    with torch.no_grad():
        rc, rr = dpo.sequence_logprob(m, chosen, reply), dpo.sequence_logprob(m, rejected, reply)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    pc, pr = dpo.sequence_logprob(m, torch.cat([chosen, rejected]), torch.cat([reply, reply]))
    loss, stats = dpo.dpo_loss(pc[None], pr[None], rc, rr, beta=0.1)
    assert abs(loss.item() - math.log(2)) < 1e-5 and stats["acc"] == 0.5
    loss.backward()
    opt.step()
    with torch.no_grad():
        pc2, pr2 = dpo.sequence_logprob(m, chosen, reply), dpo.sequence_logprob(m, rejected, reply)
    assert (pc2 - pr2).item() > (rc - rr).item() + 0.1
    assert dpo.dpo_loss(pc2, pr2, rc, rr, 0.1)[0].item() < math.log(2)


# -----------------------------------------------------------------------------
# the pairs

def verdict(judge_ok=False, text_ok=False, score=-3.0, said=""):
    return dict(judge_ok=judge_ok, text_ok=text_ok, score=score, said=said)


def test_pair_up_prefers_right_and_intelligible_over_wrong_unintelligible_silent():
    vs = [verdict(text_ok=True, score=-2.5), verdict(score=-3.0), verdict(judge_ok=True, text_ok=True, score=-1.5),
          verdict(score=dpo.SILENT_SCORE)]
    assert dpo.pair_up(vs, max_pairs=2) == [(2, 3), (0, 1)]        # heard right vs silence; text right vs wrong
    assert dpo.pair_up(vs, max_pairs=1) == [(2, 3)]
    # the same verdicts: only a score difference of at least min_margin makes a pair
    same = [verdict(text_ok=True, score=-2.50), verdict(text_ok=True, score=-2.45), verdict(text_ok=True, score=-2.9)]
    assert dpo.pair_up(same, min_margin=0.1) == [(1, 2)]
    assert dpo.pair_up(same, min_margin=0.5) == []
    # a better verdict wins over a better score (text right but mumbled beats wrong but clear)
    assert dpo.pair_up([verdict(score=-1.0), verdict(text_ok=True, score=-4.0)]) == [(1, 0)]
    assert dpo.pair_up([verdict()] * 4) == []                     # all alike: no preference
    assert dpo.pair_up([verdict(text_ok=True)]) == []


def test_collect_pairs_with_a_hand_made_judge():
    Q, H, F_, n = 3, 4, 6, 4
    history = random_tokens(Q, H, seed=7)
    user = random_tokens(Q, F_, seed=8)[..., 1 + K:]
    windows = [5, 3, 6]

    def sample(h, u):
        # reply r of each question writes token r everywhere (so the judge can tell them apart)
        N = h.shape[0]
        r = torch.arange(N) % n
        return r[:, None].expand(N, F_).clone(), (r[:, None, None] + 1).expand(N, F_, K).clone()

    def judge(text, codes, rows):
        # question 0: reply 2 right and clear, reply 0 silent; question 1: all alike; 2: text only
        out = []
        for t, q in zip(text[:, 0].tolist(), rows.tolist()):
            if q == 0:
                out.append(verdict(judge_ok=t == 2, text_ok=t == 2, score={2: -1.0, 0: dpo.SILENT_SCORE}.get(t, -3.0)))
            elif q == 1:
                out.append(verdict())
            else:
                out.append(verdict(text_ok=t in (1, 3), score=-3.0 + 0.01 * t))
        return out

    pairs, records = dpo.collect_pairs(history, user, windows, sample, judge, n, min_margin=0.1, max_pairs=2)
    c, r, reply = pairs["chosen"], pairs["rejected"], pairs["reply"]
    assert c.dtype == torch.int16 and c.shape == (3, H + F_ + 1, S)
    # question 0: (2 vs 0) only (1 and 3 are alike); question 1: none; question 2: text right and
    # the better scored (3) vs text wrong and the worse scored (0), then 1 vs 2
    assert [rec["pairs"] for rec in records] == [[(2, 0)], [], [(3, 0), (1, 2)]]
    assert c[:, H, 0].tolist() == [2, 3, 1] and r[:, H, 0].tolist() == [0, 0, 2]
    # the prompt is the question's history and the user's audio, the same for both replies
    assert torch.equal(c[0, :H].long(), history[0]) and torch.equal(r[0, H:H + F_, 1 + K:].long(), user[0])
    assert torch.equal(c[1, :H].long(), history[2])
    # the reply window: the question's frames after the history, no more
    assert reply[0].nonzero()[:, 0].tolist() == list(range(H, H + 5))
    assert reply[1].sum() == 6
    assert len(records[0]["replies"]) == n
    # a shorter prompt keeps the history's last frames; none at all is allowed too (a long question)
    for keep in (2, 0):
        short, _ = dpo.collect_pairs(history, user, windows, sample, judge, n, min_margin=0.1, max_pairs=2, keep_history=keep)
        assert short["chosen"].shape == (3, keep + F_ + 1, S)
        assert torch.equal(short["chosen"][0, :keep].long(), history[0, H - keep:])
        assert short["reply"][0].nonzero()[:, 0].tolist() == list(range(keep, keep + 5))
    # the model's context caps the history too (a pair is scored in one pass); too short a context is
    # refused before any reply is sampled
    fit, _ = dpo.collect_pairs(history, user, windows, sample, judge, n, keep_history=100, context=F_ + 1 + 3)
    assert fit["chosen"].shape == (3, 3 + F_ + 1, S)
    never = lambda h, u: pytest.fail("sampled although the question cannot fit")
    with pytest.raises(ValueError, match="exceed the model's context"):
        dpo.collect_pairs(history, user, windows, never, judge, n, context=F_)


# -----------------------------------------------------------------------------
# the stage on a tiny fake run

def test_stage_trains_resumes_after_a_kill_and_plots(tmp_path):
    import os
    import shutil
    from test_dualtrain import make_tiny_run
    from nanosdm import dualtrain, utils
    cfg = make_tiny_run(tmp_path / "run")
    cfg.update(sft_max_steps=2, sft_batch_size=2, sft_ckpt_interval=2, sft_warmup=1, align_max_steps=2,
               dpo_max_steps=5, dpo_batch_size=2, dpo_ckpt_interval=2, dpo_warmup=1, dpo_lr=1e-3)
    dualtrain.train(cfg, "align")
    dualtrain.train(cfg, "sft")
    from nanosdm.corpus.speech import Streams
    st = Streams(os.path.join(cfg["out_dir"], "speech"), "train")
    x = torch.from_numpy(st.window(0, 20))[None].repeat(3, 1, 1)
    chosen, rejected = x.clone(), x.clone()
    rejected[:, 10:, 1:1 + 2] = (rejected[:, 10:, 1:1 + 2] + 5) % 16
    pairs = dict(chosen=chosen.to(torch.int16), rejected=rejected.to(torch.int16), reply=window(3, 20, 10, 18))
    straight = dict(cfg, out_dir=str(tmp_path / "straight"))
    rpo = dict(cfg, out_dir=str(tmp_path / "rpo"), dpo_nll=5.0)
    shutil.copytree(cfg["out_dir"], straight["out_dir"])
    shutil.copytree(cfg["out_dir"], rpo["out_dir"])
    metrics = dpo.train(straight, pairs)
    # the NLL term (RPO) keeps the chosen replies likelier than DPO alone leaves them
    dpo.train(rpo, pairs)
    chosen_lp = lambda c: dpo.batched_logprob(load_model(os.path.join(c["out_dir"], "dpo.pt")), chosen, pairs["reply"]).mean()
    assert chosen_lp(rpo) > chosen_lp(straight) + 1.0
    assert metrics["dpo_pairs"] == 3 and abs(metrics["dpo_loss_start"] - math.log(2)) < 1e-4
    assert metrics["dpo_reward_acc"] > 0.5 and metrics["dpo_margin"] > 0
    assert os.path.exists(os.path.join(straight["out_dir"], "plots", "dpo_rewards.png"))
    assert dpo.train(cfg, pairs, stop_step=3) == {}              # killed after step 3: last checkpoint at 2
    path = os.path.join(cfg["out_dir"], "dpo.pt")
    assert utils.load_checkpoint(path)["step"] == 2
    torch.manual_seed(123)
    dpo.train(cfg, pairs)
    a, b = utils.load_checkpoint(path), utils.load_checkpoint(os.path.join(straight["out_dir"], "dpo.pt"))
    assert a["step"] == b["step"] == 5
    for k in b["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k
    with pytest.raises(ValueError, match="no preference pairs"):
        dpo.train(cfg, dict(chosen=chosen[:0], rejected=rejected[:0], reply=pairs["reply"][:0]))
