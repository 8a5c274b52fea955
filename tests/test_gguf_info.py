"""GGUF inspection reads metadata without loading weights and refuses every kind of broken file plainly."""

import hashlib

import pytest

from engine.errors import ModelFileError
from engine.gguf_info import inspect_gguf, sha256_file


def test_starter_model_metadata(starter_model):
    info = inspect_gguf(starter_model)
    assert info.architecture == "gemma3"
    assert info.quant_label == "Q4_K_M"
    assert (info.n_layers, info.n_heads, info.n_kv_heads) == (18, 4, 1)
    assert (info.head_dim_k, info.head_dim_v, info.n_embd) == (256, 256, 640)
    assert info.context_length == 32768 and info.sliding_window == 512
    assert info.vocab_size == 262144
    assert not info.has_chat_template
    assert 260e6 < info.parameter_count < 275e6
    assert sum(info.quant_mix.values()) == info.parameter_count
    assert {"Q8_0", "Q4_K", "Q6_K", "F32"} <= set(info.quant_mix)
    assert info.file_size == starter_model.stat().st_size


def test_tiny_model_metadata(tiny_model):
    info = inspect_gguf(tiny_model)
    assert (info.architecture, info.n_layers, info.n_heads, info.n_kv_heads) == ("llama", 2, 4, 2)
    assert info.head_dim_k == 16 and info.vocab_size > 500
    assert info.summary()["file_type"] == "F32"


def test_sha256_matches_hashlib(tiny_model):
    seen = []
    assert (
        sha256_file(tiny_model, lambda done, total: seen.append((done, total)))
        == hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    )
    assert seen[-1][0] == seen[-1][1] == tiny_model.stat().st_size


EXPECTED = {
    "missing": "no such file",
    "empty": "empty",
    "wrong_magic": "not a GGUF file",
    "unknown_version": "version 99 is not supported",
    "truncated_header": "truncated",
    "data_past_eof": "truncated",
    "adapter": "LoRA adapter, not a model",
    "unknown_arch": "not supported by the installed llama.cpp",
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_broken_files_raise_one_typed_error(corrupt_files, case):
    with pytest.raises(ModelFileError, match=EXPECTED[case]) as err:
        inspect_gguf(corrupt_files[case])
    assert str(corrupt_files[case]) in str(err.value)  # says where


def test_adapter_accepted_when_an_adapter_is_expected(corrupt_files, tiny_model):
    assert inspect_gguf(corrupt_files["adapter"], expect="adapter").kind == "adapter"
    with pytest.raises(ModelFileError, match="is a model, not a LoRA adapter"):
        inspect_gguf(tiny_model, expect="adapter")


def test_inspecting_a_model_does_not_load_llama_cpp(tiny_model):
    """The GUI inspects models in its own process; llama.cpp may only ever be loaded in the engine child."""
    import subprocess
    import sys

    code = f"import sys; from engine.gguf_info import inspect_gguf; inspect_gguf({str(tiny_model)!r}); print('llama_cpp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_file_cut_anywhere_in_the_vocabulary_is_truncated_not_misread(tiny_model, tmp_path):
    """The vocabulary (a long string array) is skipped in a tight loop; a cut anywhere in it is still caught,
    whether it falls inside a string's 8-byte length or inside its text."""
    data = tiny_model.read_bytes()
    start = data.index(b"tokenizer.ggml.tokens")
    assert inspect_gguf(tiny_model).vocab_size > 256  # long enough to be skipped, not kept
    cut = tmp_path / "cut.gguf"
    for offset in range(start + 40, start + 40 + 23 * 17, 17):  # 23 cuts, at every phase of length/text
        cut.write_bytes(data[:offset])
        with pytest.raises(ModelFileError, match="truncated"):
            inspect_gguf(cut)


# ---------------------------------------------------------------- hostile files (issue 14, items 3 and 12)
from gguf_factory import hostile_files, valid_raw_gguf  # noqa: E402

HOSTILE_NAMES = sorted([
    "expert_used_without_count", "expert_used_over_count", "block_count_huge", "block_count_past_tensors",
    "context_zero", "embedding_zero", "kv_heads_over_heads", "rope_scaling_unknown", "context_as_string",
    "alignment_as_string", "alignment_as_array", "tokens_as_number", "chat_template_as_int", "block_count_as_array",
    "nested_array_50000", "five_dimensions", "eight_dimensions", "overlapping_tensors", "misaligned_tensor",
    "alignment_zero", "alignment_three", "duplicate_tensor", "duplicate_key", "negative_dimension",
    "adapter_alpha_as_string", "adapter_alpha_as_float64", "adapter_alpha_as_int",
])  # fmt: skip


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return hostile_files(tmp_path_factory.mktemp("hostile"))


def test_the_catalogue_covers_every_hostile_file(hostile):
    assert sorted(hostile) == HOSTILE_NAMES


@pytest.mark.parametrize("case", HOSTILE_NAMES)
def test_hostile_files_are_refused_with_one_line(hostile, case):
    path, phrase = hostile[case]
    with pytest.raises(ModelFileError) as err:
        inspect_gguf(path, expect="adapter" if case.startswith("adapter_") else "model")
    message = str(err.value)
    assert phrase in message and str(path) in message
    assert "\n" not in message


def test_the_raw_builder_makes_valid_files_without_a_defect(tmp_path):
    info = inspect_gguf(valid_raw_gguf(tmp_path / "ok.gguf"))
    assert [t.offset for t in info.tensors] == [0, 128] and info.parameter_count == 64
    from gguf_factory import write_lora_adapter

    assert inspect_gguf(write_lora_adapter(tmp_path / "lora.gguf"), expect="adapter").kind == "adapter"


def test_names_from_the_file_are_printed_inert(tmp_path):
    from gguf_factory import kv_str, write_raw_gguf

    path = write_raw_gguf(tmp_path / "esc.gguf", [kv_str("general.architecture", "evil\x1b[2J\narch")],
                          [("a", (32,), 0)])  # fmt: skip
    with pytest.raises(ModelFileError) as err:
        inspect_gguf(path)
    assert "\x1b" not in str(err.value) and "\n" not in str(err.value) and "\\x1b" in str(err.value)


LLAMA_REFUSES_TOO = ["nested_array_50000", "five_dimensions", "eight_dimensions", "overlapping_tensors",
                     "misaligned_tensor", "alignment_zero", "alignment_three", "alignment_as_string",
                     "alignment_as_array", "duplicate_tensor", "duplicate_key", "negative_dimension",
                     "block_count_past_tensors", "context_as_string"]  # fmt: skip


def test_llama_cpp_refuses_the_files_ingle_refuses(hostile):
    """Ingle's checks follow llama.cpp's: each of these files is one llama.cpp itself will not load (so refusing
    it early costs the user nothing). Run in a child: llama.cpp is not loaded by inspection's process."""
    import subprocess
    import sys

    code = (
        "import sys, llama_cpp\n"
        "from engine.runtime import init_backend\n"
        "init_backend()\n"
        "p = llama_cpp.llama_model_default_params()\n"
        "p.use_extra_bufts = False\n"
        "for path in sys.argv[1:]:\n"
        "    m = llama_cpp.llama_model_load_from_file(path.encode(), p)\n"
        "    print('loaded' if m else 'refused', flush=True)\n"
    )
    paths = [str(hostile[name][0]) for name in LLAMA_REFUSES_TOO]
    out = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["refused"] * len(paths)
