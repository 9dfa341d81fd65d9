"""Paddle Inference on the host CPU: the exact reference (`paddle`) and the server configuration (`paddle-opt`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from bisect_lite.engines.base import Engine, package_version


class PaddleEngine(Engine):
    name = "paddle"
    summary = "Paddle Inference CPU fp32, exact mode (IR optimisation and oneDNN off): the host reference"
    option_help = {"threads": "CPU math threads (default 1)"}
    optimise = False
    half_precision = False
    fetch_invariant = True  # exact mode: no fusion, every op runs its own kernel whatever is fetched

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("paddle") is None:
            return "paddlepaddle is not installed (pip install paddlepaddle)"
        return None

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.threads = self.int_option("threads", 1, minimum=1)

    def version(self) -> str:
        return f"paddlepaddle {package_version('paddlepaddle') or package_version('paddlepaddle-gpu') or '?'}"

    def load(self, model_dir: Path, work_dir: Path) -> Any:
        import paddle.inference as pi

        config = pi.Config(str(model_dir / "model.pdmodel"), str(model_dir / "model.pdiparams"))
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(self.threads)
        config.disable_glog_info()
        if self.optimise:
            config.switch_ir_optim(True)
            config.enable_onednn()
            # This pass drops fetched batch_norm outputs; every fetch target must come back.
            config.delete_pass("batch_norm_act_fuse_pass")
        else:
            config.switch_ir_optim(False)
            config.disable_onednn()
            # Reuse buffers of tensors nobody fetches: the same kernels and bit-identical results (checked on
            # PP-OCRv5 det), but the worker's peak drops from every activation at once (925 MB on det at
            # 640x640) to the live ones (477 MB), so --max-memory bounds what it holds.
            config.enable_memory_optim()
        return pi.create_predictor(config)

    def infer(self, loaded: Any, inputs: dict[str, np.ndarray], fetches: list[str]) -> dict[str, np.ndarray]:
        for name in loaded.get_input_names():
            handle = loaded.get_input_handle(name)
            value = np.ascontiguousarray(inputs[name])
            handle.reshape(list(value.shape))
            handle.copy_from_cpu(value)
        loaded.run()
        names = loaded.get_output_names()
        missing = [f for f in fetches if f not in names]
        if missing:
            raise RuntimeError(f"the predictor lost fetch targets {missing} (fused away?)")
        return {name: loaded.get_output_handle(name).copy_to_cpu() for name in fetches}


class PaddleOptEngine(PaddleEngine):
    name = "paddle-opt"
    summary = "Paddle Inference CPU with IR optimisation and oneDNN, as servers run it"
    optimise = True
    fetch_invariant = False  # its fusion passes stop at fetched tensors: more fetches, other kernels
