"""
The dual-stream full-duplex model (Moshi at nano scale): it listens and speaks at once, 80 ms a step.

Streams per step t (corpus/speech.py builds them): 1 text (the assistant's inner monologue) + K assistant
codebooks + K user codebooks = S = 1 + 2K tokens.

    delays:     stream s at step t holds its token of step t - delays[s] (DELAYS: text and
                codebook 0 at t, codebooks 1..K-1 one step later, as Moshi). The acoustic codes
                of a frame are predicted once its semantic code is known; latency = frame + delay.
    input:      the SUM of one embedding per stream of the previous step's (delayed) tokens. Each
                stream has one extra row, its initial token (INIT: the codec has no spare ids),
                that opens a sequence and fills a delayed stream's first steps; the zero token
                (ZERO = -1) embeds to an exact zero (no input: text-only batches).
    temporal:   the shared transformer, initialised from the text LM (its embedding, blocks, head)
    outputs:    the text head on the temporal state -> the step's text token; the depth
                transformer (depth.py) -> the step's K assistant codes. The user is input only.
    loss:       text CE (PAD and EPAD weighted `pad_weight`) + audio CE (codebook 0 weighted
                `semantic_weight` against 1 for the others), masked where the delays leave no target.

Generation (step): the user's K codes of one frame in; the model's text token and its K codes
out, with an explicit KV cache and explicit delay buffers. A conversation longer than the context
keeps running: when the cache is full, the latest half of the inputs is re-encoded from position 0
(a sliding window, as a training window is a crop that starts anywhere).

Two constructor values give two more of the survey's paradigms from the same model:

    heads="parallel"  Mini-Omni's parallel generation: no depth transformer, K linear heads on the
                      temporal state, and Mini-Omni's delays (text at t, codebook k at t + k + 1:
                      each head finds the frame's text and codebooks 0..k-1 already in its input).
                      Batch parallel decoding: step(parallel_decoding=True) on a batch whose second
                      half is a text-only copy of the first (its own audio ZERO), which writes the
                      text both halves read (live.free_run runs it).
    text=False        speech to speech, Moshi's ablation without the inner monologue: no text
                      embedding, no text head, no text loss; the text column is never read and
                      step() returns no text.
"""
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanosdm import utils
from nanosdm.corpus.speech import UNITS_PER_FRAME
from nanosdm.depth import Depth
from nanosdm.tokenizer import ASSISTANT, EOS, EPAD, PAD, USER
from nanosdm.transformer import Transformer, sample_logits

ZERO = -1               # a token that embeds to exactly zero: "no input on this stream"
HEADS = ("depth", "parallel")   # the step's K codes: Moshi's depth transformer, or Mini-Omni's K linear heads


class EarConv(nn.Module):
    """A small causal convolution over what the user said, read as one sequence: a frame's K user
    ids in order, K sub-steps a frame (through the units: 20 ms each). The temporal stack gets one
    sum of embeddings a frame and must piece a name together from 5-8 such sums; a name-recognising
    probe (REFERENCE §14) is two convolutions over the name's units. This is that front end: dilated
    layers reaching back `reach` sub-steps (kernel 5, dilations 1, 2, 4: 28 units, 560 ms), and a
    frame's last sub-step (all of the frame heard) projected to d_model. The output layer starts at
    zero, so the model starts exactly as without it."""

    def __init__(self, card, width, d_model, kernel=5, dilations=(1, 2, 4)):
        super().__init__()
        self.emb = nn.Embedding(card + 1, width)            # + INIT, as the audio tables
        self.convs = nn.ModuleList(nn.Conv1d(width, width, kernel, dilation=d) for d in dilations)
        self.pads = [(kernel - 1) * d for d in dilations]
        self.reach = sum(self.pads)                          # sub-steps of the past an output depends on
        self.out = nn.Linear(width, d_model)
        nn.init.normal_(self.emb.weight, std=0.02)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, user, n_past=0):
        """user [B, T, K] ids (INIT allowed, ZERO embeds to zero), of which the first n_past are
        context only (streaming: the columns fed before) -> [B, T - n_past, d_model]."""
        B, T, K = user.shape
        x = (self.emb(user.clamp(min=0)) * (user >= 0)[..., None]).reshape(B, T * K, -1).transpose(1, 2)
        for conv, pad in zip(self.convs, self.pads):   # pre-activation residual; GELU(0) = 0 pads the past
            x = x + conv(F.pad(F.gelu(x), (pad, 0)))
        x = x.transpose(1, 2).reshape(B, T, K, -1)[:, n_past:, -1]
        return self.out(x)


