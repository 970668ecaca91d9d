"""
Preference optimisation of the dual-stream model on its own spoken replies (survey §4.2.4, §4.4.3):
Direct Preference Optimisation, with pairs ranked by the ear (Align-SLM's recipe, no reward model).

    pairs       the model answers a spoken question of the training split N times (sampling); each
                reply is decoded to audio and judged; the best judged reply of a question is
                `chosen`, the worst `rejected` (pair_up says exactly when a pair is made)
    log-prob    log pi(y | x): x = the real dialogue up to the question (teacher-forced) and the
                user's audio, y = everything the assistant wrote and said in the reply window (its
                inner-monologue text and its K codebooks); the prompt and the padding after the
                window count for nothing
    loss        -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])
                (the DPO paper; ref = the `sft` model, frozen, its log-probs computed once)
                + nll * (-log pi(y_w|x) / tokens of y_w): the chosen reply's own likelihood, per token
                (RPO, Pang et al. 2024): DPO alone can widen the margin by lowering both replies

The stage (train_stage, at the end of this file) collects the replies with live.free_run and
judges them with nanosdm/judge.py; the pair logic sees one verdict per reply:

    judge_ok   the fact-free judge heard the right answer (nanosdm/judge.py)
    text_ok    the inner monologue holds the right answer (a string match against the world's fact)
    score      the judge's own graded score: the CTC log-likelihood per character of the right reply
               under the recognizer's acoustic model alone (ear_score). The character LM, which has
               read every fact, is never used: it would hear the right answer in any mumble.

Why three, in that order: the `sft` model's speech is speech-like but the judge understands little
of it, so a pair needs something beside the binary verdict. The text channel is right more often,
and its speech follows its text; among replies with the same verdicts, the one whose audio the ear finds closer to the right
reply is preferred. No fact-knowing model ranks the speech: only the acoustic model, given the
reply the world says is right, as the judge itself does.
"""
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nanosdm import ctc, live, textlm, utils
from nanosdm.asr import ASR
from nanosdm.codec import FRAME_S, Codec
from nanosdm.corpus.speech import Streams
from nanosdm.dualstream import delay, load_model
from nanosdm.judge import judge_wavs, reply_candidates, trim
from nanosdm.tokenizer import PAD, Tokenizer

SILENT_SCORE = -20.0     # ear_score of a clip with nothing in it (far below any real speech, ~-2..-5)


# -----------------------------------------------------------------------------
# the loss

def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    """Sequence log-probs [P] under the policy and the reference -> (mean loss, stats). The implicit
    rewards are beta * (log pi - log ref); the loss asks the chosen one to exceed the rejected one.
    stats: mean chosen / rejected reward, reward accuracy (a tie counts half: policy = reference
    gives 0.5, as a coin would) and mean margin, all detached floats."""
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    margin = chosen - rejected
    loss = -F.logsigmoid(margin).mean()      # logsigmoid: no overflow for large margins
    with torch.no_grad():
        acc = ((margin > 0).float() + 0.5 * (margin == 0).float()).mean()
    return loss, dict(chosen=chosen.mean().item(), rejected=rejected.mean().item(),
                      acc=acc.item(), margin=margin.mean().item())


# -----------------------------------------------------------------------------
# log pi(y | x) of a reply under the dual-stream model

def token_logprobs(model, inputs, targets):
    """Teacher-forced log-probs of the assistant's targets: [B, T, 1 + K] (text, then codebooks
    0..K-1), 0 where a target is the initial token a delay left (nothing was predicted there).
    The same computation as DualStream.forward's losses, per token and unweighted."""
    logits, h = model(inputs)
    V, K, card = model.vocab_size, model.n_q, model.card
    tt = targets[..., 0]
    text = torch.gather(F.log_softmax(logits, -1), -1, tt.clamp(max=V - 1)[..., None])[..., 0] * (tt < V)
    B, T = tt.shape
    codes = targets[..., 1:1 + K]
    audio_logits = model.audio_logits(h.reshape(B * T, -1), tt.reshape(-1), codes.reshape(B * T, K)).view(B, T, K, card)
    audio = torch.gather(F.log_softmax(audio_logits, -1), -1, codes.clamp(0, card - 1)[..., None])[..., 0]
    return torch.cat([text[..., None], audio * (codes < card)], -1)


