"""Stage 1, inputs: the source model (a Hugging Face directory, or the built-in MiniLM), the
texts that fit and the texts that validate (split by hash), and the checks made before any
work starts (model files, disk space).

    source.py        load_source: model, tokenizer, task, pooling, I/O names
    heads.py         the head in the weights of a config naming no architecture
    checkpoint.py    what the loaded weights say: missing, ignored, non-finite, a dropped head
    sentence_transformers.py  modules.json layouts: encoder folder, pooling, lowercasing, prompts
    calibration.py   load_texts, split_texts: fit / validation texts
    preflight.py     model-directory and disk-space checks
"""
