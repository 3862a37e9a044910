"""Text app: fine-tuning the encoder's top layers on cached states, context pooling, optimiser groups, schedule."""

from __future__ import annotations

import pytest
import torch

from seqmix.apps.text.embeddings import ContextEncoder
from seqmix.apps.text.model import ContextTop, EmotionRegressor, linear_warmup_decay

TEXTS = ["Bombers kill shoppers", "Goal delight for Sheva", "Lottery winner shocked by his luck again"]


@pytest.fixture(scope="module")
def full_states():
    torch.manual_seed(0)
    return ContextEncoder(max_len=16).encode(TEXTS)


@pytest.mark.parametrize("k", [2, 6])
def test_context_top_on_cached_states_equals_the_full_encoder(full_states, k):
    """States cached below the top k layers, then those k layers (as the model holds them) = the whole encoder."""
    below, mask = ContextEncoder(max_len=16, skip_top=k).encode(TEXTS)
    full, full_mask = full_states
    assert torch.equal(mask, full_mask) and not torch.allclose(below[mask], full[mask])
    top = ContextTop(k).eval()
    assert top.layers[0].training is False and len(top.layers) == k
    with torch.no_grad():
        out = top(below, mask)
    torch.testing.assert_close(out[mask], full[mask], rtol=1e-4, atol=1e-4)  # padding rows are never read
    assert ContextTop(k).layers[0].training  # fresh: trainable (dropout on), unlike load_encoder's eval mode


