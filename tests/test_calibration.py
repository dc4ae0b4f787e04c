"""Calibration recipes: every source kind, preprocessing, splits, and early rejection of bad data."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from compressor.artifacts import InputSpec, TensorSpec
from compressor.calibration import load_calibration, load_recipe
from compressor.errors import CompressError

MNIST_SPEC = InputSpec((TensorSpec("input", ("batch", 1, 28, 28)),))


def _recipe(tmp_path, body: str):
    path = tmp_path / "recipe.toml"
    path.write_text(body)
    return load_recipe(str(path))


def test_bundled_mnist_recipe_holds_out_the_test_split():
    data = load_calibration(load_recipe("mnist"), MNIST_SPEC)
    assert data.num_calib == 512 and data.num_holdout == 1000
    assert data.holdout_labels is not None and set(data.holdout_labels.tolist()) == set(range(10))
    assert 0.0 <= float(data.calib[0].min()) and float(data.calib[0].max()) <= 1.0
    from compressor.datasets.mnist import load_mnist_split

    _, _, x_test, _ = load_mnist_split(seed=0)
    np.testing.assert_array_equal(data.holdout[0].numpy(), x_test)


def test_npz_with_labels_and_preprocessing(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(40, 1, 28, 28)).astype(np.uint8)
    y = np.arange(40) % 10
    np.savez(tmp_path / "samples.npz", x=x, y=y)
    recipe = _recipe(tmp_path, 'source = "npy"\npath = "samples.npz"\nkey = "x"\nlabels_key = "y"\n'
                               'calibration_samples = 30\nholdout_samples = 10\n[preprocess]\nscale = 0.00392156862745098\n')
    data = load_calibration(recipe, MNIST_SPEC)
    assert data.num_calib == 30 and data.num_holdout == 10
    assert data.calib[0].dtype == torch.float32 and float(data.calib[0].max()) <= 1.0
    both = np.concatenate([data.calib[0].numpy(), data.holdout[0].numpy()])
    assert len({a.tobytes() for a in both}) == 40  # disjoint parts, nothing lost


def test_image_folder_with_class_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(tmp_path / "images" / cls / f"{i}.png")
    recipe = _recipe(tmp_path, 'source = "image_folder"\npath = "images"\ncalibration_samples = 8\nholdout_samples = 4\n'
                               '[preprocess]\nmode = "RGB"\nsize = [32, 32]\nscale = 0.00392156862745098\nmean = [0.5, 0.5, 0.5]\nstd = [0.25, 0.25, 0.25]\n')
    spec = InputSpec((TensorSpec("input", ("batch", 3, 32, 32)),))
    data = load_calibration(recipe, spec)
    assert data.calib[0].shape == (8, 3, 32, 32)
    assert sorted(set(data.holdout_labels.tolist())) <= [0, 1]
    assert float(data.calib[0].min()) >= -2.0 - 1e-6 and float(data.calib[0].max()) <= 2.0 + 1e-6


def test_samples_of_the_wrong_shape_are_rejected(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((20, 3, 32, 32), dtype=np.float32))
    recipe = _recipe(tmp_path, 'source = "npy"\npath = "x.npy"\ncalibration_samples = 10\nholdout_samples = 10\n')
    with pytest.raises(CompressError, match="3x32x32 do not fit the model input 'input' of shape Nx1x28x28"):
        load_calibration(recipe, MNIST_SPEC)


def test_nan_samples_are_rejected(tmp_path):
    x = np.zeros((20, 1, 28, 28), dtype=np.float32)
    x[3, 0, 0, 0] = np.nan
    np.save(tmp_path / "x.npy", x)
    recipe = _recipe(tmp_path, 'source = "npy"\npath = "x.npy"\ncalibration_samples = 10\nholdout_samples = 10\n')
    with pytest.raises(CompressError, match="NaN or Inf"):
        load_calibration(recipe, MNIST_SPEC)


def test_missing_data_file(tmp_path):
    recipe = _recipe(tmp_path, 'source = "npy"\npath = "nowhere.npy"\n')
    with pytest.raises(CompressError, match="not found"):
        load_calibration(recipe, MNIST_SPEC)


def test_unknown_recipe_lists_known():
    with pytest.raises(CompressError, match="known recipes: .*mnist"):
        load_recipe("imagenet-full")


def test_recipe_errors_name_file_and_key(tmp_path):
    with pytest.raises(CompressError, match="key 'source' must be one of"):
        _recipe(tmp_path, 'source = "ftp"\n')
    with pytest.raises(CompressError, match="key 'calibration_samples' must be int"):
        _recipe(tmp_path, 'source = "mnist"\ncalibration_samples = "many"\n')
    with pytest.raises(CompressError, match="malformed TOML"):
        _recipe(tmp_path, 'source = \n')


def test_training_samples_extend_the_calibration_side_never_the_held_out(tmp_path):
    import numpy as np

    from compressor.artifacts import InputSpec, TensorSpec
    from compressor.calibration import load_calibration, load_recipe

    x = np.arange(100, dtype=np.float32).reshape(100, 1)
    np.save(tmp_path / "x.npy", x)
    recipe = tmp_path / "r.toml"
    recipe.write_text('source = "npy"\npath = "x.npy"\ncalibration_samples = 10\ntraining_samples = 60\n'
                      'holdout_samples = 30\n')
    spec = InputSpec((TensorSpec("x", ("batch", 1)),))
    data = load_calibration(load_recipe(str(recipe)), spec)
    train, _ = data.training()
    assert data.num_calib == 10 and train[0].shape[0] == 60 and data.num_holdout == 30
    assert set(data.calib[0].flatten().tolist()) <= set(train[0].flatten().tolist())  # calibration starts it
    assert not set(train[0].flatten().tolist()) & set(data.holdout[0].flatten().tolist())
    plain = tmp_path / "plain.toml"
    plain.write_text('source = "npy"\npath = "x.npy"\ncalibration_samples = 10\nholdout_samples = 30\n')
    same = load_calibration(load_recipe(str(plain)), spec)
    assert same.training()[0][0].shape[0] == 10  # without training_samples: the calibration samples


# --- --calib DATA: a data file or folder without a recipe -------------------------------------

def test_npz_given_directly_uses_x_and_y(tmp_path):
    x = np.random.default_rng(0).random((50, 1, 28, 28), dtype=np.float32)
    y = np.arange(50) % 10
    np.savez(tmp_path / "data.npz", x=x, y=y, extra=np.zeros(3))
    data = load_calibration(load_recipe(str(tmp_path / "data.npz")), MNIST_SPEC)
    # 50 samples against the 256 + 500 default: split in the same proportion
    assert data.num_calib + data.num_holdout == 50 and data.num_calib == 50 * 256 // 756
    assert data.holdout_labels is not None
    together = np.concatenate([data.calib[0].numpy(), data.holdout[0].numpy()])
    np.testing.assert_array_equal(np.sort(together.ravel()), np.sort(x.ravel()))  # as they are: no preprocessing


def test_npy_given_directly(tmp_path):
    np.save(tmp_path / "data.npy", np.random.default_rng(1).random((20, 1, 28, 28), dtype=np.float32))
    data = load_calibration(load_recipe(str(tmp_path / "data.npy")), MNIST_SPEC)
    assert data.num_calib + data.num_holdout == 20 and data.holdout_labels is None


def test_image_folder_given_directly_fits_the_model_input(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(4):  # RGB 40x30 images for a 1x28x28 model: grayscale, resized, scaled to [0, 1]
            Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "images" / cls / f"{i}.png")
    data = load_calibration(load_recipe(str(tmp_path / "images")), MNIST_SPEC)
    assert tuple(data.calib[0].shape[1:]) == (1, 28, 28)
    assert 0.0 <= float(data.calib[0].min()) and float(data.calib[0].max()) <= 1.0
    assert set(data.holdout_labels.tolist()) <= {0, 1}


def test_text_given_directly_is_tokenized_for_the_model(tmp_path):
    from conftest import sample_module

    try:
        model = sample_module("samples/minilm/locate.py", "minilm_locate").model_folder()
    except FileNotFoundError as e:
        pytest.skip(f"{e} (the MiniLM sample model)")
    (tmp_path / "sentences.txt").write_text("\n".join(f"sentence number {i} about cats" for i in range(12)) + "\n")
    spec = InputSpec((TensorSpec("input_ids", ("batch", "sequence"), "int64"),
                      TensorSpec("attention_mask", ("batch", "sequence"), "int64")), task="embedding")
    data = load_calibration(load_recipe(str(tmp_path / "sentences.txt")), spec, model)
    assert data.num_calib + data.num_holdout == 12 and tuple(data.calib[0].shape[1:]) == (128,)


def test_other_files_are_refused_with_what_calib_takes(tmp_path):
    (tmp_path / "data.csv").write_text("1,2,3\n")
    with pytest.raises(CompressError, match=r"not a recipe \(.toml\) nor a data file \(.npz, .npy, .txt"):
        load_recipe(str(tmp_path / "data.csv"))


def test_inf_samples_are_rejected(tmp_path):
    x = np.zeros((20, 1, 28, 28), dtype=np.float32)
    x[15, 0, 3, 3] = np.inf
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(CompressError, match="NaN or Inf"):
        load_calibration(load_recipe(str(tmp_path / "x.npy")), MNIST_SPEC)
