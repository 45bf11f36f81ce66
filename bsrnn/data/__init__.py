"""Speech data for bsrnn: corpora, manifests, features and batches (the paper's §4.1 task).

Flow: ``synth`` (embedded TTS corpus) or ``importers`` (LibriSpeech layout, JSONL,
pocketsphinx-testdata) -> JSONL ``manifest`` -> ``audio`` (16 kHz mono) -> ``features``
(log-mel, normalisation, SpecAugment) -> ``batching`` (cached dataset, SortaGrad buckets,
CTC collate). ``text`` holds the 29-symbol CTC alphabet. Nothing here knows about sparsity.
"""
