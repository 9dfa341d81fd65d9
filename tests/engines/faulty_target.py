"""A `cmd` engine for the tests: Paddle Inference with faults planted by tensor name.

Starting paddle costs about a second, so the engine is a thin client (`run`, stdlib only) talking to a server
(`serve`) that keeps paddle loaded. The client is what bisect-lite starts for every run, exactly like a user's
device runner: it crashes (SIGABRT) or hangs when the server says the model contains a crashing/hanging op.

Faults (JSON list), each keyed by the tensor an op writes, so they follow the op into every cut model:
    {"kind": "scale", "tensor": T, "factor": 1.5, "bias": 0.0, "requires": [T0, ...]}   wrong kernel output
        ("requires": only when the ops writing T0... are in the same model: a fault needing two ops together;
         "unless_fetched": not when the model fetches one of these tensors: a fused kernel that a fetch of its
         inner tensor breaks up, so its values depend on what the run fetches)
    {"kind": "crash", "tensor": T}      abort when the model computes T
    {"kind": "hang", "tensor": T}       never answer when the model computes T
    {"kind": "noise", "tensor": T, "amplitude": 1e-6}   different tiny noise on every run (non-deterministic)
    {"kind": "max_fetches", "count": N}   abort when the model fetches more than N tensors (a runner with a limit)
    {"kind": "fp16"}                    run under fp16 storage rounding (bisect_lite.engines.fp16), faults included:
                                        a half-precision device with (or without) a kernel fault
Usage: faulty_target.py serve SOCKET
       faulty_target.py run SOCKET FAULTS_FILE MODEL_DIR INPUTS OUTPUTS   (FAULTS_FILE: the JSON list)
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time


def client(sock_path: str, faults: str, model_dir: str, inputs: str, outputs: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock_path)
        with open(faults) as f:
            planted = json.load(f)
        s.sendall(
            (
                json.dumps({"faults": planted, "model_dir": model_dir, "inputs": inputs, "outputs": outputs}) + "\n"
            ).encode()
        )
        reply = json.loads(s.makefile().readline())
    if reply.get("action") == "crash":
        sys.stderr.write(f"F1124 faulty kernel for {reply['tensor']}: Check failed: image2d size\n")
        sys.stderr.flush()
        os.abort()
    if reply.get("action") == "hang":
        time.sleep(3600)
    if "error" in reply:
        sys.stderr.write(reply["error"] + "\n")
        sys.exit(1)


def server(sock_path: str) -> None:
    os.environ.setdefault("GLOG_minloglevel", "3")
    import numpy as np
    import paddle.inference as pi

    from bisect_lite.model import load_model
    from bisect_lite.model.io import save_model

    calls = 0
    predictors: dict[str, object] = {}
    work = sock_path + ".models"

    def planted(model_dir: str, faults: list[dict]) -> tuple[str | None, dict | None, list[dict]]:
        model = load_model(model_dir)
        half = any(f["kind"] == "fp16" for f in faults)
        faults = [f for f in faults if f["kind"] != "fp16"]
        active = []
        for f in faults:
            if f["kind"] == "max_fetches":
                if len(model.fetches) > f["count"]:
                    return None, {"kind": "crash", "tensor": f"{len(model.fetches)} fetches"}, []
                continue
            if f["tensor"] not in model.producers:
                continue
            if any(t not in model.producers for t in f.get("requires", [])):
                continue
            if any(t in model.fetches for t in f.get("unless_fetched", [])):
                continue
            if f["kind"] in ("crash", "hang"):
                return None, f, []
            active.append(f)
        scale = [f for f in active if f["kind"] == "scale"]
        if not scale:
            return (half_precision(model_dir, f"{work}/{model.fingerprint}") if half else model_dir), None, active
        program = model.program
        block = program.blocks[0]
        ops = list(block.ops)
        new_ops = []
        for od in ops:
            new_ops.append(od)
            for f in scale:
                for slot in od.outputs:
                    if f["tensor"] in slot.arguments:
                        raw = f["tensor"] + "@raw"
                        slot.arguments[list(slot.arguments).index(f["tensor"])] = raw
                        var = next(v for v in block.vars if v.name == f["tensor"])
                        nv = block.vars.add()
                        nv.CopyFrom(var)
                        nv.name = raw
                        op = type(od)()
                        op.type = "scale"
                        x = op.inputs.add()
                        x.parameter, _ = "X", x.arguments.append(raw)
                        o = op.outputs.add()
                        o.parameter, _ = "Out", o.arguments.append(f["tensor"])
                        for name, value in (("scale", f.get("factor", 1.0)), ("bias", f.get("bias", 0.0))):
                            a = op.attrs.add()
                            a.name, a.type, a.f = name, 1, value
                        a = op.attrs.add()
                        a.name, a.type, a.b = "bias_after_scale", 6, True
                        new_ops.append(op)
        del block.ops[:]
        block.ops.extend(new_ops)
        out = f"{work}/{model.fingerprint}-{abs(hash(json.dumps(scale, sort_keys=True)))}"
        if not os.path.exists(out):
            save_model(model, out)
        return (half_precision(out, out) if half else out), None, active

    def half_precision(source: str, out: str) -> str:
        from bisect_lite.engines.fp16 import fp16_model

        out += "-fp16"
        if not os.path.exists(out):  # reloaded: the planted program was edited under the loaded model's views
            save_model(fp16_model(load_model(source))[0], out)
        return out

    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(8)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        with conn:
            line = conn.makefile().readline()
            if not line.strip():
                continue
            req = json.loads(line)
            calls += 1
            try:
                model_dir, stop, active = planted(req["model_dir"], req["faults"])
                if stop is not None:
                    conn.sendall((json.dumps({"action": stop["kind"], "tensor": stop["tensor"]}) + "\n").encode())
                    continue
                if model_dir not in predictors:
                    config = pi.Config(f"{model_dir}/model.pdmodel", f"{model_dir}/model.pdiparams")
                    config.switch_ir_optim(False)
                    config.disable_onednn()
                    config.disable_glog_info()
                    predictors[model_dir] = pi.create_predictor(config)
                pred = predictors[model_dir]
                with np.load(req["inputs"]) as data:
                    for name in pred.get_input_names():
                        pred.get_input_handle(name).copy_from_cpu(np.ascontiguousarray(data[name]))
                pred.run()
                outs = {n: pred.get_output_handle(n).copy_to_cpu() for n in pred.get_output_names()}
                for f in active:
                    if f["kind"] == "noise" and f["tensor"] in outs:
                        rng = np.random.default_rng(calls)
                        outs[f["tensor"]] = outs[f["tensor"]] + f.get("amplitude", 1e-6) * rng.standard_normal(
                            outs[f["tensor"]].shape
                        ).astype(outs[f["tensor"]].dtype)
                np.savez(req["outputs"], **outs)
                conn.sendall(b'{"ok": true}\n')
            except Exception as exc:  # reported to the client, which exits non-zero
                conn.sendall((json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n").encode())


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        server(sys.argv[2])
    else:
        client(*sys.argv[2:7])
