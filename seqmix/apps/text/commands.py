"""``seqmix text predict --ckpt <ckpt> --text "..."`` (or ``--file headlines.txt``, one per line, UTF-8):
the emotion distribution of each text; ``--explain out.html`` (or ``.png``, ``.svg``, ``.pdf``) also
writes the word attention weights (refused before anything is written when that path is an input).
The checkpoint is read as data (``weights_only=True``; :func:`seqmix.apps.module.load_trained`).
"""

from __future__ import annotations

import argparse
import html
from pathlib import Path

from seqmix.apps.files import atomic_write, check_outputs, input_file, pyplot, save_figure
from seqmix.apps.module import APP_KEY, load_trained
from seqmix.apps.text.data import SEMEVAL_EMOTIONS, TextFeaturizer, utf8
from seqmix.apps.text.model import EmotionRegressor


# what a checkpoint of ``seqmix text fit`` must hold for ``predict`` (the model and its data settings)
CHECKPOINT_KEYS = ("state_dict", "hyper_parameters", "datamodule_hyper_parameters", APP_KEY)
# the EmotionDataModule settings that predict rebuilds the featurizer from
FEATURIZER_SETTINGS = ("word_features", "max_words", "context", "context_max_len", "keep_stopwords",
                       "context_trainable_layers", "source", "emotion_columns")


def load_checkpoint(path: str | Path) -> tuple[EmotionRegressor, dict]:
    """The model (eval mode) and the checkpoint dictionary it came from (its ``datamodule_hyper_parameters``,
    ``epoch``, ...), from a checkpoint written by ``seqmix text fit``, read as data (``weights_only=True``,
    :func:`seqmix.apps.module.load_trained`: the mixers are named by class path and init args)."""
    hint = "train one with `seqmix text fit --config configs/text/redaffectivelm.yaml` (it lands in " \
           "runs/text/.../checkpoints/) or use checkpoints/text/redaffectivelm_lora.ckpt"
    model, ckpt = load_trained(EmotionRegressor, path, "text", hint, needs=CHECKPOINT_KEYS)
    lacking = sorted(set(FEATURIZER_SETTINGS) - set(ckpt["datamodule_hyper_parameters"]))
    if lacking:
        raise ValueError(f"checkpoint {path}: its data settings lack {lacking}: it was not written by "
                         f"`seqmix text fit`; {hint}")
    return model, ckpt


def read_texts(text: list[str] | None, file: str | None) -> list[str]:
    """``--text`` values or the non-empty lines of ``--file`` (UTF-8); empty input is an error."""
    if bool(text) == bool(file):
        raise ValueError("give --text \"...\" (repeatable) or --file <one text per line>, not both")
    if file:
        p = input_file(file, "--file")
        texts = [line.strip() for line in utf8(p.read_bytes(), f"--file {p}").splitlines() if line.strip()]
        if not texts:
            raise ValueError(f"--file {p} has no non-empty line; give one headline per line")
        return texts
    # the command line's bytes come as str with undecodable bytes kept as surrogates (PEP 383): re-check them
    texts = [utf8(t.encode("utf-8", "surrogateescape"), f"--text {i + 1}").strip() for i, t in enumerate(text)]
    if not all(texts):
        raise ValueError("--text is empty; give the headline to score")
    return texts


def explain_html(texts: list[str], tokens: list[list[str]], weights, preds, emotions: tuple[str, ...]) -> str:
    """One block per text: its words shaded by attention weight, and the predicted distribution."""
    rows = []
    for text, words, w, p in zip(texts, tokens, weights, preds):
        peak = max((float(x) for x in w[: len(words)]), default=0.0) or 1.0
        spans = " ".join(
            f'<span title="{float(a):.3f}" style="background: rgba(220, 50, 32, {float(a) / peak:.2f}); '
            f'padding: 1px 3px">{html.escape(word)}</span>' for word, a in zip(words, w))
        dist = ", ".join(f"{e} {float(x):.2f}" for e, x in zip(emotions, p))
        note = spans if words else "<i>(no known word: the word branch saw nothing)</i>"
        rows.append(f"<div class='t'><div class='src'>{html.escape(text)}</div><div>{note}</div>"
                    f"<div class='d'>{dist}</div></div>")
    return ("<!doctype html><meta charset='utf-8'><title>seqmix text: word attention</title>"
            "<style>body{font-family:sans-serif;max-width:60em}.t{margin:1em 0}.src{color:#666}.d{font-size:90%}"
            "</style><h1>Word attention (REDAffectiveLM affect branch)</h1>"
            "<p>Shade = attention weight relative to the headline's largest (hover for the value). Stop words "
            "and numbers are not read by the word branch.</p>" + "".join(rows))


FIGURE_SUFFIXES = (".png", ".svg", ".pdf")  # matplotlib's; ".html" / ".htm" get the page above


