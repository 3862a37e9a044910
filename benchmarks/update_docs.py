"""Copy the results of ``benchmarks/results/*.md`` into the docs, so that every number there is one a script wrote.

``docs/results.md`` (and README.md's mixers table) hold blocks like::

    <!-- results:mqar -->
    ...replaced by the body of benchmarks/results/mqar.md...
    <!-- /results:mqar -->

README.md holds one ``<!-- headlines -->`` block: one line per entry of ``HEADLINES`` below, its figure read
from a results file, its link to the section of docs/results.md with the full table. Run after the benchmarks:

    python -m benchmarks.update_docs            # rewrite the blocks
    python -m benchmarks.update_docs --check    # exit 1 naming every stale block (tests/test_benchmarks_package.py)
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass

from benchmarks.common import REPO_ROOT, RESULTS_DIR, atomic_write_text, markdown_table

BLOCK = re.compile(r"(<!-- results:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)
HEADLINES_BLOCK = re.compile(r"(<!-- headlines -->\n)(?P<body>.*?)(<!-- /headlines -->)", re.S)
RESULTS_PAGE = "docs/results.md"
INFORMER_HORIZONS = (24, 48, 168, 336, 720)


@dataclass(frozen=True)
class Headline:
    """One README line: ``pattern`` (a regex) finds the figure's parts in ``benchmarks/results/<result>.md``,
    ``figure`` formats its named groups; ``section`` is the heading of docs/results.md with the full table."""

    what: str
    result: str
    pattern: str
    figure: str
    target: str
    section: str


def jrt_row(mixer: str, tag: str) -> str:
    """A regex for ``mixer``'s row (d_model 64, several seeds) of an MQAR JRT-Prompt table (``benchmarks/mqar.py``'s
    ``jrt_table``), its cells named ``<tag>_once``, ``<tag>_once_seeds``, ``<tag>_twice``, ``<tag>_twice_seeds``,
    ``<tag>_change``, ``<tag>_spread`` and ``<tag>_p`` (distinct tags for two rows in one pattern)."""
    t = tag
    return (rf"^\| {mixer} \| 64 \| (?P<{t}_once>[\d.]+) \((?P<{t}_once_seeds>[^)]*)\) \| "
            rf"(?P<{t}_twice>[\d.]+) \((?P<{t}_twice_seeds>[^)]*)\) \| (?P<{t}_change>[+-][\d.]+) \| "
            rf"(?P<{t}_spread>\w+) \| (?P<{t}_p>[\d.e-]+) \|")


def confirmatory_jrt(title: str, name: str, mixer: str, threshold: str) -> Headline:
    """The headline of a JRT-Prompt run on fresh seeds under a test fixed before it (``docs/recall.md``): ``mixer``'s
    mean read once -> twice, the mean paired change and the paired p, against ``threshold``."""
    return Headline(title, name, jrt_row(mixer, "x"), "{x_once} -> {x_twice} (mean change {x_change}), paired p {x_p}",
                    f"paired p < {threshold} (the test fixed before the run)", "MQAR recall")


HEADLINES = (
    Headline("MQAR recall, `make demo` (T=64, 4 pairs, d=64): test accuracy", "mqar_demo",
             r"^\| gla \| 64 \| (?P<gla>[\d.]+) \|.*?^\| softmax \| 64 \| (?P<softmax>[\d.]+) \|",
             "softmax {softmax}, GLA {gla}", "-", "MQAR recall"),
    Headline("MQAR recall, second-wave mixers (T=64, 4 pairs, d=64, 600 steps): test accuracy", "mqar_wave2",
             r"^\| mlstm \| 64 \| (?P<mlstm>[\d.]+) \|.*?^\| softmax \| 64 \| (?P<softmax>[\d.]+) \|"
             r".*?^\| softplus \| 64 \| (?P<softplus>[\d.]+) \|",
             "mLSTM {mlstm}, softplus attention {softplus} (softmax {softmax}); the others in the table",
             "-", "MQAR recall"),
    Headline("JRT-Prompt on MQAR (T=64, 8 pairs, d=64, 800 steps): read once -> context read twice, mean of seeds",
             "mqar_jrt4", jrt_row("deltanet", "d") + ".*?" + jrt_row("mlstm", "m"),
             "DeltaNet {d_once} -> {d_twice} (beyond the seed spread: {d_spread}; paired p {d_p}), mLSTM {m_once} -> "
             "{m_twice} ({m_spread}; {m_p}); 5 seeds",
             "higher for >= 3 recurrent mixers", "MQAR recall"),
    Headline("JRT-Prompt on MQAR, Titans with short convolutions (same setting, 2000 steps): read once -> twice",
             "mqar_jrt6", jrt_row("titans_conv", "t"),
             "{t_once} ({t_once_seeds}) -> {t_twice} ({t_twice_seeds}), beyond the seed spread: {t_spread}, paired p "
             "{t_p}", "higher for >= 3 recurrent mixers", "MQAR recall"),
    Headline("JRT-Prompt on MQAR, BASED with short convolutions (16 pairs, 800 steps, seeds 0-4): read once -> twice",
             "mqar_jrt7", jrt_row("based_conv", "b"),
             "{b_once} ({b_once_seeds}) -> {b_twice} ({b_twice_seeds}), beyond the seed spread: {b_spread}, paired p "
             "{b_p}", "higher for >= 3 recurrent mixers", "MQAR recall"),
    confirmatory_jrt("JRT-Prompt on MQAR, BASED with short convolutions, confirmatory (16 pairs, 800 steps, fresh seeds "
                     "5-14): read once -> twice", "mqar_jrt8", "based_conv", "0.05"),
    Headline("JRT-Prompt on MQAR, DeltaNet and mLSTM at 16 pairs (800 steps, seeds 0-4): read once -> twice",
             "mqar_jrt9", jrt_row("deltanet", "d") + ".*?" + jrt_row("mlstm", "m"),
             "DeltaNet {d_once} -> {d_twice} (paired p {d_p}), mLSTM {m_once} -> {m_twice} ({m_p})",
             "paired p < 0.05 (the test fixed before the run)", "MQAR recall"),
    confirmatory_jrt("JRT-Prompt on MQAR, mLSTM, third try (16 pairs, 800 steps, fresh seeds 5-14): read once -> twice",
                     "mqar_jrt10", "mlstm", "0.05 / 3"),
    confirmatory_jrt("JRT-Prompt on MQAR, DeltaNet, third try (16 pairs, 800 steps, fresh seeds 5-14): read once -> "
                     "twice", "mqar_jrt11", "deltanet", "0.05 / 3"),
    confirmatory_jrt("JRT-Prompt on MQAR, Titans with short convolutions, fourth setting (8 pairs, 2000 steps, fresh "
                     "seeds 5-14): read once -> twice", "mqar_jrt12", "titans_conv", "0.05 / 4"),
    confirmatory_jrt("JRT-Prompt on MQAR, linear attention with short convolutions (16 pairs, 1200 steps, fresh seeds "
                     "15-26): read once -> twice", "mqar_jrt13", "linear_attention_conv", "0.05 / 11"),
    confirmatory_jrt("JRT-Prompt on MQAR, mLSTM, fourth setting (24 pairs, T=96, 800 steps, fresh seeds 15-26): read "
                     "once -> twice", "mqar_jrt14", "mlstm", "0.05 / 11"),
    confirmatory_jrt("JRT-Prompt on MQAR, LightNet with short convolutions (8 pairs, 800 steps, fresh seeds 15-26): "
                     "read once -> twice", "mqar_jrt15", "lightnet_conv", "0.05 / 11"),
    Headline("HiP on the `make demo` softmax model, no retraining: accuracy and keys attended", "hip",
             r"the sparsest setting that meets it: (?P<setting>L=\d+, (?:b_q=\d+, )?top_k=\d+): "
             r"accuracy (?P<acc>[\d.]+) vs dense "
             r"(?P<dense>[\d.]+), (?P<frac>[\d.]+) of the visible keys",
             "{acc} vs dense {dense} at {frac} of the keys ({setting})", "within 2 points at <= 0.5 of the keys",
             "MQAR recall"),
    Headline("SEA on the `make demo` softmax model, estimator distilled: accuracy and keys attended", "sea",
             r"the sparsest distilled setting that meets it: (?P<setting>(?:L=\d+, )?(?:b_q=\d+, )?top_k=\d+): "
             r"accuracy (?P<acc>[\d.]+) vs "
             r"dense (?P<dense>[\d.]+), (?P<frac>[\d.]+) of the visible keys",
             "{acc} vs dense {dense} at {frac} of the keys ({setting})", "within 2 points at <= 0.5 of the keys",
             "MQAR recall"),
    Headline("CPU forward+backward at T=8192, speed-up over softmax (SDPA)", "mixers_cpu_issue2",
             r"\| linear_attention \| [^|]*= (?P<la>[\d.]+x) \|.*?\| gla \| [^|]*= (?P<gla>[\d.]+x) \|"
             r".*?\| deltanet \| [^|]*= (?P<dn>[\d.]+x) \|",
             "linear attention {la}, GLA {gla}, DeltaNet {dn}", ">= 3x", "Mixer speed on the CPU"),
    Headline("Aaren's softmax scan, chunked vs token loop (B=1, T=4096, fwd+bwd)", "rnn_cpu",
             r"\| softmax_scan \(Aaren\) \| B=1 T=4096 [^|]*\| chunk \| "
             r"(?P<naive>\d+) \| (?P<fast>\d+) \| (?P<x>[\d.]+x)",
             "{fast} ms vs {naive} ms ({x})", "-", "CPU fast forms against their references"),
    Headline("Informer, ETTh1 multivariate, test MSE per horizon (mean of seeds)", "forecasting",
             "; ".join(rf"H={h}: (?P<mse{h}>[\d.]+) \([^)]*\) vs (?P<paper{h}>[\d.]+) (?P<met{h}>met|MISSED)"
                       for h in INFORMER_HORIZONS),
             ", ".join(f"H={h} {{mse{h}}} ({{met{h}}})" for h in INFORMER_HORIZONS),
             "<= the paper's " + ", ".join(f"{{paper{h}}}" for h in INFORMER_HORIZONS), "Forecasting"),
    Headline("Best mixer model, lookback 96, mean ETTh1 MSE over horizons 96-720", "forecasting",
             r"<= 0\.45: (?P<model>[^;]+?) (?P<mse>[\d.]+) \(mean of (?P<n>\d+) seeds per horizon; (?P<met>met|MISSED)",
             "{model} {mse} ({met})", "<= 0.45", "Forecasting"),
    Headline("One ETTh1 training epoch, default Informer config, 2 CPU cores", "forecasting",
             r"< 60 s on 2 cores: (?P<s>[\d.]+) s wall[^(]*\((?P<met>met|MISSED)",
             "{s} s ({met})", "< 60 s", "Forecasting"),
    Headline("REDAffectiveLM readers' emotion (SemEval-2007): test Acc@1 / RMSE", "emotion",
             r"\| test Acc@1 >= 0\.65 \| (?P<acc_met>\w+) \| (?P<acc>[\d.]+) \|\n"
             r"\| test RMSE <= 0\.10 \| (?P<rmse_met>\w+) \| (?P<rmse>[\d.]+) \|",
             "{acc} ({acc_met}) / {rmse} ({rmse_met})", ">= 0.65 / <= 0.10", "Readers' emotion, SemEval-2007"),
    Headline("pHDBSCAN fit vs the hdbscan library (blobs, n=100k, d=16)", "hdbscan",
             r"\| blobs \| 100,000 \| 16 \| phdbscan \| (?P<p>[\d.]+) \|.*?"
             r"\| blobs \| 100,000 \| 16 \| hdbscan \| (?P<h>[\d.]+) \|[^\n]*?\| (?P<x>[\d.]+x) \|",
             "{p} s vs {h} s ({x} faster)", "-", "pHDBSCAN"),
    Headline("Chunked kernel op vs its sequential reference, T=4096 fwd+bwd (issue 30)", "kernels_chunk_vs_naive",
             r"^\| mamba \| `selective_scan` \|[^|]*\|[^|]*\| (?P<mamba>[\d.]+x) \|.*?"
             r"^\| mlstm \| `chunk_mlstm` \|[^|]*\|[^|]*\| (?P<mlstm>[\d.]+x) \|.*?"
             r"^\| lightnet \| `chunk_gla` \|[^|]*\|[^|]*\| (?P<lightnet>[\d.]+x) \|.*?"
             r"^\| lmu \| `lmu_memory` \|[^|]*\|[^|]*\| (?P<lmu>[\d.]+x) \|.*?"
             r"^\| jrt_rnn \| [^|]*\|[^|]*\|[^|]*\| (?P<jrt>[\d.]+x) \|",
             "Mamba {mamba}, mLSTM {mlstm}, LightNet {lightnet}, LMU {lmu}, JRT-RNN {jrt}", ">= 5x",
             "Mixer speed on the CPU"),
    Headline("ACLSum highlighter, test ROUGE-L per aspect vs the best single-sentence heuristic (3 seeds)",
             "summarization",
             r"Highlighter test ROUGE-L [^:]*: \*\*(?P<met>\w+)\*\* — challenge (?P<c>[\d.]+) vs (?P<hc>[\d.]+) [^;]*; "
             r"approach (?P<a>[\d.]+) vs (?P<ha>[\d.]+) [^;]*; outcome (?P<o>[\d.]+) vs (?P<ho>[\d.]+)",
             "{c} / {a} / {o} vs {hc} / {ha} / {ho} ({met})", "above, every aspect", "Summarization, ACLSum"),
    Headline("ACLSum summarizer, test ROUGE-1 per aspect vs the best single-sentence heuristic (3 seeds)",
             "summarization",
             r"Summarizer \(`summarizer_small.yaml`\) test ROUGE-1 [^:]*: \*\*(?P<met>\w+)\*\* \((?P<n>\d) of 3\) — "
             r"challenge (?P<c>[\d.]+) vs (?P<hc>[\d.]+) [^;]*; approach (?P<a>[\d.]+) vs (?P<ha>[\d.]+) [^;]*; "
             r"outcome (?P<o>[\d.]+) vs (?P<ho>[\d.]+)",
             "{c} / {a} / {o} vs {hc} / {ha} / {ho} ({met}, {n} of 3)", "above for >= 2 of 3 aspects",
             "Summarization, ACLSum"),
    Headline("Shakespeare character LM, held-out plays: test bits per character of the best model", "lm",
             r"test \*\*(?P<bpc>[\d.]+)\*\* bits per byte on the held-out plays \(target <= 2\.3: \*\*(?P<met>[\w ]+)\*\*\)"
             r", val [\d.]+; (?P<steps>\d+) steps in (?P<cpu>[\d.]+) CPU-minutes",
             "{bpc} ({met}; softmax + RoPE, {steps} steps, {cpu} CPU-minutes)", "<= 2.3",
             "Language model, Shakespeare"),
    Headline("LM tokenisers and corpora, same model, ~8 CPU-minutes each: test bits per byte, bytes vs BPE-1024",
             "lm",
             r"^\| `shakespeare_char_8cpu` \|[^\n]*?\*\*(?P<sc>[\d.]+)\*\*.*?^\| `shakespeare_bpe` \|[^\n]*?"
             r"\*\*(?P<sb>[\d.]+)\*\*.*?^\| `aclsum_char` \|[^\n]*?\*\*(?P<ac>[\d.]+)\*\*.*?"
             r"^\| `aclsum_bpe` \|[^\n]*?\*\*(?P<ab>[\d.]+)\*\*",
             "Shakespeare {sc} vs {sb}, ACLSum papers {ac} vs {ab}", "-", "Language model, Shakespeare"),
    Headline("Transformer TTS vs the Tacotron-style baseline (espeak-ng corpus, equal CPU budget, the largest "
             "budget run): MCD-DTW and predict real-time factor", "tts",
             r"\A.*\*\*Target 1\*\* at (?P<budget>[\d.]+) CPU minutes each [^\n]*?: \*\*(?P<met1>[\w ]+)\*\*: "
             r"MCD-DTW (?P<tr>[\d.]+) vs (?P<tac>[\d.]+) dB.*?"
             r"\*\*Target 3\*\* [^\n]*?: \*\*(?P<met3>[\w ]+)\*\*: real-time factor (?P<rtf>[\d.]+)",
             "MCD-DTW {tr} vs {tac} dB at {budget} CPU-minutes each ({met1}); RTF {rtf} ({met3})", "lower MCD; RTF < 1",
             "Speech: Transformer TTS on the espeak-ng corpus"),
    Headline("Fashion-MNIST test accuracy, a 30-minute CPU training budget", "vision",
             r"^\| BiFormer-T \(scaled\) \| (?P<bra>[\d.]+) \|.*?^\| MambaOut-Femto \(scaled\) \| (?P<mo>[\d.]+) \|",
             "MambaOut-Femto {mo}%, BiFormer-T {bra}% (both scaled to 28x28)", ">= 93%", "Vision, Fashion-MNIST"),
)


def anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def body_of(name: str, page: str) -> str:
    """The results file without its title, its headings one level below the page's, its links from ``page``."""
    path = RESULTS_DIR / f"{name}.md"
    if not path.exists():
        raise FileNotFoundError(f"update_docs: {page} asks for results '{name}' but {path} does not exist; "
                                f"run the benchmark that writes it first")
    text = re.sub(r"\A# .*\n", "", path.read_text())  # the results file's title; the page has its own heading
    text = re.sub(r"^#", "###" if page == "README.md" else "##", text, flags=re.M)
    prefix = "../benchmarks/results/" if "/" in page else "benchmarks/results/"  # relative links from the page
    text = re.sub(r"\]\((?![a-z]+:|/|#)([^)]+)\)", lambda m: f"]({prefix}{m.group(1)})", text)
    return text.strip() + "\n"


