"""Model loading: GGUF files, Llama-family decoders, tokenizers and sampling."""
