"""The five generic tests of DESIGN.md, parametrized over every registered mixer.

Registering a mixer (with its ``test_configs``) adds it here; nothing to edit.
"""

from __future__ import annotations

import copy

import pytest
import torch

from seqmix.core import build_mixer, get_mixer_class, list_mixers
from seqmix.core.mixer import ContextCache, KVCache

D_MODEL = 32
B = 2


def _cases():
    for name in list_mixers():
        cls = get_mixer_class(name)
        for i, cfg in enumerate(cls.test_configs):
            yield pytest.param(name, dict(cfg), id=f"{name}-{i}")


CASES = list(_cases())


def _patterns(name):
    return sorted(get_mixer_class(name).patterns)


def _build(name, cfg, pattern, seed=0):
    torch.manual_seed(seed)
    cfg = dict(cfg)
    cfg["causal"] = pattern.startswith("causal")
    return build_mixer(name, D_MODEL, **cfg)


def _inputs(t, pattern, dtype=torch.float32, seed=1, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(B, t, D_MODEL, generator=g) * scale).to(dtype)
    context = (torch.randn(B, t, D_MODEL, generator=g) * scale).to(dtype) if pattern.endswith("cross") else None
    return x, context


def _cpu_impls(cls):
    return [i for i in cls.impls if i != "triton"]


# 1. shapes and dtypes on odd lengths ------------------------------------------------------
@pytest.mark.parametrize("name,cfg", CASES)
@pytest.mark.parametrize("t", [1, 63, 200])
def test_shapes_and_dtypes(name, cfg, t):
    cls = get_mixer_class(name)
    for pattern in _patterns(name):
        mixer = _build(name, cfg, pattern)
        for dtype in cls.test_dtypes:
            m = copy.deepcopy(mixer).to(dtype)
            x, context = _inputs(t, pattern, dtype)
            with torch.no_grad():
                y = m(x, context=context)
            assert y.shape == x.shape, f"{name} {pattern} {dtype}: {tuple(y.shape)} != {tuple(x.shape)}"
            assert y.dtype == dtype, f"{name} {pattern}: output dtype {y.dtype} != input dtype {dtype}"
            assert torch.isfinite(y.float()).all(), f"{name} {pattern} {dtype}: non-finite output"


# 2. causality ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,cfg", [c for c in CASES if any(p.startswith("causal") for p in _patterns(c.values[0]))])
def test_causality(name, cfg):
    t, cut = 63, 30
    causal_patterns = [p for p in _patterns(name) if p.startswith("causal")]
    for pattern in causal_patterns:
        mixer = _build(name, cfg, pattern).eval()
        x, context = _inputs(t, pattern)
        x2 = x.clone()
        x2[:, cut + 1 :] += torch.randn_like(x2[:, cut + 1 :])
        context2 = None
        if context is not None:
            context2 = context.clone()
            context2[:, cut + 1 :] += torch.randn_like(context2[:, cut + 1 :])
        with torch.no_grad():
            for impl in _cpu_impls(type(mixer)):
                mixer.impl = impl
                y, y2 = mixer(x, context=context), mixer(x2, context=context2)
                diff = (y[:, : cut + 1] - y2[:, : cut + 1]).abs().max().item()
                assert diff < 1e-5, f"{name} {pattern} impl={impl}: the past changed by {diff} when the future did"
                assert (y[:, cut + 1 :] - y2[:, cut + 1 :]).abs().max() > 0, f"{name}: output ignores its input"


# 3. pieces: whole == two halves with the state carried == step by step --------------------
def _stepping(name):
    """Mixers whose step equals their forward (every causal mixer but ProbSparse: test_probsparse.py)."""
    cls = get_mixer_class(name)
    return "causal_self" in cls.patterns and cls.step_matches_forward


