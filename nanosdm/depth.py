"""
The RQ depth transformer (Moshi's depformer): the K codebooks of one 80 ms step, one after another.

The temporal transformer gives one state h_t per step. The step's K assistant codes are not
independent (codebook k refines the residual left by 0..k-1), so predicting them with K parallel
heads from h_t alone loses a lot (Moshi's ablation: perplexity 135 with separate heads against 37
with the depth transformer). Instead a small transformer runs *along the codebooks*:

    position k input:  proj_k(h_t) + embedding of the previous token of this step
                       (the step's text token for k = 0, codebook k-1 after that)
    stack:             the shared transformer.Transformer, causal over the K positions
    output k:          head_k -> logits over codebook k

Training runs all K positions of all steps at once (teacher forcing: the previous tokens are the
targets); generation samples codebook 0, feeds it back, samples codebook 1, ... with a KV cache.
Every position has its own input projection, token embedding and head; the stack is shared.
"""
import torch
import torch.nn as nn

from nanosdm.transformer import Transformer, sample_logits


class Depth(nn.Module):
    def __init__(self, d_temporal, n_q, text_vocab, card, n_layer=2, n_head=4, d_model=128):
        super().__init__()
        self.n_q, self.card = n_q, card
        self.proj = nn.ModuleList(nn.Linear(d_temporal, d_model, bias=False) for _ in range(n_q))
        # the previous token of position k: the text token (k = 0) or codebook k-1; +1 row each
        # for the initial token that fills a delayed stream's first steps
        self.prev_emb = nn.ModuleList([nn.Embedding(text_vocab + 1, d_model)]
                                      + [nn.Embedding(card + 1, d_model) for _ in range(n_q - 1)])
        self.transformer = Transformer(n_layer, n_head, d_model, causal=True, max_seq_len=n_q)
        self.heads = nn.ModuleList(nn.Linear(d_model, card, bias=False) for _ in range(n_q))
        for m in list(self.prev_emb) + list(self.heads):
            nn.init.normal_(m.weight, std=0.02)

    def _input(self, k, h, prev):
        return self.proj[k](h) + self.prev_emb[k](prev)

    def forward(self, h, text, codes):
        """Teacher forcing. h [N, D] temporal states, text [N] the step's text tokens, codes [N, K]
        the step's codes (targets; only codes[:, :K-1] are read) -> logits [N, K, card]."""
        prev = [text] + [codes[:, k] for k in range(self.n_q - 1)]
        x = torch.stack([self._input(k, h, prev[k]) for k in range(self.n_q)], 1)   # [N, K, d]
        y = self.transformer(x)
        return torch.stack([self.heads[k](y[:, k]) for k in range(self.n_q)], 1).float()

    @torch.no_grad()
    def generate(self, h, text, temperature=0.8, top_k=250, force=None):
        """One step's codes, codebook by codebook. h [B, D], text [B] -> (codes [B, K], logits
        [B, K, card]). force [B, K] (optional): feed these codes instead of sampling (teacher
        forcing; -1 in a column = sample that one)."""
        B = h.shape[0]
        cache = self.transformer.new_kv_cache(B, self.n_q, h.device, h.dtype)
        prev, codes, logits = text, [], []
        for k in range(self.n_q):
            y = self.transformer(self._input(k, h, prev)[:, None], kv_cache=cache)[:, 0]
            lg = self.heads[k](y).float()
            c = sample_logits(lg, temperature, top_k)
            if force is not None:
                c = torch.where(force[:, k] >= 0, force[:, k], c)
            codes.append(c)
            logits.append(lg)
            prev = c
        return torch.stack(codes, 1), torch.stack(logits, 1)
