"""edge-convert's bad input gets an error that names the file and the fix (issue 10): broken or
unsupported model directories, missing tokenizers, truncated weights, unusable calibration
files, and too little disk space (checked before any work starts)."""

from __future__ import annotations

import json
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from converters import ConvertConfig, convert
from converters._errors import DiskSpaceError, SourceModelError, UnsupportedModelError
from converters.inputs import preflight
from converters.inputs.calibration import load_texts
from converters.inputs.source import load_source
from targets import load_profile


@pytest.fixture(scope="module")
def good_model(tiny_model_factory):
    return tiny_model_factory("bert", "feature-extraction")


def _copy(good_model: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(good_model, tmp_path / "model"))


def _truncate_weights(d: Path) -> None:
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])


def _break_header(d: Path) -> None:
    w = d / "model.safetensors"
    raw = w.read_bytes()
    w.write_bytes(raw[:8] + b"{garbage" + raw[16:])  # same length, the header's JSON broken


def _remove_tokenizer(d: Path) -> None:
    for p in d.iterdir():
        if p.name.startswith(("tokenizer", "special_tokens", "vocab")):
            p.unlink()


def _write(name: str, data: bytes):
    return lambda d: (d / name).write_bytes(data)


# (id, how to break a copy of the tiny model, preflight's message, handled by load_source today)
Case = namedtuple("Case", "id, breaks, message, source_handles_it")
CASES = [
    Case("no config.json", lambda d: (d / "config.json").unlink(), r"not a Hugging Face model directory: no config\.json", True),
    Case("malformed config.json", _write("config.json", b"{bad"), r"config\.json is not valid JSON: .* line 1 column 2", True),
    Case("config.json not UTF-8", _write("config.json", b"\xff\xfe{}"), r"config\.json is not UTF-8 text \(byte 0\)", False),
    Case("config.json a list", _write("config.json", b"[1, 2]"), r"config\.json must hold a JSON object, not a list", False),
    Case("weights missing", lambda d: (d / "model.safetensors").unlink(), r"has no weights \(model\.safetensors or pytorch_model\.bin\)", True),
    Case("weights truncated", _truncate_weights, r"model\.safetensors is not a valid safetensors file \(tensors end at byte \d+, the file has \d+\): truncated", False),
    Case("weights header broken", _break_header, r"model\.safetensors is not a valid safetensors file \(header is not JSON", False),
    Case("weights empty", _write("model.safetensors", b""), r"model\.safetensors is not a valid safetensors file \(0 bytes", False),
    Case("tokenizer missing", _remove_tokenizer, r"has no tokenizer files: expected tokenizer\.json", False),
    Case("tokenizer.json malformed", _write("tokenizer.json", b"{broken"), r"tokenizer\.json is not valid JSON", False),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_preflight_names_the_broken_file(case, good_model, tmp_path):
    model = _copy(good_model, tmp_path)
    case.breaks(model)
    with pytest.raises(SourceModelError, match=case.message):
        preflight.check_model_dir(model)


@pytest.mark.parametrize(
    "case", CASES,
    ids=[c.id for c in CASES],
)
def test_load_source_refuses_a_broken_model_directory(case, good_model, tmp_path):
    model = _copy(good_model, tmp_path)
    case.breaks(model)
    # load_source's own wording may differ from preflight's for the cases it handled before
    # preflight existed; what matters is the error class and the file it names.
    names = {"weights missing": r"has no weights", "tokenizer missing": r"no tokenizer files",
             "no config.json": r"no config\.json"}.get(
        case.id, r"model/(config\.json|model\.safetensors|tokenizer\.json)")
    with pytest.raises(SourceModelError, match=names):
        load_source(model)


def test_the_intact_model_passes_preflight(good_model):
    preflight.check_model_dir(good_model)  # no error: the checks do not refuse a good checkpoint


def test_a_truncated_pytorch_checkpoint_is_named(tmp_path):
    import torch

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "vocab.txt").write_text("[PAD]\n")
    torch.save({"w": torch.zeros(64)}, model / "pytorch_model.bin")
    preflight.check_model_dir(model)
    raw = (model / "pytorch_model.bin").read_bytes()
    (model / "pytorch_model.bin").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SourceModelError, match=r"pytorch_model\.bin is a truncated or corrupted PyTorch checkpoint"):
        preflight.check_model_dir(model)


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_a_checkpoint_without_a_classification_head_is_refused_as_a_classifier(tiny_model_factory, arch):
    # transformers would fill the head with random numbers and only log it; the "classifier"
    # would then match its own PyTorch reference perfectly and ship.
    encoder = tiny_model_factory(arch, "feature-extraction")
    with pytest.raises(SourceModelError, match=r"has no trained text-classification head \(.*classifier.*"
                                               r"not in its weights.*task='feature-extraction'"):
        load_source(encoder, task="text-classification")
    assert load_source(encoder).task == "feature-extraction"


def test_a_checkpoint_missing_encoder_weights_is_refused(good_model, tmp_path):
    from safetensors.numpy import load_file, save_file

    broken = _copy(good_model, tmp_path)
    tensors = load_file(broken / "model.safetensors")
    dropped = next(k for k in tensors if "attention" in k and k.endswith("query.weight"))
    del tensors[dropped]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SourceModelError, match=r"query\.weight not in its weights \(they would be random\)"):
        load_source(broken)


