"""Simulated `paddle_lite_opt` command line (the wheel's lite/api/python/bin/paddle_lite_opt script).

Same flags and the same quirks: boolean flags take the strings "true"/"false" (`--enable_fp16=true`; a bare
`--enable_fp16` is also accepted, as by the C++ opt binary), `--version` prints opt's version, and the exit
status is 0 even when only the help text is printed (the script ignores main()'s return value). Fatal errors
abort the process (SIGABRT) like the real tool.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from paddlelite import lite


def _flag(parser: argparse.ArgumentParser, name: str, help_: str) -> None:
    parser.add_argument(name, type=str, nargs="?", const="true", default="false", help=help_)


def main(argv: list[str] | None = None) -> int:
    a = lite.Opt()
    parser = argparse.ArgumentParser(prog="paddle_lite_opt")
    parser.add_argument(
        "--model_dir",
        type=str,
        required=False,
        help="path of the model. This option will be ignored if model_file and param_file exist",
    )
    parser.add_argument(
        "--model_file", type=str, required=False, help="model file path of the combined-param model."
    )
    parser.add_argument(
        "--param_file", type=str, required=False, help="param file path of the combined-param model."
    )
    parser.add_argument(
        "--optimize_out_type",
        type=str,
        required=False,
        default="naive_buffer",
        choices=["protobuf", "naive_buffer"],
        help="store type of the output optimized model. protobuf/naive_buffer.",
    )
    parser.add_argument("--optimize_out", type=str, required=False, help="path of the output optimized model")
    parser.add_argument(
        "--valid_targets",
        type=str,
        required=False,
        default="arm",
        help="The targets this model optimized for, should be one of (arm,opencl, x86), splitted by space.",
    )
    _flag(
        parser, "--quant_model", "{true, false} Use post_quant_dynamic method to quantize the model weights."
    )
    parser.add_argument("--quant_type", type=str, default="QUANT_INT16", help="{QUANT_INT16, QUANT_INT8}")
    _flag(parser, "--enable_fp16", "{true, false} Whether to enable FP16 calculation.")
    _flag(parser, "--sparse_model", "{true, false} Use sparse_conv_detect_pass.")
    parser.add_argument("--sparse_threshold", type=float, default=0.6, help="lower bound for the sparse pass")
    parser.add_argument("--version", action="version", version=a.version())
    _flag(parser, "--print_supported_ops", "{true, false} Print supported operators on the inputed target")
    _flag(parser, "--print_all_ops", "{true, false} Print all the valid operators of Paddle-Lite")
    _flag(
        parser,
        "--print_all_ops_in_md_format",
        "{true, false} Print all the valid operators in markdown format",
    )
    _flag(parser, "--print_model_ops", "{true, false} Print operators in the input model")
    _flag(parser, "--display_kernels", "{true, false} Display kernel information")
    _flag(parser, "--record_tailoring_info", "{true, false} Record kernels and operators information")
    parser.add_argument("--model_set", type=str, required=False, help="path of the models set.")
    parser.add_argument(
        "--optimized_nb_model_path",
        type=str,
        required=False,
        help="path of the optimized nb model, for the VisualizeOptimizedModel API",
    )
    parser.add_argument(
        "--visualization_file_output_path",
        type=str,
        required=False,
        help="output path of the visualization file",
    )
    args = parser.parse_args(argv)

    if args.model_dir is not None:
        a.set_model_dir(args.model_dir)
    if args.model_set is not None:
        a.set_modelset_dir(args.model_set)
    if args.model_file is not None:
        a.set_model_file(args.model_file)
    if args.param_file is not None:
        a.set_param_file(args.param_file)
    if args.optimize_out_type is not None:
        a.set_model_type(args.optimize_out_type)
    if args.optimize_out is not None:
        a.set_optimize_out(args.optimize_out)
    if args.valid_targets is not None:
        if args.enable_fp16 == "true":
            a.enable_fp16()
        a.set_valid_places(args.valid_targets)
    if args.record_tailoring_info == "true":
        a.record_model_info(True)
    if args.quant_model == "true":
        a.set_quant_model(True)
        a.set_quant_type(args.quant_type)
    if args.sparse_model == "true":
        a.set_sparse_model(True)
        a.set_sparse_threshold(args.sparse_threshold)
    if args.print_all_ops == "true":
        a.print_all_ops()
        return 0
    if args.print_all_ops_in_md_format == "true":
        a.print_all_ops_in_md_dormat()
        return 0
    if args.print_supported_ops == "true":
        a.print_supported_ops()
        return 0
    if args.display_kernels == "true":
        a.display_kernels_info()
        return 0
    if args.print_model_ops == "true":
        a.check_if_model_supported(True)
        return 0
    if args.optimized_nb_model_path is not None and args.visualization_file_output_path is not None:
        for name in a.visualize_optimized_nb_model(
            args.optimized_nb_model_path, args.visualization_file_output_path
        ):
            dot = f"{args.visualization_file_output_path}/{name}.dot"
            try:
                subprocess.Popen(
                    ["dot", "-Tpdf", dot, "-o", dot[:-4] + ".pdf"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            except OSError:
                pass  # graphviz absent: the .dot files are still there
        return 0
    if (
        args.model_dir is None
        and (args.model_file is None or args.param_file is None)
        and args.model_set is None
    ) or args.optimize_out is None:
        a.executablebin_help()
        return 1
    a.run()
    return 0


if __name__ == "__main__":
    main(sys.argv[1:])  # like the real script: main()'s return value is not the exit status