def _step_through(mixer, x, state):
    """``x: [B, T, D]`` one token at a time from ``state``: ``([B, T, D], final state)``."""
    steps = []
    for i in range(x.shape[1]):
        y_t, state = mixer.step(x[:, i], state)
        steps.append(y_t)
    return (torch.stack(steps, 1) if steps else x.new_zeros(x.shape)), state


@pytest.mark.parametrize("name,cfg", [c for c in CASES if _stepping(c.values[0])])
def test_pieces_and_step(name, cfg, assert_rel_close):
    t, cut = 63, 29
    mixer = _build(name, cfg, "causal_self").eval()
    x, _ = _inputs(t, "causal_self")
    with torch.no_grad():
        for impl in _cpu_impls(type(mixer)):
            mixer.impl = impl
            y_whole, s_whole = mixer(x, return_state=True)
            y1, s1 = mixer(x[:, :cut], return_state=True)
            y2, s2 = mixer(x[:, cut:], state=s1, return_state=True)
            assert_rel_close(torch.cat([y1, y2], 1), y_whole, 1e-5, f"{name} impl={impl} two pieces")
            y0 = mixer(x, state=mixer.init_state(B, x.device, x.dtype))
            assert_rel_close(y0, y_whole, 1e-5, f"{name} impl={impl} explicit initial state")
        y_steps, _ = _step_through(mixer, x, mixer.init_state(B, x.device, x.dtype))
        assert_rel_close(y_steps, y_whole, 1e-5, f"{name} step by step")
    if mixer.recurrent:
        assert mixer.state_size(t) == mixer.state_size(2 * t), f"{name}: a recurrent state must not grow with T"
    else:
        assert mixer.state_size(2 * t) > mixer.state_size(t), f"{name}: a KV cache grows with T"


@pytest.mark.parametrize("name,cfg", [c for c in CASES if _stepping(c.values[0])])
@pytest.mark.parametrize("t", [1, 7, 13])
def test_step_equals_forward(name, cfg, t, assert_rel_close):
    """Token by token from init_state, and a prompt prefilled by one forward then stepped, equal forward."""
    mixer = _build(name, cfg, "causal_self").eval()
    x, _ = _inputs(t, "causal_self")
    cut = (t + 1) // 2
    with torch.no_grad():
        y = mixer(x)
        y_steps, state = _step_through(mixer, x, mixer.init_state(B, x.device, x.dtype))
        assert_rel_close(y_steps, y, 1e-5, f"{name} T={t} step by step")
        y_prompt, prefilled = mixer(x[:, :cut], return_state=True)
        y_rest, _ = _step_through(mixer, x[:, cut:], prefilled)
        assert_rel_close(torch.cat([y_prompt, y_rest], 1), y, 1e-5, f"{name} T={t} prefill {cut} then step")
    if isinstance(state, KVCache):  # the cache holds what state_size says: a key and a value per token
        assert 2 * state.keys[0].numel() == mixer.state_size(t), f"{name}: state_size({t}) is not the cache's size"


@pytest.mark.parametrize("name", ["softmax", "sigmoid_attention", "relu_attention"])
def test_windowed_attention_caches_its_window(name, assert_rel_close):
    """Attention with ``window=W`` steps like its forward while its KV cache keeps only the last W keys."""
    mixer = _build(name, {"n_heads": 2, "window": 4, "rotary": True}, "causal_self").eval()
    x, _ = _inputs(11, "causal_self")
    with torch.no_grad():
        y_prompt, state = mixer(x[:, :6], return_state=True)
        y_rest, state = _step_through(mixer, x[:, 6:], state)
        assert_rel_close(torch.cat([y_prompt, y_rest], 1), mixer(x), 1e-5, f"{name} window 4")
    assert state.keys.shape[2] == 4 and state.seen == 11 and 2 * state.keys[0].numel() == mixer.state_size(11)


@pytest.mark.parametrize("name,cfg", [c for c in CASES if "noncausal_cross" in _patterns(c.values[0])
                                      and get_mixer_class(c.values[0]).step_matches_forward])