def headline_row(h: Headline, sections: set[str]) -> list[str]:
    text = (RESULTS_DIR / f"{h.result}.md").read_text()
    found = re.search(h.pattern, text, flags=re.S | re.M)
    if found is None:
        raise ValueError(f"update_docs: headline '{h.what}' finds no match in benchmarks/results/{h.result}.md; "
                         f"fix its pattern in HEADLINES (benchmarks/update_docs.py)")
    if anchor(h.section) not in sections:
        raise ValueError(f"update_docs: headline '{h.what}' links to '{h.section}', which is no heading of "
                         f"{RESULTS_PAGE}; fix its section in HEADLINES")
    link = f"[{h.result}.md]({RESULTS_PAGE}#{anchor(h.section)})"
    return [h.what, h.figure.format(**found.groupdict()), h.target.format(**found.groupdict()), link]


def refreshed(page: str) -> str:
    """The page's text with every block rewritten from the results files."""
    text = (REPO_ROOT / page).read_text()
    text = BLOCK.sub(lambda m: m.group(1) + body_of(m.group("name"), page) + m.group(4), text)
    if page == "README.md":
        results_page = (REPO_ROOT / RESULTS_PAGE).read_text()
        sections = {anchor(h) for h in re.findall(r"^#+ (.*)$", results_page, flags=re.M)}
        table = markdown_table(("result", "figure", "target", "full table"),
                               (headline_row(h, sections) for h in HEADLINES))
        text, n = HEADLINES_BLOCK.subn(lambda m: m.group(1) + table + m.group(3), text)
        if n != 1:
            raise ValueError(f"update_docs: README.md has {n} <!-- headlines --> blocks; it needs exactly one")
    return text


def stale_pages() -> list[str]:
    """The pages whose blocks differ from what the results files give."""
    return [page for page in (RESULTS_PAGE, "README.md") if refreshed(page) != (REPO_ROOT / page).read_text()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a page is out of date")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_pages()
        for page in stale:
            print(f"{page} is out of date with benchmarks/results/; run python -m benchmarks.update_docs",
                  file=sys.stderr)
        return 1 if stale else 0
    for page in (RESULTS_PAGE, "README.md"):  # the results page first: the README's links point into it
        text = refreshed(page)
        atomic_write_text(REPO_ROOT / page, text)
        print(f"{page}: refreshed {len(BLOCK.findall(text))} result blocks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
