"""The DeepSeek Sparse Attention policy (MLA + lightning indexer + top-k, optional MoE) and its tokenizer."""
