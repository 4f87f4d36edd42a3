"""Flax NNX models: modality tokenizers, signal encoder, sleep2vec."""