def explain_figure(texts: list[str], tokens: list[list[str]], weights, preds, emotions: tuple[str, ...]):
    """The same view as a matplotlib figure: per text, its words shaded by attention weight (relative to
    the text's largest; the weight under each word) and a bar chart of the predicted distribution."""
    from matplotlib.transforms import offset_copy

    plt = pyplot()

    fig, axes = plt.subplots(len(texts), 2, figsize=(11, 1.3 * len(texts) + 0.4), squeeze=False,
                             gridspec_kw={"width_ratios": [4, 1]})
    renderer = fig.canvas.get_renderer()  # to measure each drawn word
    for (ax_words, ax_dist), text, words, w, p in zip(axes, texts, tokens, weights, preds):
        ax_words.set_axis_off()
        ax_words.set_title(text if len(text) <= 90 else text[:87] + "...", fontsize=9, loc="left", color="0.4")
        peak = max((float(x) for x in w[: len(words)]), default=0.0) or 1.0
        x = 0.0  # points from the axis' left edge: each word starts where the previous one ends
        for word, a in zip(words, w):
            at = offset_copy(ax_words.transAxes, fig=fig, x=x, units="points")
            label = ax_words.text(0, 0.5, word, fontsize=11, va="center", transform=at,
                                  bbox={"facecolor": (0.86, 0.2, 0.13, float(a) / peak), "edgecolor": "none",
                                        "pad": 2})
            ax_words.text(0, 0.05, f"{float(a):.2f}", fontsize=7, color="0.3", transform=at)
            x += label.get_window_extent(renderer).width * 72 / fig.dpi + 10
        if not words:
            ax_words.text(0, 0.5, "(no known word: the word branch saw nothing)", style="italic",
                          fontsize=10, va="center", transform=ax_words.transAxes)
        ax_dist.barh(range(len(emotions)), [float(v) for v in p], color="0.35")
        ax_dist.set_yticks(range(len(emotions)), emotions, fontsize=8)
        ax_dist.invert_yaxis()
        ax_dist.set_xlim(0, 1)
        ax_dist.tick_params(axis="x", labelsize=7)
    fig.suptitle("Word attention (REDAffectiveLM affect branch) and the predicted distribution", fontsize=10)
    fig.tight_layout()
    return fig


def explanation_kind(out: Path) -> str:
    """``"html"`` for ``.html``/``.htm``, ``"figure"`` for ``.png``/``.svg``/``.pdf``; anything else is an error
    (checked before the model loads)."""
    suffix = out.suffix.lower()
    if suffix in (".html", ".htm"):
        return "html"
    if suffix in FIGURE_SUFFIXES:
        return "figure"
    raise ValueError(f"--explain {out}: unknown file type {out.suffix or '(none)'}; name an .html page or a "
                     f"{', '.join(FIGURE_SUFFIXES)} figure")


def write_explanation(out: Path, texts: list[str], tokens: list[list[str]], weights, preds,
                      emotions: tuple[str, ...]) -> None:
    """``--explain``: an HTML page or a figure, by ``out``'s suffix, written atomically."""
    if explanation_kind(out) == "html":
        page = explain_html(texts, tokens, weights, preds, emotions)
        atomic_write(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))
        return
    save_figure(explain_figure(texts, tokens, weights, preds, emotions), out)


def predict_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seqmix text predict",
                                     description="Emotion distribution of each headline from a trained checkpoint")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `seqmix text fit`")
    parser.add_argument("--text", action="append", help="a headline (repeatable)")
    parser.add_argument("--file", help="a text file, one headline per line (empty lines skipped)")
    parser.add_argument("--explain", help="write the word attention weights here: an HTML page (.html) or a "
                                          "figure (.png, .svg, .pdf)")
    args = parser.parse_args(argv)
    texts = read_texts(args.text, args.file)
    if args.explain:
        explanation_kind(Path(args.explain))
    check_outputs([("--explain", args.explain)], [("--ckpt", args.ckpt), ("--file", args.file)])
    import torch

    model, ckpt = load_checkpoint(args.ckpt)
    if args.explain and model.affect is None:  # refused before any prediction is printed
        raise ValueError("--explain needs a model with the word branch (this one is the transformer branch alone, "
                         "which has no word attention)")
    dm = ckpt["datamodule_hyper_parameters"]
    data_dir = Path(dm["data_dir"]) if dm.get("data_dir") else None
    featurizer = TextFeaturizer(dm["word_features"], dm["max_words"], dm["context"], dm["context_max_len"],
                                str(data_dir / "lexicons" / "NRC-AffectIntensity-Lexicon.txt") if data_dir else None,
                                dm["keep_stopwords"], dm["context_trainable_layers"])
    emotions = tuple(dm["emotion_columns"]) if dm["source"] == "csv" else SEMEVAL_EMOTIONS
    feats = featurizer(texts)
    model.eval()
    with torch.no_grad():
        preds, weights = model({"words": feats.words, "word_mask": feats.word_mask, "context": feats.context,
                                "context_mask": feats.context_mask})
    print("\t".join(["text", *emotions]))
    for text, p in zip(texts, preds.tolist()):
        print("\t".join([text, *(f"{x:.3f}" for x in p)]))
    if args.explain:
        out = Path(args.explain)
        write_explanation(out, texts, feats.tokens, weights.tolist(), preds.tolist(), emotions)
        print(f"word attention written to {out}")
    return 0