def test_lora_context_top_starts_as_the_encoder_and_trains_only_its_adapters(full_states):
    """LoRA (B = 0 at init) leaves the pretrained function unchanged; only the adapters take gradients."""
    below, mask = ContextEncoder(max_len=16, skip_top=2).encode(TEXTS)
    top = ContextTop(2, lora_rank=4).eval()
    with torch.no_grad():
        out = top(below, mask)
    torch.testing.assert_close(out[mask], full_states[0][mask], rtol=1e-4, atol=1e-4)
    trainable = {n for n, p in top.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 2 * 6 * 2  # A and B for the 6 linear maps of each of the 2 layers
    top.train()(below, mask)[mask].sum().backward()
    assert all((p.grad is not None) == p.requires_grad for p in top.parameters())
    with pytest.raises(ValueError, match="context_lora_rank must be >= 0"):
        ContextTop(2, lora_rank=-1)


def _model(**kw):
    return EmotionRegressor(word_dim=0, context_dim=384, fusion_hidden=8, **kw)


@pytest.mark.parametrize("pool", ["mean", "cls", "attention"])
def test_context_pool_options(full_states, pool):
    states, mask = full_states
    model = _model(context_pool=pool).eval()
    pooled = model.pool_context(states, mask)
    assert pooled.shape == (3, 384)
    expected = {"mean": (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), "cls": states[:, 0]}
    if pool in expected:
        torch.testing.assert_close(pooled, expected[pool])
    else:  # attention: a convex combination of the unmasked token states only
        padded = states.masked_fill(~mask[..., None], 1e6)  # huge values on padding must not leak in
        torch.testing.assert_close(model.pool_context(padded, mask), pooled)
        assert model.context_attn is not None
    pred, _ = model({"context": states, "context_mask": mask})
    torch.testing.assert_close(pred.sum(-1), torch.ones(3))


class _Trainer:  # what configure_optimizers reads from the trainer
    estimated_stepping_batches = 20


def test_param_groups_and_linear_schedule():
    model = _model(context_trainable_layers=2, lr=1e-3, context_lr=3e-5, lr_schedule="linear", warmup_ratio=0.1)
    model.trainer = _Trainer()
    conf = model.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    top = {id(p) for p in model.context_top.parameters()}
    head, *enc = opt.param_groups  # the head, then one group per fine-tuned encoder layer (bottom to top)
    assert len(enc) == 2 and [g["initial_lr"] for g in enc] == [3e-5, 3e-5]  # context_lr_decay 1: one rate
    assert {id(p) for g in enc for p in g["params"]} == top and not top & {id(p) for p in head["params"]}
    assert len(head["params"]) + sum(len(g["params"]) for g in enc) == len(list(model.parameters()))
    assert conf["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(20):
        lrs.append((opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]))
        opt.step()
        sched.step()
    # warm-up over 2 steps (0.1 x 20), peak at step 1, then linear decay towards 0
    assert lrs[0] == pytest.approx((0.5e-3, 1.5e-5)) and lrs[1] == pytest.approx((1e-3, 3e-5))
    assert lrs[2][0] == pytest.approx(1e-3 * 18 / 18) and lrs[-1][0] == pytest.approx(1e-3 / 18)
    assert all(a[0] > b[0] for a, b in zip(lrs[2:], lrs[3:]))
    assert isinstance(_model().configure_optimizers(), torch.optim.AdamW)  # constant: no scheduler
    assert linear_warmup_decay(10, 0.0)(0) == 1.0  # no warm-up: the full rate from the first step


def test_layerwise_lr_decay():
    model = _model(context_trainable_layers=3, context_lr=1e-4, context_lr_decay=0.5)
    _, *enc = model.configure_optimizers().param_groups
    assert [g["lr"] for g in enc] == pytest.approx([2.5e-5, 5e-5, 1e-4])  # bottom to top
    assert [{id(p) for p in g["params"]} for g in enc] == [{id(p) for p in layer.parameters()}
                                                           for layer in model.context_top.layers]
    with pytest.raises(ValueError, match="context_lr_decay must be in"):
        _model(context_trainable_layers=3, context_lr_decay=0.0)


def test_finetune_argument_errors():
    with pytest.raises(ValueError, match="context_pool='max' is unknown"):
        _model(context_pool="max")
    with pytest.raises(ValueError, match="warmup_ratio > 0 needs lr_schedule: linear"):
        _model(warmup_ratio=0.1)
    with pytest.raises(ValueError, match="0 <= warmup_ratio < 1"):
        _model(lr_schedule="linear", warmup_ratio=1.0)
    with pytest.raises(ValueError, match=r"context_trainable_layers must be in \[0, 6\], got 7"):
        _model(context_trainable_layers=7)
    with pytest.raises(ValueError, match="at least 1 training step"):
        linear_warmup_decay(0, 0.1)


def test_length_buckets_cover_every_row_once_and_group_similar_lengths():
    from seqmix.apps.text.data import LengthBuckets

    torch.manual_seed(0)
    lengths = torch.randint(3, 30, (203,))
    sampler = LengthBuckets(lengths, batch_size=8, pool=4)
    first, second = list(sampler), list(sampler)
    assert len(first) == len(sampler) == 26
    assert sorted(i for b in first for i in b) == list(range(203)) and all(1 <= len(b) <= 8 for b in first)
    assert first != second  # reshuffled each epoch
    spread = torch.tensor([float(lengths[b].max() - lengths[b].min()) for b in first]).mean()
    random_spread = torch.tensor([float(lengths[b].max() - lengths[b].min())
                                  for b in torch.randperm(203).split(8)]).mean()
    assert spread < random_spread / 2  # batches pad to about their own length


def test_lora_checkpoint_leaves_out_the_frozen_encoder_and_loads_back(full_states, tmp_path):
    """A LoRA model's checkpoint holds what training changed; loading it restores the same model."""
    import pytorch_lightning as pl

    states, mask = full_states
    model = _model(context_trainable_layers=2, context_lora_rank=4).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0.0, 0.05)  # trained adapters: not the identity any more
        expected, _ = model({"context": states, "context_mask": mask})
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                  "pytorch-lightning_version": pl.__version__}
    frozen = model.frozen_pretrained_keys()
    assert frozen and all(".base_layer." in k or "LayerNorm" in k for k in frozen)
    model.on_save_checkpoint(checkpoint)
    assert not set(frozen) & set(checkpoint["state_dict"])
    stored = sum(v.numel() for v in checkpoint["state_dict"].values())
    assert stored < sum(v.numel() for v in model.state_dict().values()) / 5
    torch.save(checkpoint, tmp_path / "lora.ckpt")
    loaded = EmotionRegressor.load_from_checkpoint(tmp_path / "lora.ckpt", weights_only=True).eval()
    with torch.no_grad():
        got, _ = loaded({"context": states, "context_mask": mask})
    torch.testing.assert_close(got, expected)
    full = _model(context_trainable_layers=2)  # full fine-tuning: every weight is stored
    assert full.frozen_pretrained_keys() == []
