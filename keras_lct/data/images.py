"""Image sources: a folder tree or a tensorflow-datasets builder, at one square resolution.

Every image is turned into a uint8 RGB array of `resolution x resolution`:
EXIF orientation applied, grayscale / palette / CMYK converted to RGB, alpha
composited on white, then ADM's center crop (halve with a box filter while the
short side is at least twice the target, bicubic resize of the short side to
the target, crop the center square). A file that cannot be read is reported
with its reason and skipped, never fatal and never silent. Sources can also
read class labels (a folder's class subfolders, a dataset's label feature):
each item then carries its class index.

Reference: paper section 5.1 (CelebA-HQ, FFHQ, LSUN Church at 256x256);
`docs/reference.md` "Latents".
"""

import collections
import hashlib
import os

import numpy as np

from keras_lct._validation import check_int

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


SourceImage = collections.namedtuple(
    "SourceImage", ["index", "name", "pixels", "conversions", "error", "label"], defaults=(None,)
)
SourceImage.__doc__ = """One item of an image source.

Fields:
    index: position in the source (flipped copies come after all originals).
    name: the file name or dataset key, for reports.
    pixels: uint8 array `(resolution, resolution, 3)`, or None if unreadable.
    conversions: tuple of what was done to the image (e.g. `"grayscale -> RGB"`).
    error: why the image could not be read, or None.
    label: the image's class index (an int) when the source reads labels,
        else None (the default).
"""


def _import_pil():
    try:
        from PIL import Image
        from PIL import ImageOps
    except ImportError as error:  # pragma: no cover - pillow is in the data extra
        raise ImportError("Reading images needs pillow: pip install 'keras-lct[data]'.") from error
    return Image, ImageOps


