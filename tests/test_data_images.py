"""Image sources: crop/resize/convert against independent NumPy computations, folders, tfds."""

import os

import numpy as np
import pytest
from PIL import Image

from keras_lct import data

# NumPy-only code (and subprocesses of it): nothing here reaches Keras' backend.
pytestmark = pytest.mark.backend_neutral


def rgb(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_an_rgb_image_of_the_right_size_is_unchanged():
    pixels = rgb(16, 16)
    prepared, conversions = data.prepare_image(Image.fromarray(pixels), 16)
    np.testing.assert_array_equal(prepared, pixels)
    assert conversions == ()


def test_a_wide_image_is_center_cropped():
    pixels = rgb(16, 40)
    prepared, conversions = data.prepare_image(Image.fromarray(pixels), 16)
    np.testing.assert_array_equal(prepared, pixels[:, 12:28])
    assert conversions == ("center-cropped to a square",)


def test_a_large_image_is_box_halved_then_resized():
    # 2x the target: one box halving (2x2 means) and a resize to the same size (a copy).
    pixels = rgb(32, 32, seed=1)
    prepared, conversions = data.prepare_image(Image.fromarray(pixels), 16)
    box_means = pixels.reshape(16, 2, 16, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(prepared.astype(np.float64) - box_means).max() <= 1.0
    assert conversions == ("downscaled",)


def test_grayscale_alpha_and_palette_images_become_rgb():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    prepared, conversions = data.prepare_image(Image.fromarray(gray), 8)
    np.testing.assert_array_equal(prepared, np.repeat(gray[..., None], 3, axis=-1))
    assert conversions == ("grayscale -> RGB",)

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:4, :, 3] = 255  # top half opaque red, bottom half fully transparent
    prepared, conversions = data.prepare_image(Image.fromarray(rgba), 8)
    np.testing.assert_array_equal(prepared[:4], np.broadcast_to([200, 0, 0], (4, 8, 3)))
    np.testing.assert_array_equal(prepared[4:], np.full((4, 8, 3), 255))
    assert conversions == ("alpha -> RGB on white",)

    palette = Image.fromarray(rgb(8, 8)).convert("P")
    prepared, _ = data.prepare_image(palette, 8)
    np.testing.assert_array_equal(prepared, np.asarray(palette.convert("RGB")))


def test_a_small_image_is_upscaled_and_reported():
    prepared, conversions = data.prepare_image(Image.fromarray(rgb(4, 6)), 8)
    assert prepared.shape == (8, 8, 3) and prepared.dtype == np.uint8
    assert set(conversions) == {"center-cropped to a square", "upscaled"}


def test_unit_range_conversions_invert_each_other():
    pixels = np.arange(256, dtype=np.uint8)
    unit = data.images_to_unit_range(pixels)
    assert unit[0] == -1.0 and unit[-1] == 1.0
    np.testing.assert_array_equal(data.images_to_uint8(unit), pixels)


def write_folder(folder):
    """A tree with images of mixed sizes and modes, a corrupt file, a hidden file and a text file."""
    os.makedirs(os.path.join(folder, "b", "nested"))
    os.makedirs(os.path.join(folder, ".hidden"))
    Image.fromarray(rgb(16, 16, seed=2)).save(os.path.join(folder, "a.png"))
    Image.fromarray(rgb(20, 30, seed=3)).save(os.path.join(folder, "b", "wide.JPG"), quality=95)
    Image.fromarray(rgb(16, 16, seed=4)[..., 0]).save(os.path.join(folder, "b", "nested", "gray.png"))
    Image.fromarray(rgb(16, 16, seed=7)).save(os.path.join(folder, "b", "nested", "photo.webp"), lossless=True)
    Image.fromarray(rgb(16, 16, seed=5)).save(os.path.join(folder, ".hidden", "skip.png"))
    Image.fromarray(rgb(16, 16, seed=6)).save(os.path.join(folder, ".dotfile.png"))
    with open(os.path.join(folder, "c_broken.png"), "wb") as file:
        file.write(b"\x89PNG\r\n\x1a\n not really a png")
    with open(os.path.join(folder, "notes.txt"), "w") as file:
        file.write("not an image")


def test_image_folder_lists_reads_and_reports(tmp_path):
    write_folder(tmp_path)
    images = data.ImageFolder(tmp_path, 16)
    nested = os.path.join("b", "nested")
    assert images.files == [
        "a.png", os.path.join(nested, "gray.png"), os.path.join(nested, "photo.webp"), os.path.join("b", "wide.JPG"), "c_broken.png"
    ]
    items = list(images.iter_images())
    assert [item.index for item in items] == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(items[0].pixels, rgb(16, 16, seed=2))
    assert items[1].conversions == ("grayscale -> RGB",)
    np.testing.assert_array_equal(items[2].pixels, rgb(16, 16, seed=7))
    assert items[3].conversions == ("center-cropped to a square", "downscaled")
    assert items[4].pixels is None and "cannot decode" in items[4].error
    report = data.ImageReport()
    for item in items:
        report.add(item)
    assert report.read == 4 and report.skipped == [("c_broken.png", items[4].error)]
    assert "1 skipped" in report.summary() and "c_broken.png" in report.summary()
    assert data.ImageReport.from_dict(report.to_dict()).to_dict() == report.to_dict()


def test_flipped_copies_follow_the_originals(tmp_path):
    write_folder(tmp_path)
    images = data.ImageFolder(tmp_path, 16, flip=True)
    assert len(images) == 10
    items = list(images.iter_images())
    np.testing.assert_array_equal(items[5].pixels, items[0].pixels[:, ::-1])
    assert items[5].conversions == ("flipped",)
    # A range that straddles the originals and the copies.
    assert [item.index for item in images.iter_images(3, 7)] == [3, 4, 5, 6]


def test_describe_changes_with_the_files(tmp_path):
    write_folder(tmp_path)
    before = data.ImageFolder(tmp_path, 16).describe()
    assert before == data.ImageFolder(tmp_path, 16).describe()
    Image.fromarray(rgb(24, 24)).save(os.path.join(tmp_path, "a.png"))
    assert data.ImageFolder(tmp_path, 16).describe()["files_sha256"] != before["files_sha256"]


def test_missing_and_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.ImageFolder(tmp_path / "nowhere", 16)
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="holds no images \\(1 other files\\)"):
        data.ImageFolder(tmp_path, 16)
    with pytest.raises(ValueError, match="resolution"):
        data.ImageFolder(tmp_path, 0)