def reply_token_mask(model, reply):
    """reply [B, T] bool on undelayed frames -> [B, T, 1 + K]: which delayed targets belong to the
    reply (codebook k of frame f is the target of step f + delays[k])."""
    K = model.n_q
    m = reply[..., None].expand(-1, -1, 1 + K).long()
    return delay(m, model.delays[:1 + K], 0).bool()


def sequence_logprob(model, x, reply):
    """x [B, T, S] undelayed tokens (prompt, reply, padding), reply [B, T] bool (the reply's
    frames) -> [B] the sum of the log-probs of the assistant's text and audio tokens of the reply.
    The user's stream is input only: it is never predicted, so never counted."""
    inputs, targets = model.inputs_targets(x)
    return (token_logprobs(model, inputs, targets) * reply_token_mask(model, reply)).sum((1, 2))


@torch.no_grad()
def batched_logprob(model, x, reply, batch_size=32):
    was = model.training
    model.eval()
    out = torch.cat([sequence_logprob(model, x[b:b + batch_size].long(), reply[b:b + batch_size])
                     for b in range(0, len(x), batch_size)])
    model.train(was)
    return out


# -----------------------------------------------------------------------------
# the judge's graded score and the pairs

@torch.no_grad()
def ear_score(asr, wav, text):
    """Per-character CTC log-likelihood of `text` in `wav` under the recognizer's acoustic model
    (no language model): how much the audio sounds like that text. SILENT_SCORE for silence."""
    wav = trim(torch.as_tensor(wav).float())      # as the judge hears it: the voiced stretch
    target = ctc.encode_text(" ".join(text.replace(".", " ").split()))
    if wav.numel() < 400 or wav.abs().max() == 0 or not target:
        return SILENT_SCORE
    _, lp = asr.posteriors(wav)
    lp = lp.float().cpu()
    nll = F.ctc_loss(lp, torch.tensor(target), torch.tensor([lp.shape[0]]), torch.tensor([len(target)]),
                     blank=ctc.BLANK, reduction="sum").item()
    return max(SILENT_SCORE, -nll / len(target))       # inf (too short to say it at all) -> SILENT_SCORE


def preference_key(v):
    """The order of replies: heard right first, then right in the text channel, then the score."""
    return (bool(v["judge_ok"]), bool(v["text_ok"]), float(v["score"]))