@pytest.mark.parametrize("stored", ["float16", "bfloat16"])
def test_a_half_precision_checkpoint_is_converted_from_float32(good_model, tmp_path, stored):
    """Most checkpoints are saved in fp16/bf16; transformers 5 would keep that type, and the
    FP32 reference (and the ONNX export) would not be FP32."""
    import torch
    import transformers

    half = tmp_path / stored
    transformers.AutoModel.from_pretrained(good_model).to(getattr(torch, stored)).save_pretrained(half)
    for name in good_model.iterdir():
        if name.name.startswith(("tokenizer", "special_tokens", "vocab")):
            shutil.copy(name, half / name.name)
    source = load_source(half)
    assert {p.dtype for p in source.module.parameters()} == {torch.float32}
    reference = load_source(good_model)
    ids = torch.tensor([[2, 10, 20, 3]])
    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        got, want = source.module(**feeds)[0], reference.module(**feeds)[0]
    assert got.dtype == torch.float32 and torch.allclose(got, want, atol=0.05)  # the weights' rounding only


def test_a_config_that_does_not_match_the_weights_is_named(good_model, tmp_path):
    broken = _copy(good_model, tmp_path)
    config = json.loads((broken / "config.json").read_text())
    config["hidden_size"] *= 2
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(SourceModelError, match=r"config\.json does not match the weights: \S+: saved \[\d+(, \d+)*\], "
                                               r"config\.json gives \["):
        load_source(broken)


def test_a_label_map_that_does_not_match_the_head_names_the_head(tiny_model_factory, tmp_path):
    """A reviewer's 2-entry id2label on a 3-output head was blamed on "e.g. hidden_size"."""
    broken = _copy(tiny_model_factory("bert", "text-classification"), tmp_path)
    config = json.loads((broken / "config.json").read_text())
    config |= {"id2label": {"0": "no", "1": "yes"}, "label2id": {"no": 0, "yes": 1}}
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(SourceModelError, match=r"classifier\.(weight|bias): saved \[3.*config\.json gives \[2.*"
                                               r"a classifier head's outputs are the labels"):
        load_source(broken)


def test_weights_config_json_has_no_place_for_are_refused(good_model, tmp_path):
    """A config of fewer layers than the checkpoint holds: transformers skips the rest and only
    logs it, and the artifacts agreed with that truncated model (a review, session 50)."""
    broken = _copy(good_model, tmp_path)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps(config | {"num_hidden_layers": config["num_hidden_layers"] - 1}))
    last = config["num_hidden_layers"] - 1
    with pytest.raises(SourceModelError, match=rf"config\.json has no place for \d+ of the checkpoint's weights "
                                               rf"\(encoder\.layer\.{last}\..*num_hidden_layers"):
        load_source(broken)


def test_a_classifier_saved_as_a_bare_encoder_is_noted_as_dropping_its_head(tiny_model_factory, tmp_path):
    """config.json naming BertModel over a classifier's weights: converted as feature-extraction
    (what the config says) with the dropped head said, as for a config naming the classifier."""
    model = _copy(tiny_model_factory("bert", "text-classification"), tmp_path)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"architectures": ["BertModel"]}))
    source = load_source(model)
    assert source.task == "feature-extraction"
    assert any("head (classifier) dropped" in note for note in source.describe()["notes"])


@pytest.mark.parametrize("name, content, said", [
    ("tokenizer.json", b'{"version": "1.0", "model": {"type": "FutureModel"}}', r"tokenizer file"),
    ("tokenizer.json", b'{"not": "a tokenizer"}', r"KeyError"),
    ("tokenizer_config.json", None, r"model_max_length -1 is not a token count of at least 2"),
])
def test_unreadable_tokenizer_files_are_one_line_errors(good_model, tmp_path, name, content, said):
    """A tokenizer.json of a newer `tokenizers` or of another kind, a negative model_max_length:
    tracebacks before (a review, session 50)."""
    broken = _copy(good_model, tmp_path)
    if content is None:
        config = json.loads((broken / name).read_text())
        content = json.dumps(config | {"model_max_length": -1}).encode()
    (broken / name).write_bytes(content)
    with pytest.raises(SourceModelError, match=said):
        load_source(broken)


def test_a_huge_calibration_text_is_tokenized_from_its_head(good_model):
    """One 10.8 MB calibration line took 1.97 GB to tokenize whole before truncation cut it (a
    review, session 50): the converter reads its head, as the device does, with the same tokens."""
    from converters.core.validate import encode

    source = load_source(good_model)
    seen: list[int] = []
    tokenizer = source.tokenizer

    class Recording:
        def __call__(self, texts, **kwargs):
            seen.extend(len(t) for t in ([texts] if isinstance(texts, str) else texts))
            return tokenizer(texts, **kwargs)

    huge = "a calibration sentence of some words. " * 30_000  # 1.1 MB
    whole = tokenizer([huge, "short"], padding=True, truncation=True, max_length=source.max_length, return_tensors="np")
    object.__setattr__(source, "tokenizer", Recording())
    got = encode(source, [huge, "short"])
    assert (got["input_ids"] == whole["input_ids"]).all() and (got["attention_mask"] == whole["attention_mask"]).all()
    assert max(seen) < 3 * source.max_length * 32


def test_a_tokenizer_larger_than_the_embedding_table_is_refused(good_model, tmp_path):
    broken = _copy(good_model, tmp_path)
    config = json.loads((broken / "config.json").read_text())
    tokens = config["vocab_size"]
    from safetensors.numpy import load_file, save_file

    tensors = load_file(broken / "model.safetensors")
    key = next(k for k in tensors if k.endswith("word_embeddings.weight"))
    tensors[key] = tensors[key][: tokens // 2]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    config["vocab_size"] = tokens // 2
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(SourceModelError, match=rf"the tokenizer has {tokens} tokens but the model's embedding "
                                               rf"table has {tokens // 2} rows"):
        load_source(broken)


def test_non_finite_weights_are_named(good_model, tmp_path):
    import numpy as np
    from safetensors.numpy import load_file, save_file

    broken = _copy(good_model, tmp_path)
    tensors = load_file(broken / "model.safetensors")
    key = next(k for k in tensors if k.endswith("query.weight"))
    tensors[key][0, 0] = np.nan
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SourceModelError, match=rf"weight \S*{key.split('.', 1)[1]} holds 1 non-finite values"):
        load_source(broken)