@pytest.mark.parametrize("t", [1, 7, 13])
def test_cross_step_equals_forward(name, cfg, t, assert_rel_close):
    """Cross attention steps over the context projected once in init_state (its padding mask kept there)."""
    mixer = _build(name, cfg, "noncausal_cross").eval()
    x, _ = _inputs(t, "noncausal_cross")
    context, _ = _inputs(11, "causal_self", seed=2)
    mask = None
    if mixer.supports_mask:
        mask = torch.ones(B, 11, dtype=torch.bool)
        mask[1, 8:] = False  # the second context is padded
    with torch.no_grad():
        y = mixer(x, context=context, mask=mask)
        state = mixer.init_state(B, x.device, x.dtype, context=context, context_mask=mask)
        assert isinstance(state, ContextCache)
        y_steps, _ = _step_through(mixer, x, state)
        assert_rel_close(y_steps, y, 1e-5, f"{name} T={t} cross step by step")
        y_prefill, returned = mixer(x, context=context, mask=mask, return_state=True)
        assert_rel_close(mixer(x, state=returned), y, 1e-5, f"{name} T={t} forward over the returned context state")


@pytest.mark.parametrize("name,cfg", CASES)
def test_empty_batch(name, cfg):
    """A batch of zero sequences gives an empty output (and state) in every pattern, never an error."""
    for pattern in _patterns(name):
        mixer = _build(name, cfg, pattern)
        x, context = _inputs(5, pattern)
        x, context = x[:0], None if context is None else context[:0]  # [0, 5, D]
        assert mixer(x, context=context).shape == (0, 5, D_MODEL), f"{name} {pattern}"
        if pattern == "causal_self":
            y, state = mixer(x, return_state=True)
            y_t, _ = mixer.step(x[:, 0], state)
            assert y.shape == (0, 5, D_MODEL) and y_t.shape == (0, D_MODEL), f"{name}: empty state or step"


# 4. every implementation equals the naive reference, outputs and all gradients -----------
@pytest.mark.parametrize("name,cfg", [c for c in CASES if len(_cpu_impls(get_mixer_class(c.values[0]))) > 1])
def test_impls_match_naive(name, cfg, assert_rel_close):
    cls = get_mixer_class(name)
    reference, *fast = _cpu_impls(cls)
    for pattern in _patterns(name):
        for t in (63, 200):
            mixer = _build(name, cfg, pattern)
            x, context = _inputs(t, pattern)
            results = {}
            for impl in (reference, *fast):
                mixer.impl = impl
                mixer.zero_grad()
                xi = x.clone().requires_grad_()
                ci = None if context is None else context.clone().requires_grad_()
                y = mixer(xi, context=ci)
                y.backward(torch.sin(torch.arange(y.numel(), dtype=y.dtype)).view_as(y))  # a fixed cotangent
                grads = {"x": xi.grad.clone()}
                if ci is not None:
                    grads["context"] = ci.grad.clone()
                grads.update({n: p.grad.clone() for n, p in mixer.named_parameters() if p.grad is not None})
                results[impl] = (y.detach(), grads)
            y_ref, g_ref = results[reference]
            for impl in fast:
                y_fast, g_fast = results[impl]
                what = f"{name} {pattern} T={t} impl={impl} vs {reference}"
                assert_rel_close(y_fast, y_ref, 1e-5, f"{what}: output")
                assert g_fast.keys() == g_ref.keys(), f"{what}: different parameters got gradients"
                for n in g_ref:
                    assert_rel_close(g_fast[n], g_ref[n], 1e-5, f"{what}: grad {n}")