def pair_up(verdicts, min_margin=0.1, max_pairs=2):
    """One question's replies -> [(chosen, rejected)] indices. Replies are ranked by
    preference_key; the best is paired with the worst, the second best with the second worst, ...
    (each reply in one pair at most, so no reply dominates the batch). A pair needs a real
    preference: a better verdict, or the same verdicts and a score higher by min_margin nats per
    character (closer scores are the judge's noise, not a preference)."""
    order = sorted(range(len(verdicts)), key=lambda i: preference_key(verdicts[i]), reverse=True)
    pairs = []
    for j in range(min(max_pairs, len(order) // 2)):
        w, l = verdicts[order[j]], verdicts[order[-1 - j]]
        kw, kl = preference_key(w), preference_key(l)
        if kw[:2] > kl[:2] or (kw[:2] == kl[:2] and kw[2] - kl[2] >= min_margin):
            pairs.append((order[j], order[-1 - j]))
    return pairs


def collect_pairs(history, user, windows, sample, judge, n_samples, min_margin=0.1, max_pairs=2, keep_history=None,
                  context=None):
    """Pairs from the model's own replies. history [Q, H, S] (the real dialogue up to each
    question), user [Q, F, K] (the user's audio from the question on), windows [Q] (frames of
    the reply window, <= F); sample(history, user) -> (text [N, F], codes [N, F, K]) runs the
    model freely; judge(text, codes, question index of each row) -> one verdict dict per row.
    keep_history: frames of the history kept in the pairs' sequences (None: all). The replies are
    sampled after the whole history; scoring them after its last frames only costs less per step,
    and policy and reference see the same (shorter) prompt, which is all the loss needs.
    context: the model's context in frames; a pair is scored in one pass, so it must fit: a long
    question keeps less history, and one that does not fit with none is refused before sampling.
    -> (pairs: dict of tensors, records: per question every reply's verdict and its pairs)."""
    Q, H, S = history.shape
    H = H if keep_history is None else min(H, keep_history)
    if context is not None:
        H = min(H, context - user.shape[1] - 1)         # (-1: the closing frame)
        if H < 0:
            raise ValueError(f"dpo: the longest question and its reply window ({user.shape[1] + 1} frames) exceed "
                             f"the model's context ({context} frames): ask fewer or shorter questions")
    hist, usr = history.repeat_interleave(n_samples, 0), user.repeat_interleave(n_samples, 0)
    qidx = torch.arange(Q).repeat_interleave(n_samples)
    text, codes = sample(hist, usr)
    verdicts = judge(text, codes, qidx)
    # the full sequence of each reply: prompt, then what the model wrote and said while hearing the
    # user; one more frame at the end so the delayed codebooks of the last frame are targets too
    x = torch.cat([hist[:, hist.shape[1] - H:], torch.cat([text[..., None], codes, usr], -1)], 1)
    x = torch.cat([x, x[:, -1:]], 1)
    reply = torch.zeros(x.shape[:2], dtype=torch.bool)
    for n in range(len(x)):
        reply[n, H:H + int(windows[qidx[n]])] = True
    chosen, rejected, records = [], [], []
    for q in range(Q):
        rows = list(range(q * n_samples, (q + 1) * n_samples))
        pq = pair_up([verdicts[r] for r in rows], min_margin, max_pairs)
        chosen += [rows[w] for w, _ in pq]
        rejected += [rows[l] for _, l in pq]
        records.append(dict(replies=[verdicts[r] for r in rows], pairs=pq))
    c, r = torch.tensor(chosen, dtype=torch.long), torch.tensor(rejected, dtype=torch.long)
    # int16 on disk: every id (text vocabulary, codebook, initial token) is far below 32768
    pairs = dict(chosen=x[c].to(torch.int16), rejected=x[r].to(torch.int16), reply=reply[c])
    return pairs, records


def save_pairs(path, pairs, records, info):
    """pairs as tensors (path, loaded with weights_only=True) and every reply's verdict as
    readable JSON lines beside it (path with .jsonl): question, answer, what was said and heard."""
    utils.save_checkpoint(path, dict(pairs, info=info))
    jsonl = os.path.splitext(path)[0] + ".jsonl"
    with open(jsonl + ".tmp", "w") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    os.replace(jsonl + ".tmp", jsonl)


# -----------------------------------------------------------------------------
# stage `dpo`

def plot_rewards(history, path, beta):
    fig, (ax, ax2) = utils.figure(2, 1, figsize=(7, 5.5), sharex=True)
    steps = [r["step"] for r in history]
    k = min(10, len(history))
    smooth = lambda key: np.convolve([r[key] for r in history], np.ones(k) / k, mode="valid")
    ax.plot(steps[k - 1:], smooth("chosen"), label="chosen reward", color="tab:green")
    ax.plot(steps[k - 1:], smooth("rejected"), label="rejected reward", color="tab:red")
    ax.plot(steps[k - 1:], smooth("margin"), label="margin", color="black", lw=1)
    ax.axhline(0, color="gray", lw=0.5)
    ax.set(ylabel=f"beta x log(pi / ref), beta={beta}", title="stage dpo: implicit rewards (batch means)")
    ax.legend(fontsize=8)
    ax2.plot(steps[k - 1:], smooth("acc"), label="reward accuracy", color="tab:blue")
    ax2.plot(steps[k - 1:], smooth("loss"), label="loss", color="tab:orange")
    ax2.axhline(math.log(2), color="gray", lw=0.5, ls="--")
    ax2.set(xlabel="step", ylim=(0, max(1.05, max(r["loss"] for r in history) * 1.05)))
    ax2.legend(fontsize=8)
    for a in (ax, ax2):
        a.grid(alpha=0.3)
    utils.save_figure(fig, path, dpi=100)


def train(cfg, pairs, stop_step=None):
    """Stage `dpo`: the `sft` model (policy, trained) against itself (reference, frozen, its
    log-probs of every pair computed once and kept in the checkpoint) on `pairs`. Resumes from
    out/<preset>/dpo.pt. Returns the figures (empty when stopped early by stop_step)."""
    device, out_dir = cfg["device"], cfg["out_dir"]
    P = len(pairs["chosen"])
    if P == 0:
        raise ValueError("stage dpo: no preference pairs (every reply judged alike); sample more "
                         "(--dpo_questions, --dpo_samples) or lower --dpo_min_margin")
    torch.manual_seed(cfg["seed"])
    model = load_model(os.path.join(out_dir, "sft.pt"), device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["dpo_lr"], betas=(0.9, 0.95), weight_decay=0.0)
    max_steps, B, beta, nll = cfg["dpo_max_steps"], min(cfg["dpo_batch_size"], P), cfg["dpo_beta"], cfg["dpo_nll"]
    path = os.path.join(out_dir, "dpo.pt")
    chosen, rejected = pairs["chosen"].to(device), pairs["rejected"].to(device)
    reply = pairs["reply"].to(device)
    pairs_id = [P, int(chosen.long().sum()), int(rejected.long().sum())]   # which pairs a checkpoint trained on
    settings = utils.run_settings(cfg, "dpo")   # a partial checkpoint resumes only into the same run
    ckpt = utils.resume(path, model, opt, device, max_steps, settings=settings)
    if ckpt and ckpt.get("pairs_id") != pairs_id:
        print(f"{path} was trained on other pairs: starting again from the sft model")
        model.load_state_dict(load_model(os.path.join(out_dir, "sft.pt"), device).state_dict())
        opt = torch.optim.AdamW(model.parameters(), lr=cfg["dpo_lr"], betas=(0.9, 0.95), weight_decay=0.0)
        ckpt = None
    if ckpt:
        step, history = ckpt["step"], ckpt["history"]
        ref_c, ref_r = ckpt["ref_chosen"].to(device), ckpt["ref_rejected"].to(device)
    else:
        step, history = 0, []
        t = time.time()
        ref_c, ref_r = batched_logprob(model, chosen, reply), batched_logprob(model, rejected, reply)
        print(f"dpo: reference log-probs of {P} pairs in {time.time() - t:.1f}s "
              f"(chosen {ref_c.mean():.1f}, rejected {ref_r.mean():.1f} nats a reply)")
    utils.broadcast_module(model)                      # data parallel: every rank starts from rank 0's weights
    print(f"dpo: {P} pairs, {max_steps} steps of {B} pairs, beta {beta}, lr {cfg['dpo_lr']}")

    def save():
        utils.save_checkpoint(path, dict(model=model.state_dict(), optimizer=opt.state_dict(), config=model.config,
                                         settings=settings, step=step, history=history, ref_chosen=ref_c.cpu(),
                                         ref_rejected=ref_r.cpu(), pairs_id=pairs_id))

    gen = torch.Generator()
    t0 = time.time()
    pbar = tqdm(total=max_steps, initial=step, desc="dpo", dynamic_ncols=True)
    while step < max_steps and (stop_step is None or step < stop_step):
        lr = utils.cosine_lr(step, max_steps, cfg["dpo_lr"], cfg["dpo_warmup"])
        for g in opt.param_groups:
            g["lr"] = lr
        # pass through the pairs epoch by epoch, the order a function of the epoch: resumable
        epoch, pos = divmod(step, -(-P // B))
        gen.manual_seed(cfg["seed"] * 1_000_003 + epoch)
        perm = torch.randperm(P, generator=gen)
        idx = perm[pos * B:(pos + 1) * B]
        if len(idx) % utils.world_size():   # data parallel: the epoch's last batch, topped up from its start to split evenly
            idx = torch.cat([idx, perm[:utils.world_size() - len(idx) % utils.world_size()]])
        idx = utils.shard(idx).to(device)                 # this rank's share of the batch
        both = torch.cat([chosen[idx], rejected[idx]]).long()
        lp = sequence_logprob(model, both, torch.cat([reply[idx], reply[idx]]))
        loss, stats = dpo_loss(lp[:len(idx)], lp[len(idx):], ref_c[idx], ref_r[idx], beta)
        if nll:     # RPO: keep the chosen reply likely while the margin grows
            loss = loss + nll * (-lp[:len(idx)] / reply_token_mask(model, reply[idx]).sum((1, 2))).mean()
        loss.backward()
        utils.all_reduce_grads(model.parameters())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        history.append(dict(step=step, loss=round(utils.mean_over_ranks(loss.item()), 5),
                            **{k: round(utils.mean_over_ranks(v), 5) for k, v in stats.items()}))
        pbar.update(1)
        pbar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{stats['acc']:.2f}", margin=f"{stats['margin']:.2f}")
        if step % cfg["dpo_ckpt_interval"] == 0 or step == max_steps:
            save()
    pbar.close()
    utils.report_replicas(model, "dpo")
    if step < max_steps:
        return {}
    train_s = time.time() - t0
    plot_rewards(history, os.path.join(out_dir, "plots", "dpo_rewards.png"), beta)
    # the final policy on every pair (not batch means over a moving model)
    pc, pr = batched_logprob(model, chosen, reply), batched_logprob(model, rejected, reply)
    _, final = dpo_loss(pc, pr, ref_c, ref_r, beta)
    return {"dpo_loss_start": history[0]["loss"], "dpo_loss_end": round(float(np.mean([r["loss"] for r in history[-10:]])), 4),
            "dpo_reward_acc": round(final["acc"], 4), "dpo_margin": round(final["margin"], 4),
            "dpo_reward_chosen": round(final["chosen"], 4), "dpo_reward_rejected": round(final["rejected"], 4),
            "dpo_pairs": P, "dpo_train_seconds": round(train_s, 1)}


# -----------------------------------------------------------------------------
# the stage: pairs from the sft model's own spoken replies, judged, then DPO

def stage_tools(cfg):
    """What both halves share: the checkpoints they read, the prompts, the judge, spoken QA."""
    dev, out = cfg["device"], cfg["out_dir"]
    codec = Codec.load(os.path.join(out, "codec.pt"), dev)
    asr = ASR.load(os.path.join(out, "asr.pt"), dev)
    tok = Tokenizer.load(os.path.join(out, "tokenizer.model"))
    sft = load_model(os.path.join(out, "sft.pt"), dev)
    silence = live.user_silence(codec, live.load_ear(sft, out, dev))    # the user's channel, quiet
    pad_col = np.concatenate([[PAD], live.silence_codes(codec).numpy(), silence.numpy()])

    def prompts(split, items):
        """The evaluation's prompts: history, the user's audio from the question on, reply windows."""
        hist, user, starts, ends = live.qa_batch(Streams(os.path.join(out, "speech"), split), items,
                                               cfg["sft_eval_history"], silence, pad_col)
        return hist, user, [e - s + int(live.ANSWER_WINDOW_S / FRAME_S) for s, e in zip(starts, ends)]

    def judge(items, windows, text, codes, rows):
        """One verdict per reply (rows: its question): the judge's, the text channel's, the score."""
        wavs = codec.decode(codes.transpose(1, 2).to(dev)).cpu()
        qs, ans = [items[q][1]["text"] for q in rows], [items[q][1]["answer"] for q in rows]
        answer_frames = int(live.ANSWER_WINDOW_S / FRAME_S)   # windows = question frames + these
        clips = live.reply_clips(wavs, [windows[q] - answer_frames for q in rows], [windows[q] for q in rows])
        said = [tok.decode(live.monologue_parts(text[n, :windows[q]].tolist())[1]) for n, q in enumerate(rows)]
        oks, heard = judge_wavs(asr, clips, qs, ans)
        right = [dict(reply_candidates(q)).get(a) or "" for q, a in zip(qs, ans)]
        return [dict(question=q, answer=a, said=s, heard=h, judge_ok=bool(ok), text_ok=textlm.answer_in(s, a),
                     score=round(ear_score(asr, c, r), 4))
                for q, a, s, h, ok, c, r in zip(qs, ans, said, heard, oks, clips, right)]

    def spoken_qa(model, split):
        """The spoken-QA protocol of stage sft's evaluation: greedy text, audio as live.py samples it, the same seed."""
        items = live.questions(Streams(os.path.join(out, "speech"), split))
        hist, user, windows = prompts(split, items)
        torch.manual_seed(cfg["seed"])
        text, codes = live.free_run(model, hist.to(dev), user.to(dev), silence.to(dev), (0, 0, live.AUDIO_TEMP, live.AUDIO_TOP_K))
        v = judge(items, windows, text.cpu(), codes, list(range(len(items))))
        return {k: round(float(np.mean([r[k] for r in v])), 4) for k in ("judge_ok", "text_ok", "score")}

    return dict(codec=codec, asr=asr, tok=tok, silence=silence, prompts=prompts, judge=judge, spoken_qa=spoken_qa)


def train_stage(cfg):
    """Stage dpo's training: pairs from the sft model's own spoken replies, judged by the fact-free
    judge (nanosdm/judge.py), then DPO (train). Under torchrun
    rank 0 collects the pairs and every rank trains on them."""
    dev, out = cfg["device"], cfg["out_dir"]
    t = stage_tools(cfg)
    prompts, judge, silence = t["prompts"], t["judge"], t["silence"]
    sft = load_model(os.path.join(out, "sft.pt"), dev)
    # the pairs: kept on disk (dpo_pairs.pt, and every verdict readable in dpo_pairs.jsonl)
    path = os.path.join(out, "dpo_pairs.pt")
    info = {k: cfg[k] for k in ("seed", "dpo_questions", "dpo_samples", "dpo_text_temp", "dpo_min_margin",
                                "dpo_max_pairs", "dpo_history", "sft_eval_history")}
    pairs = utils.load_checkpoint(path) if os.path.exists(path) else None
    # the saved info also holds what the sampling found (judge_ok, text_ok, seconds): compare the settings
    if (pairs is None or {k: pairs["info"].get(k) for k in info} != info) and utils.is_main():
        t0 = time.time()
        items = live.questions(Streams(os.path.join(out, "speech"), "train"))
        rng = np.random.default_rng(cfg["seed"])
        items = [items[i] for i in rng.choice(len(items), min(cfg["dpo_questions"], len(items)), replace=False)]
        hist, user, windows = prompts("train", items)
        torch.manual_seed(cfg["seed"])
        temps = (cfg["dpo_text_temp"], 25, live.AUDIO_TEMP, live.AUDIO_TOP_K)
        sample = lambda h, u: [t.cpu() for t in live.free_run(sft, h.to(dev), u.to(dev), silence.to(dev), temps)]
        pairs, records = collect_pairs(hist, user, windows, sample,
                                       lambda text, codes, rows: judge(items, windows, text, codes, rows.tolist()),
                                       cfg["dpo_samples"], cfg["dpo_min_margin"], cfg["dpo_max_pairs"],
                                       cfg["dpo_history"], context=sft.context)
        replies = [v for rec in records for v in rec["replies"]]
        info.update(judge_ok=float(np.mean([v["judge_ok"] for v in replies])),
                    text_ok=float(np.mean([v["text_ok"] for v in replies])), seconds=round(time.time() - t0, 1))
        save_pairs(path, pairs, records, info)
        print(f"dpo: {len(pairs['chosen'])} pairs from {len(replies)} replies to {len(items)} questions in "
              f"{info['seconds']:.0f}s (judged right {info['judge_ok']:.1%}, text channel right {info['text_ok']:.1%})")
    utils.barrier()
    pairs = utils.load_checkpoint(path)
    metrics = dict(dpo_sample_judge_ok=round(pairs["info"]["judge_ok"], 4), dpo_sample_text_ok=round(pairs["info"]["text_ok"], 4),
                   dpo_pair_seconds=pairs["info"]["seconds"])
    trained = train(cfg, pairs)
    return dict(metrics, **trained) if trained else None
