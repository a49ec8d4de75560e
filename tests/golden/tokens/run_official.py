"""Run golden conversations through the official DeepSeek-VL2 processor and print its outputs as JSON.

    python run_official.py OFFICIAL_REPO TOKENIZER_FOLDER extended_cases.json > extended_expected.json

OFFICIAL_REPO is a checkout of deepseek-ai/DeepSeek-VL2 (commit ef9f91e2b6426536b83294c11742c27be66361b1),
whose `deepseek_vl2/models/processing_deepseek_vl_v2.py` and `conversation.py` run unmodified; it needs
transformers 4.38.2 and torch. TOKENIZER_FOLDER holds the tokenizer (`tokenizer.json` uncompressed from
`pipeline/data/tokenizers/deepseek-vl2/`, with its `tokenizer_config.json`). Images are solid RGB of the
listed sizes: pixels never reach the ids, so the processor's torchvision transforms are replaced by a
stand-in (torchvision is not needed), and the rest of the package (`modeling_*`, which needs timm and
CUDA kernels) is not imported.
"""

import contextlib
import importlib.util
import io
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer

COMMIT = "ef9f91e2b6426536b83294c11742c27be66361b1"
CANDIDATES = [
    [384, 384], [384, 768], [768, 384], [384, 1152], [1152, 384], [384, 1536], [1536, 384], [768, 768],
    [384, 1920], [1920, 384], [384, 2304], [2304, 384], [768, 1152], [1152, 768], [384, 2688], [2688, 384],
    [384, 3072], [3072, 384], [768, 1536], [1536, 768], [384, 3456], [3456, 384], [1152, 1152],
]  # fmt: skip


def _stand_in_torchvision() -> None:
    """ToTensor / Normalize / Compose as the processor uses them, enough to run it without torchvision."""

    class ToTensor:
        def __call__(self, image):
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            return torch.from_numpy(pixels.transpose(2, 0, 1).copy())

    class Normalize:
        def __init__(self, mean, std):
            self.mean, self.std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]

        def __call__(self, tensor):
            return (tensor - self.mean) / self.std

    class Compose:
        def __init__(self, steps):
            self.steps = steps

        def __call__(self, value):
            for step in self.steps:
                value = step(value)
            return value

    transforms = types.ModuleType("torchvision.transforms")
    transforms.ToTensor, transforms.Normalize, transforms.Compose = ToTensor, Normalize, Compose
    package = types.ModuleType("torchvision")
    package.transforms = transforms
    sys.modules["torchvision"], sys.modules["torchvision.transforms"] = package, transforms


def _official_processor_class(repo: Path) -> type:
    """DeepseekVLV2Processor from the checkout, loaded as `deepseek_vl2.models.*` without the package's
    `__init__` files (they import the model code)."""
    models = repo / "deepseek_vl2" / "models"
    for name in ("deepseek_vl2", "deepseek_vl2.models"):
        module = types.ModuleType(name)
        module.__path__ = [str(repo / name.replace(".", "/"))]
        sys.modules[name] = module
    for name in ("conversation", "processing_deepseek_vl_v2"):
        spec = importlib.util.spec_from_file_location(f"deepseek_vl2.models.{name}", models / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["deepseek_vl2.models.processing_deepseek_vl_v2"].DeepseekVLV2Processor


def main(repo: str, tokenizer_folder: str, cases_file: str) -> None:
    _stand_in_torchvision()
    processor_class = _official_processor_class(Path(repo))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    with contextlib.redirect_stdout(io.StringIO()):  # the processor prints the ids it adds
        processor = processor_class(tokenizer, CANDIDATES, patch_size=14, downsample_ratio=2)
    outputs = {}
    for case in json.loads(Path(cases_file).read_text(encoding="utf-8"))["cases"]:
        images = [Image.new("RGB", (i["width"], i["height"]), tuple(i["color"])) for i in case["images"]]
        result = processor.process_one(
            conversations=case["conversation"],
            images=images,
            inference_mode=case["inference_mode"],
            system_prompt=case["system_prompt"],
        )
        outputs[case["name"]] = {
            "input_ids": result.input_ids.tolist(),
            "target_ids": result.target_ids.tolist(),
            "images_seq_mask": [int(x) for x in result.images_seq_mask.tolist()],
            "images_spatial_crop": result.images_spatial_crop.tolist() if images else [],
            "num_image_tokens": result.num_image_tokens,
            "sft_format": result.sft_format,
        }
    import tokenizers
    import transformers

    meta = {
        "official_repo": "deepseek-ai/DeepSeek-VL2",
        "commit": COMMIT,
        "call": "processor.process_one(conversations=case.conversation, images=[solid RGB PIL images], "
        "inference_mode=case.inference_mode, system_prompt=case.system_prompt)",
        "candidate_resolutions": CANDIDATES,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "torch": torch.__version__,
    }
    json.dump({"meta": meta, "cases": outputs}, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main(*sys.argv[1:4])
