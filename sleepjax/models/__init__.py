"""Flax NNX models: signal tokenizers (signal_tokenizer.py), signal encoder, sleep2vec."""