def test_missing_model_directory(tmp_path):
    with pytest.raises(SourceModelError, match=r"model directory .*nowhere does not exist"):
        preflight.check_model_dir(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SourceModelError, match=r"is not a directory"):
        preflight.check_model_dir(tmp_path / "file")


def test_unsupported_architecture_names_the_supported_ones(good_model, tmp_path):
    model = _copy(good_model, tmp_path)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(UnsupportedModelError, match=r"model_type 'gpt2' is not supported; supported: bert, distilbert, roberta, xlm-roberta, camembert"):
        load_source(model)
    # Said before the TFLite export's second process starts (a review, session 52: it started first).
    from converters import ConvertConfig
    from converters._shared import SharedInputs
    from targets import load_profile

    said: list[str] = []
    with pytest.raises(UnsupportedModelError, match=r"model_type 'gpt2' is not supported"):
        SharedInputs.load(ConvertConfig(model=model, target="rpi5", out=tmp_path / "o"), tmp_path / "work", said.append,
                          [load_profile("rpi5")])
    assert not any("second, low-priority process" in m for m in said), said


# --- calibration files ----------------------------------------------------------------------


def test_calibration_file_missing(tmp_path):
    with pytest.raises(SourceModelError, match=r"calibration file .*missing\.txt does not exist"):
        load_texts(tmp_path / "missing.txt")
    with pytest.raises(SourceModelError, match=r"validation file .* is a directory, not a file"):
        load_texts(tmp_path, role="validation")


@pytest.mark.parametrize("content", [b"", b"\n\n# only a comment\n", b'{"text": "one"}\n'],
                         ids=["empty", "only-comments", "too-few"])
def test_calibration_file_without_enough_texts(tmp_path, content):
    path = tmp_path / "cal.txt"
    path.write_bytes(content)
    count = len([line for line in content.decode().splitlines() if line.strip() and not line.startswith("#")])
    # Comment lines skipped are said (found by a review, session 49: a file of hashtags read as "0 texts").
    skipped = r" \(1 line starting with '#' skipped as comments; a \.jsonl file keeps such texts\)" \
        if b"#" in content else ""
    with pytest.raises(SourceModelError, match=rf"cal\.txt has {count} texts?{skipped}; at least 8 are needed"):
        load_texts(path)


def test_a_calibration_pipe_is_named_as_one(tmp_path):
    """Found by a review (session 49): `--calibration <(cat texts.txt)` said the file "does not exist"."""
    import os

    pipe = tmp_path / "pipe.txt"
    os.mkfifo(pipe)
    with pytest.raises(SourceModelError, match=r"pipe\.txt is not a regular file \(a pipe or a device\); save the texts"):
        load_texts(pipe)


@pytest.mark.parametrize("length", [-1, 0, 2.5, "128", float("inf")])
def test_a_sentence_bert_config_with_an_unusable_length_names_the_file(tmp_path, length):
    """Found by a review (session 49): max_seq_length -1 ended in a tokenizer traceback."""
    from converters.inputs.sentence_transformers import EncoderSettings, encoder_settings

    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": length}))
    with pytest.raises(SourceModelError, match=r"sentence_bert_config\.json: max_seq_length must be a positive whole"):
        encoder_settings(tmp_path)
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128.0, "do_lower_case": True}))
    assert encoder_settings(tmp_path) == EncoderSettings(128, True)


@pytest.mark.parametrize("role", ["calibration", "validation"])
def test_repeated_texts_count_once(tmp_path, role):
    """20 copies of one line are one text of evidence, with or without a validation file
    (a validation file of 10 copies of one line was accepted as "10 validation texts")."""
    path = tmp_path / "dups.txt"
    path.write_text("the same line\n" * 20 + "".join(f"other {i}\n" for i in range(5)))
    with pytest.raises(SourceModelError, match=rf"{role} file .*dups\.txt has 25 texts but 6 distinct; "
                                               "at least 8 different texts are needed"):
        load_texts(path, role=role)
    path.write_text("the same line\n" * 20 + "".join(f"other {i}\n" for i in range(7)))
    texts = load_texts(path, role=role)
    assert len(texts.texts) == 27 and texts.distinct == 8 and texts.counted() == "27 (8 distinct)"


def test_calibration_file_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("un caf\xe9 au lait\n".encode("latin-1") * 10)
    with pytest.raises(SourceModelError, match=r"latin1\.txt is not UTF-8 text \(byte 6: invalid continuation byte\); save it as UTF-8"):
        load_texts(path)


def test_calibration_jsonl_without_text_field(tmp_path):
    path = tmp_path / "cal.jsonl"
    path.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(SourceModelError, match=r"cal\.jsonl:2: expected a JSON object with a 'text' field, "
                                               r"got keys \['body'\]$"):
        load_texts(path)
    path.write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(SourceModelError, match=r"cal\.jsonl:2: not valid JSON"):
        load_texts(path)
    for line, message in (('{"text": 5}', r"cal\.jsonl:2: 'text' must be a string, got 5"),
                          ('{"text": null}', r"cal\.jsonl:2: 'text' must be a string, got null"),
                          ('["a"]', r"cal\.jsonl:2: expected a JSON object with a 'text' field, got a JSON list")):
        path.write_text('{"text": "fine"}\n' + line + "\n")
        with pytest.raises(SourceModelError, match=message):
            load_texts(path)


def test_calibration_files_read_the_same_whatever_their_format(tmp_path):
    """A byte-order mark is ignored, blank and empty texts are skipped in both formats, and
    .txt lines starting with '#' are comments (documented)."""
    texts = [f"text number {i}" for i in range(10)]
    txt, jsonl = tmp_path / "a.txt", tmp_path / "a.jsonl"
    txt.write_bytes(("\ufeff" + "# a comment\n\n" + "\n".join(texts) + "\n").encode())
    jsonl.write_bytes(("\ufeff" + "\n".join(json.dumps({"text": t}) for t in texts + [""]) + "\n").encode())
    assert list(load_texts(txt).texts) == list(load_texts(jsonl).texts) == texts


