"""`bitnet-onnx generate` and generate on a compiled decoder: tokens, timings, text through a
tokenizer file, and bad input → exit 2 with a message naming what is wrong."""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from builtins import compile as compile_source
from pathlib import Path

import numpy as np
import onnx
import pytest

from bitnet_onnx import runtime
from bitnet_onnx.cli import EXIT_OK, EXIT_USER_ERROR, main
from bitnet_onnx.compiler.compile import compile
from bitnet_onnx.core.inspection import read_layers
from bitnet_onnx.runtime.decoding import generate
from tests.runtime.decoding_reference import reference_greedy

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "models" / "fixtures"
KV_LLAMA = FIXTURES / "decoders" / "llama_tiny_kv_dynamo.onnx"

pytestmark = pytest.mark.usefixtures("ops_lib")


@pytest.fixture(scope="module")
def balanced(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("generate") / "llama_kv.balanced.onnx"
    compile(KV_LLAMA, "balanced", output=out, measure_kernels=False)
    return out


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.kernels
def test_the_compiled_balanced_decoder_generates_as_it_computes_without_cache(balanced):
    model = onnx.load(balanced)
    assert {r.op for r in read_layers(model)} & {"BitLinear"}  # it runs our ternary kernels
    session = runtime.session(balanced, threads=1)
    result = generate(session, [3, 141, 59, 26, 5], 10, model=model, keep_logits=True)
    want_tokens, want_rows = reference_greedy(session, model, [3, 141, 59, 26, 5], 10)
    assert list(result.tokens) == want_tokens
    for got, want in zip(result.logits, want_rows, strict=True):
        assert _cosine(got, want) > 0.999


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _printed_tokens(stdout: str) -> list[int]:
    match = re.search(r"^tokens: ([\d ]+)$", stdout, re.MULTILINE)
    assert match, stdout
    return [int(t) for t in match.group(1).split()]


@pytest.mark.parametrize("model", ["fp32", "balanced"])
def test_cli_prints_tokens_prefill_ms_and_decode_speed(capsys, balanced, model):
    path = KV_LLAMA if model == "fp32" else balanced
    code, stdout, _ = _run(
        capsys, "generate", str(path), "--prompt-ids", "1,2,3", "-n", "6", "--threads", "1"
    )
    assert code == EXIT_OK
    session = runtime.session(path, threads=1)
    assert _printed_tokens(stdout) == list(generate(session, [1, 2, 3], 6).tokens)
    assert re.search(r"^prefill: \d+\.\d\d ms \(3 tokens\)$", stdout, re.MULTILINE), stdout
    assert re.search(r"^decode: \d+\.\d tokens/s \(5 steps\)$", stdout, re.MULTILINE), stdout


def test_cli_sampling_with_a_seed_repeats(capsys):
    argv = [
        "generate",
        str(KV_LLAMA),
        "--prompt-ids",
        "4,5",
        "-n",
        "8",
        "--temperature",
        "1.2",
        "--seed",
        "3",
    ]
    first = _run(capsys, *argv)
    again = _run(capsys, *argv)
    assert first[0] == again[0] == EXIT_OK
    assert _printed_tokens(first[1]) == _printed_tokens(again[1])


@pytest.fixture
def tokenizer_file(tmp_path) -> Path:
    """A word-level tokenizer over the fixture's 256 ids: `t0` … `t254`, and `[UNK]` = 255."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {f"t{i}": i for i in range(255)} | {"[UNK]": 255}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def test_cli_text_prompt_is_encoded_and_the_tokens_decoded(capsys, tokenizer_file):
    code, stdout, _ = _run(
        capsys,
        "generate",
        str(KV_LLAMA),
        "--prompt",
        "t1 t2 t3",
        "--tokenizer",
        str(tokenizer_file),
        "-n",
        "5",
    )
    assert code == EXIT_OK
    tokens = _printed_tokens(stdout)
    session = runtime.session(KV_LLAMA)
    assert tokens == list(generate(session, [1, 2, 3], 5).tokens)
    words = " ".join("[UNK]" if t == 255 else f"t{t}" for t in tokens)
    assert f"\ntext: {words}\n" in stdout


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--prompt-ids", "1,2", "-n", "3", "--model", str(FIXTURES / "llama_tiny.onnx")], "no KV cache"),
        (["--prompt-ids", "1,999", "-n", "3"], r"ids \[999\] are out of range: ids must be ≥ 0 below 256"),
        (["--prompt", "t1", "-n", "3"], "--prompt TEXT needs --tokenizer"),
        (
            ["--prompt", "t1", "--tokenizer", "missing.json", "-n", "3"],
            "tokenizer file missing.json does not",
        ),
        (["--prompt-ids", "1", "-n", "3", "--top-k", "4"], "set a temperature > 0"),
        (["--prompt-ids", "1", "-n", "3", "--temperature", "-2"], "temperature=-2.0 must be ≥ 0"),
        (["--prompt-ids", "1", "-n", "3", "--threads", "0"], "threads=0 must be at least 1"),
    ],
)
def test_cli_bad_input_exits_2_naming_it(capsys, argv, words):
    model = str(KV_LLAMA)
    if "--model" in argv:
        model = argv[argv.index("--model") + 1]
        argv = argv[: argv.index("--model")]
    code, _, stderr = _run(capsys, "generate", model, *argv)
    assert code == EXIT_USER_ERROR
    assert re.search(words, stderr), stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--prompt-ids", "1,x", "-n", "3"],  # not ids
        ["--prompt-ids", "1", "-n", "0"],  # no token to generate
        ["-n", "3"],  # no prompt
        ["--prompt-ids", "1", "--prompt", "t1", "-n", "3"],  # two prompts
    ],
)
def test_cli_bad_arguments_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(["generate", str(KV_LLAMA), *argv])
    assert exc.value.code == EXIT_USER_ERROR
    assert "error:" in capsys.readouterr().err


def test_cli_text_prompt_without_the_tokenizers_package_names_the_extra(capsys, monkeypatch, tokenizer_file):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # importing it now raises ImportError
    code, _, stderr = _run(
        capsys, "generate", str(KV_LLAMA), "--prompt", "t1", "--tokenizer", str(tokenizer_file), "-n", "2"
    )
    assert code == EXIT_USER_ERROR
    assert "pip install 'bitnet-onnx[text]'" in stderr


def _readme_block(lang: str, needle: str) -> str:
    blocks = re.findall(rf"```{lang}\n(.*?)```", (REPO / "README.md").read_text(), flags=re.DOTALL)
    return next(b for b in blocks if needle in b)


def test_readme_generate_commands_and_python_example_run(tmp_path, monkeypatch, capsys):
    shutil.copytree(REPO / "models" / "fixtures" / "decoders", tmp_path / "models" / "fixtures" / "decoders")
    monkeypatch.chdir(tmp_path)
    commands = [ln for ln in _readme_block("bash", "bitnet-onnx generate").splitlines() if ln[:1] not in "#"]
    assert len(commands) == 3
    for line in commands:
        argv = shlex.split(line)
        assert argv[0] == "bitnet-onnx"
        assert main([*argv[1:], *(["--no-kernel-timing"] if argv[1] == "compile" else [])]) == EXIT_OK
    assert len(_printed_tokens(capsys.readouterr().out)) == 16
    namespace: dict = {}
    exec(compile_source(_readme_block("python", "runtime.generate"), "README.md", "exec"), namespace)
    assert len(namespace["result"].tokens) == 16
