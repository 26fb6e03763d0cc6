"""Benchmark worker for the PyTorch reference (``segment-anything`` 1.0), run in its own process.

``python benchmarks/reference.py --model vit_b --threads 2 --out ref.json --arrays ref.npz``
(normally started by ``benchmarks/run.py``). The model holds the fixture weights; it runs on CUDA
when torch sees a GPU, else on the CPU with ``--threads`` threads.
"""

from __future__ import annotations

import argparse

import harness


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image", default="coffee")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: amg")
    parser.add_argument("--out", required=True)
    parser.add_argument("--arrays", required=True, help="npz of outputs, compared with ours by run.py")
    args = parser.parse_args()
    harness.pin_threads(args.threads)

    import gc

    import numpy as np
    import torch
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor

    from reference_model import build_unweighted, state_dict_shapes

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    out: dict = {
        "side": "reference",
        "model": args.model,
        "machine": harness.machine(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({harness.machine()['cpu']})",
        "threads": {"torch.get_num_threads": torch.get_num_threads(), "affinity_cores": harness.usable_cores()},
        "versions": {"torch": torch.__version__, "segment_anything": "1.0"},
        "torch_config": {
            "libraries": [
                line.strip(" -")
                for line in torch.__config__.show().splitlines()
                if "Math Kernel" in line or "MKL-DNN" in line or "oneDNN" in line
            ],
            "mkldnn_enabled": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "parallel_info": torch.__config__.parallel_info(),
        },
        "timings": {},
        "memory": {},
    }
    image = harness.photo(args.image)
    p = harness.prompts(image.shape[:2])
    arrays = {}

    with harness.peak_rss(out["memory"], "peak_load"):
        sam = build_unweighted(args.model)
        weights = harness.fixture_state_dict(args.model)
        assert set(weights) == set(state_dict_shapes(sam))
        sam.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
        del weights
        sam = sam.float().eval().to(device)
        predictor = SamPredictor(sam)
        gc.collect()
    out["memory"]["after_load"] = harness.rss_bytes()

    def set_image() -> None:
        predictor.set_image(image)
        sync()

    with harness.peak_rss(out["memory"], "peak_encoder"):
        out["timings"]["encoder"] = harness.timed(set_image, repeats=args.repeats)
    arrays["embedding"] = predictor.get_image_embedding()[0].permute(1, 2, 0).cpu().numpy()

    def predict_point():
        return predictor.predict(p["point_coords"], p["point_labels"], multimask_output=True)

    def predict_boxes():
        boxes = torch.as_tensor(predictor.transform.apply_boxes(p["boxes"], predictor.original_size), device=device)
        masks, iou, low = predictor.predict_torch(None, None, boxes=boxes, multimask_output=False)
        return masks.cpu().numpy(), iou.cpu().numpy(), low.cpu().numpy()

    # AMG: no warm-up run: torch compiles nothing, and this process has already run the same
    # model (encoder and decoder) many times above.
    harness.time_decoder_and_amg(
        out,
        arrays,
        args,
        predict_point,
        predict_boxes,
        lambda settings: SamAutomaticMaskGenerator(sam, **settings),
        image,
        amg_warmup=0,
    )

    a = torch.randn(4096, 4096, device=device)
    b = torch.randn(4096, 4096, device=device)
    mm = harness.timed(lambda: (torch.mm(a, b), sync()), repeats=5)
    out["matmul_flops_per_s"] = 2 * 4096**3 / mm["median"]

    out["memory"]["process_peak"] = harness.process_peak_rss_bytes()
    if device.type == "cuda":
        out["memory"]["device_peak"] = torch.cuda.max_memory_allocated()
    np.savez(args.arrays, **arrays)
    harness.write_json(args.out, out)


if __name__ == "__main__":
    main()