def test_lines_end_at_newline_only(tmp_path):
    """Form feeds, U+0085 and U+2028/U+2029 inside a text (web text; json.dumps(ensure_ascii=False)
    leaves them unescaped) keep it one text: str.splitlines() made two of it, and a JSONL record
    "not valid JSON". Windows line ends still end lines."""
    texts = [f"text {i}" + sep + "more" for i, sep in enumerate(["\u2028", "\u2029", "\x85", "\x0c", " "] * 2)]
    txt, jsonl = tmp_path / "a.txt", tmp_path / "a.jsonl"
    txt.write_text("\r\n".join(texts) + "\r\n", encoding="utf-8", newline="")
    jsonl.write_text("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in texts) + "\n", encoding="utf-8")
    assert list(load_texts(txt).texts) == list(load_texts(jsonl).texts) == texts


@pytest.mark.parametrize("name", ["README.md", "texts.csv", "texts.json", "texts"])
def test_a_calibration_file_of_another_format_is_refused(tmp_path, name):
    # Read line by line, a README or CSV gives markup and headers as "texts".
    path = tmp_path / name
    path.write_text("\n".join(f"| row {i} | text |" for i in range(20)))
    with pytest.raises(SourceModelError, match=r"expected a \.txt file \(one text per line\) or \.jsonl"):
        load_texts(path)


# --- disk space -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(good_model):
    return load_source(good_model)


def _usage(free_by_path):
    Usage = namedtuple("Usage", "total used free")

    def disk_usage(path):
        free = free_by_path(Path(path))
        return Usage(10 * free + 1, 9 * free, free)

    return disk_usage


def test_estimate_follows_the_planned_artifacts(source):
    sizes = preflight.estimate(load_profile("x86-avx2"), source)
    fp32 = 4 * source.num_parameters
    assert sizes.fp32_bytes >= fp32
    assert [name for name, _ in sizes.artifacts] == ["onnx-fp32", "onnx-int8", "onnx-int4"]
    by_name = dict(sizes.artifacts)
    assert by_name["onnx-fp32"] >= sizes.fp32_bytes
    assert by_name["onnx-int8"] >= 0.3 * sizes.fp32_bytes and by_name["onnx-int4"] >= 0.2 * sizes.fp32_bytes
    assert sizes.artifact_bytes > sum(by_name.values())  # plus the tokenizer files
    assert sizes.work_bytes >= 8 * sizes.fp32_bytes  # 7.9x measured on MiniLM (preflight.WORK_SIZE)
    # A profile with TFLite artifacts too needs more room.
    assert preflight.estimate(load_profile("rpi5"), source).artifact_bytes > sizes.artifact_bytes
    # --prune adds the pruned twins (at most their unpruned size) and the pruned model's work tree.
    pruned = preflight.estimate(load_profile("x86-avx2"), source, pruned=True)
    assert [name for name, _ in pruned.artifacts] == ["onnx-fp32", "onnx-int8", "onnx-int4", "onnx-int8-pruned",
                                                     "onnx-int4-pruned"]
    assert dict(pruned.artifacts)["onnx-int8-pruned"] == by_name["onnx-int8"]
    assert pruned.work_bytes == 2 * sizes.work_bytes


def test_too_little_space_is_refused_before_any_work(source, tmp_path, monkeypatch):
    sizes = preflight.estimate(load_profile("x86-avx2"), source)
    needed = sizes.artifact_bytes + sizes.work_bytes  # one filesystem for output and temp dir
    free = needed - 1
    monkeypatch.setattr(shutil, "disk_usage", _usage(lambda path: free))
    out = tmp_path / "deep" / "out"
    with pytest.raises(DiskSpaceError, match=rf"not enough disk space at {tmp_path} for the artifact directory "
                       rf"and the work directory: needs about {needed / 2**20:.0f} MB, {free / 2**20:.0f} MB free") as err:
        preflight.check_disk_space(load_profile("x86-avx2"), source, out, temp_dir=tmp_path)
    assert (err.value.needed_bytes, err.value.free_bytes) == (needed, free)
    assert not out.parent.exists(), "nothing may be written before the check"
    monkeypatch.setattr(shutil, "disk_usage", _usage(lambda path: needed))
    assert preflight.check_disk_space(load_profile("x86-avx2"), source, out, temp_dir=tmp_path) == sizes


def test_output_and_temp_dir_on_different_filesystems(source, tmp_path, monkeypatch):
    (tmp_path / "outfs").mkdir()
    (tmp_path / "tmpfs").mkdir()
    monkeypatch.setattr(preflight, "_filesystem", lambda path: hash(Path(path).name))
    sizes = preflight.estimate(load_profile("x86-avx2"), source)
    # Room for the artifacts but not for the work directory: the temp dir is named.
    monkeypatch.setattr(shutil, "disk_usage", _usage(
        lambda path: sizes.artifact_bytes if path.name == "outfs" else sizes.work_bytes - 1))
    with pytest.raises(DiskSpaceError, match=r"at .*tmpfs for the work directory \(temp dir\): needs about"):
        preflight.check_disk_space(load_profile("x86-avx2"), source, tmp_path / "outfs" / "o", temp_dir=tmp_path / "tmpfs")
    monkeypatch.setattr(shutil, "disk_usage", _usage(
        lambda path: sizes.artifact_bytes - 1 if path.name == "outfs" else sizes.work_bytes))
    with pytest.raises(DiskSpaceError, match=r"at .*outfs for the artifact directory: needs about"):
        preflight.check_disk_space(load_profile("x86-avx2"), source, tmp_path / "outfs" / "o", temp_dir=tmp_path / "tmpfs")


def test_convert_checks_disk_space_before_starting(good_model, tmp_path, monkeypatch):
    """Before any work: no staging directory, no PyTorch reference outputs, no export, no TFLite
    export process (each would cost minutes on a real model before saying there is no room)."""
    import converters._shared as shared
    from converters.packaging import package

    monkeypatch.setattr(shutil, "disk_usage", _usage(lambda path: 1 << 20))
    for owner, name in ((shared.SharedInputs, "references"), (shared.SharedInputs, "onnx_export"),
                        (shared.SharedInputs, "start_tflite_exports"), (package, "staging_dir")):
        monkeypatch.setattr(owner, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} ran before the disk check"))
    out = tmp_path / "out"
    with pytest.raises(DiskSpaceError, match=r"not enough disk space at .*: needs about \d+ MB, 1 MB free"):
        convert(ConvertConfig(model=good_model, target="x86-avx2", out=out, latency_runs=1))
    assert list(tmp_path.iterdir()) == [], "no staging directory before the check"


def test_a_bad_calibration_file_is_said_before_the_model_loads(tmp_path, monkeypatch):
    import converters._shared as shared

    monkeypatch.setattr(shared, "load_source", lambda *a, **k: pytest.fail("the model was loaded first"))
    (tmp_path / "cal.txt").write_text("too few\n")
    with pytest.raises(SourceModelError, match=r"cal\.txt has 1 text;"):
        convert(ConvertConfig(model=tmp_path / "model", target="x86-avx2", out=tmp_path / "o",
                              calibration=tmp_path / "cal.txt"))


def test_a_classifier_is_not_converted_for_the_other_classification_task(tiny_model_factory):
    model = tiny_model_factory("bert", "text-classification")
    with pytest.raises(UnsupportedModelError, match=r"text-classification checkpoint .*its head cannot do "
                                                   r"token-classification"):
        load_source(model, task="token-classification")
    assert load_source(model, task="feature-extraction").task == "feature-extraction"  # its encoder


@pytest.mark.parametrize("names, said", [
    ({"0": "pos", "1": "pos", "2": "neg"}, r"id2label names 'pos' more than one output"),
    ({"0": "pos", "1": " ", "2": "neg"}, r"id2label gives output 1 an empty name"),
])
def test_label_names_classify_cannot_tell_apart_are_refused(tiny_model_factory, tmp_path, names, said):
    """Two outputs under one name made edge-serve's /predict list "pos" twice and its label2id
    lose an output; an empty name says nothing."""
    model = _copy(tiny_model_factory("bert", "text-classification"), tmp_path)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"id2label": names, "label2id": {v: int(k) for k, v in names.items()}}))
    with pytest.raises(SourceModelError, match=said + ".*its own non-empty label name"):
        load_source(model)


