"""CTC prefix beam search against exhaustive enumeration, greedy at beam 1, LM fusion, errors."""

import itertools
import json
import math
import random

import numpy as np
import pytest
import torch

from bsrnn.data.text import ALPHABET
from bsrnn.data.textcorpus import Vocab
from bsrnn.decode import CharLMScorer, beam_hypotheses, export_lm, greedy_decode, make_decoder, prefix_beam_search
from bsrnn.decode.lm import NumpyStep
from bsrnn.models.lm import RecurrentLM


def collapse(path, blank=0):
    out, prev = [], None
    for s in path:
        if s != prev and s != blank:
            out.append(s)
        prev = s
    return tuple(out)


def exact_prefix_log_probs(lp: np.ndarray) -> dict[str, float]:
    """log P(y) of every transcript y, summing the probability of all C^T alignments."""
    probs: dict[tuple, float] = {}
    T, C = lp.shape
    p = np.exp(lp)
    for path in itertools.product(range(C), repeat=T):
        y = collapse(path)
        probs[y] = probs.get(y, 0.0) + math.prod(p[t, s] for t, s in enumerate(path))
    return {"".join("_ab"[i] for i in y): math.log(v) for y, v in probs.items()}


def random_log_probs(T, C, seed, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(scale * torch.randn(T, C, generator=g), -1)


@pytest.mark.parametrize("seed", range(4))
def test_an_unpruned_wide_beam_holds_every_transcript_with_its_exact_ctc_probability(seed):
    lp = random_log_probs(6, 3, seed)  # blank, a, b: repeats ("aa", "abab") are frequent
    exact = exact_prefix_log_probs(lp.double().numpy())
    hyps = beam_hypotheses(lp, alphabet="_ab", beam=10_000, prune=None)
    got = {h.text: h.ctc for h in hyps}
    assert set(got) == set(exact)
    for text, v in exact.items():
        assert got[text] == pytest.approx(v, abs=1e-5), text
    assert hyps[0].text == max(exact, key=exact.get)  # and the best one comes first
    assert prefix_beam_search(lp, alphabet="_ab", beam=10_000, prune=None) == hyps[0].text


def test_a_narrow_pruned_beam_still_finds_the_most_probable_transcript_of_peaked_frames():
    found = 0
    for seed in range(10):
        lp = random_log_probs(6, 3, 100 + seed, scale=5.0)
        exact = exact_prefix_log_probs(lp.double().numpy())
        found += prefix_beam_search(lp, alphabet="_ab", beam=4) == max(exact, key=exact.get)
    assert found >= 9


def peaked(T, seed, p=0.97):
    rng = np.random.default_rng(seed)
    probs = np.full((T, len(ALPHABET)), (1 - p) / (len(ALPHABET) - 1))
    probs[np.arange(T), rng.choice([0, 0, 0] + list(range(1, len(ALPHABET))), T)] = p
    return torch.from_numpy(np.log(probs)).float()


@pytest.mark.parametrize("seed", range(5))
def test_beam_one_without_lm_equals_greedy_on_peaked_frames(seed):
    lp = peaked(60, seed)
    greedy = greedy_decode(lp, alphabet=ALPHABET)
    assert len(greedy) > 10
    assert prefix_beam_search(lp, alphabet=ALPHABET, beam=1) == greedy
    assert prefix_beam_search(lp, alphabet=ALPHABET, beam=1, prune=None) == greedy
    assert make_decoder("greedy")(lp) == greedy


def test_beam_search_merges_alignments_that_greedy_keeps_apart():
    # frames: a 0.4 / blank 0.6 twice vs b 0.45 once...: best path "" (all blank) but P("a") is larger
    lp = torch.log(torch.tensor([[0.55, 0.45, 0.0], [0.55, 0.45, 0.0]]) + 1e-12)
    lp = lp - torch.logsumexp(lp, -1, keepdim=True)
    assert greedy_decode(lp, alphabet="_ab") == ""
    assert prefix_beam_search(lp, alphabet="_ab", beam=4) == "a"  # 1 - 0.55^2 = 0.70 > 0.30


def overfit_lm(text: str, steps: int = 150, rnn_type: str = "lstm"):
    torch.manual_seed(0)
    vocab = Vocab.build([text], "char")
    model = RecurrentLM(len(vocab), rnn_type=rnn_type, emb=16, hidden=32)
    data = vocab.encode_documents([text] * 8)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(steps):
        logits, _ = model(data[:-1].view(-1, 1))
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), data[1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), vocab


def frames(spec: str, alphabet=ALPHABET):
    """CTC frames from a spec: each char is a confident frame (blank '_' between), '[xy]' a frame
    that is 0.50 x, 0.42 y."""
    rows, i = [], 0
    while i < len(spec):
        p = np.full(len(alphabet), 1e-4)
        if spec[i] == "[":
            p[alphabet.index(spec[i + 1])], p[alphabet.index(spec[i + 2])] = 0.50, 0.42
            i += 4
        else:
            p[alphabet.index(spec[i])] = 0.95
            i += 1
        rows.append(p / p.sum())
        blank = np.full(len(alphabet), 1e-4)
        blank[0] = 0.99
        rows.append(blank / blank.sum())
    return torch.from_numpy(np.log(np.array(rows))).float()