def user_delays(n_q, ear="codec"):
    """The user's K columns: Moshi's [0, 1, .., 1] for codec codes (a frame's acoustic codes a step
    after its semantic one, as the model's own). Through the units (ear="units") the columns are four
    successive 20 ms of one frame, nothing to stagger: all heard at once (after align, unseen voices:
    transcript WER 49.9% -> 30.6%, names 23.8% -> 31.3%, one run each)."""
    return [0] * n_q if ear == "units" else [0] + [1] * (n_q - 1)


def default_delays(n_q, ear="codec"):
    """Moshi's pattern for 1 text + K assistant + K user streams: [0, 0,1,..,1, user_delays]."""
    return [0, 0] + [1] * (n_q - 1) + user_delays(n_q, ear)


def mini_omni_delays(n_q, ear="codec"):
    """Mini-Omni's pattern for the parallel heads: text at 0, assistant codebook k at k + 1; the user's
    columns as in default_delays, so the two rows hear alike: [0, 1,2,..,K, user_delays]."""
    return [0] + list(range(1, n_q + 1)) + user_delays(n_q, ear)


def delay(x, delays, fill):
    """x [B, T, S] (token of step t in column t) -> y with y[:, t, s] = x[:, t - delays[s], s],
    `fill` where t < delays[s]. The last delays[s] tokens of stream s fall off the end."""
    y = torch.full_like(x, fill) if not isinstance(fill, torch.Tensor) else fill.expand_as(x).clone()
    for s, d in enumerate(delays):
        y[:, d:, s] = x[:, :x.shape[1] - d, s]
    return y


def undelay(y, delays):
    """The inverse of delay: [B, T, S] -> [B, T - max(delays), S], every column complete."""
    T = y.shape[1] - max(delays)
    return torch.stack([y[:, d:d + T, s] for s, d in enumerate(delays)], 2)