@pytest.mark.parametrize("edit, message", [
    ({"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}, "problem_type": None}, r"single output \(a regression or cross-encoder score\)"),
    ({"problem_type": "regression"}, r"is a regression head \(problem_type regression, 3 outputs\)"),
    ({"problem_type": "multi_label_classification"}, r"multi_label_classification .*sigmoid"),
])
def test_heads_classify_cannot_report_are_refused_before_loading(tiny_model_factory, tmp_path, edit, message):
    """A one-output head came out as score 1.0 for every text (its top-1 floor unable to fail);
    a multi-label head's sigmoids were reported as a softmax. Its encoder still converts."""
    model = _copy(tiny_model_factory("bert", "text-classification"), tmp_path)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | edit))
    with pytest.raises(UnsupportedModelError, match=message + r".*task=feature-extraction"):
        load_source(model)
    assert load_source(model, task="feature-extraction").task == "feature-extraction"


def test_a_config_without_model_type_says_so(good_model, tmp_path):
    broken = _copy(good_model, tmp_path)
    config = json.loads((broken / "config.json").read_text())
    del config["model_type"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match=r"config\.json names no model_type"):
        load_source(broken)


def test_a_small_calibration_file_notes_how_few_texts_validate(tmp_path, monkeypatch):
    """A 12-text file splits 8 / 4 by hash: accepted, but the run says how thin its figures are."""
    from types import SimpleNamespace

    import converters._shared as shared

    monkeypatch.setattr(shared, "load_source", lambda *a, **k: SimpleNamespace(
        name="stub", model_type="bert", task="feature-extraction", num_parameters=1000, notes=()))
    (tmp_path / "cal.txt").write_text("\n".join(f"calibration sentence number {i}" for i in range(12)) + "\n")
    said: list[str] = []
    inputs = shared.SharedInputs.load(
        ConvertConfig(model=tmp_path / "model", target="x86-avx2", out=tmp_path / "o", calibration=tmp_path / "cal.txt"),
        tmp_path / "work", said.append)
    inputs.close()
    few = len(inputs.texts.validation.texts)
    assert few < 8 and any(m.startswith(f"note: only {few} different validation texts") and "validation_texts=FILE" in m
                           for m in said), said
    said.clear()
    shared.SharedInputs.load(ConvertConfig(model=tmp_path / "model", target="x86-avx2", out=tmp_path / "o"),
                             tmp_path / "work", said.append).close()  # the built-in texts: 87 validate
    assert not any(m.startswith("note: only") for m in said)
    assert not any("moves in steps of" in m for m in said)  # an embedding model's cosines are not steps