def test_lm_fusion_moves_an_ambiguous_frame_towards_the_lm_text_and_weight_zero_does_not():
    model, vocab = overfit_lm("the cat sat")
    lm = CharLMScorer(model, vocab, missing="floor")
    lp = frames("the c[oa]t sat")
    assert prefix_beam_search(lp, alphabet=ALPHABET, beam=8) == "the cot sat"
    assert prefix_beam_search(lp, alphabet=ALPHABET, beam=8, lm=lm, lm_weight=0.5, bonus=0.0) == "the cat sat"
    assert prefix_beam_search(lp, alphabet=ALPHABET, beam=8, lm=lm, lm_weight=0.0, bonus=0.0) == "the cot sat"
    hyp = beam_hypotheses(lp, alphabet=ALPHABET, beam=8, lm=lm, lm_weight=0.5, bonus=0.0)[0]
    assert hyp.lm < 0 and hyp.score == pytest.approx(hyp.ctc + 0.5 * hyp.lm)


def test_the_insertion_bonus_counts_every_emitted_character():
    model, vocab = overfit_lm("the cat sat")
    lm = CharLMScorer(model, vocab, missing="floor")
    lp = frames("the cat")
    a = beam_hypotheses(lp, alphabet=ALPHABET, beam=4, lm=lm, lm_weight=0.5, bonus=0.0)[0]
    b = beam_hypotheses(lp, alphabet=ALPHABET, beam=4, lm=lm, lm_weight=0.5, bonus=2.0)[0]
    assert a.text == b.text == "the cat" and b.score == pytest.approx(a.score + 2.0 * 7)


@pytest.mark.parametrize("rnn_type,layers", [("lstm", 2), ("gru", 1), ("gru", 2)])
def test_the_numpy_step_equals_the_torch_model(rnn_type, layers):
    torch.manual_seed(1)
    model = RecurrentLM(12, rnn_type=rnn_type, emb=8, hidden=16, layers=layers).eval()
    step = NumpyStep(model)
    tokens = torch.tensor([[3, 5, 1], [7, 2, 2]])  # (T=2, N=3)
    with torch.no_grad():
        want, _ = model(tokens)
    states = [step.zero() for _ in range(3)]
    for t in range(2):
        logits, states = step(tokens[t].tolist(), states)
        np.testing.assert_allclose(logits, want[t].numpy(), atol=1e-5)


def test_alphabet_and_vocabulary_mismatches_are_one_sentence():
    lp = random_log_probs(5, 29, 0)
    for call in (lambda: prefix_beam_search(lp, alphabet=ALPHABET[:-1]),
                 lambda: greedy_decode(lp, alphabet=ALPHABET[:-1])):
        with pytest.raises(ValueError, match=r"alphabet has 28 symbols but log_probs has 29 classes") as e:
            call()
        assert "\n" not in str(e.value)
    model, vocab = overfit_lm("the cat sat", steps=1)
    with pytest.raises(ValueError, match=r"lacks .*'b', 'd'.* of the speech alphabet; train it on speech-normalised"):
        prefix_beam_search(lp, alphabet=ALPHABET, lm=CharLMScorer(model, vocab))
    with pytest.raises(ValueError, match="not log-softmax"):
        prefix_beam_search(lp.exp(), alphabet=ALPHABET)
    with pytest.raises(ValueError, match="beam must be a positive integer"):
        prefix_beam_search(lp, alphabet=ALPHABET, beam=0)
    with pytest.raises(ValueError, match=r"must be \(T, C\)"):
        prefix_beam_search(lp[None], alphabet=ALPHABET)
    assert prefix_beam_search(lp[:0], alphabet=ALPHABET) == ""


def test_from_checkpoint_and_from_export_score_alike(tmp_path):
    from bsrnn.train.lm import load_lm_config, train_lm
    rng = random.Random(0)
    words = "the a cat dog sat ran on in under big small red house tree".split()
    text = tmp_path / "t.txt"
    text.write_text("\n".join(" ".join(rng.choice(words) for _ in range(5)) + " " + ALPHABET[1:]
                              for _ in range(60)))
    cfg = load_lm_config(None, [
        "data.source=text", f"data.path={json.dumps(str(text))}", "data.cache_dir=''", "model.emb=8",
        "model.hidden=16", "train.batch_size=4", "train.bptt=8", "train.steps=6", "train.warmup_steps=2",
        "train.eval_every=6", "train.eval_tokens=100", f"train.run_dir={json.dumps(str(tmp_path / 'lm'))}",
        "log.tensorboard=false", "log.progress=false"])
    train_lm(cfg)
    a = CharLMScorer.from_checkpoint(tmp_path / "lm" / "last.pt")
    b = CharLMScorer.from_export(export_lm(tmp_path / "lm" / "last.pt", tmp_path / "lm.safetensors"))
    lp = random_log_probs(30, 29, 3, scale=4.0)
    ha = beam_hypotheses(lp, alphabet=ALPHABET, beam=4, lm=a)
    hb = beam_hypotheses(lp, alphabet=ALPHABET, beam=4, lm=b)
    assert [h.text for h in ha] == [h.text for h in hb]
    assert [h.lm for h in ha] == pytest.approx([h.lm for h in hb], abs=1e-5)
    with pytest.raises(ValueError, match="not an exported language model"):
        from bsrnn.inference.export import export_model, save
        CharLMScorer.from_export(save(export_model(torch.nn.Linear(4, 4)), tmp_path / "x.safetensors"))
