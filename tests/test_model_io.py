"""Safe model loading: every accepted format, and a clear refusal for everything else."""
from __future__ import annotations

import zipfile

import pytest
import torch

from compressor.errors import CompressError
from compressor.model_io import LoadOptions, StaticBatchAdapter, load_model, parse_input_shapes
from conftest import tiny_net

SHAPE = [(1, 1, 28, 28)]


def _reference_output(x):
    with torch.no_grad():
        return tiny_net()(x)


def test_torch_export_archive_carries_dynamic_input_spec(models):
    artifact = load_model(models["pt2"])
    assert artifact.meta["format"] == "torch.export"
    assert artifact.spec.inputs[0].shape == ("batch", 1, 28, 28)
    assert artifact.spec.static_batch is None
    assert artifact.spec.task == "classification"
    x = torch.rand(5, 1, 28, 28)
    torch.testing.assert_close(artifact.module(x), _reference_output(x))


def test_static_batch_archive_runs_any_batch_by_chunks(models):
    artifact = load_model(models["pt2_static"])
    assert artifact.spec.static_batch == 1
    assert isinstance(artifact.module, StaticBatchAdapter)
    x = torch.rand(5, 1, 28, 28)
    torch.testing.assert_close(artifact.module(x), _reference_output(x))


def test_torchscript_needs_and_uses_input_shape(models):
    with pytest.raises(CompressError, match="--input-shape"):
        load_model(models["torchscript"])
    artifact = load_model(models["torchscript"], LoadOptions(input_shapes=SHAPE))
    assert artifact.meta["format"] == "torchscript"
    assert artifact.spec.inputs[0].shape == ("batch", 1, 28, 28)


def test_state_dict_needs_model_class(models):
    with pytest.raises(CompressError, match="--model-class"):
        load_model(models["state_dict"], LoadOptions(input_shapes=SHAPE))
    options = LoadOptions(model_class=f"{models['class_file']}:TinyNet", input_shapes=SHAPE)
    artifact = load_model(models["state_dict"], options)
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(artifact.module(x), _reference_output(x))


def test_state_dict_with_wrong_class_arguments_is_a_clear_error(models):
    options = LoadOptions(model_class=f"{models['class_file']}:TinyNet", model_args={"width": 8}, input_shapes=SHAPE)
    with pytest.raises(CompressError, match="does not fit"):
        load_model(models["state_dict"], options)


def test_pickle_refused_without_flag_and_explains_why(models):
    with pytest.raises(CompressError, match="arbitrary code.*--allow-pickle"):
        load_model(models["pickle"], LoadOptions(input_shapes=SHAPE))
    artifact = load_model(models["pickle"], LoadOptions(input_shapes=SHAPE, allow_pickle=True))
    assert artifact.meta["format"] == "pickle"


@pytest.mark.parametrize("content, message", [
    (None, "file not found"),
    (b"", "empty file"),
    (b"this is not a model", "not a PyTorch model"),
])
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CompressError, match=message):
        load_model(path)


def test_truncated_archive(tmp_path, models):
    path = tmp_path / "cut.pt2"
    path.write_bytes(models["pt2"].read_bytes()[:2000])
    with pytest.raises(CompressError, match="corrupt or truncated"):
        load_model(path)


def test_zip_that_is_not_a_model(tmp_path):
    path = tmp_path / "other.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(CompressError, match="not a PyTorch model"):
        load_model(path)


def test_folder_without_config_is_not_a_hf_model(tmp_path):
    with pytest.raises(CompressError, match="config.json"):
        load_model(tmp_path)


def test_model_failing_on_declared_shape(models):
    with pytest.raises(CompressError, match="fails on an input of shape"):
        load_model(models["torchscript"], LoadOptions(input_shapes=[(1, 3, 32, 32)]))


@pytest.mark.parametrize("text", ["1x1x28", "abc", "1x0x3", "1,,2"])
def test_parse_input_shapes_rejects_garbage(text):
    if text == "1x1x28":
        assert parse_input_shapes(text) == [(1, 1, 28)]
    else:
        with pytest.raises(CompressError):
            parse_input_shapes(text)


def test_fingerprint_follows_content(models, tmp_path):
    a = load_model(models["pt2"]).fingerprint
    assert a == load_model(models["pt2"]).fingerprint
    copy = tmp_path / "other.pt2"
    copy.write_bytes(models["pt2_static"].read_bytes())
    assert load_model(copy).fingerprint != a