def prepare_image(image, resolution):
    """Turns a PIL image into a square uint8 RGB array of `resolution`.

    Args:
        image: a `PIL.Image.Image` (any mode).
        resolution: side of the output square.

    Returns:
        `(pixels, conversions)`: a uint8 array `(resolution, resolution, 3)`
        and a tuple naming the conversions applied (empty for an RGB image of
        exactly that size).

    Example:
    >>> pixels, conversions = prepare_image(PIL.Image.open("face.png"), 256)
    """
    Image, ImageOps = _import_pil()
    conversions = []
    image = ImageOps.exif_transpose(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        image = Image.new("RGB", image.size, (255, 255, 255))
        image.paste(rgba, mask=rgba.getchannel("A"))
        conversions.append("alpha -> RGB on white")
    elif image.mode != "RGB":
        conversions.append(f"{'grayscale' if image.mode in ('L', '1', 'I', 'I;16', 'F') else image.mode} -> RGB")
        image = image.convert("RGB")
    width, height = image.size
    if width != height:
        conversions.append("center-cropped to a square")
    if min(width, height) < resolution:
        conversions.append("upscaled")
    elif min(width, height) > resolution:
        conversions.append("downscaled")
    while min(image.size) >= 2 * resolution:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = resolution / min(image.size)
    image = image.resize(tuple(max(resolution, round(side * scale)) for side in image.size), resample=Image.BICUBIC)
    pixels = np.asarray(image, dtype=np.uint8)
    top = (pixels.shape[0] - resolution) // 2
    left = (pixels.shape[1] - resolution) // 2
    return np.ascontiguousarray(pixels[top : top + resolution, left : left + resolution]), tuple(conversions)


def images_to_unit_range(pixels):
    """uint8 images in [0, 255] -> float32 in [-1, 1], the VAE's input range."""
    return np.asarray(pixels, np.float32) / 127.5 - 1.0


def images_to_uint8(images):
    """float images in [-1, 1] -> uint8 in [0, 255] (clipped, rounded)."""
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


class ImageReport:
    """What reading an image source found: images read, converted and skipped.

    Args:
        read: number of images read.
        skipped: list of `(name, reason)` of the images that were skipped.
        conversions: mapping from conversion name to count.
    """

    def __init__(self, read=0, skipped=None, conversions=None):
        self.read = read
        self.skipped = list(skipped or [])
        self.conversions = collections.Counter(conversions or {})

    def add(self, item):
        """Counts one `SourceImage`."""
        if item.error is not None:
            self.skipped.append((item.name, item.error))
        else:
            self.read += 1
            self.conversions.update(item.conversions)

    def merge(self, other):
        self.read += other.read
        self.skipped.extend(other.skipped)
        self.conversions.update(other.conversions)

    def summary(self, max_listed=5):
        """A few lines for a person: counts, conversions and the first skipped files."""
        lines = [f"{self.read} images read, {len(self.skipped)} skipped"]
        for conversion, count in sorted(self.conversions.items()):
            lines.append(f"  {count} {conversion}")
        for name, reason in self.skipped[:max_listed]:
            lines.append(f"  skipped {name}: {reason}")
        if len(self.skipped) > max_listed:
            lines.append(f"  ... and {len(self.skipped) - max_listed} more skipped (see the report file)")
        return "\n".join(lines)

    def to_dict(self):
        return {
            "read": self.read,
            "skipped": [list(item) for item in self.skipped],
            "conversions": dict(sorted(self.conversions.items())),
        }

    @classmethod
    def from_dict(cls, config):
        return cls(config["read"], [tuple(item) for item in config["skipped"]], config["conversions"])


class ImageSource:
    """Base of the image sources: `len`, `describe()` and `iter_images(start)`.

    Subclasses set `num_originals` (and `class_names` when they read class
    labels) and stream their images in `_iter_originals(start, stop)` (as
    PIL images, or an error text, with their labels); this class adds the
    preparation, the flipped copies and the error handling. A flipped copy
    keeps its original's label.

    Args:
        resolution: side of the square images the source yields.
        flip: also yield a horizontally flipped copy of every image, after
            all originals (as the authors do for LSUN Church).
    """

    def __init__(self, resolution, flip=False):
        self.resolution = check_int("resolution", resolution, minimum=1)
        self.flip = bool(flip)
        self.class_names = None

    def __len__(self):
        return self.num_originals * (2 if self.flip else 1)

    def describe(self):
        """A JSON-able description that identifies the images (for caches).

        A source that reads class labels includes `"class_names"`: the list
        of names of classes 0..K-1 (None when its labels have no names).
        """
        raise NotImplementedError

    def iter_images(self, start=0, stop=None):
        """Yields a `SourceImage` for every index in `[start, stop)`, in order."""
        stop = len(self) if stop is None else min(stop, len(self))
        count = self.num_originals
        for offset in (0, count) if self.flip else (0,):
            first, last = max(start - offset, 0), min(stop - offset, count)
            if first < last:
                for original, name, image, error, label in self._iter_originals(first, last):
                    yield self._prepare(offset + original, name, image, error, label, flipped=offset > 0)

    def _iter_originals(self, start, stop):
        """Yields `(index, name, PIL image or None, error or None, label or None)`."""
        raise NotImplementedError

    def _prepare(self, index, name, image, error, label, flipped):
        if error is None:
            try:
                pixels, conversions = prepare_image(image, self.resolution)
            except (OSError, ValueError, SyntaxError) as problem:
                error = f"cannot decode: {problem}"
        if error is not None:
            return SourceImage(index, name, None, (), error, label)
        if flipped:
            pixels, conversions = pixels[:, ::-1].copy(), conversions + ("flipped",)
        return SourceImage(index, name, pixels, conversions, None, label)


class ImageFolder(ImageSource):
    """The images of a folder tree (jpg, png, webp, bmp), square at `resolution`.

    Files are found recursively (hidden files and folders ignored) and sorted
    by relative path, so the order does not depend on the file system.
    Unreadable files are skipped and reported (see `keras_lct.data.ImageReport`).

    With `labels=True` every immediate subfolder is one class, as in
    `keras.utils.image_dataset_from_directory`: classes are numbered 0..K-1
    in the sorted order of the subfolder names (`class_names`), and the
    images of a class are found recursively inside its folder. Images lying
    directly in `directory`, a class folder without images, or a single
    class (nothing to condition on) are refused.

    Args:
        directory: the folder.
        resolution: side of the square images.
        flip: also yield horizontally flipped copies (after the originals).
        labels: read class labels from the immediate subfolders
            (`directory/<class name>/.../image.png`).

    Attributes:
        files: the images' paths relative to `directory`, in source order.
        class_names: the sorted class folder names (None without labels).
        file_labels: the class index of every file (None without labels).

    Example:
    ```python
    images = ImageFolder("data/celeba_hq_256", resolution=256)
    cache = build_latent_cache(images, vae, "runs/celeba/latents")
    animals = ImageFolder("data/animals", resolution=256, labels=True)  # animals/cat/..., animals/dog/...
    animals.class_names  # ['cat', 'dog']
    ```

    Reference: paper section 5.1.
    """

    def __init__(self, directory, resolution, flip=False, labels=False):
        super().__init__(resolution, flip)
        self.directory = os.fspath(directory)
        self.labels = bool(labels)
        if not os.path.isdir(self.directory):
            raise FileNotFoundError(
                f"Image folder {self.directory!r} does not exist (or is not a folder). Pass the "
                "folder that holds the training images (jpg, png, webp or bmp, searched recursively)."
            )
        self.files = []
        subfolders = None
        others = 0
        for root, folders, names in os.walk(self.directory):
            folders[:] = sorted(folder for folder in folders if not folder.startswith("."))
            if subfolders is None:
                subfolders = list(folders)
            for name in names:
                if name.startswith("."):
                    continue
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    self.files.append(os.path.relpath(os.path.join(root, name), self.directory))
                else:
                    others += 1
        self.files.sort()
        if not self.files:
            raise ValueError(
                f"Image folder {self.directory!r} holds no images ({others} other files). Images must "
                f"end in one of {', '.join(IMAGE_EXTENSIONS)} (any case)."
            )
        self.num_originals = len(self.files)
        self.file_labels = None
        if self.labels:
            self.class_names = self._check_class_folders(subfolders)
            index_of = {name: index for index, name in enumerate(self.class_names)}
            self.file_labels = [index_of[name.split(os.sep, 1)[0]] for name in self.files]

    def _check_class_folders(self, subfolders):
        """The class names (the immediate subfolders), or a ValueError if the tree is no labelled layout."""
        layout = (
            f"With labels=True every immediate subfolder of {self.directory!r} is one class "
            "and holds that class's images: <folder>/<class name>/.../image.png, at least 2 classes."
        )
        loose = [name for name in self.files if os.sep not in name]
        if loose:
            raise ValueError(
                f"Image folder {self.directory!r} holds {len(loose)} image(s) directly in it (e.g. "
                f"{loose[0]!r}), outside any class folder. {layout} Move them into their class "
                "folders, or pass labels=False to train without labels."
            )
        holding = {name.split(os.sep, 1)[0] for name in self.files}
        empty = [folder for folder in subfolders if folder not in holding]
        if empty:
            raise ValueError(
                f"The class folder(s) {empty} of {self.directory!r} hold no images. {layout} "
                "Add images to them or remove them."
            )
        if len(subfolders) < 2:
            raise ValueError(
                f"Image folder {self.directory!r} holds a single class folder, {subfolders[0]!r}: "
                f"with one class there is nothing to condition on. {layout} Add the other classes' "
                "folders, or pass labels=False to train without labels."
            )
        return subfolders

    def describe(self):
        listing = hashlib.sha256()
        for name in self.files:
            listing.update(f"{name}\0{os.path.getsize(os.path.join(self.directory, name))}\n".encode())
        description = {
            "kind": "folder",
            "path": os.path.abspath(self.directory),
            "num_images": self.num_originals,
            "files_sha256": listing.hexdigest(),
            "resolution": self.resolution,
            "flip": self.flip,
        }
        if self.labels:
            description["class_names"] = list(self.class_names)
        return description

    def _iter_originals(self, start, stop):
        Image, _ = _import_pil()
        for index in range(start, stop):
            name = self.files[index]
            label = self.file_labels[index] if self.labels else None
            try:
                with Image.open(os.path.join(self.directory, name)) as image:
                    image.load()
                    yield index, name, image, None, label
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as problem:
                yield index, name, None, f"cannot decode: {problem}", label


class TFDSImages(ImageSource):
    """The images of a tensorflow-datasets builder, square at `resolution`.

    The builder must already be prepared in `data_dir`, or preparable
    offline from `manual_dir` (e.g. `celeb_a_hq`, whose files are downloaded
    by hand): nothing is downloaded.

    Args:
        name: the builder and config, e.g. `"celeb_a_hq/256"`.
        resolution: side of the square images (builders whose images have
            other sizes are resized).
        split: the split to read (`"train"`).
        data_dir: tensorflow-datasets' data folder (None: its default).
        manual_dir: folder of manually downloaded files for builders that
            need them.
        image_key: the feature holding the image (`"image"`).
        flip: also yield horizontally flipped copies.
        label_key: the feature holding each image's class label (e.g.
            `"label"`), a scalar integer; None reads no labels. The class
            names are the feature's (`class_names`) when it is a
            `tfds.features.ClassLabel`, else None.

    Example:
    ```python
    images = TFDSImages("celeb_a_hq/256", 256, manual_dir="~/downloads/celeba_hq")
    digits = TFDSImages("mnist", 32, label_key="label")  # digits.class_names: ['0', ..., '9']
    ```
    """

    def __init__(
        self,
        name,
        resolution,
        split="train",
        data_dir=None,
        manual_dir=None,
        image_key="image",
        flip=False,
        label_key=None,
    ):
        super().__init__(resolution, flip)
        self.name = name
        self.split = split
        self.data_dir = data_dir
        self.manual_dir = manual_dir
        self.image_key = image_key
        self.label_key = label_key
        self._dataset, info = self._load()
        if label_key is not None:
            self.class_names = self._check_label_feature(info)
        self.num_originals = int(self._dataset.cardinality())
        if self.num_originals <= 0:
            raise ValueError(f"tensorflow-datasets {name!r} split {split!r} holds no images.")

    def _load(self):
        try:
            import tensorflow_datasets as tfds
        except ImportError as error:
            raise ImportError(
                "Reading a tensorflow-datasets builder needs tensorflow-datasets: "
                "pip install 'keras-lct[data]'."
            ) from error
        download_config = tfds.download.DownloadConfig(manual_dir=self.manual_dir)
        try:
            dataset, info = tfds.load(
                self.name,
                split=self.split,
                data_dir=self.data_dir,
                shuffle_files=False,
                with_info=True,
                download_and_prepare_kwargs={"download_config": download_config},
            )
        except Exception as error:
            raise ValueError(
                f"Cannot load tensorflow-datasets {self.name!r} (split {self.split!r}) offline: "
                f"{type(error).__name__}: {error}\nPrepare it where a network is available "
                "(`tfds build`), or put the manually downloaded files in the folder passed as "
                "`manual_dir`, or use an image folder instead."
            ) from error
        spec = dataset.element_spec
        if not isinstance(spec, dict) or self.image_key not in spec:
            keys = list(spec) if isinstance(spec, dict) else spec
            raise ValueError(f"tensorflow-datasets {self.name!r} has no feature {self.image_key!r}; features: {keys}.")
        return dataset, info

    def _check_label_feature(self, info):
        """The label feature's class names (None if it has none), or a ValueError if it holds no class labels."""
        import tensorflow_datasets as tfds

        spec = self._dataset.element_spec
        if self.label_key not in spec:
            raise ValueError(
                f"tensorflow-datasets {self.name!r} has no feature {self.label_key!r} to read labels from; "
                f"features: {list(spec)}. Pass the feature that holds the class labels as `label_key`, "
                "or label_key=None to read no labels."
            )
        label_spec = spec[self.label_key]
        if label_spec.shape.rank != 0 or not label_spec.dtype.is_integer:
            raise ValueError(
                f"The feature {self.label_key!r} of tensorflow-datasets {self.name!r} is a {label_spec.dtype.name} "
                f"tensor of shape {label_spec.shape}; class labels are one integer per image. Pass a "
                "class-label feature as `label_key`."
            )
        feature = info.features[self.label_key]
        return list(feature.names) if isinstance(feature, tfds.features.ClassLabel) else None

    def describe(self):
        description = {
            "kind": "tfds",
            "name": self.name,
            "split": self.split,
            "num_images": self.num_originals,
            "resolution": self.resolution,
            "flip": self.flip,
        }
        if self.label_key is not None:
            description.update(label_key=self.label_key, class_names=self.class_names)
        return description

    def _iter_originals(self, start, stop):
        Image, _ = _import_pil()
        dataset = self._dataset.skip(start).take(stop - start)
        for offset, example in enumerate(dataset.as_numpy_iterator()):
            name = f"{self.name}[{self.split}][{start + offset}]"
            label = None if self.label_key is None else int(example[self.label_key])
            pixels = np.asarray(example[self.image_key])
            if pixels.ndim == 3 and pixels.shape[-1] == 1:
                pixels = pixels[..., 0]
            try:
                image = Image.fromarray(pixels)
            except (TypeError, ValueError) as problem:
                yield start + offset, name, None, f"not an image array {pixels.shape} {pixels.dtype}: {problem}", label
                continue
            yield start + offset, name, image, None, label