def test_load_freezes_the_loaded_heap_until_close_and_leaves_a_process_freeze_alone(tmp_path, monkeypatch):
    """The objects alive once the model is loaded are kept from the cyclic collector for the run
    (each full collection walked them all) and given back by close(); a process that froze objects
    itself keeps its freeze, neither added to nor undone."""
    import gc
    from types import SimpleNamespace

    import converters._shared as shared

    monkeypatch.setattr(shared, "load_source", lambda *a, **k: SimpleNamespace(
        name="stub", model_type="bert", task="feature-extraction", num_parameters=1000, notes=()))
    config = ConvertConfig(model=tmp_path / "model", target="x86-avx2", out=tmp_path / "o")
    assert gc.get_freeze_count() == 0
    inputs = shared.SharedInputs.load(config, tmp_path / "work", lambda message: None)
    assert gc.get_freeze_count() > 0
    inputs.close()
    assert gc.get_freeze_count() == 0
    inputs.close()  # twice: nothing more to give back
    assert gc.get_freeze_count() == 0

    gc.freeze()
    calls: list[str] = []
    try:
        # (the count itself moves as frozen objects die)
        monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
        monkeypatch.setattr(gc, "unfreeze", lambda: calls.append("unfreeze"))
        inputs = shared.SharedInputs.load(config, tmp_path / "work", lambda message: None)
        inputs.close()
        assert calls == [] and gc.get_freeze_count() > 0
    finally:
        monkeypatch.undo()
        gc.unfreeze()


def test_a_classifier_with_fewer_than_100_validation_texts_gets_a_note_and_comments_are_counted(tmp_path, monkeypatch):
    """A reviewer's pruned twin read "top1 1.0000" on 13 validation texts and agreed on 0.92 of 363;
    and 40 of 70 calibration lines (hashtags) were dropped as comments without a count."""
    from types import SimpleNamespace

    import converters._shared as shared

    monkeypatch.setattr(shared, "load_source", lambda *a, **k: SimpleNamespace(
        name="stub", model_type="bert", task="text-classification", num_parameters=1000, notes=()))
    lines = [f"#tag {i}" for i in range(5)] + [f"calibration sentence number {i}" for i in range(60)]
    (tmp_path / "cal.txt").write_text("\n".join(lines) + "\n")
    said: list[str] = []
    inputs = shared.SharedInputs.load(
        ConvertConfig(model=tmp_path / "model", target="x86-avx2", out=tmp_path / "o", calibration=tmp_path / "cal.txt"),
        tmp_path / "work", said.append)
    inputs.close()
    n = inputs.texts.validation.distinct
    assert any(m.startswith(f"note: {n} validation texts: top-1 agreement on them moves in steps of {1 / n:.3f}")
               for m in said), said
    assert any(m.startswith(f"note: 5 line(s) of {tmp_path / 'cal.txt'} start with '#'") for m in said), said


# --- label ids, heads edge-convert does not convert (review F7, F8) ---------------------------


