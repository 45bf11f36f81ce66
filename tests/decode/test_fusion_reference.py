"""Beam search with LM fusion against a frozen copy of its first implementation, on real speech-model
output (tests/decode/data/real_log_probs.npz: the log-softmax of four dev/test utterances of two
trained bsrnn models), so that speed work on the decoder cannot change its results."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bsrnn.data.text import ALPHABET
from bsrnn.data.textcorpus import Vocab
from bsrnn.decode import CharLMScorer, beam_hypotheses
from bsrnn.decode.ctc import NEG_INF, Hypothesis, _as_log_probs, _candidates, _lae, _symbols
from bsrnn.decode.lm import one_blas_thread
from bsrnn.models.lm import RecurrentLM

REAL = Path(__file__).parent / "data" / "real_log_probs.npz"


def reference_beam_hypotheses(log_probs, *, alphabet, beam, lm, lm_weight, bonus, blank=0, prune=0.999):
    """beam_hypotheses as first merged (commit 94410c2), kept verbatim apart from argument checks."""
    lp = _as_log_probs(log_probs)
    symbols = _symbols(alphabet, lp.shape[1], blank)
    cands = _candidates(lp, prune, beam if prune is not None else lp.shape[1], blank)
    rows = lp.tolist()
    weight = lm_weight if lm is not None else 0.0
    ins = bonus if lm is not None else 0.0
    beams = {(): [0.0, NEG_INF]}
    lm_score = {(): 0.0}
    ctx = lm.bind(symbols, blank) if lm is not None else None
    for t, row in enumerate(rows):
        nxt = {}
        if ctx is not None and cands[t]:
            ctx.extend(list(beams))
        p_blank = row[blank]
        for prefix, (pb, pnb) in beams.items():
            total = _lae(pb, pnb)
            cur = nxt.get(prefix)
            if cur is None:
                cur = nxt[prefix] = [NEG_INF, NEG_INF]
            cur[0] = _lae(cur[0], total + p_blank)
            last = prefix[-1] if prefix else -1
            if last >= 0:
                cur[1] = _lae(cur[1], pnb + row[last])
            for c in cands[t]:
                gain = (pb if c == last else total) + row[c]
                if gain == NEG_INF:
                    continue
                new = prefix + (c,)
                ext = nxt.get(new)
                if ext is None:
                    ext = nxt[new] = [NEG_INF, NEG_INF]
                    if ctx is not None and new not in lm_score:
                        lm_score[new] = lm_score[prefix] + ctx.next_logp(prefix, c)
                ext[1] = _lae(ext[1], gain)
        if ctx is None:
            ranked = sorted(nxt.items(), key=lambda kv: _lae(*kv[1]), reverse=True)
        else:
            ranked = sorted(nxt.items(), key=lambda kv: _lae(*kv[1]) + weight * lm_score[kv[0]] + ins * len(kv[0]),
                            reverse=True)
        beams = dict(ranked[:beam])
    if ctx is not None:
        ctx.extend(list(beams))
    out = []
    for p, (pb, pnb) in beams.items():
        ctc = _lae(pb, pnb)
        lm_p = lm_score[p] + ctx.end_logp(p) if ctx is not None else 0.0
        out.append(Hypothesis("".join(symbols[i] for i in p), ctc, lm_p, ctc + weight * lm_p + ins * len(p)))
    return sorted(out, key=lambda h: h.score, reverse=True)


def random_lm(rnn_type: str) -> CharLMScorer:
    """An untrained LM of the shape of configs/lm_char_asr.toml (emb 64, hidden 256), its weights
    scaled up so that its distributions are peaked and the fusion reorders the beam."""
    torch.manual_seed(0)
    vocab = Vocab.build(["".join(sorted(set(ALPHABET[1:])))], "char")
    model = RecurrentLM(len(vocab), rnn_type=rnn_type, emb=64, hidden=256)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    return CharLMScorer(model, vocab)


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
def test_fusion_results_equal_the_first_implementation_on_real_model_output(rnn_type):
    lm = random_lm(rnn_type)
    utts = np.load(REAL)
    reordered = 0
    for name in utts.files:
        lp = utts[name]
        for beam, w, b in ((16, 0.5, 1.0), (16, 0.8, 0.0), (4, 0.3, 2.0)):
            got = beam_hypotheses(lp, alphabet=ALPHABET, beam=beam, lm=lm, lm_weight=w, bonus=b)
            want = reference_beam_hypotheses(lp, alphabet=ALPHABET, beam=beam, lm=lm, lm_weight=w, bonus=b)
            assert [h.text for h in got] == [h.text for h in want], (name, beam, w, b)
            for g, r in zip(got, want):
                assert (g.ctc, g.lm, g.score) == pytest.approx((r.ctc, r.lm, r.score), abs=1e-6)
            plain = beam_hypotheses(lp, alphabet=ALPHABET, beam=beam)
            reordered += got[0].text != plain[0].text
    assert reordered > 0  # the LM is strong enough to change some transcripts: the comparison has teeth


def test_the_decoder_runs_blas_on_one_thread_and_restores_it():
    from threadpoolctl import threadpool_info

    before = [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]
    with one_blas_thread():
        assert all(d["num_threads"] == 1 for d in threadpool_info() if d["user_api"] == "blas")
    assert [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"] == before
    assert math.isfinite(beam_hypotheses(np.load(REAL)["b256_dev_0"], alphabet=ALPHABET, beam=4,
                                         lm=random_lm("lstm"))[0].score)
    assert [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"] == before
