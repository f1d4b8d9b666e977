"""Text in, model batches out: tokenizing, vocabulary, char ids, corpus shards and window batching."""