def test_tfds_builders_with_odd_sizes_and_grayscale():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=5):
        flowers = data.TFDSImages("oxford_flowers102", 16)  # mock images of random odd sizes
        items = list(flowers.iter_images())
        digits = data.TFDSImages("mnist", 16, flip=True)  # 28x28x1
        digit_items = list(digits.iter_images(3, 7))
    assert len(flowers) == 5 and all(item.pixels.shape == (16, 16, 3) for item in items)
    assert len(digits) == 10 and [item.index for item in digit_items] == [3, 4, 5, 6]
    assert "grayscale -> RGB" in digit_items[0].conversions and "flipped" in digit_items[2].conversions
    assert flowers.describe()["kind"] == "tfds" and flowers.describe()["num_images"] == 5


def test_tfds_without_prepared_data_says_what_to_do(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ValueError, match="(?s)offline.*manual_dir"):
        data.TFDSImages("celeb_a_hq/256", 16, data_dir=str(tmp_path), manual_dir=str(tmp_path / "manual"))


def write_class_folders(folder, counts):
    """`folder/<class>/...` with `counts[class]` images each, the later ones in a nested folder."""
    for seed, (name, count) in enumerate(counts.items()):
        for index in range(count):
            path = os.path.join(folder, name, *(["nested"] if index % 2 else []), f"{index}.png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(rgb(16, 16, seed=10 * seed + index)).save(path)


def test_a_labelled_folder_reads_one_class_per_subfolder(tmp_path):
    write_class_folders(tmp_path, {"dog": 3, "cat": 2, "ant": 1})
    os.makedirs(tmp_path / ".hidden")
    Image.fromarray(rgb(16, 16)).save(tmp_path / ".hidden" / "skip.png")
    (tmp_path / "README.txt").write_text("other files beside the class folders are ignored")
    images = data.ImageFolder(tmp_path, 16, flip=True, labels=True)
    assert images.class_names == ["ant", "cat", "dog"]
    items = list(images.iter_images())
    # Each item's label is the index of its path's first folder among the sorted class names.
    expected = [["ant", "cat", "dog"].index(name.split(os.sep)[0]) for name in images.files] * 2
    assert [item.label for item in items] == expected and sorted(set(expected)) == [0, 1, 2]
    assert expected.count(2) == 6  # dog's 3 images, nested ones included, and their flipped copies
    assert images.describe()["class_names"] == ["ant", "cat", "dog"]
    unlabelled = data.ImageFolder(tmp_path, 16)
    assert unlabelled.class_names is None and "class_names" not in unlabelled.describe()
    assert all(item.label is None for item in unlabelled.iter_images())
    # The same files read with or without labels describe different sources.
    assert unlabelled.describe() != data.ImageFolder(tmp_path, 16, labels=True).describe()


def test_a_folder_that_is_no_labelled_layout_is_refused(tmp_path):
    write_class_folders(tmp_path / "loose", {"cat": 2, "dog": 2})
    Image.fromarray(rgb(16, 16)).save(tmp_path / "loose" / "stray.png")
    with pytest.raises(ValueError, match="(?s)1 image\\(s\\) directly in it.*'stray.png'.*<class name>.*labels=False"):
        data.ImageFolder(tmp_path / "loose", 16, labels=True)
    assert len(data.ImageFolder(tmp_path / "loose", 16)) == 5  # fine without labels
    write_class_folders(tmp_path / "single", {"cat": 3})
    with pytest.raises(ValueError, match="(?s)single class folder, 'cat'.*nothing to condition on.*at least 2 classes"):
        data.ImageFolder(tmp_path / "single", 16, labels=True)
    write_class_folders(tmp_path / "empty_class", {"cat": 2, "dog": 2})
    os.makedirs(tmp_path / "empty_class" / "emu")
    (tmp_path / "empty_class" / "emu" / "notes.txt").write_text("no images")
    with pytest.raises(ValueError, match="class folder\\(s\\) \\['emu'\\].*hold no images"):
        data.ImageFolder(tmp_path / "empty_class", 16, labels=True)


def test_tfds_labels_and_class_names():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        digits = data.TFDSImages("mnist", 16, flip=True, label_key="label")
        items = list(digits.iter_images())
        read_directly = [int(example["label"]) for example in tfds.load("mnist", split="train").as_numpy_iterator()]
        with pytest.raises(ValueError, match="no feature 'digit' to read labels from.*label_key"):
            data.TFDSImages("mnist", 16, label_key="digit")
        with pytest.raises(ValueError, match="feature 'image'.*one integer per image"):
            data.TFDSImages("mnist", 16, label_key="image")
        plain = data.TFDSImages("mnist", 16)
    assert digits.class_names == [str(digit) for digit in range(10)]
    assert len(set(read_directly)) > 1
    assert [item.label for item in items] == read_directly * 2  # flipped copies keep their labels
    assert digits.describe()["class_names"] == digits.class_names and digits.describe()["label_key"] == "label"
    assert plain.class_names is None and "class_names" not in plain.describe()
    assert all(item.label is None for item in plain.iter_images(0, 2))
