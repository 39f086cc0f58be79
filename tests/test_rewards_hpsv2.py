"""HPSv2 scorer: preprocessing geometry, checkpoint loading and the cosine score on a tiny open_clip CLIP."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import diffalign  # noqa: F401  (torchvision CPU shim before open_clip)
import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

from diffalign.data.images import to_rgb
from diffalign.rewards import get_scorer
from diffalign.rewards.hpsv2 import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, CheckpointError, HPSv2Scorer, hps_preprocess
from tiny_rewards import TINY_OPEN_CLIP, save_tiny_hps_checkpoint


def _noise(width, height, mode="RGB", seed=0):
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (height, width, channels) if channels else (height, width)
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8), mode)


def _reference_preprocess(image):
    """The official transform as torchvision ops: ToTensor, longest side to 224 bicubic, zero pad, normalise
    (after diffalign's RGB conversion, shared with training: alpha composited on white, not dropped)."""
    tensor = TF.to_tensor(to_rgb(image))
    height, width = tensor.shape[-2:]
    scale = 224 / max(height, width)
    size = [round(height * scale), round(width * scale)]
    tensor = TF.resize(tensor, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    pad_h, pad_w = 224 - size[0], 224 - size[1]
    tensor = TF.pad(tensor, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return TF.normalize(tensor, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_tiny_hps_checkpoint(str(tmp_path_factory.mktemp("hps")))


def test_preprocess_geometry_and_constants():
    zero = -torch.tensor(OPENAI_CLIP_MEAN) / torch.tensor(OPENAI_CLIP_STD)  # a padded pixel after normalisation
    wide = hps_preprocess(_noise(768, 512))  # W x H: scale 224/768 -> 224 x 149, pads 37 (top) / 38 (bottom)
    assert wide.shape == (3, 224, 224)
    assert torch.allclose(wide[:, :37], zero.view(3, 1, 1).expand(3, 37, 224))
    assert torch.allclose(wide[:, 224 - 38 :], zero.view(3, 1, 1).expand(3, 38, 224))
    assert not torch.allclose(wide[:, 37], zero.view(3, 1).expand(3, 224))
    assert not torch.allclose(wide[:, 224 - 39], zero.view(3, 1).expand(3, 224))
    for image in (_noise(512, 512), _noise(1024, 1024), _noise(300, 200, "RGBA"), _noise(100, 224, "L"), _noise(224, 100)):
        assert hps_preprocess(image).shape == (3, 224, 224)
    white = hps_preprocess(Image.new("RGB", (224, 224), "white"))
    assert torch.allclose(white[:, 0, 0], (1 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD))


@pytest.mark.parametrize("size,mode", [((768, 512), "RGB"), ((512, 512), "RGB"), ((224, 100), "RGB"), ((333, 517), "RGBA")])
def test_preprocess_matches_torchvision_reference(size, mode):
    image = _noise(*size, mode=mode)
    assert torch.equal(hps_preprocess(image), _reference_preprocess(image))


def test_tiny_checkpoint_scores_as_independent_cosine(tiny_checkpoint):
    checkpoint, config_path = tiny_checkpoint
    scorer = get_scorer("hpsv2", checkpoint=checkpoint, architecture=config_path, device="cpu", progress=False)
    images = [_noise(768, 512, seed=1), _noise(512, 512, seed=2), _noise(200, 300, "RGBA", seed=3)]
    prompts = ["a red cat with horns", "A  Blue &amp; dog", "a corgi astronaut " * 30]  # html, case, truncation
    scores = scorer.score(images, prompts)

    reference = open_clip.CLIP(**TINY_OPEN_CLIP)
    reference.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    reference.eval()
    with torch.no_grad():
        image_features = F.normalize(reference.encode_image(torch.stack([_reference_preprocess(i) for i in images])), dim=-1)
        text_features = F.normalize(reference.encode_text(open_clip.tokenize(prompts)), dim=-1)
    expected = (image_features @ text_features.T).diagonal()
    assert scores.dtype == torch.float32 and scores.shape == (3,)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-6)
    one_by_one = torch.cat([scorer.score([image], [prompt]) for image, prompt in zip(images, prompts)])
    torch.testing.assert_close(one_by_one, scores, rtol=0, atol=1e-6)
    assert HPSv2Scorer.report_scale == 100.0


def test_missing_and_mismatched_checkpoints(tiny_checkpoint, tmp_path):
    checkpoint, config_path = tiny_checkpoint
    with pytest.raises(CheckpointError, match="not found"):
        HPSv2Scorer(str(tmp_path / "absent.pt"), architecture=config_path)
    other = dict(TINY_OPEN_CLIP, embed_dim=16)
    with pytest.raises(CheckpointError, match=r"does not match .*shape-mismatched key\(s\), e.g. text_projection"):
        HPSv2Scorer(checkpoint, architecture=other)
    state_dict = torch.load(checkpoint, weights_only=True)["state_dict"]
    del state_dict["logit_scale"]
    torch.save({"state_dict": state_dict}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\), e.g. logit_scale"):
        HPSv2Scorer(str(tmp_path / "partial.pt"), architecture=config_path)
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read HPSv2 checkpoint"):
        HPSv2Scorer(str(tmp_path / "garbage.pt"), architecture=config_path)
    torch.save({"state_dict": [1, 2]}, tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="is not an HPSv2 checkpoint"):
        HPSv2Scorer(str(tmp_path / "list.pt"), architecture=config_path)
    with pytest.raises(CheckpointError, match="unknown open_clip architecture"):
        HPSv2Scorer(checkpoint, architecture="ViT-Nope-99")


def test_vit_h_14_manifest_matches_released_checkpoints():
    with torch.device("meta"):
        model = open_clip.CLIP(**open_clip.get_model_config("ViT-H-14"))
    count = sum(p.numel() for p in model.state_dict().values())
    assert count == 986_109_441
    assert abs(2 * count - 1_972_490_005) < 300_000  # the fp16 HPS_v2.1_compressed.pt is the weights alone


@pytest.mark.skipif(not os.environ.get("HPSV2_CHECKPOINT"), reason="set HPSV2_CHECKPOINT to a real HPS_v2*_compressed.pt to run")
def test_real_checkpoint_scores_in_published_range():
    scorer = HPSv2Scorer(os.environ["HPSV2_CHECKPOINT"], progress=False)
    score = scorer.score([Image.new("RGB", (512, 512), "gray")], ["a gray square"])
    assert 0.0 < float(score) < 0.5
