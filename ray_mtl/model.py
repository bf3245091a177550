"""Transformers: encoder-decoder for translation (with greedy and beam decoding), decoder-only
for language modelling.

    model = Transformer(ModelConfig(preset="small"), vocab_size=8000)
    logits = model(src, tgt_in)                      # [B, T, V]; tgt_in = [BOS] + tgt[:-1]
    loss_sum, n_tokens = loss_fn(logits, tgt_out)    # summed, so ranks/tasks can be averaged
    hyps = translate(model, src, beam_size=4)        # list of id lists, without BOS/EOS
    lm = DecoderLM(ModelConfig(preset="gpt2"), vocab_size=32000)
    logits = lm(tgt_in)                              # [B, T, V]; tgt_in = [BOS] + doc[:-1]
    model = new_model("lm", cfg, vocab_size)         # the model of a task kind

Pre-LN blocks, one embedding matrix shared by source, target and the output projection,
sinusoidal positions (no parameters), and ``F.scaled_dot_product_attention`` everywhere (the
LM's layers are the encoder's, causal, and it ends in the same tied projection). Every
parameter takes part in ``forward`` (DDP without ``find_unused_parameters``); nothing in
``forward`` breaks ``torch.compile`` or bf16 autocast. Decoding feeds one token at a time through
a key/value cache.

Token ids (``ray_mtl.data.tokenizer``): PAD 0 (ignored by the loss and masked out of attention),
BOS 2, EOS 3. Sequences are right-padded. Packed rows (several pairs or documents per row, see
``sampler``) come with segment ids: attention stays within a pair or document and positions
restart at each.

Precision and mode policy, for training and evaluation alike: ``autocast(device)`` (bf16 on
CUDA, off elsewhere; losses are computed in float32) and ``eval_mode(model)`` (no dropout, no
gradients, the model's mode given back).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from ray_mtl.config import ModelConfig
from ray_mtl.data.tokenizer import BOS, EOS, PAD

# A decoding cache: one dict per decoder layer, holding "self" and "cross" (keys, values).
Cache = list[dict[str, tuple[torch.Tensor, torch.Tensor]]]


class Attention(nn.Module):
    """Multi-head attention; keys/values are projected separately so they can be cached."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.dropout = cfg.attention_dropout
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(x).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(
        self,
        x: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """x: queries [B, T, D]; kv: from ``project_kv``; mask: [B, 1, 1, S], True = attend."""
        k, v = kv
        y = F.scaled_dot_product_attention(
            self._heads(self.q(x)),
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )
        return self.out(y.transpose(1, 2).flatten(2))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    """Pre-LN self-attention and feed-forward: an encoder layer, or (causal) a layer of the
    decoder-only LM."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, is_causal: bool = False
    ) -> torch.Tensor:
        h = self.ln1(x)
        kv = self.attn.project_kv(h)
        x = x + self.drop(self.attn(h, kv, mask=mask, is_causal=is_causal))
        return x + self.drop(self.mlp(self.ln2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.self_attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.cross_attn = Attention(cfg)
        self.ln3 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        mask: torch.Tensor,
        cache: dict | None = None,
        self_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """mask: cross-attention [B, 1, 1 or T, S]; self_mask: packed rows only, else causal."""
        h = self.ln1(x)
        kv = self.self_attn.project_kv(h)
        if cache is not None:
            if "self" in cache:
                kv = tuple(torch.cat(pair, dim=2) for pair in zip(cache["self"], kv, strict=True))
            cache["self"] = kv
        # With a cache, x is the single newest token: it may attend to every cached position.
        causal = cache is None and self_mask is None
        x = x + self.drop(self.self_attn(h, kv, mask=self_mask, is_causal=causal))
        if cache is not None and "cross" in cache:
            cross_kv = cache["cross"]
        else:
            cross_kv = self.cross_attn.project_kv(memory)
            if cache is not None:
                cache["cross"] = cross_kv
        x = x + self.drop(self.cross_attn(self.ln2(x), cross_kv, mask=mask))
        return x + self.drop(self.mlp(self.ln3(x)))


def same_segment(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Attention mask [B, 1, Tq, Tk] of packed rows: a position sees its own pair's positions.

    PAD positions (segment 0) see everything, so that no row of the softmax is empty (NaN).
    """
    return ((q[:, :, None] == k[:, None, :]) | (q == 0)[:, :, None])[:, None]


def segment_positions(seg: torch.Tensor) -> torch.Tensor:
    """Positions that restart at 0 where the segment id changes: [B, T] -> [B, T]."""
    idx = torch.arange(seg.size(1), device=seg.device).expand_as(seg)
    starts = torch.ones_like(seg, dtype=torch.bool)
    starts[:, 1:] = seg[:, 1:] != seg[:, :-1]
    return idx - torch.where(starts, idx, 0).cummax(dim=1).values


def sinusoids(length: int, dim: int) -> torch.Tensor:
    """The fixed position table of Vaswani et al. (2017): [length, dim]."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


class _Tied(nn.Module):
    """What both models share: the token embedding, which is also the output projection after
    ``decoder_ln``, the fixed positions, and the initialisation."""

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.register_buffer("pos", sinusoids(cfg.max_len, cfg.d_model), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)

    def _init_weights(self, module: nn.Module) -> None:
        # Called by the subclass once every layer exists (layers register in the same order).
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.Embedding):
            # Unit-variance inputs after the sqrt(d_model) scale.
            nn.init.normal_(module.weight, std=self.cfg.d_model**-0.5)

    def _embed(self, ids: torch.Tensor, start: int = 0, seg: torch.Tensor | None = None):
        end = start + ids.size(1)
        if end > self.cfg.max_len:
            raise ValueError(f"sequence of {end} tokens exceeds model max_len={self.cfg.max_len}")
        pos = self.pos[start:end] if seg is None else self.pos[segment_positions(seg)]
        return self.drop(self.embed(ids) * math.sqrt(self.cfg.d_model) + pos)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        # Tied weights: scale back by 1/sqrt(d_model) (as T5 does), so that logits start near
        # zero instead of favouring a copy of the input token.
        x = self.decoder_ln(x) * self.cfg.d_model**-0.5
        return F.linear(x, self.embed.weight)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class Transformer(_Tied):
    """The encoder-decoder of translation."""

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__(cfg, vocab_size)
        self.encoder = nn.ModuleList(Block(cfg) for _ in range(cfg.encoder_layers))
        self.encoder_ln = nn.LayerNorm(cfg.d_model)
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.decoder_ln = nn.LayerNorm(cfg.d_model)
        self.apply(self._init_weights)

    def encode(
        self, src: torch.Tensor, seg: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """src [B, S] -> (memory [B, S, D], src_pad_mask [B, S], True at PAD)."""
        src_pad_mask = src == PAD
        mask = ~src_pad_mask[:, None, None, :] if seg is None else same_segment(seg, seg)
        x = self._embed(src, seg=seg)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.encoder_ln(x), src_pad_mask

    def decode(
        self,
        tgt_in: torch.Tensor,
        memory: torch.Tensor,
        src_pad_mask: torch.Tensor,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        """tgt_in [B, T] -> logits [B, T, V], causally masked.

        With a ``cache`` (from ``new_cache``), ``tgt_in`` is the one next token [B, 1] and the
        cache grows by it.
        """
        start = cache[0]["self"][0].size(2) if cache and "self" in cache[0] else 0
        mask = ~src_pad_mask[:, None, None, :]
        x = self._embed(tgt_in, start)
        for i, layer in enumerate(self.decoder):
            x = layer(x, memory, mask, None if cache is None else cache[i])
        return self._logits(x)

    def forward(
        self,
        src: torch.Tensor,
        tgt_in: torch.Tensor,
        src_seg: torch.Tensor | None = None,
        tgt_seg: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, V]; ``src_seg``/``tgt_seg`` (both or neither) for packed rows."""
        memory, src_pad_mask = self.encode(src, src_seg)
        if src_seg is None:
            return self.decode(tgt_in, memory, src_pad_mask)
        causal = torch.ones(tgt_in.size(1), tgt_in.size(1), dtype=torch.bool, device=src.device)
        self_mask = same_segment(tgt_seg, tgt_seg) & causal.tril()
        cross = same_segment(tgt_seg, src_seg)
        x = self._embed(tgt_in, seg=tgt_seg)
        for layer in self.decoder:
            x = layer(x, memory, cross, self_mask=self_mask)
        return self._logits(x)

    def new_cache(self) -> Cache:
        return [{} for _ in self.decoder]


class DecoderLM(_Tied):
    """The decoder-only language model: ``decoder_layers`` causal self-attention blocks."""

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__(cfg, vocab_size)
        self.decoder = nn.ModuleList(Block(cfg) for _ in range(cfg.decoder_layers))
        self.decoder_ln = nn.LayerNorm(cfg.d_model)
        self.apply(self._init_weights)

    def forward(self, ids: torch.Tensor, seg: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V] of the next token at every position of ``ids`` [B, T] (right-padded;
        with ``seg`` [B, T], packed rows: attention within a document, positions per document)."""
        mask = None  # unpacked: causal alone (padding is only ever after a row's tokens)
        if seg is not None:
            causal = torch.ones(ids.size(1), ids.size(1), dtype=torch.bool, device=ids.device)
            mask = same_segment(seg, seg) & causal.tril()
        x = self._embed(ids, seg=seg)
        for layer in self.decoder:
            x = layer(x, mask, is_causal=mask is None)
        return self._logits(x)


def new_model(kind: str, cfg: ModelConfig, vocab_size: int) -> Transformer | DecoderLM:
    """The model of a task kind: the encoder-decoder for translation, the decoder-only LM for lm."""
    return (DecoderLM if kind == "lm" else Transformer)(cfg, vocab_size)


def loss_fn(
    logits: torch.Tensor, tgt_out: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed token cross-entropy, number of non-PAD tokens), both 0-d tensors.

    Sums rather than means so that callers can all-reduce both and divide once.
    """
    return token_losses(logits, tgt_out, label_smoothing).sum(), (tgt_out != PAD).sum()


def token_losses(
    logits: torch.Tensor, tgt_out: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy of every target position [B, T], in float32; 0 at PAD."""
    return F.cross_entropy(
        logits.float().flatten(0, 1),
        tgt_out.flatten(),
        ignore_index=PAD,
        reduction="none",
        label_smoothing=label_smoothing,
    ).view_as(tgt_out)


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA (training and evaluation alike); off elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Evaluate or decode without dropout or gradients, then give the model back in the mode
    it came in."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _strip(tokens: torch.Tensor) -> list[list[int]]:
    """Generated ids [B, T] -> per-sentence lists, cut before the first EOS."""
    out = []
    for row in tokens.tolist():
        out.append(row[: row.index(EOS)] if EOS in row else row)
    return out


def greedy_decode(model: Transformer, src: torch.Tensor, max_len: int) -> list[list[int]]:
    """Most likely next token at each step, for a batch; at most ``max_len`` tokens (EOS too)."""
    with eval_mode(model):
        memory, src_pad_mask = model.encode(src)
        cache = model.new_cache()
        token = torch.full((src.size(0), 1), BOS, dtype=torch.long, device=src.device)
        done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
        out = []
        for _ in range(min(max_len, model.cfg.max_len)):
            logits = model.decode(token, memory, src_pad_mask, cache)[:, -1]
            token = logits.argmax(-1).masked_fill(done, PAD)
            out.append(token)
            done |= token == EOS
            if done.all():
                break
            token = token[:, None]
        return _strip(torch.stack(out, dim=1))


def beam_decode(
    model: Transformer,
    src: torch.Tensor,
    beam_size: int,
    max_len: int,
    length_penalty: float = 1.0,
) -> list[list[int]]:
    """Beam search for a batch; the best beam by ``log p / length ** length_penalty``.

    Length counts the generated tokens, EOS included; ``length_penalty=0`` ranks by log-prob.
    A finished beam keeps its place and score while the others go on, until all are finished.
    """
    b, k = src.size(0), beam_size
    device = src.device
    with eval_mode(model):
        memory, src_pad_mask = model.encode(src)
        memory = memory.repeat_interleave(k, dim=0)
        src_pad_mask = src_pad_mask.repeat_interleave(k, dim=0)
        cache = model.new_cache()
        # Every beam starts as the same [BOS]: expand only the first, or the top-k are copies.
        scores = torch.full((b, k), -math.inf, device=device)
        scores[:, 0] = 0.0
        tokens = torch.zeros(b * k, 0, dtype=torch.long, device=device)
        lengths = torch.zeros(b * k, device=device)
        done = torch.zeros(b * k, dtype=torch.bool, device=device)
        last = torch.full((b * k, 1), BOS, dtype=torch.long, device=device)
        offsets = torch.arange(b, device=device)[:, None] * k
        for _ in range(min(max_len, model.cfg.max_len)):
            logits = model.decode(last, memory, src_pad_mask, cache)[:, -1]
            logp = logits.float().log_softmax(-1)
            # A finished beam has one continuation (PAD) at no cost, so its score stays put.
            logp[done] = -math.inf
            logp[done, PAD] = 0.0
            vocab = logp.size(-1)
            scores, flat = (scores.view(-1, 1) + logp).view(b, k * vocab).topk(k, dim=-1)
            beam = (flat // vocab + offsets).view(-1)
            token = (flat % vocab).view(-1)
            tokens = torch.cat([tokens[beam], token[:, None]], dim=1)
            lengths = lengths[beam] + (~done[beam]).float()
            done = done[beam] | (token == EOS)
            for layer in cache:
                # Cross-attention keys are the same for every beam of a sentence: no reorder.
                layer["self"] = tuple(t[beam] for t in layer["self"])
            if done.all():
                break
            last = token[:, None]
        ranked = scores / lengths.view(b, k).clamp(min=1) ** length_penalty
        best = ranked.argmax(-1) + offsets.view(-1)
        return _strip(tokens[best])


def translate(
    model: Transformer, src: torch.Tensor, beam_size: int = 1, max_len: int | None = None
) -> list[list[int]]:
    """Greedy (``beam_size=1``) or beam search; ``max_len`` defaults to 2 * source + 10."""
    if max_len is None:
        max_len = 2 * src.size(1) + 10
    if beam_size == 1:
        return greedy_decode(model, src, max_len)
    return beam_decode(model, src, beam_size, max_len)
