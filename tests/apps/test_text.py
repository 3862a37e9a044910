"""The text app: the SemEval-2007 reader and split, the metrics against scipy, bad input,
a tiny REDAffectiveLM forward/backward, offline loading, and fit -> predict --explain."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, wasserstein_distance

from seqmix.apps.text.data import (
    paper_split,
    read_gold,
    read_headlines,
    read_semeval2007,
    read_vote_csv,
)
from seqmix.apps.text.metrics import (
    emotion_metrics,
    original_ap_rows,
    pearson_rows,
    rmse,
    top_k_hits,
    wasserstein,
)
from seqmix.apps.text.model import EmotionRegressor, fit_tfidf_ridge, to_distribution
from seqmix.core.mixers.rnn import LSTM
from seqmix.core.mixers.softmax import SoftmaxAttention

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("SEQMIX_DATA", REPO.parent / "shared" / "data"))
SEMEVAL = DATA / "semeval2007"


# ----------------------------------------------------------------- SemEval reader
@pytest.fixture(scope="module")
def semeval():
    return read_semeval2007(DATA)


def test_semeval_reader_rows_ids_and_distributions(semeval):
    assert len(semeval) == 1246 and semeval.targets.shape == (1246, 5)
    assert semeval.dropped == ["43", "86", "121", "151"]
    assert not {"43", "86", "121", "151"} & set(semeval.ids)
    np.testing.assert_allclose(semeval.targets.sum(1), 1.0, atol=1e-12)
    assert (semeval.targets >= 0).all()
    assert semeval.ids[0] == "1" and semeval.ids[-1] == "1499"  # trial first, then test
    assert semeval.texts[0] == "Mortar assault leaves at least 18 dead"
    assert "Beckham & Posh" in semeval.texts[semeval.ids.index("666")]  # &amp; unescaped
    # the REDAffectiveLM array (trial-then-test, same recipe) must match row for row
    ref = SEMEVAL / "redaffectivelm" / "labels_normalized_semEval_anger_fear_joy_sad_surp.npy"
    np.testing.assert_array_equal(np.load(ref), semeval.targets)


def test_paper_split_sizes_and_disjoint():
    train, val, test = paper_split(1246, seed=7)
    assert (len(train), len(val), len(test)) == (747, 249, 250)
    assert len(set(train) | set(val) | set(test)) == 1246
    again = paper_split(1246, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    assert not np.array_equal(test, paper_split(1246, seed=8)[2])


# ------------------------------------------------------------------------ metrics
def test_acc_at_k_by_hand():
    gold = np.array([[0.1, 0.6, 0.1, 0.1, 0.1], [0.5, 0.1, 0.2, 0.1, 0.1], [0.0, 0.0, 0.0, 0.2, 0.8]])
    pred = np.array([[0.1, 0.5, 0.2, 0.1, 0.1],   # top-1 right
                     [0.3, 0.1, 0.4, 0.1, 0.1],   # gold top (0) is 2nd
                     [0.3, 0.25, 0.2, 0.15, 0.1]])  # gold top (4) is last
    assert top_k_hits(pred, gold, 1).tolist() == [True, False, False]
    assert top_k_hits(pred, gold, 2).tolist() == [True, True, False]
    assert top_k_hits(pred, gold, 5).tolist() == [True, True, True]
    m = emotion_metrics(pred, gold)
    assert m["acc@1"] == pytest.approx(1 / 3) and m["acc@2"] == pytest.approx(2 / 3)
    assert m["rmse"] == pytest.approx(np.sqrt(((pred - gold) ** 2).mean()))
    with pytest.raises(ValueError, match="k must be"):
        top_k_hits(pred, gold, 6)


def test_pearson_and_original_formula_vs_scipy():
    rng = np.random.default_rng(0)
    x, y = rng.random((40, 5)), rng.random((40, 5))
    expected = np.array([pearsonr(a, b)[0] for a, b in zip(x, y)])
    np.testing.assert_allclose(pearson_rows(x, y), expected, rtol=1e-10)
    np.testing.assert_allclose(original_ap_rows(x, y), 1.25 * expected, rtol=1e-10)  # n/(n-1) with n = 5
    per_emotion = np.array([pearsonr(x[:, j], y[:, j])[0] for j in range(5)])
    m = emotion_metrics(x / x.sum(1, keepdims=True), y / y.sum(1, keepdims=True))
    assert m["ap_document_x1.25"] == pytest.approx(1.25 * m["ap_document"])
    assert m["ap_emotion_orig"] == pytest.approx(40 / 39 * m["ap_emotion"])
    np.testing.assert_allclose(pearson_rows(x.T, y.T), per_emotion, rtol=1e-10)
    assert pearson_rows(np.full((1, 5), 0.2), y[:1])[0] == 0.0  # constant row: undefined -> 0


def test_wasserstein_over_emotion_positions():
    one_hot = np.eye(5)
    assert wasserstein(one_hot[[0]], one_hot[[4]]) == pytest.approx(4.0)  # all mass moved 4 positions
    assert wasserstein(one_hot[[1]], one_hot[[2]]) == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    p, g = rng.dirichlet(np.ones(5), 7), rng.dirichlet(np.ones(5), 7)
    pos = np.arange(5)
    assert wasserstein(p, g) == pytest.approx(np.mean([wasserstein_distance(pos, pos, a, b) for a, b in zip(p, g)]))
    assert rmse(p, p) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        wasserstein(p - 1, g)


def test_tfidf_ridge_returns_distributions(semeval):
    train, val, test = paper_split(len(semeval))
    texts = np.array(semeval.texts, dtype=object)
    predict, alpha = fit_tfidf_ridge(texts[train], semeval.targets[train], texts[val], semeval.targets[val])
    p = predict(texts[test])
    assert p.shape == (250, 5) and (p >= 0).all()
    np.testing.assert_allclose(p.sum(1), 1.0)
    np.testing.assert_allclose(to_distribution(np.array([[-1.0, -2.0]])), [[0.5, 0.5]])


# ---------------------------------------------------------------------- bad input
def _semeval_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "semeval2007"
    folder.mkdir()
    for f in SEMEVAL.glob("affectivetext_*"):
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def test_gold_id_without_headline_is_an_error(tmp_path):
    folder = _semeval_copy(tmp_path)
    gold = folder / "affectivetext_trial.emotions.gold"
    gold.write_text(gold.read_text() + "9999 1 2 3 4 5 6\n")
    with pytest.raises(ValueError, match=r"ids \['9999'\] have no headline"):
        read_semeval2007(tmp_path)


def test_missing_empty_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="SemEval-2007 files .* not found"):
        read_semeval2007(tmp_path)
    empty = tmp_path / "empty.xml"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        read_headlines(empty)
    bad = tmp_path / "bad.gold"
    bad.write_text("1 2 3\n")
    with pytest.raises(ValueError, match=r"bad.gold:1: expected 'id' and 6 integer scores"):
        read_gold(bad)


def test_vote_csv_all_zero_row(tmp_path):
    path = tmp_path / "votes.csv"
    path.write_text("text,happy,sad\nnice day,3,1\nnobody voted,0,0\nawful,0,5\n")
    with pytest.raises(ValueError, match=r"1 rows have all-zero scores .* ids \['1'\]"):
        read_vote_csv(path, text_column="text", emotion_columns=["happy", "sad"])
    data = read_vote_csv(path, text_column="text", emotion_columns=["happy", "sad"], zero_rows="drop")
    assert data.texts == ["nice day", "awful"] and data.dropped == ["1"]
    path.write_text("text,happy,sad\nnice day,3,1\nawful,inf,5\n")
    with pytest.raises(ValueError, match=r"votes.csv: column 'happy' row 1 \(0-based data row\) is inf"):
        read_vote_csv(path, text_column="text", emotion_columns=["happy", "sad"])
    np.testing.assert_allclose(data.targets, [[0.75, 0.25], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"columns \['angry'\] not found"):
        read_vote_csv(path, text_column="text", emotion_columns=["happy", "angry"])


# --------------------------------------------------------------------- tiny model
def _tiny_model(word_dim=6, context_dim=8, **kw):
    return EmotionRegressor(rnn=partial(LSTM, n_heads=2, causal=False, bidirectional=True),
                            attention=partial(SoftmaxAttention, n_heads=2, causal=False),
                            word_dim=word_dim, context_dim=context_dim, d_model=8, fusion_hidden=8, **kw)


def _batch(b=3, w=5, f=6, length=4, c=8):
    word_mask = torch.arange(w)[None, :] < torch.tensor([5, 2, 0])[:, None]  # last headline: no known word
    return {"words": torch.randn(b, w, f) * word_mask[..., None], "word_mask": word_mask,
            "context": torch.randn(b, length, c), "context_mask": torch.ones(b, length, dtype=torch.bool),
            "target": torch.softmax(torch.randn(b, 5), -1)}


@pytest.mark.parametrize("loss", ["mse", "kl"])
def test_tiny_model_forward_backward(loss):
    torch.manual_seed(0)
    model = _tiny_model(loss=loss)
    batch = _batch()
    pred, weights = model(batch)
    assert pred.shape == (3, 5) and weights.shape == (3, 5)
    torch.testing.assert_close(pred.sum(-1), torch.ones(3))
    torch.testing.assert_close(weights[:2].sum(-1), torch.ones(2))
    assert (weights[~batch["word_mask"]] == 0).all()  # padding gets no attention
    model.loss_fn(pred, batch["target"]).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.affect.rnn.bidirectional


def test_model_argument_errors():
    with pytest.raises(ValueError, match="must be non-causal"):
        EmotionRegressor(rnn=partial(LSTM, n_heads=1, causal=True, bidirectional=False), word_dim=4, context_dim=0)
    with pytest.raises(ValueError, match="no rnn mixer"):
        EmotionRegressor(word_dim=4, context_dim=0)
    with pytest.raises(ValueError, match="both branches are off"):
        EmotionRegressor(word_dim=0, context_dim=0)
    with pytest.raises(ValueError, match="loss='l1' is unknown"):
        _tiny_model(loss="l1")
    model = _tiny_model()
    with pytest.raises(ValueError, match="expects width 8"):
        model({**_batch(), "context": torch.randn(3, 4, 7)})


# ------------------------------------------------------- offline load (subprocess)
def test_offline_load_of_minilm_and_glove():
    """A fresh interpreter with HF_HUB_OFFLINE=1 and a dead proxy: any network call would fail."""
    code = (
        "import json, torch\n"
        "from seqmix.apps.text.embeddings import AffectLexicon, ContextEncoder, GLOVE_DIM\n"
        "enc = ContextEncoder(max_len=16)\n"
        "h, m = enc.encode(['Bombers kill shoppers', 'Goal delight for Sheva'])\n"
        f"lex = AffectLexicon('affect', '{DATA}/lexicons/NRC-AffectIntensity-Lexicon.txt')\n"
        "v = lex.vector('murder')\n"
        "print(json.dumps({'h': list(h.shape), 'tokens': m.sum(1).tolist(), 'finite': bool(torch.isfinite(h).all()),"
        " 'glove': float(abs(v[:GLOVE_DIM]).sum()), 'emolex': v[GLOVE_DIM:GLOVE_DIM+10].tolist(),"
        " 'intensity': v[GLOVE_DIM+10:].tolist(), 'dim': lex.dim}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HTTPS_PROXY": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "SEQMIX_DATA": str(DATA)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["h"] == [2, 16, 384] and got["finite"] and got["tokens"][0] >= 5
    assert got["glove"] > 0 and got["dim"] == 64
    assert got["emolex"][0] == 1.0 and got["emolex"][3] == 1.0  # 'murder': anger, fear in EmoLex
    assert got["intensity"][0] > 0.5  # and a high anger intensity


# ---------------------------------------------------- fit -> predict --explain (CLI)
def test_fit_then_predict_with_explain(tmp_path, monkeypatch, capsys):
    from seqmix.cli import main

    votes = tmp_path / "votes.csv"
    rows = ["Bombers kill shoppers,5,1,0,3,0", "Goal delight for Sheva,0,0,9,0,2", "Storm floods the valley,1,6,0,5,1",
            "Lottery winner shocked,0,0,6,0,8", "Police shoot protester,7,3,0,4,1", "Nobody cared,0,0,0,0,0",
            "Kate is marrying Doherty,0,0,5,0,4", "Mine collapse traps miners,1,7,0,6,2"]
    votes.write_text("text,anger,fear,joy,sadness,surprise\n" + "\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)
    settings = ["--config", str(REPO / "configs/text/redaffectivelm.yaml"),
                "--data.source", "csv", "--data.csv_path", str(votes), "--data.zero_rows", "drop",
                "--data.emotion_columns", "[anger, fear, joy, sadness, surprise]", "--data.data_dir", str(DATA),
                "--data.cache_dir", str(tmp_path / "cache"), "--data.batch_size", "4", "--model.d_model", "16",
                "--model.fusion_hidden", "16", "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false"]
    main(["text", "fit", *settings])
    ckpts = list(tmp_path.glob("runs/text/redaffectivelm/version_0/checkpoints/best-*.ckpt"))  # beside last.ckpt
    assert len(ckpts) == 1 and (ckpts[0].parent / "last.ckpt").is_file()
    # fit ends by naming the checkpoint that predict takes
    assert f"seqmix text fit: checkpoint (best by val/loss) {ckpts[0].relative_to(tmp_path)}" in \
        capsys.readouterr().out.strip().splitlines()
    stored = torch.load(ckpts[0], weights_only=True)  # mixers by class path and init args, no pickled code
    assert stored["hyper_parameters"]["rnn"]["class_path"] == "seqmix.core.mixers.rnn.LSTM"
    main(["text", "test", *settings, "--ckpt_path", str(ckpts[0]), "--trainer.logger", "false"])  # Lightning's loader
    assert "test/rmse" in capsys.readouterr().out
    html = tmp_path / "explain.html"
    main(["text", "predict", "--ckpt", str(ckpts[0]), "--text", "Bombers kill shoppers in Baghdad",
          "--text", "the of and", "--explain", str(html)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split("\t") == ["text", "anger", "fear", "joy", "sadness", "surprise"]
    probs = [float(x) for x in lines[1].split("\t")[1:]]
    assert len(probs) == 5 and sum(probs) == pytest.approx(1.0, abs=2e-3)
    page = html.read_text()
    assert "bombers" in page and "baghdad" in page and "no known word" in page  # 2nd text: stop words only
    assert not list(tmp_path.glob(".explain.html*"))  # atomic: no temp file left
    png = tmp_path / "explain.png"  # the same view as a figure, chosen by the suffix
    main(["text", "predict", "--ckpt", str(ckpts[0]), "--text", "Bombers kill shoppers in Baghdad",
          "--explain", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert f"word attention written to {png}" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"--explain .*x\.txt: unknown file type \.txt; name an \.html page or "
                                         r"a \.png"):
        main(["text", "predict", "--ckpt", str(ckpts[0]), "--text", "Bombers", "--explain", str(tmp_path / "x.txt")])
    assert not (tmp_path / "x.txt").exists() and capsys.readouterr().out == ""  # refused before predicting

    headlines = tmp_path / "h.txt"
    headlines.write_text("\n\nStorm floods the valley\n")
    main(["text", "predict", "--ckpt", str(ckpts[0]), "--file", str(headlines)])
    assert capsys.readouterr().out.count("\n") == 2  # header + one headline; blank lines skipped
    for argv, message in ((["--text", "  "], "--text is empty"),
                          (["--file", str(tmp_path / "nope.txt")], "does not exist"),
                          (["--file", str(tmp_path / "blank.txt")], "has no non-empty line")):
        (tmp_path / "blank.txt").write_text("\n \n")
        with pytest.raises(SystemExit, match=message):
            main(["text", "predict", "--ckpt", str(ckpts[0]), *argv])
    with pytest.raises(SystemExit, match="seqmix text predict: error: checkpoint .*missing.ckpt does not exist"):
        main(["text", "predict", "--ckpt", str(tmp_path / "missing.ckpt"), "--text", "x"])
    other_app = REPO / "checkpoints" / "forecasting" / "informer_etth1.ckpt"  # has hyper-parameters of its own
    with pytest.raises(SystemExit, match=r"informer_etth1.ckpt: this is a checkpoint of `seqmix forecasting fit`, "
                                         r"not text"):
        main(["text", "predict", "--ckpt", str(other_app), "--text", "x"])
    # non-UTF-8 text (a file, or command-line bytes kept as surrogates), a directory, --explain on the input
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Storm\ncaf\u00e9 crowd\n".encode("latin-1"))
    page_in = tmp_path / "in.html"
    page_in.write_text("Storm floods the valley\n")
    for argv, message in ((["--file", str(latin)], r"--file .*latin.txt: byte 9 \(0xe9\) is not UTF-8"),
                          (["--text", "ok", "--text", b"caf\xe9".decode("utf-8", "surrogateescape")],
                           r"--text 2: byte 3 \(0xe9\) is not UTF-8"),
                          (["--file", str(tmp_path)], "--file .* is a directory, not a file"),
                          (["--file", str(page_in), "--explain", str(page_in)],
                           r"--explain .*in.html is the input --file")):
        with pytest.raises(SystemExit, match=message):
            main(["text", "predict", "--ckpt", str(ckpts[0]), *argv])
    assert page_in.read_text() == "Storm floods the valley\n"


# ---------------------------------------------------- the shipped checkpoint
SHIPPED = REPO / "checkpoints" / "text" / "redaffectivelm_lora.ckpt"


def test_shipped_checkpoint_is_small_and_reads_semeval_headlines(semeval, capsys):
    """`python -m benchmarks.emotion_checkpoint` writes it; `seqmix text predict` reads it with no network."""
    from seqmix.apps.text.commands import load_checkpoint
    from seqmix.apps.text.data import SEMEVAL_EMOTIONS, TextFeaturizer
    from seqmix.cli import main

    assert SHIPPED.is_file(), f"{SHIPPED} is missing: python -m benchmarks.emotion_checkpoint writes it"
    assert SHIPPED.stat().st_size <= 5_000_000
    model, ckpt = load_checkpoint(SHIPPED)
    dm = ckpt["datamodule_hyper_parameters"]
    assert model.hparams.context_lora_rank > 0 and dm["data_dir"] is None and dm["cache_dir"] == "runs/text/cache"
    featurizer = TextFeaturizer(dm["word_features"], dm["max_words"], dm["context"], dm["context_max_len"],
                                str(DATA / "lexicons" / "NRC-AffectIntensity-Lexicon.txt"), dm["keep_stopwords"],
                                dm["context_trainable_layers"])
    test_rows = paper_split(len(semeval), 7)[2][:120]
    feats = featurizer([semeval.texts[i] for i in test_rows])
    with torch.no_grad():
        pred, _ = model.eval()({"words": feats.words, "word_mask": feats.word_mask, "context": feats.context,
                                "context_mask": feats.context_mask})
    m = emotion_metrics(pred.double().numpy(), semeval.targets[test_rows])
    assert m["acc@1"] > 0.55 and m["rmse"] < 0.19  # the mean-distribution floor: 0.424 / 0.2247 on the test split
    main(["text", "predict", "--ckpt", str(SHIPPED), "--text", "Bombers kill shoppers in Baghdad market"])
    header, row = capsys.readouterr().out.strip().splitlines()[-2:]
    assert header.split("\t")[1:] == list(SEMEVAL_EMOTIONS)
    probs = dict(zip(SEMEVAL_EMOTIONS, map(float, row.split("\t")[1:])))
    assert sum(probs.values()) == pytest.approx(1.0, abs=2e-3) and probs["joy"] < min(probs["fear"], probs["sadness"])


def test_small_checkpoint_writer_keeps_what_loading_needs_and_refuses_big_files(tmp_path):
    bench = importlib.import_module("benchmarks.emotion_checkpoint")
    full = {"state_dict": {"w": torch.zeros(1000)}, "hyper_parameters": {"lr": 1e-3},
            "datamodule_hyper_parameters": {"source": "semeval2007"}, "optimizer_states": [{"big": torch.zeros(9999)}],
            "loops": {}, "epoch": 3, "global_step": 90, "seqmix_app": "text"}
    out = tmp_path / "c.ckpt"
    size = bench.write_small_checkpoint(full, out)
    small = torch.load(out, weights_only=True)
    assert size == out.stat().st_size and set(small) == {"state_dict", "hyper_parameters", "seqmix_app",
                                                         "datamodule_hyper_parameters", "epoch", "global_step"}
    with pytest.raises(ValueError, match="would be .* MB > 0.001 MB"):
        bench.write_small_checkpoint(full, tmp_path / "big.ckpt", max_bytes=1000)
    with pytest.raises(ValueError, match="lacks \\['datamodule_hyper_parameters'\\]"):
        bench.write_small_checkpoint({k: v for k, v in full.items() if k != "datamodule_hyper_parameters"},
                                     tmp_path / "x.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ckpt"]  # nothing half-written left behind
