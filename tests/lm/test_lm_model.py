"""The recurrent LM: shapes, initial loss, tying, TBPTT windows and detach, overfitting a text."""

import math

import pytest
import torch
import torch.nn.functional as F

from bsrnn.data.textcorpus import Vocab
from bsrnn.models.lm import RecurrentLM, count_params, detach_state
from bsrnn.train.lm import batchify, evaluate, n_windows, sample, window


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
def test_shapes_and_initial_loss_near_uniform(rnn_type, layers):
    model = RecurrentLM(50, rnn_type=rnn_type, emb=12, hidden=16, layers=layers, dropout=0.1)
    tokens = torch.randint(0, 50, (7, 3))
    logits, state = model(tokens)
    assert logits.shape == (7, 3, 50)
    states = state if rnn_type == "lstm" else (state,)
    assert all(s.shape == (layers, 3, 16) for s in states)
    model.eval()
    with torch.no_grad():
        loss = F.cross_entropy(model(tokens)[0].reshape(-1, 50), tokens.reshape(-1))
    assert abs(float(loss) - math.log(50)) < 0.05  # small init: first predictions are near uniform


def test_state_carries_context_across_calls():
    model = RecurrentLM(20, emb=8, hidden=8).eval()
    tokens = torch.randint(0, 20, (10, 2))
    whole, _ = model(tokens)
    first, state = model(tokens[:6])
    second, _ = model(tokens[6:], state)
    torch.testing.assert_close(torch.cat([first, second]), whole)


def test_tied_decoder_shares_the_embedding_and_counts_once():
    model = RecurrentLM(30, emb=16, hidden=16, tie=True)
    assert model.decoder.weight is model.embedding.weight
    untied = RecurrentLM(30, emb=16, hidden=16)
    assert count_params(untied)[0] - count_params(model)[0] == 30 * 16
    with pytest.raises(ValueError, match="model.tie needs model.emb == model.hidden"):
        RecurrentLM(30, emb=8, hidden=16, tie=True)
    with pytest.raises(ValueError, match="model.rnn_type 'rnn' is not one of lstm, gru"):
        RecurrentLM(30, rnn_type="rnn")


def test_batchify_and_windows_cover_the_stream_contiguously():
    stream = torch.arange(23)
    data = batchify(stream, 3)  # (7, 3): column j is stream[7j : 7j + 7]
    assert data.shape == (7, 3) and data[:, 1].tolist() == list(range(7, 14))
    xs, ys = zip(*(window(data, i, 4) for i in range(n_windows(data, 4))))
    assert [x.shape[0] for x in xs] == [4, 2]  # the last window is shorter, never past the end
    assert torch.equal(torch.cat(ys), data[1:]) and torch.equal(torch.cat(xs), data[:-1])
    with pytest.raises(ValueError, match="too short"):
        batchify(torch.arange(5), 4)


def test_detached_state_stops_gradients_at_the_window_boundary():
    model = RecurrentLM(10, emb=4, hidden=4)
    x = torch.randint(0, 10, (5, 2))
    _, state = model(x)
    assert all(s.grad_fn is not None for s in state)
    cut = detach_state(state)
    assert all(s.grad_fn is None and not s.requires_grad for s in cut)
    logits, _ = model(x, cut)
    logits.sum().backward()  # would fail ("backward through the graph a second time") if not cut ...
    logits, _ = model(x, cut)
    logits.sum().backward()  # ... and a second window on the same state still works
    assert detach_state(None) is None


def test_evaluate_reports_bits_and_perplexity_of_the_same_loss():
    model = RecurrentLM(12, emb=4, hidden=8)
    r = evaluate(model, torch.randint(0, 12, (200,)), batch=4, bptt=16)
    assert r["tokens"] == 4 * 49
    assert r["bits"] == pytest.approx(r["loss"] / math.log(2)) and r["ppl"] == pytest.approx(math.exp(r["loss"]))


def test_overfits_a_short_text_and_greedy_sampling_reproduces_it():
    text = "the quick brown fox jumps over the lazy dog.\n"
    vocab = Vocab.build([text], "char")
    ids = torch.tensor(vocab.encode(text * 2)).view(-1, 1)  # (T, 1)
    model = RecurrentLM(len(vocab), emb=16, hidden=64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        logits, _ = model(ids[:-1])
        loss = F.cross_entropy(logits.reshape(-1, len(vocab)), ids[1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.05
    assert sample(model, vocab, len(text) - 1, temperature=0, prime="t") == text[1:]
    assert sample(model, vocab, 20, temperature=1.0, seed=3) == sample(model, vocab, 20, temperature=1.0, seed=3)


def test_bf16_runs_the_decoder_in_bf16_and_keeps_state_and_logits_fp32():
    from bsrnn.models.lm import RecurrentLM

    torch.manual_seed(0)
    model = RecurrentLM(50, rnn_type="lstm", emb=16, hidden=32)
    tokens = torch.randint(0, 50, (7, 3))
    ref, _ = model(tokens)
    out, (h, c) = model.set_precision("bf16")(tokens)
    assert out.dtype == h.dtype == c.dtype == torch.float32
    err = (out - ref).abs().max()
    assert 0 < err < 0.05  # the decoder really ran in bf16, and only rounding changed
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        model.set_precision("fp16")
    with pytest.raises(ValueError, match="keeps its recurrence in fp32"):
        model.set_precision("bf16", "bf16")