def _with_config(model: Path, tmp_path: Path, **changes) -> Path:
    """A copy of `model` whose config.json has `changes` (a None value removes the key)."""
    copy = Path(shutil.copytree(model, tmp_path / "edited"))
    config = json.loads((copy / "config.json").read_text()) | changes
    (copy / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return copy


def _no_loading(monkeypatch):
    """Make any from_pretrained fail: a refusal must come from config.json alone."""
    import transformers

    def loaded(*args, **kwargs):
        pytest.fail("the model was loaded before the refusal")

    for auto in ("AutoModel", "AutoModelForSequenceClassification", "AutoModelForTokenClassification"):
        monkeypatch.setattr(getattr(transformers, auto), "from_pretrained", loaded)


@pytest.mark.parametrize("id2label, message", [
    ({"0": "neg", "1": "neu", "5": "pos"}, r"id2label has ids 0, 1, 5, but a head with 3 labels needs ids 0\.\.2, "
                                           r"one per output \(no label for output 2\): number the labels 0\.\.2"),
    ({"1": "neg", "2": "neu", "3": "pos"}, r"id2label has ids 1, 2, 3, .*needs ids 0\.\.2, one per output "
                                           r"\(no label for output 0\)"),
    ({"0": "neg", "1": "neu", "x": "pos"}, r"id2label has ids 0, 1, x, .*\(no label for output 2\)"),
], ids=["gap", "from-1", "not-a-number"])
def test_label_ids_other_than_0_to_n_minus_1_are_named_before_loading(tiny_model_factory, tmp_path, monkeypatch,
                                                                      id2label, message):
    """{"0", "1", "5"} for 3 labels ended in a bare `KeyError: 2` after the model had loaded."""
    model = _with_config(tiny_model_factory("bert", "text-classification"), tmp_path, id2label=id2label,
                         label2id={name: key for key, name in id2label.items()})
    _no_loading(monkeypatch)
    with pytest.raises(SourceModelError, match=r"edited/config\.json: " + message):
        load_source(model)


def test_label_ids_in_any_order_name_the_outputs_by_id(tiny_model_factory, tmp_path):
    """JSON order is not output order: output i is id2label[i]."""
    model = _with_config(tiny_model_factory("bert", "text-classification"), tmp_path,
                         id2label={"2": "pos", "0": "neg", "1": "neu"})
    assert load_source(model).postprocess["labels"] == ["neg", "neu", "pos"]


HEADS = ["BertForQuestionAnswering", "BertForMaskedLM", "BertForMultipleChoice", "BertForNextSentencePrediction",
         "BertForPreTraining", "BertLMHeadModel", "RobertaForCausalLM", "XLMRobertaForMaskedLM",
         "DistilBertForQuestionAnswering"]


@pytest.mark.parametrize("architecture", HEADS)
def test_a_head_edge_convert_does_not_convert_is_refused_before_loading(good_model, tmp_path, monkeypatch,
                                                                       architecture):
    """Such checkpoints were converted as feature-extraction, the head dropped without a word."""
    model = _with_config(good_model, tmp_path, architectures=[architecture])
    _no_loading(monkeypatch)
    with pytest.raises(UnsupportedModelError, match=rf"config\.json names architecture {architecture}, whose head "
                                                    r"edge-convert does not convert \(supported: .*\); convert it "
                                                    r"with task=feature-extraction for its encoder alone"):
        load_source(model)
    with pytest.raises(UnsupportedModelError, match=rf"{architecture}, whose head edge-convert does not convert; "
                                                    r"its head cannot do token-classification"):
        load_source(model, task="token-classification")


@pytest.fixture(scope="module")
def qa_model(tmp_path_factory):
    """A BertForQuestionAnswering checkpoint saved by transformers (head: qa_outputs)."""
    import torch
    import transformers
    from tiny_models import _tokenizer

    torch.manual_seed(0)
    tokenizer = _tokenizer("wordpiece")
    config = transformers.BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, hidden_size=32,
                                     num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=128)
    directory = tmp_path_factory.mktemp("bert-qa")
    transformers.BertForQuestionAnswering(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_the_encoder_of_a_head_checkpoint_converts_when_asked_and_the_drop_is_noted(qa_model):
    import torch
    import transformers

    source = load_source(qa_model, task="feature-extraction")
    note = ("BertForQuestionAnswering checkpoint converted as feature-extraction: its encoder alone, its head "
            "(qa_outputs) dropped (not in the artifacts)")
    assert source.task == "feature-extraction" and source.notes == (note,)
    assert source.describe()["notes"] == [note]  # the manifest's source section records it
    # The checkpoint's own encoder, not a fresh one: its last hidden state, number for number.
    qa = transformers.BertForQuestionAnswering.from_pretrained(qa_model, attn_implementation="eager").eval()
    ids = torch.tensor([[2, 10, 20, 30, 3]])
    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        assert torch.equal(source.module(**feeds), qa.bert(**feeds).last_hidden_state)


def test_a_head_checkpoint_is_refused_by_the_cli_with_the_flag_to_pass(qa_model, tmp_path):
    from click.testing import CliRunner

    from converters.cli import main as edge_convert

    out = tmp_path / "o"
    result = CliRunner().invoke(edge_convert, [str(qa_model), "--target", "x86-avx2", "--out", str(out), "-q"])
    assert result.exit_code == 1, result.output
    assert "architecture BertForQuestionAnswering, whose head edge-convert does not convert" in result.output
    assert "convert it with --task feature-extraction for its encoder alone" in result.output
    assert not out.exists()


def test_the_dropped_head_is_said_once_in_the_progress_output(qa_model, tmp_path):
    import converters._shared as shared

    said: list[str] = []
    shared.SharedInputs.load(ConvertConfig(model=qa_model, task="feature-extraction", target="x86-avx2",
                                           out=tmp_path / "o"), tmp_path / "work", said.append).close()
    assert sum("head (qa_outputs) dropped" in message for message in said) == 1, said


@pytest.mark.parametrize("encoder", ["bert", "xlm-roberta", "no-architectures", "built-in sentence-transformers"])
def test_plain_encoders_still_convert_as_feature_extraction_without_a_note(tiny_model_factory, tmp_path, encoder):
    if encoder == "built-in sentence-transformers":
        model = None  # all-MiniLM-L6-v2: architectures ["BertModel"], modules.json
    elif encoder == "no-architectures":
        model = _with_config(tiny_model_factory("bert", "feature-extraction"), tmp_path, architectures=None)
    else:
        model = tiny_model_factory(encoder, "feature-extraction")
    source = load_source(model)
    assert source.task == "feature-extraction" and source.notes == ()
    assert "notes" not in source.describe()


# --- calibration lines that show nothing, indented comments (review F9) ----------------------

INVISIBLE = ["\u200b", "\ufeff", "\u00a0", "\u3000", "\u2060", "\u200d\u200c", "\u3164", "\ufe0f", " \u200b\t\ufeff "]


def test_lines_that_show_nothing_are_blank_in_both_formats(tmp_path):
    """Lines of U+200B or a mid-file byte-order mark passed str.strip() and counted as texts
    toward the minimums (they tokenize to [CLS] [SEP])."""
    texts = [f"text number {i}" for i in range(6)] + ["zero\u200bwidth inside", "\ufeffa concatenated file's first"]
    txt, jsonl = tmp_path / "a.txt", tmp_path / "a.jsonl"
    txt.write_text("\n".join(texts + INVISIBLE) + "\n", encoding="utf-8")
    jsonl.write_text("\n".join([json.dumps({"text": t}) for t in texts + INVISIBLE] + INVISIBLE) + "\n",
                     encoding="utf-8")
    assert list(load_texts(txt).texts) == list(load_texts(jsonl).texts) == texts
    # Eight visible texts are the minimum: without one, the invisible lines do not make up for it.
    txt.write_text("\n".join(texts[1:] + INVISIBLE * 3) + "\n", encoding="utf-8")
    with pytest.raises(SourceModelError, match=r"a\.txt has 7 texts; at least 8 are needed"):
        load_texts(txt)


def test_a_comment_is_a_line_whose_first_visible_character_is_a_hash(tmp_path):
    """"   # note" was used as a text: the '#' test ran on the unstripped line."""
    texts = [f"text number {i}" for i in range(8)] + ["a #hashtag inside", "Order #48213 missing"]
    path = tmp_path / "a.txt"
    comments = ["   # indented", "\t# tab", "\u00a0# no-break space", "\ufeff# after a mid-file byte-order mark", "#"]
    path.write_text("\n".join(comments + texts) + "\n", encoding="utf-8")
    assert list(load_texts(path).texts) == texts
    assert load_texts(path).comments == 5  # counted, for edge-convert's note (converters/_shared.py)
    # In JSONL a text is a text, whatever its first character.
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t}) for t in ["# not a comment"] + texts) + "\n")
    assert load_texts(jsonl).texts[0] == "# not a comment" and load_texts(jsonl).comments == 0