class DualStream(nn.Module):
    def __init__(self, vocab_size, card, n_q, n_layer, n_head, d_model, context, delays=None,
                 depth_layers=2, depth_heads=4, depth_d_model=128, pad_weight=0.5, semantic_weight=10.0,
                 turn_weight=1.0, ear="codec", ear_mlp=0, heads="depth", text=True, ear_conv=0):
        super().__init__()
        assert heads in HEADS, f"heads={heads!r}: expected one of {HEADS}"
        delays = list(delays or (mini_omni_delays if heads == "parallel" else default_delays)(n_q, ear))
        assert len(delays) == 1 + 2 * n_q, f"{len(delays)} delays for {1 + 2 * n_q} streams"
        self.config = dict(vocab_size=vocab_size, card=card, n_q=n_q, n_layer=n_layer, n_head=n_head,
                           d_model=d_model, context=context, delays=delays, depth_layers=depth_layers,
                           depth_heads=depth_heads, depth_d_model=depth_d_model, pad_weight=pad_weight,
                           semantic_weight=semantic_weight, turn_weight=turn_weight, ear=ear, ear_mlp=ear_mlp,
                           heads=heads, text=text, ear_conv=ear_conv)
        self.vocab_size, self.card, self.n_q, self.delays, self.context = vocab_size, card, n_q, delays, context
        self.text = text   # False: no text stream at all (None below), so the parameter count is honest
        # one table per stream, each with its initial token as the last row
        self.text_emb = nn.Embedding(vocab_size + 1, d_model) if text else None
        self.audio_emb = nn.ModuleList(nn.Embedding(card + 1, d_model) for _ in range(2 * n_q))
        self.transformer = Transformer(n_layer, n_head, d_model, causal=True, max_seq_len=context)
        self.text_head = nn.Linear(d_model, vocab_size, bias=False) if text else None
        # without text the depth transformer's first input is its INIT row alone (a text vocabulary of 0)
        self.depth = Depth(d_model, n_q, vocab_size if text else 0, card, depth_layers, depth_heads,
                           depth_d_model) if heads == "depth" else None
        self.audio_heads = nn.ModuleList(nn.Linear(d_model, card, bias=False)
                                         for _ in range(n_q)) if heads == "parallel" else None
        # the ear's own few parameters (ear_mlp > 0): the sum of a frame's K user embeddings is linear,
        # it cannot say "this unit, then that one"; an MLP over the K embeddings side by side can.
        # Its output layer starts at zero, so the model starts exactly as without it.
        self.ear_mlp = nn.Sequential(nn.Linear(n_q * d_model, ear_mlp), nn.GELU(),
                                     nn.Linear(ear_mlp, d_model)) if ear_mlp else None
        if ear_conv < 0:
            raise ValueError(f"ear_conv is the ear's convolution width (0: none), not {ear_conv}")
        self.ear_conv = EarConv(card, ear_conv, d_model) if ear_conv else None
        # the sub-steps of a frame the convolution reads: through the units, a frame's 4 distinct ids
        # (at n_q = 8 each is held twice, and read twice the sequence would be u1..u4 u1..u4)
        self.ear_sub = min(n_q, UNITS_PER_FRAME) if ear == "units" else n_q
        # streaming: the input columns before a step that the ear's convolution still reads
        self.ear_frames = math.ceil(self.ear_conv.reach / self.ear_sub) if ear_conv else 0
        for m in [self.text_emb, *self.audio_emb, self.text_head, *(self.audio_heads or [])]:
            if m is not None:
                nn.init.normal_(m.weight, std=0.02)
        if self.ear_mlp is not None:
            nn.init.zeros_(self.ear_mlp[2].weight)
            nn.init.zeros_(self.ear_mlp[2].bias)
        # the per-stream initial tokens (INIT) and the loss weights of the text stream
        self.register_buffer("init_tokens", torch.tensor([vocab_size if text else ZERO] + [card] * (2 * n_q)),
                             persistent=False)
        self.register_buffer("text_weights", torch.ones(vocab_size), persistent=False)
        self.set_text_weights(pad_weight, turn_weight)
        cw = torch.ones(n_q)
        cw[0] = semantic_weight
        self.register_buffer("codebook_weights", cw / cw.sum(), persistent=False)

    def set_text_weights(self, pad_weight, turn_weight):
        """Text-loss weights: PAD and EPAD (Moshi halves them: most frames are PAD), and the turn
        tokens USER, ASSISTANT and EOS, the rare frames where the model decides to start or stop."""
        w = torch.ones_like(self.text_weights)
        w[[PAD, EPAD]] = pad_weight
        w[[USER, ASSISTANT, EOS]] = turn_weight
        self.text_weights.copy_(w)
        self.config.update(pad_weight=pad_weight, turn_weight=turn_weight)

    # --- initialisation from the earlier stages ---------------------------------------------------

    def init_from_text_lm(self, lm_state):
        """The temporal stack, text embedding and text head from the text LM's state_dict (same
        width and depth; the RoPE tables are rebuilt for this context). Without text: the blocks only."""
        with torch.no_grad():
            if self.text:
                self.text_emb.weight[:self.vocab_size] = lm_state["embed.weight"]
                self.text_head.weight.copy_(lm_state["head.weight"])
        blocks = {k[len("transformer."):]: v for k, v in lm_state.items() if k.startswith("transformer.")}
        self.transformer.load_state_dict(blocks)

    def init_from_codec(self, codebooks, seed=0, row_norm=None):
        """Audio embeddings that start from the codec's geometry (with nn.Embedding's N(0, 1)
        rows beside the text LM's small ones the model did not listen). Every audio table
        of a channel is its codebook times one shared random projection P, so the sum of a frame's
        K embeddings is P applied to the quantized latent: the model starts by hearing the codec's
        own latent. Scaled so a frame's sum has the RMS of a text embedding row. Each channel has a
        projection of its own: with one P for both, the same sound in the user's channel and in the
        model's own embeds identically, and the model starts unable to tell its voice from the user's.
        row_norm: a text embedding row's mean norm (default: this model's; a model without text passes
        the text LM's)."""
        g = torch.Generator().manual_seed(seed)
        d = self.audio_emb[0].weight.shape[1]
        P = [torch.randn(codebooks.shape[-1], d, generator=g) for _ in ("assistant", "user")]
        latent_rms = codebooks.pow(2).sum(-1).mean(-1).sum().sqrt()       # RMS norm of a quantized latent
        if row_norm is None:
            row_norm = self.text_emb.weight[:self.vocab_size].norm(dim=-1).mean()
        scale = row_norm / (latent_rms * math.sqrt(d))
        with torch.no_grad():
            for s in range(2 * self.n_q):
                if s >= self.n_q and self.config["ear"] == "units":   # the user's columns hold unit ids:
                    nn.init.normal_(self.audio_emb[s].weight, std=float(scale * latent_rms) / self.n_q ** 0.5)
                    continue                                          # no geometry to start from, a text row's size
                self.audio_emb[s].weight[:self.card] = codebooks[s % self.n_q] @ P[s // self.n_q] * scale

    def init_ear_from_units(self, centroids, seed=1):
        """The user's unit tables (and the ear convolution's) start from the units' geometry: a unit's
        row is its k-means centroid (unit length, centred) times a random projection, scaled to the
        table's own spread. Units that sound alike start alike, so a voice never heard, whose units
        stray to near neighbours of the training voices', starts out heard as they are. Embedded id
        by id from random rows, each unit is a symbol of its own that only training can relate."""
        c = F.normalize(centroids.float(), dim=-1)
        c = c - c.mean(0)
        g = torch.Generator().manual_seed(seed)
        tables = [self.audio_emb[s].weight for s in range(self.n_q, 2 * self.n_q)]
        if self.ear_conv is not None:
            tables.append(self.ear_conv.emb.weight)
        with torch.no_grad():
            for w in tables:                     # a projection per table, as each channel has its own
                e = c @ torch.randn(c.shape[1], w.shape[1], generator=g)
                w[:len(c)] = e * (w[:len(c)].std() / e.std())

    # --- the forward pass --------------------------------------------------------------------------

    def embed(self, tokens, past=None):
        """tokens [B, T, S] (delayed, INIT or ZERO allowed) -> the per-step sum of embeddings [B, T, D].
        past [B, P, S]: the columns fed before in this window, which only the ear's convolution reads."""
        x, user = 0, []
        for s in range(tokens.shape[-1]):
            if s == 0 and not self.text:
                continue              # speech to speech: the text column is never read
            t = tokens[..., s]
            table = self.text_emb if s == 0 else self.audio_emb[s - 1]
            e = table(t.clamp(min=0)) * (t >= 0)[..., None]   # ZERO -> an exact zero vector
            x = x + e
            if s > self.n_q:
                user.append(e)
        if self.ear_mlp is not None:   # ZERO user columns (text-only batches) stay an exact zero
            heard = (tokens[..., 1 + self.n_q:] >= 0).any(-1, keepdim=True)
            x = x + self.ear_mlp(torch.cat(user, -1)) * heard
        if self.ear_conv is not None:
            cols = tokens if past is None else torch.cat([past, tokens], 1)
            cols = cols[..., 1 + self.n_q:1 + self.n_q + self.ear_sub]
            heard = (tokens[..., 1 + self.n_q:] >= 0).any(-1, keepdim=True)
            x = x + self.ear_conv(cols, 0 if past is None else past.shape[1]) * heard
        return x

    def inputs_targets(self, x):
        """Undelayed tokens x [B, T, S] (a window: a conversation from its step 0) -> (inputs, targets),
        both [B, T, S]: targets = the delayed tokens, inputs = INIT then the targets shifted by one.
        Targets a delay left empty are INIT (masked in the loss). A stream that opens ZERO (no input:
        batch parallel decoding's text-only copy) keeps ZERO there, as text_batch's audio does."""
        if not self.text:
            x = torch.cat([torch.full_like(x[..., :1], ZERO), x[..., 1:]], -1)
        fill = torch.where(x[:, :1] == ZERO, ZERO, self.init_tokens)
        y = delay(x, self.delays, fill)
        return torch.cat([fill, y[:, :-1]], 1), y

    def audio_logits(self, h, text, codes):
        """Teacher forcing: states h [N, D], the step's text tokens [N] and codes [N, K] -> logits
        [N, K, card]. Parallel heads read h alone: the delays put the frame's text and lower codebooks
        in h's input already."""
        if self.depth is None:
            return torch.stack([head(h) for head in self.audio_heads], 1).float()
        return self.depth(h, text if self.text else torch.zeros_like(text), codes)

    def forward(self, inputs, targets=None, kv_cache=None):
        """inputs [B, T, S] -> (text logits [B, T, V] (None without text), temporal states [B, T, D]);
        with targets [B, T, S], also the loss terms {text, audio, loss, audio_k ...} (audio from the
        depth transformer or the parallel heads under teacher forcing). Text-only batches: audio
        streams ZERO, no audio loss. Without text: no text term."""
        h = self.transformer(self.embed(inputs), kv_cache=kv_cache)
        logits = self.text_head(h).float() if self.text else None
        if targets is None:
            return logits, h
        tt, losses = targets[..., 0], {}
        if self.text:
            text_ce = F.cross_entropy(logits.flatten(0, 1), tt.flatten().clamp(max=self.vocab_size - 1),
                                      reduction="none")
            w = self.text_weights[tt.clamp(max=self.vocab_size - 1)] * (tt < self.vocab_size)
            losses["text"] = (text_ce * w.flatten()).sum() / w.sum().clamp(min=1)
        codes = targets[..., 1:1 + self.n_q]
        if (codes >= 0).any():   # not a text-only batch
            N = h.shape[0] * h.shape[1]
            audio_logits = self.audio_logits(h.reshape(N, -1), tt.reshape(N), codes.reshape(N, -1))
            ce = F.cross_entropy(audio_logits.flatten(0, 1), codes.reshape(-1).clamp(0, self.card - 1),
                                 reduction="none").view(N, self.n_q)
            mask = (codes.reshape(N, -1) < self.card).float()     # INIT targets: nothing to predict
            per_q = (ce * mask).sum(0) / mask.sum(0).clamp(min=1)
            losses.update({f"audio_{k}": per_q[k] for k in range(self.n_q)})
            losses["audio"] = (per_q * self.codebook_weights).sum()
        assert losses, "a text-only batch for a model without text"
        losses["loss"] = losses.get("text", 0) + losses.get("audio", 0)
        return logits, h, losses

    # --- streaming generation ----------------------------------------------------------------------

    def new_state(self, batch_size):
        """Everything a conversation carries from one step to the next, as explicit tensors."""
        dev, K, S = self.init_tokens.device, self.n_q, 1 + 2 * self.n_q
        D = max(self.delays)
        return dict(
            cache=self.transformer.new_kv_cache(batch_size, self.context, dev),
            inputs=torch.zeros(batch_size, self.context, S, dtype=torch.long, device=dev),  # fed so far (sliding window)
            prev=self.init_tokens.expand(batch_size, S).clone(),          # the next input column
            user=torch.zeros(batch_size, D + 1, K, dtype=torch.long, device=dev),   # last D+1 user frames (undelayed)
            out=torch.zeros(batch_size, D + 1, K, dtype=torch.long, device=dev),    # last D+1 assistant columns (delayed)
            t=0)

    def _feed(self, state, cols):
        """Run the temporal stack on input columns [B, n, S], sliding the window when it is full."""
        cache, n = state["cache"], cols.shape[1]
        if cache.length + n > self.context:
            keep = self.context // 2 - n
            assert keep > 0, "feed fewer columns at once than half the context"
            old = state["inputs"][:, cache.length - keep:cache.length].clone()
            # a window opens with INIT, as every training window does (a stream with no input stays ZERO)
            old[:, 0] = torch.where(old[:, 0] == ZERO, ZERO, self.init_tokens)
            cache.reset()
            state["inputs"][:, :keep] = old
            self.transformer(self.embed(old), kv_cache=cache)
        L = cache.length
        past = state["inputs"][:, max(0, L - self.ear_frames):L] if self.ear_frames else None
        state["inputs"][:, L:L + n] = cols
        return self.transformer(self.embed(cols, past), kv_cache=cache)

    def _user_column(self, state):
        """The user's delayed column of step t: codebook k of frame t - delays[k] (INIT before 0)."""
        K, D, t = self.n_q, max(self.delays), state["t"]
        col = []
        for k, d in enumerate(self.delays[1 + K:]):
            col.append(state["user"][:, D - d, k] if t - d >= 0 else torch.full_like(state["user"][:, 0, k], self.card))
        return torch.stack(col, 1)

    @torch.no_grad()
    def prefill(self, state, x):
        """Teacher-force a conversation's first steps: x [B, T, S] undelayed tokens of steps 0..T-1
        (text, assistant, user), as if step() had produced and heard them. Then step() goes on."""
        assert state["t"] == 0, "prefill opens a conversation"
        inputs, y = self.inputs_targets(x)
        self._feed(state, inputs)
        K, D, T = self.n_q, max(self.delays), x.shape[1]
        state["prev"] = y[:, -1].clone()
        for j in range(D + 1):  # the delay buffers hold the last D+1 frames / columns
            i = T - 1 - D + j
            if i >= 0:
                state["user"][:, j] = x[:, i, 1 + K:]
                state["out"][:, j] = y[:, i, 1:1 + K]
        state["t"] = T

    @torch.no_grad()
    def step(self, state, user_codes, text_temp=0.7, text_top_k=25, audio_temp=0.8, audio_top_k=250,
             force_text=None, force_audio=None, parallel_decoding=False):
        """One 80 ms step. user_codes [B, K]: the user's codes of frame t. Returns a dict:
        text [B] the text token of step t; audio [B, K] the assistant's complete codes of frame
        t - max(delays) (None for the first steps); text_logits, audio_logits (for the tests).
        Without text: text and text_logits None.
        force_text [B] / force_audio [B, K] (delayed column, -1 = sample): teacher forcing.
        parallel_decoding (Mini-Omni): rows [B/2:] are text-only copies of rows [:B/2]; their text
        is both halves' text, and their own audio stays ZERO (they never speak)."""
        assert self.text or not parallel_decoding, "batch parallel decoding needs a text stream"
        K, D, t = self.n_q, max(self.delays), state["t"]
        tick = time.perf_counter()
        if parallel_decoding:     # the text-only copies never hear a voice of their own, INIT included
            state["prev"][state["prev"].shape[0] // 2:, 1:1 + K] = ZERO
        h = self._feed(state, state["prev"][:, None])[:, 0]
        B, text_logits = h.shape[0], None
        text = torch.full((B,), ZERO, dtype=torch.long, device=h.device)   # without text its column stays ZERO
        if self.text:
            text_logits = self.text_head(h).float()
            text = sample_logits(text_logits, text_temp, text_top_k)
            if force_text is not None:
                text = torch.where(force_text >= 0, force_text, text)
            if parallel_decoding:   # the speaking copy says what the text-only copy writes
                text = text[B // 2:].repeat(2)
        # a delayed codebook has nothing to say before its delay has passed: INIT, as in training
        force = torch.full((h.shape[0], K), -1, dtype=torch.long, device=h.device)
        for k, d in enumerate(self.delays[1:1 + K]):
            if t < d:
                force[:, k] = self.card
        if force_audio is not None:
            force = torch.where(force_audio >= 0, force_audio, force)
        tock = time.perf_counter()
        if self.depth is None:   # parallel heads: the step's K codes at once, each from h alone
            audio_logits = self.audio_logits(h, text, None)
            codes = sample_logits(audio_logits.flatten(0, 1), audio_temp, audio_top_k).view(B, K)
            codes = torch.where(force >= 0, force, codes)
        else:
            codes, audio_logits = self.depth.generate(h, text.clamp(min=0), audio_temp, audio_top_k, force)
        if parallel_decoding:
            codes[B // 2:] = ZERO
        if "seconds" in state:  # the live loop's cost split (duplex.live): temporal stack vs depth (or parallel) heads
            state["seconds"]["temporal"] += tock - tick
            state["seconds"]["depth"] += time.perf_counter() - tock
        # the user's frame t joins the buffer; the column of step t becomes the next input
        state["user"] = torch.cat([state["user"][:, 1:], user_codes[:, None]], 1)
        state["out"] = torch.cat([state["out"][:, 1:], codes[:, None]], 1)
        state["prev"] = torch.cat([text[:, None], codes, self._user_column(state)], 1)
        state["t"] = t + 1
        frame = None
        if t >= D:  # frame t - D is complete: codebook k came out at step t - D + delays[k]
            frame = torch.stack([state["out"][:, d, k] for k, d in enumerate(self.delays[1:1 + K])], 1)
        return dict(text=text if self.text else None, audio=frame, text_logits=text_logits, audio_logits=audio_logits)

    @torch.no_grad()
    def generate_text(self, idx, max_new_tokens, temperature=0.0, top_k=None, stop=None):
        """Text-only mode (every audio stream ZERO): the text LM inside the dual-stream model,
        with textlm.TextLM.generate's interface, for the text-retention measurement."""
        if not self.text:
            raise ValueError("a model without a text stream (text=False) has no text-only mode")
        B, T = idx.shape
        cache = self.transformer.new_kv_cache(B, min(self.context, T + max_new_tokens), idx.device)
        zeros = torch.full((B, 1, 2 * self.n_q), ZERO, dtype=torch.long, device=idx.device)
        step_in, out = idx, []
        done = torch.zeros(B, dtype=torch.bool, device=idx.device)
        for _ in range(min(max_new_tokens, self.context - T)):
            cols = torch.cat([step_in[..., None], zeros.expand(-1, step_in.shape[1], -1)], 2)
            logits, _ = self(cols, kv_cache=cache)
            nxt = sample_logits(logits[:, -1], temperature, top_k)
            if stop is not None:
                nxt = torch.where(done, torch.full_like(nxt, stop), nxt)
                done |= nxt == stop
            out.append(nxt)
            if stop is not None and done.all():
                break
            step_in = nxt[:, None]
        return torch.stack(out, 1)


def load_model(path, device="cpu"):
    return utils.load_model(DualStream, path, device)
