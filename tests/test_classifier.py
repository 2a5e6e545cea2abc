import pytest
import torch
from safetensors.torch import save_file

from model.classifier import (
    Classifier,
    ClassifierConfig,
    ClassifierError,
    accuracy,
    augment_batch,
    classify,
    dataset_tensors,
    default_classifier_path,
    load_classifier,
    save_classifier,
    train_classifier,
)

# the accuracy each shipped classifier must keep on the real test set
REQUIRED = {"mnist": 0.99, "fashion-mnist": 0.90, "cifar10": 0.78}
# where each data set's test images are under the data root (CIFAR-10: the JPEG copy's archive, read in place)
FILES = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw", "cifar10": "CIFAR-10/cifar10-images.tar.gz"}


@pytest.mark.slow
@pytest.mark.parametrize("dataset", sorted(REQUIRED))
def test_the_shipped_classifier_reaches_its_stated_test_accuracy(dataset, data_root):
    files = data_root / FILES[dataset]
    if not files.exists():
        pytest.skip(f"no {files}")
    loaded = load_classifier(default_classifier_path(dataset))
    images, labels = dataset_tensors(dataset, files if dataset == "cifar10" else data_root, train=False)
    measured = accuracy(loaded.model, images, labels)
    assert loaded.dataset == dataset and loaded.test_images == len(images) == 10_000
    assert measured == pytest.approx(loaded.test_accuracy, abs=2e-4)  # what its metadata states
    assert measured >= REQUIRED[dataset]
    assert default_classifier_path(dataset).stat().st_size < 1_000_000


def test_save_and_load_give_the_same_predictions_and_metadata(tmp_path):
    model = Classifier(ClassifierConfig(width=4)).eval()
    path = save_classifier(tmp_path / "c.safetensors", model, "mnist", list("0123456789"), 0.5, 100, {"epochs": 1})
    loaded = load_classifier(path)
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    with torch.inference_mode():
        assert torch.equal(model(x), loaded.model(x))
    assert (loaded.dataset, loaded.class_names, loaded.test_accuracy, loaded.test_images) == (
        "mnist", list("0123456789"), 0.5, 100
    )  # fmt: skip
    preds, feats = classify(loaded.model, ((x + 1) * 127.5).round().to(torch.uint8))  # uint8 images work too
    assert preds.shape == (5,) and feats.shape == (5, loaded.model.feature_dim) == (5, 32)


def test_training_learns_a_simple_rule():
    """Bright or dark 8×8 images: a few dozen steps must reach near-perfect accuracy."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (512,), generator=gen)
    images = (labels.float() - 0.5).view(-1, 1, 1, 1) + 0.3 * torch.randn(512, 1, 8, 8, generator=gen)
    model = train_classifier(images, labels, 2, epochs=2, batch_size=32, width=4, progress=False)
    assert accuracy(model, images, labels) > 0.95


def test_augmentation_flips_and_shifts_each_image_within_its_pixels():
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(64.0).view(1, 1, 8, 8).repeat(200, 3, 1, 1)
    out = augment_batch(x, gen, shift=2)
    assert out.shape == x.shape and set(out.unique().tolist()) <= set(x.unique().tolist())
    flipped = (out[:, 0, 3, 3] - out[:, 0, 3, 4]).eq(1).float().mean()  # pixels run right to left
    assert 0.3 < flipped < 0.7
    assert len({tuple(o[0, :, 0].tolist()) for o in out}) > 10  # many different shifts


def test_a_colour_classifier_learns_and_its_metadata_says_so(tmp_path):
    """Red or blue 16×16 images, with augmentation and bf16: the RGB path end to end."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (256,), generator=gen)
    colour = torch.stack([labels.float(), torch.zeros(256), 1 - labels.float()], 1) * 2 - 1
    images = colour.view(-1, 3, 1, 1) + 0.3 * torch.randn(256, 3, 16, 16, generator=gen)
    model = train_classifier(images, labels, 2, epochs=2, batch_size=32, width=4, progress=False, augment=True,
                             bf16=True)  # fmt: skip
    acc = accuracy(model, images, labels)
    assert acc > 0.95
    path = save_classifier(tmp_path / "c.safetensors", model, "cifar10", ["blue", "red"], acc, 256)
    loaded = load_classifier(path)
    assert (loaded.model.config.in_channels, loaded.class_names) == (3, ["blue", "red"])


def test_files_that_are_not_classifiers_are_refused_clearly(tmp_path):
    with pytest.raises(ClassifierError, match="no such classifier file"):
        load_classifier(tmp_path / "none.safetensors")
    save_file({"w": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(ClassifierError, match="not a classifier checkpoint"):
        load_classifier(tmp_path / "other.safetensors")