@pytest.mark.parametrize("path", ["converters/data/calibration_en.txt", "benchmarks/data/heldout_en.txt"])
def test_the_shipped_text_files_read_as_before(path):
    """The comment and blank-line rules changed; the built-in and held-out texts must not."""
    raw = (Path(__file__).resolve().parents[1] / path).read_text(encoding="utf-8-sig")
    before = [line.strip() for line in raw.split("\n") if line.strip() and not line.startswith("#")]
    assert list(load_texts(Path(__file__).resolve().parents[1] / path).texts) == before


# --- a config naming no architecture; a tokenizer of special tokens (review r36b, defects 4, 7) ---


def _saved_without_architectures(model: Path, tmp_path: Path, as_bin: bool = False) -> Path:
    """`model` as config.save_pretrained() + torch.save(state_dict) leave it: config.json without
    "architectures" (and, `as_bin`, the weights as a float16 pytorch_model.bin)."""
    copy = _with_config(model, tmp_path, architectures=None)
    if as_bin:
        import torch
        from safetensors.torch import load_file

        state = {name: tensor.half() for name, tensor in load_file(copy / "model.safetensors").items()}
        (copy / "model.safetensors").unlink()
        torch.save(state, copy / "pytorch_model.bin")
    return copy


def _logits(source, text: str = "a short text about the market"):
    import torch

    feeds = source.tokenizer([text], return_tensors="pt")
    zeros = torch.zeros_like(feeds["input_ids"])
    with torch.no_grad():
        return source.module(**{name: feeds.get(name, zeros) for name in source.input_names})


@pytest.mark.parametrize("arch, task, as_bin", [
    ("bert", "token-classification", True),  # the review's checkpoint: BertForTokenClassification, fp16 .bin
    ("roberta", "token-classification", False),
    ("roberta", "text-classification", False),
    ("distilbert", "text-classification", False),
])
def test_a_config_naming_no_architecture_gets_the_task_of_the_head_in_its_weights(tiny_model_factory, tmp_path,
                                                                                  arch, task, as_bin):
    """Such a checkpoint was converted as an embedding model, its trained head dropped without a
    word and the manifest naming BertModel."""
    import torch

    original = tiny_model_factory(arch, task)
    model = _saved_without_architectures(original, tmp_path, as_bin)
    source = load_source(model)
    assert source.task == task and source.architecture.endswith(
        "ForTokenClassification" if task == "token-classification" else "ForSequenceClassification")
    assert len(source.notes) == 1 and source.notes[0].startswith(
        f"config.json names no architecture: task {task} inferred from the weights (classifier")
    assert source.describe()["notes"] == list(source.notes)  # the manifest's source section
    reference = load_source(original)
    assert source.postprocess == reference.postprocess
    torch.testing.assert_close(_logits(source), _logits(reference), atol=2e-2 if as_bin else 0, rtol=0)


@pytest.mark.parametrize("arch, task", [("bert", "text-classification"), ("distilbert", "token-classification")])
def test_a_classifier_the_weights_cannot_tell_is_refused_naming_the_task(tiny_model_factory, tmp_path, monkeypatch,
                                                                         arch, task):
    """A single linear classifier beside BERT's pooler (or on DistilBERT) fits a sentence and a
    token head alike: refused before loading, naming the choice; converted once it is made."""
    model = _saved_without_architectures(tiny_model_factory(arch, task), tmp_path)
    with monkeypatch.context() as patched:
        _no_loading(patched)
        with pytest.raises(UnsupportedModelError, match=r"config\.json names no architecture and its weights hold a "
                                                        r"head \(classifier with \d outputs.*\), which could be a "
                                                        r"text-classification or a token-classification head: "
                                                        r"convert it with task=text-classification or "
                                                        r"task=token-classification \(or name the class in "
                                                        r"config\.json, \"architectures\": \[\"\w+For"):
            load_source(model)
    source = load_source(model, task=task)
    assert source.task == task and source.notes == ()


def test_a_config_naming_no_architecture_with_another_head_is_refused_or_noted(qa_model, tmp_path, monkeypatch):
    """README: a checkpoint with another head is refused before any work; task feature-extraction
    converts its encoder, and source.notes says the head was dropped."""
    model = _saved_without_architectures(qa_model, tmp_path)
    with monkeypatch.context() as patched:
        _no_loading(patched)
        with pytest.raises(UnsupportedModelError, match=r"names no architecture and its weights hold a head "
                                                        r"\(qa_outputs\), which edge-convert does not convert .*"
                                                        r"convert it with task=feature-extraction"):
            load_source(model)
    source = load_source(model, task="feature-extraction")
    assert source.notes == ("checkpoint whose config.json names no architecture converted as feature-extraction: "
                            "its encoder alone, its head (qa_outputs) dropped (not in the artifacts)",)


def test_a_tokenizer_of_its_special_tokens_alone_is_refused_before_the_model_loads(good_model, tmp_path,
                                                                                   monkeypatch):
    """transformers 5 builds such a tokenizer from XLMRobertaTokenizer(vocab_file=...); every text
    became <unk>, and the export crashed with a bare RuntimeError from torch.randint."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model = _copy(good_model, tmp_path)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend = Tokenizer(models.WordLevel({token: i for i, token in enumerate(specials)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    for path in model.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "vocab")):
            path.unlink()
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(model)
    _no_loading(monkeypatch)
    with pytest.raises(SourceModelError, match=r"model: the tokenizer has only 5 tokens \(0 besides its special "
                                               r"tokens .*\[UNK\].*\): text would tokenize to \[UNK\] tokens; is this "
                                               r"the trained tokenizer saved with the model\?"):
        load_source(model)


def test_export_sample_ids_fit_a_small_vocabulary():
    from types import SimpleNamespace

    from converters.export.export_onnx import sample_inputs

    source = SimpleNamespace(tokenizer=SimpleNamespace(vocab_size=5), pad_token_id=0,
                             input_names=["input_ids", "attention_mask"])
    assert int(sample_inputs(source)["input_ids"].max()) < 5