# 5. finite gradients, long and large inputs ------------------------------------------------
@pytest.mark.parametrize("name,cfg", CASES)
def test_finite_long_and_large(name, cfg):
    pattern = _patterns(name)[0]
    mixer = _build(name, cfg, pattern)
    for t, scale in ((4096, 1.0), (200, 100.0)):
        x, context = _inputs(t, pattern, scale=scale)
        x = x[:1].requires_grad_()
        context = None if context is None else context[:1]
        y = mixer(x, context=context)
        assert torch.isfinite(y).all(), f"{name} {pattern}: non-finite output at T={t}, scale={scale}"
        y.square().mean().backward()
        assert torch.isfinite(x.grad).all(), f"{name} {pattern}: non-finite input grad at T={t}, scale={scale}"
        for n, p in mixer.named_parameters():
            if p.grad is not None:
                assert torch.isfinite(p.grad).all(), f"{name}: non-finite grad of {n} at T={t}, scale={scale}"
        mixer.zero_grad()


# errors that name the problem ---------------------------------------------------------------
def test_unknown_mixer_names_the_choices():
    with pytest.raises(KeyError, match="softmx.*Did you mean.*softmax"):
        build_mixer("softmx", 16)


def test_unknown_argument_names_the_arguments():
    with pytest.raises(TypeError, match="unknown arguments \\['n_head'\\].*n_heads"):
        build_mixer("softmax", 16, n_head=2)


@pytest.mark.parametrize("name", list_mixers())
def test_wrong_shape_is_a_clear_error(name):
    cls = get_mixer_class(name)
    pattern = _patterns(name)[0]
    mixer = _build(name, dict(cls.test_configs[0]), pattern)
    with pytest.raises(ValueError, match="x must be \\[batch, time, d_model=32\\]"):
        mixer(torch.randn(5, D_MODEL))
    with pytest.raises(ValueError, match="x must be"):
        mixer(torch.randn(1, 5, D_MODEL + 1))


@pytest.mark.parametrize("name", list_mixers())
def test_unsupported_pattern_is_a_clear_error(name):
    cls = get_mixer_class(name)
    cfg = dict(cls.test_configs[0])
    for causal in (True, False):
        for cross in (False, True):
            pattern = ("causal" if causal else "noncausal") + ("_cross" if cross else "_self")
            if pattern in cls.patterns:
                continue
            supported_causal = any(p.startswith("causal" if causal else "noncausal") for p in cls.patterns)
            if not supported_causal:
                with pytest.raises(ValueError, match="supports only"):
                    build_mixer(name, D_MODEL, **{**cfg, "causal": causal})
            else:
                mixer = build_mixer(name, D_MODEL, **{**cfg, "causal": causal})
                x = torch.randn(1, 4, D_MODEL)
                with pytest.raises(ValueError, match=f"pattern '{pattern}' is not supported"):
                    mixer(x, context=x if cross else None)


@pytest.mark.parametrize("name", list_mixers())
def test_step_errors_name_the_problem(name):
    """A mixer without a causal self pattern cannot step or carry a state, and says why."""
    cls = get_mixer_class(name)
    if "noncausal_self" not in cls.patterns:
        return
    mixer = _build(name, dict(cls.test_configs[0]), "noncausal_self")
    with pytest.raises(ValueError, match="needs causal=True"):
        mixer(torch.randn(1, 4, D_MODEL), return_state=True)
    with pytest.raises(ValueError, match="step needs causal=True"):
        mixer.step(torch.randn(1, D_MODEL), None)


def test_causal_cross_step_is_refused():
    mixer = build_mixer("softmax", D_MODEL, n_heads=2, causal=True)
    context = torch.randn(1, 5, D_MODEL)
    state = mixer.init_state(1, context=context)
    with pytest.raises(ValueError, match="step cross attention with causal=False"):
        mixer.step(torch.randn(1, D_MODEL), state)
    with pytest.raises(ValueError, match="already holds the context"):
        mixer(torch.randn(1, 2, D_MODEL), context=context, state=state)


@pytest.mark.parametrize("name", list_mixers())
def test_declares_state_size(name):
    cls = get_mixer_class(name)
    mixer = _build(name, dict(cls.test_configs[0]), _patterns(name)[0])
    assert mixer.state_size(128) > 0
