"""Stand-ins for the Ascend tools the tests cannot run (ATC, ais_bench, torch_aie).

Each one reproduces what the real tool is documented (or written) to do, including the errors we rely
on, and says where that is defined. What they cannot reproduce is the NPU itself: they compute on the
CPU with onnxruntime or TorchScript, emulating the narrower precision of an .om (ATC_PRECISION_MODE) and of
torch_aie's FP16 policy by rounding tensors to float16 or bfloat16; they compute in float32 in between.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

# What the ais_bench stand-in emulates for each ATC precision value: (type, operators), the type float16 or bfloat16
# (None: the original float32) and the operators the rounding applies to. CANN "ATC Instructions", --precision_mode
# (atlasatcparam_16_0068) and --precision_mode_v2 (atlasatcparam_16_0069):
#  - force_fp16 (默认值) / v2 fp16: "原图中算子精度为float16、bfloat16和float32时,强制选择float16": every operator
#    ("all": the weights, the input and every float output are rounded to float16);
#  - force_fp32 / cube_fp16in_fp32out (效果等同) / v2 cube_fp16in_fp32out: matrix operators prefer float16 inputs and a
#    float32 output, vector operators float32 ("cube_in": the float inputs of Conv, ConvTranspose, MatMul and Gemm);
#  - allow_fp32_to_fp16: matrix operators lowered to float16, vector operators keep float32 ("cube": the inputs and
#    outputs of those operators);
#  - the mixed modes (allow_mix_precision / allow_mix_precision_fp16 / v2 mixed_float16): the operators whose
#    ops-info.json entry has precision_reduce=true, and the gray ones after them, in float16. The lists are not
#    modelled: emulated as allow_fp32_to_fp16 (the convolutions are on the white list);
#  - allow_fp32_to_bf16 / allow_mix_precision_bf16 / v2 mixed_bfloat16: the same in bfloat16;
#  - v2 cube_hif8 / mixed_hif8 (HiFloat8 on the Atlas 350 only): not modelled, emulated in float16, which is finer;
#  - must_keep_origin_dtype / v2 origin: the original float32.
# The rounding keeps every computation in float32 and rounds what the narrower type would store, so it is the least
# error the chip's narrower arithmetic has, not all of it.
ATC_PRECISION_MODE = {
    "force_fp16": ("float16", "all"), "force_fp32": ("float16", "cube_in"),
    "cube_fp16in_fp32out": ("float16", "cube_in"),
    "allow_fp32_to_fp16": ("float16", "cube"), "allow_mix_precision": ("float16", "cube"),
    "allow_mix_precision_fp16": ("float16", "cube"), "allow_mix_precision_bf16": ("bfloat16", "cube"),
    "allow_fp32_to_bf16": ("bfloat16", "cube"), "must_keep_origin_dtype": (None, "all")}
ATC_PRECISION_MODE_V2 = {
    "fp16": ("float16", "all"), "origin": (None, "all"), "cube_fp16in_fp32out": ("float16", "cube_in"),
    "mixed_float16": ("float16", "cube"), "mixed_bfloat16": ("bfloat16", "cube"), "cube_hif8": ("float16", "cube_in"),
    "mixed_hif8": ("float16", "cube")}

# ATC. Sources: CANN "ATC Instructions" (hiascend.com, atctool), parameter pages
#  --output (atlasatcparam_16_0029): the model is written to "<output>.om" or "<output>_<os>_<arch>.om",
#      e.g. tf_resnet50_linux_x86_64.om; here the suffix comes from $STANDIN_ATC_SUFFIX (empty: <output>.om).
#  --dynamic_batch_size (atlasatcparam_16_0018): gears in (1, 100] with -1 as the batch dimension of --input_shape.
# What it prints, all on stdout (hicann/ge, api/atc/main_impl.cc, main_impl and CheckRet): "ATC start working now,
#  please wait for a moment.", then "..." and either "ATC run success, welcome to the next use." or "ATC run failed,
#  Please check the detail log, Try 'atc --help' for more information" followed by the error manager's messages
#  (OutputErrMessageToStdout): an "EXXXXX: <message>" line, then indented lines (a TraceBack with [FUNC:..][FILE:..]).
#  A failure returns FAILED (-1 as int32): exit status 255.
# Its command line is read first, as ATC's flag parser reads it (hicann/ge at a0668444, api/atc/cmd_flag_info.cc,
#  ParseCommandLine, called by main_impl.cc main_impl -> GFlagUtils::InitGFlag before anything else):
#  - FormatArgv: ReplaceFlagPrefixSingleMinus makes "-name" (two or more letters) "--name", ReplaceFlagNameMinus
#    turns each "-" of a "--name" up to "=" into "_" (--precision-mode is --precision_mode; GE's unit tests
#    UtestMain.GeFlags_param_single_minus / GeFlags_param_include_dash);
#  - getopt_long (mmpa's mmGetOptLong on Linux) over the flags of api/atc/atc_flags.cc (at 7bb4b9f5): every string
#    and int32 flag takes a required argument, "--name=VALUE" or "--name VALUE" (GeFlags_param_ok03/04), the bool
#    --help / --raw_ge_options_ignore_unsupported an optional one ("--help" or "--help=VALUE"); a unique
#    abbreviation of a name is that flag (glibc manual, getopt.texi), an unknown or ambiguous one prints
#    "ERROR: unknown command line flag '<name>'" on stderr (GeFlags_flag_name_error01/02), a flag without its
#    argument "ERROR: flag '--<name>' is missing its argument; flag description: <its atc_flags.cc text>" (here the
#    line ends before "; flag description"), and each argument that is no flag "ERROR: Non-option parameter: <arg>"
#    (GeFlags_non_option_parameter01/02; getopt_long moves them after the flags, so they are reported last);
#  - SetFlagValue: a value outside kStrValueRange (precision_mode, precision_mode_v2, log, framework, ... ; "" is
#    in none of them: GeFlags_flag_value_empty01, while an unranged "--model=" passes, GeFlags_flag_value_empty02)
#    is refused by PrintValueError: E10006 "Value %s for parameter --%s is invalid. The value must be either 1 or
#    0." for the 0/1 switches it lists, E10010 "Value %s for parameter --log is invalid.", E10007 "--%s is
#    required. The value must be %s." for --framework, else E10001 "Value %s for parameter %s is invalid. Reason:
#    %s" with the parameter "--<name>" and the reason "The value is not within the range of values. The valid range
#    is [a] [b] ... ." (the range in std::set order: sorted); then a value that is no int32 (digits only) or bool
#    is E10003 "Value %s for parameter --%s is invalid. Reason: The value type must be [int32]." (messages: GE's
#    error registry, base/common/error_registry/error_registry.cc at 0241e896).
#  A refused command line returns before "..." is printed: "ATC run failed, ..." follows the start line, then the
#  error message reported (none for the "ERROR:" lines of stderr: an empty line). The error manager initialises
#  itself on that first report (ErrorManager::ReportErrMessage), so the message is printed. "--help" prints the
#  usage (here its first line only) and exits 0. Options that GE's optimization-option registry adds at run time
#  (GenAndRegOptimizationOptions) are not modelled: the stand-in refuses them as unknown.
# Then the checks of GFlagUtils::CheckFlags, in its order, with GE's codes: --soc_version, --output and --model
#  must not be empty (IsRequiredParameterExists: E10054 "The required parameter %s for ATC is empty. ..."); the
#  input files (below); both precision options set is E10056 (CheckPrecisionRelatedFlags ->
#  compiler/api/aclgrph/option_utils.cc CheckPrecisionModeV2Conflict; the CANN ATC Instructions: --precision_mode_v2
#  "不能与--precision_mode参数同时使用"; E10056 "Cannot configure both parameters %s and %s simultaneously.", the
#  parameters named by GEContext::GetReadableName, which gives the GE option name (ge.exec.precision_mode) because
#  ATC sets the names of its command line only later, PrepareAtcOptions -> SetOptionNameMap); then no -1 batch in
#  --input_shape with --dynamic_batch_size is E10031 (mindspore-ai/graphengine, ge/ir_build/atc_ir_common.cc,
#  CheckDynamicBatchSizeInputShapeValid), fewer than 2 gears E10035, more than 100 E10036
#  (ge/graph/preprocess/multi_batch_options.cc, CheckDynamicParams). A value of a precision option outside its set
#  never reaches option_utils.cc's own check (CheckPrecisionModeParamValid): the flag parser refused it.
# The .om it writes is JSON: {"onnx": <the ONNX it was given>, "gears": <--dynamic_batch_size as ints, or null>,
#  "precision": <what ais_bench emulates, ATC_PRECISION_MODE above>}, for the ais_bench stand-in to run; the real .om
#  carries its gears (read back with aclmdlGetDynamicBatch) and its operators' data types. Its mode
#  is 0o600 whatever the umask, as GE opens it (mindspore-ai/graphengine, ge/common/auth/file_saver.cc,
#  FileSaver::OpenFile: mmOpen2(real_path, M_RDWR | M_CREAT | O_TRUNC, M_IRUSR | M_IWUSR)).
ATC = """
import json, os, sys
print("ATC start working now, please wait for a moment.")
with open(os.path.join(os.environ["STANDIN_LOG"], "atc.jsonl"), "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd()}) + "\\n")

# api/atc/atc_flags.cc: the flags and their types (the rest are DEFINE_string); "h" is --help's short and long alias
INT32 = {"framework", "mode", "disable_reuse_memory", "virtual_type", "sparsity", "op_debug_level"}
BOOL = {"help", "h", "raw_ge_options_ignore_unsupported"}
FLAGS = INT32 | BOOL | {
    "model", "output", "weight", "input_shape", "input_hint_shape", "input_shape_range", "cal_conf", "insert_op_conf",
    "op_name_map", "target", "om", "json", "out_nodes", "op_precision_mode", "allow_hf32", "precision_mode",
    "precision_mode_v2", "modify_mixlist", "keep_dtype", "input_format", "check_report", "input_fp16_nodes",
    "is_output_adjust_hw_layout", "is_input_adjust_hw_layout", "output_type", "op_select_implmode",
    "optypelist_for_implmode", "singleop", "auto_tune_mode", "jit_compile", "optimization_switch",
    "static_model_ops_lower_limit", "raw_ge_options", "soc_version", "core_type", "aicore_num", "buffer_optimize",
    "fusion_switch_file", "compression_optimize_conf", "customize_dtypes", "op_debug_config", "save_original_model",
    "dynamic_batch_size", "dynamic_image_size", "dynamic_dims", "enable_small_channel", "enable_compress_weight",
    "enable_attr_compression", "compress_weight_conf", "enable_single_stream", "ac_parallel_enable",
    "tiling_schedule_optimize", "log", "dump_mode", "enable_scope_fusion_passes", "debug_dir", "status_check",
    "op_compiler_cache_dir", "op_compiler_cache_mode", "mdl_bank_path", "op_bank_path", "display_model_info",
    "device_id", "shape_generalized_build_mode", "atomic_clean_policy", "external_weight", "deterministic",
    "deterministic_level", "host_env_os", "host_env_cpu", "cluster_config", "hccl_sub_comm_config", "quant_dumpable",
    "is_weight_clip", "oo_level", "build_config"}
# what the ais_bench stand-in emulates for each precision value (ATC_PRECISION_MODE*, outside this script)
PRECISION_MODE, PRECISION_MODE_V2 = {precision_tables}
# api/atc/cmd_flag_info.cc kStrValueRange
RANGE = {
    "sparsity": {"0", "1"}, "dump_mode": {"0", "1"}, "virtual_type": {"0", "1"}, "status_check": {"0", "1"},
    "deterministic": {"0", "1"}, "deterministic_level": {"0", "1", "2"}, "external_weight": {"0", "1", "2"},
    "display_model_info": {"0", "1"}, "atomic_clean_policy": {"0", "1"}, "disable_reuse_memory": {"0", "1"},
    "framework": {"0", "1", "3", "5"}, "op_debug_level": {"0", "1", "2", "3", "4"},
    "mode": {"0", "1", "3", "5", "6", "30"}, "core_type": {"AiCore", "VectorCore"},
    "log": {"debug", "info", "warning", "error", "null"}, "op_compiler_cache_mode": {"enable", "disable", "force"},
    "buffer_optimize": {"l1_optimize", "l2_optimize", "off_optimize"},
    "shape_generalized_build_mode": {"shape_generalized", "shape_precise"},
    "op_select_implmode": {"high_precision", "high_performance", "high_precision_for_all", "high_performance_for_all"},
    "precision_mode": set(PRECISION_MODE), "precision_mode_v2": set(PRECISION_MODE_V2),  # the tables' keys
}
ONE_OR_ZERO = {"status_check", "deterministic", "external_weight", "display_model_info", "atomic_clean_policy",
               "dump_mode", "disable_reuse_memory", "sparsity"}  # PrintValueError's E10006 flags
TRUE, FALSE = ("", "1", "t", "true", "y", "yes"), ("0", "f", "false", "n", "no")  # StringToBool, lower-cased

def refused(line=None, code=None, message=None):
    if line is not None:
        print("ERROR: " + line, file=sys.stderr)
    print("ATC run failed, Please check the detail log, Try 'atc --help' for more information")
    if code:  # the error manager's message, then std::endl (OutputErrMessageToStdout)
        print("{}: {}".format(code, message))
    print()
    sys.exit(255)

def format_arg(arg):  # FormatArgv
    if arg[:1] == "-" and arg[1:3].isalpha() and len(arg) > 2:
        arg = "-" + arg
    if arg[:2] == "--" and arg[2:4].isalpha() and len(arg) > 3:
        name, eq, value = arg.partition("=")
        arg = name[:4] + name[4:].replace("-", "_") + eq + value
    return arg

def set_value(name, value):  # CmdFlagInfo::SetFlagValue
    if name in RANGE and value not in RANGE[name]:
        if name in ONE_OR_ZERO:
            refused(code="E10006", message="Value {} for parameter --{} is invalid. The value must be either 1 or "
                    "0.".format(value, name))
        if name == "log":
            refused(code="E10010", message="Value {} for parameter --log is invalid.".format(value))
        if name == "framework":
            refused(code="E10007", message="--framework is required. The value must be 0(Caffe) or 1(MindSpore) or "
                    "3(TensorFlow) or 5(Onnx).")
        refused(code="E10001", message="Value {} for parameter --{} is invalid. Reason: The value is not within the "
                "range of values. The valid range is {}.".format(value, name, "".join(
                    "[{}] ".format(v) for v in sorted(RANGE[name]))))
    kind = "int32" if name in INT32 else "bool" if name in BOOL else None
    if (kind == "int32" and not (value.isdigit() and value.isascii())
            or kind == "bool" and value.lower() not in TRUE + FALSE):
        refused(code="E10003", message="Value {} for parameter --{} is invalid. Reason: The value type must be "
                "[{}].".format(value, name, kind))
    args["help" if name == "h" else name] = value
    if name in ("help", "h") and value.lower() in TRUE:  # GF_HELP: main_impl returns 0
        print("usage: atc <args>")
        sys.exit(0)

args, rest = {}, [format_arg(a) for a in sys.argv[1:]]
non_options = []
while rest:
    arg = rest.pop(0)
    if arg == "--":
        non_options += rest
        break
    if arg[:2] == "--":
        name, eq, value = arg[2:].partition("=")
        found = [name] if name in FLAGS else [f for f in FLAGS if f.startswith(name)]
        if len(found) != 1:
            refused("unknown command line flag '{}'".format(name))
        name = found[0]
        if name not in BOOL and not eq:
            if not rest:
                refused("flag '{}' is missing its argument".format(arg))
            value = rest.pop(0)
        set_value(name, value)
    elif arg[:1] == "-" and arg != "-":
        for letter in arg[1:]:
            if letter != "h":
                refused("unknown command line flag '{}'".format(arg.lstrip("-").split("=")[0]))
            set_value("h", "")
    else:
        non_options.append(arg)
for arg in non_options:
    print("ERROR: Non-option parameter: " + arg, file=sys.stderr)
if non_options:
    refused()

def fail(code, message, function, source):
    print("...")
    print("ATC run failed, Please check the detail log, Try 'atc --help' for more information")
    print("{}: {}".format(code, message))
    print("        TraceBack (most recent call last):")
    print("        [Check][Param] failed[FUNC:{}][FILE:{}][LINE:1]".format(function, source))
    print("        ATC generate offline model failed.[FUNC:GenerateOmModel][FILE:main_impl.cc][LINE:1]")
    print()
    sys.exit(255)

for required in ("soc_version", "output", "model"):  # GFlagUtils::CheckFlags, IsRequiredParameterExists
    if not args.get(required):
        fail("E10054", "The required parameter --{} for ATC is empty. Another possible reason is that the values of "
             "some parameters are not enclosed by quotation marks (\\"\\").".format(required),
             "IsRequiredParameterExists", "main_impl.cc")

# Then the input files, relative to the working directory (mindspore-ai/graphengine
# ge/offline/main.cc, CheckInputPathValid(FLAGS_model, "--model"): "[Check][InputPath]model file %s not found!!"; the
# customize_dtypes file is read by OpCustDtypesConfigParser, which reports that "The customize file does not exist
# or its access permission is denied").
if not os.path.isfile(args.get("model", "")):
    fail("E10001", "[Check][InputPath]model file {} not found!!".format(args.get("model", "")), "CheckInputPathValid",
         "main_impl.cc")
if "customize_dtypes" in args and not os.path.isfile(args["customize_dtypes"]):
    fail("E10001", "Value {} for parameter --customize_dtypes is invalid. Reason: The customize file does not exist "
         "or its access permission is denied.".format(args["customize_dtypes"]), "ParseCustomDtypeContent",
         "op_cust_dtypes_config_parser.cc")

if args.get("precision_mode") and args.get("precision_mode_v2"):
    fail("E10056", "Cannot configure both parameters ge.exec.precision_mode and ge.exec.precision_mode_v2 "
         "simultaneously.", "CheckPrecisionModeV2Conflict", "option_utils.cc")
if "dynamic_batch_size" in args:
    gears = args["dynamic_batch_size"].strip('"').split(",")
    if ":-1," not in args.get("input_shape", ""):
        fail("E10031", "At least one batch n must be equal to -1 when set --dynamic_batch_size.",
             "CheckDynamicBatchSizeInputShapeValid", "atc_ir_common.cc")
    if len(gears) < 2:
        fail("E10035", "Input parameter[--dynamic_batch_size]'s value size [{}] must be greater than [1].".format(
            len(gears)), "CheckDynamicParams", "multi_batch_options.cc")
    if len(gears) > 100:
        fail("E10036", "Input parameter[--dynamic_batch_size]'s value size [{}] must be less than [101].".format(
            len(gears)), "CheckDynamicParams", "multi_batch_options.cc")
gears = [int(g) for g in args["dynamic_batch_size"].strip('"').split(",")] if "dynamic_batch_size" in args else None
if args.get("precision_mode_v2"):
    precision = PRECISION_MODE_V2[args["precision_mode_v2"]]
else:  # neither option: force_fp16, ATC's default (fp16 for v2)
    precision = PRECISION_MODE[args.get("precision_mode") or "force_fp16"]
path = args["output"] + os.environ.get("STANDIN_ATC_SUFFIX", "") + ".om"
with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
    f.write(json.dumps({"onnx": os.path.abspath(args["model"]), "gears": gears, "precision": precision}))
print("...")
print("ATC run success, welcome to the next use.")
""".replace("{precision_tables}", repr((ATC_PRECISION_MODE, ATC_PRECISION_MODE_V2)))

# ais_bench. Source: Ascend/tools, ais-bench_workload/tool/ais_bench/ais_bench/infer/
#  __main__.py get_args: the flags below with their types (argparse: a bad value exits 2 with "error: argument
#      --device/-d: device:N is invalid. valid value range is [0, 255]" on stderr); --output_dirname without
#      --output is logger.error(...) then RuntimeError('error bad parameters --output_dirname');
#      main: output_prefix = os.path.join(args.output, args.output_dirname); --input is split on "," (a folder,
#      or files); warmup() runs --warmup_count (default 1) untimed inferences and resets the summary first.
#  utils.py: logging.basicConfig(stream=sys.stdout, format='[%(levelname)s] %(message)s'), so its messages,
#      errors included, go to stdout; the code then raises a bare RuntimeError(), whose traceback on stderr
#      ends in "RuntimeError". get_fileslist_from_dir: the *.npy/*.NPY/*.bin/*.BIN files of --input,
#      natural-sorted; list_split (defined here, called from io_oprations.py) pads a short last batch with
#      io_oprations.py's padding_infer_fake_file, which get_narray_from_files_list reads as the batch's first file
#      and save_tensors_to_file writes no outputs for.
#  io_oprations.py check_input_parameter / create_infileslist_from_inputs_list: files are taken in the order
#      given, a missing one is an error; get_files_count_per_batch: files per batch = model input bytes /
#      file bytes (must divide: "arg0 tensorsize: .. filesize: .. not match"); save_tensors_to_file: each output
#      i is split along the batch axis into one file per input file, named "<input basename up to its first
#      dot>_<i>.bin".
#  --dymBatch B on a .om built with ATC --dynamic_batch_size (backend/base/module/ModelInfer/):
#      ModelInferenceProcessor::SetDynamicBatchsize first calls ModelProcess::CheckDynamicBatchSize (model_process.cpp),
#      which logs "[ERROR] the dymBatch parameter is not correct" and "[ERROR] model has dynamic batch size:{[1][2]},
#      please set correct dynamic batch size" (GetDymBatchInfo) when B is not a gear, or "[ERROR] the
#      dynamic_batch_size parameter is not specified for model conversion" on a .om without gears; CHECK_RET_EQ logs
#      "[WARN] Check failed:..." and PyInferenceSession::SetDynamicBatchsize throws std::runtime_error(GetError(1)),
#      a Python RuntimeError "[1][ACL: invalid parameter] " (ErrorCode.cpp GetError, APP_ERR_ACL_LOG_STRING). A gear
#      B scales the input size to size * B / largest gear. A dynamic .om without --dymBatch is not modelled here.
#  main: a missing output_prefix is made with os.makedirs(output_prefix, 0o755), an existing one used as it is.
# With STANDIN_AIS_BENCH=newer it also checks the paths it is given, as the newer ais_bench does (Yanguan619/
#  aclruntime, the same tool later: ais-bench_workload/tool/ais_bench/ais_bench/infer/); Ascend/tools' version above
#  checks none of this. common/path_security_check.py FileStat.check_linux_permission: a path with a character
#  outside [_A-Za-z0-9/.-], a symbolic link ("is a soft link, not supported"), one the user neither owns nor shares
#  the group of, and for READ a group or other writable one ("permission should not be over 0o755"), for WRITE an
#  existing one that is group writable or other readable, writable or executable ("should not be over 0o750") are
#  refused, each with logger.error. utils.py get_args: --model (check_om_path_legality: READ, a .om), --input (each
#  comma-separated path, READ) and --output / --output_dirname (WRITE) are argparse types, so a refusal exits 2 with
#  "om path:... is illegal. Please check." on stderr; common/utils.py get_fileslist_from_dir checks every entry of an
#  input folder (READ: RuntimeError 'input data:... is illegal'); infer_process.py main checks an existing
#  output_prefix (interface_check.py check_output_dir_legality: READ) and makes a missing one with makedirs_safe
#  (0o750); set_session_options raises RuntimeError('dynamic batch om model detected, but dymbatch, dymdims or
#  dymshape not set!') for a dynamic .om run without --dymBatch (and without --batchsize, from which get_batchsize
#  would take it).
#  summary.py Summary.report: "<output_prefix>_summary.json" with NPU_compute_time / H2D_latency / D2H_latency
#      {min, max, mean, median, percentile(99%), count} and throughput = 1000 * batchsize / mean NPU time,
#      and the log line "throughput 1000*batchsize.mean(B)/NPU_compute_time.mean(T): X".
# Timings are fixed (2.0 ms mean NPU time) so tests can check how they are read.
AIS_BENCH = """
import argparse, json, logging, os, re, stat, sys, time
from pathlib import Path
import numpy as np
import onnxruntime as ort
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="[%(levelname)s] %(message)s")
logger = logging.getLogger(__name__)
with open(os.path.join(os.environ["STANDIN_LOG"], "ais_bench.jsonl"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
NEWER = os.environ.get("STANDIN_AIS_BENCH") == "newer"

def is_basically_legal(path, perm):
    path = os.path.abspath(path)
    if re.search(r"[^_A-Za-z0-9/.-]", path):
        logger.error("path contains illegal char, legal chars include A-Z a-z 0-9 _ - / .")
        return False
    if not os.path.exists(path):
        if perm != "write":
            logger.error("path: {} not exist, please check if file or dir is exist".format(path))
        return perm == "write"
    if os.path.islink(path):
        logger.error("path :{} is a soft link, not supported, please import file(or directory) directly".format(path))
        return False
    st = os.stat(path)
    if st.st_uid != os.geteuid() and st.st_gid not in os.getgroups():
        logger.error("current user isn't path:{}'s owner or ownergroup".format(path))
        return False
    mode = stat.S_IMODE(st.st_mode)
    if perm == "read" and mode & (stat.S_IWGRP | stat.S_IWOTH):
        logger.error("The file {} is group writable, or is others writable, as import file(or directory), "
                     "permission should not be over 0o755(rwxr-xr-x)".format(path))
        return False
    if perm == "write" and mode & (stat.S_IWGRP | stat.S_IWOTH | stat.S_IROTH | stat.S_IXOTH):
        logger.error("The file {} is group writable, or is others writable, as export file(or directory), "
                     "permission should not be over 0o750(rwxr-x---)".format(path))
        return False
    return True

def checked(what, perm, suffix=None):
    def check(value):
        if NEWER and (not all(is_basically_legal(v, perm) for v in value.split(","))
                      or suffix and not value.endswith(suffix)):
            raise argparse.ArgumentTypeError("{} path:{} is illegal. Please check.".format(what, value))
        return value
    return check

def check_device_range_valid(value):
    ivalue = int(value)
    if ivalue < 0 or ivalue > 255:
        raise argparse.ArgumentTypeError("device:{} is invalid. valid value range is [0, 255]".format(ivalue))
    return ivalue

# ais_bench/infer/args_adapter checks (Ascend/tools ais-bench_workload/tool/ais_bench/ais_bench/infer/__main__.py):
# --loop and --batchsize take check_positive_integer, --warmup_count check_nonnegative_integer.
def check_positive_integer(value):
    ivalue = int(value)
    if ivalue <= 0:
        raise argparse.ArgumentTypeError("%s is an invalid positive int value" % value)
    return ivalue

def check_nonnegative_integer(value):
    ivalue = int(value)
    if ivalue < 0:
        raise argparse.ArgumentTypeError("%s is an invalid nonnegative int value" % value)
    return ivalue

parser = argparse.ArgumentParser()
parser.add_argument("--model", "-m", type=checked("om", "read", ".om"), required=True)
parser.add_argument("--input", "-i", type=checked("input", "read"), default=None)
parser.add_argument("--output", "-o", type=checked("output", "write"), default=None)
parser.add_argument("--output_dirname", type=checked("output", "write"), default=None)
parser.add_argument("--outfmt", default="BIN", choices=["NPY", "BIN", "TXT"])
parser.add_argument("--loop", "-l", type=check_positive_integer, default=1)
parser.add_argument("--device", "-d", type=check_device_range_valid, default=0)
parser.add_argument("--dymBatch", type=int, default=0)
parser.add_argument("--batchsize", type=check_positive_integer, default=None)
parser.add_argument("--warmup_count", type=check_nonnegative_integer, default=1)
args = parser.parse_args()
if args.output is None and args.output_dirname is not None:
    logger.error("parameter --output_dirname cann't be used alone. Please use it together with the parameter "
                 "--output!\\n")
    raise RuntimeError("error bad parameters --output_dirname")
om = json.loads(Path(args.model).read_text())  # what the ATC stand-in writes
NARROW, OPERATORS = om.get("precision", (None, "all"))
CUBE = {"Conv", "ConvTranspose", "MatMul", "Gemm"}

def rounded(array):  # what a float16 / bfloat16 tensor holds, back in float32 (bfloat16: round to nearest even)
    if NARROW == "float16":
        return array.astype(np.float16).astype(np.float32)
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)

def narrowed(path):
    # the ONNX with the tensors the .om's precision stores narrower rounded: Cast to float16 / bfloat16 and back
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    model = onnx.load(path)
    graph, to = model.graph, getattr(TensorProto, NARROW.upper())
    weights = {w.name: w for w in graph.initializer if w.data_type == TensorProto.FLOAT}
    floats = set(weights) | {v.name for v in [*onnx.shape_inference.infer_shapes(model).graph.value_info,
                                              *graph.input, *graph.output]
                             if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    cast_once = set()
    def cast(name, nodes):  # a tensor that several matrix operators read is rounded once
        if name not in cast_once:
            cast_once.add(name)
            nodes += [helper.make_node("Cast", [name], [name + "/narrow"], to=to),
                      helper.make_node("Cast", [name + "/narrow"], [name + "/rounded"], to=TensorProto.FLOAT)]
        return name + "/rounded"
    nodes = []
    for node in graph.node:
        cube = node.op_type in CUBE
        if OPERATORS == "all":  # every float tensor is stored narrower: the weights, the input, each output
            for w in node.input:
                if w in weights:
                    weights[w].CopyFrom(numpy_helper.from_array(rounded(numpy_helper.to_array(weights[w])), w))
            outputs = [o for o in node.output if o in floats]
        elif cube:  # the matrix operators take narrower inputs and, for "cube", give a narrower output
            for i, name in enumerate(node.input):
                if name in floats:
                    node.input[i] = cast(name, nodes)
            outputs = [o for o in node.output if o in floats] if OPERATORS == "cube" else []
        else:
            outputs = []
        for i, name in enumerate(node.output):
            if name in outputs:
                node.output[i] = name + "/wide"
        nodes.append(node)
        for name in outputs:
            nodes += [helper.make_node("Cast", [name + "/wide"], [name + "/stored"], to=to),
                      helper.make_node("Cast", [name + "/stored"], [name], to=TensorProto.FLOAT)]
    del graph.node[:]
    graph.node.extend(nodes)
    return model.SerializeToString()

sess = ort.InferenceSession(narrowed(om["onnx"]) if NARROW else om["onnx"], providers=["CPUExecutionProvider"])
shape = sess.get_inputs()[0].shape

def acl_invalid_parameter(*errors):
    for error in errors:
        print("[ERROR] " + error)
    print("[WARN] Check failed:processModel->CheckDynamicBatchSize(batchsize, is_dymbatch), ret:1\\n")
    raise RuntimeError("[1][ACL: invalid parameter] ")

if args.dymBatch:
    if not om["gears"]:
        acl_invalid_parameter("the dynamic_batch_size parameter is not specified for model conversion")
    if args.dymBatch not in om["gears"]:
        listed = "".join("[{}]".format(g) for g in om["gears"])
        acl_invalid_parameter("the dymBatch parameter is not correct",
                              "model has dynamic batch size:{" + listed + "}, please set correct dynamic batch size")
    shape = [args.dymBatch, *shape[1:]]
elif om["gears"]:
    if NEWER and args.batchsize is None:
        raise RuntimeError("dynamic batch om model detected, but dymbatch, dymdims or dymshape not set!")
    sys.exit("ais_bench stand-in: a dynamic-batch .om run without --dymBatch is not modelled")
model_bytes = 4 * int(np.prod(shape))
# main: without --output_dirname the outputs go to a folder named by the time (time.strftime("%Y_%m_%d-%H_%M_%S"))
out = (os.path.join(args.output, args.output_dirname if args.output_dirname is not None
                    else time.strftime("%Y_%m_%d-%H_%M_%S")) if args.output else None)
if out is not None:
    if not os.path.exists(out):
        if NEWER:  # makedirs_safe: each missing folder 0o750
            current = ""
            for part in [p for p in os.path.abspath(out).split("/") if p]:
                current += "/" + part
                if not os.path.exists(current):
                    os.mkdir(current, 0o750)
        else:
            os.makedirs(out, 0o755)
    elif NEWER and not is_basically_legal(out, "read"):
        raise ValueError("The path:{} is illegal. Please check the error log for more detail.".format(out))
    logger.info("output path:{}".format(out))

def fileslist_from_dir(folder):
    for f in os.listdir(folder) if NEWER else []:
        if not is_basically_legal(os.path.join(folder, f), "read"):
            raise RuntimeError("input data:{} is illegal".format(os.path.join(folder, f)))
    files = [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith((".npy", ".NPY", ".bin", ".BIN"))]
    if not files:
        logger.error("{} of input args not find valid file,valid file format:[*.npy *.NPY *.bin *.BIN]".format(folder))
        raise RuntimeError()
    key = lambda p: [int(t) if t.isdigit() else t.lower() for t in re.split("([0-9]+)", p)]
    return sorted(sorted(files), key=key)

runs = args.loop
if args.input is not None:
    inputs = args.input.split(",")
    if os.path.isfile(inputs[0]):
        for i, p in enumerate(inputs):
            if not os.path.isfile(p):
                logger.error("Invalid input args.--input:{} input[{}]:{} {} not exist".format(inputs, i, p, p))
                raise RuntimeError()
        files = inputs
    elif os.path.isdir(inputs[0]) and len(inputs) == 1:
        files = fileslist_from_dir(inputs[0])
    else:
        logger.error("Invalid args. {}  of --input is invalid".format(inputs[0]))
        raise RuntimeError()
    filesize = os.path.getsize(files[0])
    if filesize == 0 or model_bytes % filesize:
        logger.error("arg0 tensorsize: {} filesize: {} not match".format(model_bytes, filesize))
        raise RuntimeError()
    per_batch = model_bytes // filesize
    logger.info("get filesperbatch files0 size:{} tensor0size:{} filesperbatch:{} runcount:{}".format(
        filesize, model_bytes, per_batch, -(-len(files) // per_batch)))
    runs = 0
    for start in range(0, len(files), per_batch):
        group = files[start:start + per_batch]
        data = [np.fromfile(p, dtype=np.float32) for p in group]
        data += [data[0]] * (per_batch - len(group))  # padding_infer_fake_file: the batch's first file
        batch = np.concatenate(data).reshape(shape)
        outputs = sess.run(None, {"input": rounded(batch) if NARROW and OPERATORS == "all" else batch})
        runs += 1
        for i, y in enumerate(outputs if out is not None else []):  # no --output: nothing saved
            for j, part in enumerate(np.array_split(y, per_batch, axis=0)[:len(group)]):
                # io_oprations.py save_tensors_to_file: "{}_{}.{}".format(stem, i, outfmt.lower()); utils.py
                # save_data_to_files: np.save for NPY, np.savetxt for TXT, tofile for BIN
                name = os.path.join(out, "{}_{}.{}".format(os.path.basename(group[j]).split(".")[0], i,
                                                          args.outfmt.lower()))
                if args.outfmt == "NPY":
                    np.save(name, part)
                elif args.outfmt == "TXT":
                    np.savetxt(name, part.reshape(-1))
                else:
                    part.tofile(name)
logger.info("warm up {} done".format(args.warmup_count))
batch = args.batchsize or shape[0]
times = {"min": 1.5, "max": 2.5, "mean": 2.0, "median": 1.9, "percentile(99%)": 2.4, "count": runs}
summary = {"filesinfo": {}, "NPU_compute_time": times, "H2D_latency": dict(times, mean=0.1),
           "D2H_latency": dict(times, mean=0.1), "throughput": 1000 * batch / 2.0, "pid": os.getpid()}
if out is not None:
    Path(out + "_summary.json").write_text(json.dumps(summary))
print("[INFO] NPU_compute_time (ms): min = 1.5, max = 2.5, mean = 2.0, median = 1.9, percentile(99%) = 2.4")
print("[INFO] throughput 1000*batchsize.mean({})/NPU_compute_time.mean(2.0): {}".format(batch, 1000 * batch / 2.0))
"""


def write_om(path: Path, onnx: str | Path, gears: list[int] | None = None,
             precision: tuple[str | None, str] = ATC_PRECISION_MODE["force_fp16"]) -> Path:
    """A .om as the ATC stand-in writes it: the ONNX it stands for, its batch gears (None: a static batch) and the
    precision ais_bench emulates (ATC's default unless given)."""
    path.write_text(json.dumps({"onnx": str(onnx), "gears": gears, "precision": precision}))
    return path


def install_tool(bin_dir: Path, name: str, body: str) -> Path:
    """Write ``body`` as an executable script run by this interpreter."""
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def put_tools_on_path(tmp_path: Path, monkeypatch, **tools: str) -> Path:
    """Install ``tools`` (name -> body) in ``tmp_path/bin``, put that folder on PATH before /usr/bin and /bin,
    and point the stand-ins' STANDIN_LOG at ``tmp_path/log``, which is returned."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    for name, body in tools.items():
        install_tool(bin_dir, name, body)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("STANDIN_LOG", str(log))
    return log


# torch_aie. Sources: Ascend/ModelZoo-PyTorch, AscendIE/TorchAIE/built-in/cv/segmentation/SOLOV2
#  solov2_export_torch_aie_ts.py export_torch_aie: torch_aie.set_device(0); torch_aie.compile(trace_model,
#      inputs=[torch_aie.Input((batch_size, 3, 800, 1216))], allow_tensor_replace_int=True, torch_executed_ops=[],
#      precision_policy=torch_aie.PrecisionPolicy.FP32, soc_version=soc_version); the result has .save(path);
#  solov2_inference.py: torch_aie.set_device(id); torch.jit.load(compiled); tensor.to(f"npu:{id}");
#      stream = torch_aie.npu.Stream(f"npu:{id}"); with torch_aie.npu.stream(stream): module(x); stream.synchronize();
#      outputs .to("cpu"). torch_aie.Input also takes min_shape / max_shape / dtype (other ModelZoo examples).
# torch_aie.compile's signature: MindIE Torch (torch_aie's successor) documents it as "def compile(module: Any,
#  inputs, precision_policy = _enums.PrecisionPolicy.PREF_FP32, truncate_long_and_double = True,
#  require_full_compilation = False, allow_tensor_replace_int = False, min_block_size = 3, torch_executed_ops = [],
#  soc_version = "Ascend310P3", optimization_level = 0)", inputs required ("是否必选: 是"), the precision policies
#  PREF_FP32, FP16 and FP32 (hiascend.com, document/detail/zh/mindie/1.0.RC1/mindietorch/Torchdev/
#  mindie_torch0144.html; the same policy and soc_version defaults in 10RC2 mindie_torch0149, behind
#  "compile(module, ir='default', inputs=None, **kwargs)"). The Ascend ModelZoo torch_aie examples pass exactly those
#  keywords (AscendIE/TorchAIE/built-in/cv/detection/Yolov3/export_torch_aie_ts.py at 55878830) or leave soc_version
#  to its default (.../Yolov5/export_torch_aie.py at 531d4924). A function with that fixed signature raises
#  TypeError for a keyword it does not have ("compile() got an unexpected keyword argument ..."). The page says only
#  that invalid arguments may raise: the stand-in's TypeError / ValueError for a wrong module, inputs or policy type
#  are its own choice. The enum values are MindIE Torch's (PREF_FP32 = 0, FP16 = 1, FP32 = 2: mindie/20RC1
#  mindie_torch0023). The ``ir`` parameter of later releases is not modelled. The log records which keywords a
#  call named (``keywords``).
# The "npu" device: MindIE Torch (torch_aie's successor) documents the device it registers in torch as one that
#  "仅支持Host和Device之间的数据拷贝功能，不支持其他操作" (supports only copies between host and device, nothing else: a
#  tensor on it must be copied to the CPU before any computation or printing), and its compiled modules as taking
#  "npu" tensors only and returning "npu" tensors (hiascend.com, MindIE Torch development guide, "数据拷贝",
#  doc_center/source/zh/mindie/100/mindietorch/Torchdev/mindie_torch0016.html, and "模型推理", mindie_torch0017.html).
# Precision: MindIE Torch's PrecisionPolicy FP16 runs the compiled graph in float16 (mindie_torch0144 above). The
#  stand-in emulates it by rounding what float16 stores: the module's weights and buffers when it compiles, and each
#  float input and output when it runs (its operators still compute and keep their results in float32 in between:
#  less error than the chip's). PREF_FP32 and FP32 run as traced, in float32; the policy travels in the saved file.
# The stand-in validates those argument types, checks the compiled input shape by running it once and logs every
# call to $STANDIN_LOG/torch_aie.jsonl. Its "npu:N" tensors keep their data on the CPU, but anything other than
# reading their shape or dtype and copying them back (.to("cpu"), .cpu()) raises; a compiled module (what compile
# returns, and torch.jit.load gives back for its saved file) takes and returns such tensors only.
FAKE_TORCH_AIE = '''
import contextlib, enum, functools, json, os
import torch

class PrecisionPolicy(enum.Enum):
    PREF_FP32 = 0
    FP16 = 1
    FP32 = 2

class Input:
    def __init__(self, shape=None, min_shape=None, max_shape=None, dtype=torch.float32):
        if shape is None and (min_shape is None or max_shape is None):
            raise ValueError("Input needs shape or min_shape and max_shape")
        self.shape, self.min_shape, self.max_shape, self.dtype = shape, min_shape, max_shape, dtype

def _log(**event):
    with open(os.path.join(os.environ["STANDIN_LOG"], "torch_aie.jsonl"), "a") as f:
        f.write(json.dumps(event) + "\\n")

def set_device(device_id):
    if not isinstance(device_id, int) or device_id < 0:
        raise TypeError("set_device takes a device index, got {!r}".format(device_id))
    _log(call="set_device", device_id=device_id)

_keywords = []

def _named_keywords(function):  # records the keywords of a call, then calls the function with its fixed signature
    @functools.wraps(function)
    def call(*args, **kwargs):
        _keywords[:] = sorted(kwargs)
        return function(*args, **kwargs)
    return call

@_named_keywords
def compile(module, inputs, precision_policy=PrecisionPolicy.PREF_FP32, truncate_long_and_double=True,
            require_full_compilation=False, allow_tensor_replace_int=False, min_block_size=3, torch_executed_ops=[],
            soc_version="Ascend310P3", optimization_level=0):
    if not isinstance(module, torch.jit.ScriptModule):
        raise TypeError("torch_aie.compile takes a TorchScript module")
    if not inputs or not all(isinstance(i, Input) for i in inputs):
        raise TypeError("inputs must be a list of torch_aie.Input")
    if not isinstance(precision_policy, PrecisionPolicy):
        raise ValueError("precision_policy must be a torch_aie.PrecisionPolicy")
    with torch.no_grad():
        module(*[torch.zeros(tuple(i.shape)) for i in inputs])
        if precision_policy is PrecisionPolicy.FP16:
            for tensor in [*module.parameters(), *module.buffers()]:
                if tensor.is_floating_point():
                    tensor.copy_(tensor.half().float())
    _log(call="compile", shapes=[list(i.shape) for i in inputs], precision_policy=precision_policy.name,
         soc_version=soc_version, allow_tensor_replace_int=allow_tensor_replace_int, keywords=list(_keywords))
    return _Compiled(module, precision_policy.name)

class _Stream:
    def __init__(self, device):
        if not str(device).startswith("npu:"):
            raise ValueError("Stream takes 'npu:<id>'")
        _log(call="Stream", device=device)
    def synchronize(self):
        pass

class npu:
    Stream = _Stream
    @staticmethod
    @contextlib.contextmanager
    def stream(stream):
        yield stream

def _refuse(what):
    raise RuntimeError("{} on an 'npu' tensor: the 'npu' device supports only copies between host and device; "
                       "copy it to the CPU first (.to('cpu'))".format(what))

class NpuTensor(torch.Tensor):
    """A tensor on the stand-in's "npu:N" device (its data stays on the CPU)."""
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in _METADATA:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **(kwargs or {}))
        if func is torch.Tensor.cpu:
            return _host(args[0])
        _refuse(getattr(func, "__name__", str(func)))

_METADATA = {torch.Tensor.shape.__get__, torch.Tensor.dtype.__get__, torch.Tensor.ndim.__get__, torch.Tensor.dim,
             torch.Tensor.size}

def _host(tensor):
    with torch._C.DisableTorchFunctionSubclass():
        return tensor.as_subclass(torch.Tensor).clone()

def _on_npu(outputs):
    if isinstance(outputs, torch.Tensor):
        return outputs.as_subclass(NpuTensor)
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(_on_npu(o) for o in outputs)
    if isinstance(outputs, dict):
        return {k: _on_npu(v) for k, v in outputs.items()}
    return outputs

_to = torch.Tensor.to
def _npu_to(self, *args, **kwargs):
    target = args[0] if args else kwargs.get("device")
    if isinstance(self, NpuTensor):
        if str(target).split(":")[0] != "cpu":
            _refuse("to({!r})".format(target))
        return _host(self)
    if isinstance(target, str) and target.startswith("npu"):
        return _to(self, "cpu", *args[1:], **kwargs).clone().as_subclass(NpuTensor)
    return _to(self, *args, **kwargs)
torch.Tensor.to = _npu_to

def _float16(outputs):  # float outputs as float16 stores them
    if isinstance(outputs, torch.Tensor):
        return outputs.half().float() if outputs.dtype == torch.float32 else outputs
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(_float16(o) for o in outputs)
    if isinstance(outputs, dict):
        return {k: _float16(v) for k, v in outputs.items()}
    return outputs

class _Compiled:
    """A compiled module: "npu" tensors in, "npu" tensors out."""
    def __init__(self, module, policy):
        self.module, self.policy = module, policy
    def eval(self):
        self.module.eval()
        return self
    def save(self, path):
        self.module.save(path, _extra_files={"torch_aie": self.policy})
    def __call__(self, *inputs):
        if not all(isinstance(x, NpuTensor) for x in inputs):
            raise RuntimeError("a compiled module takes 'npu' tensors: copy its inputs with .to('npu:<id>')")
        narrow = _float16 if self.policy == "FP16" else (lambda x: x)
        return _on_npu(narrow(self.module(*narrow([_host(x) for x in inputs]))))
    forward = __call__

_load = torch.jit.load
def _jit_load(*args, **kwargs):
    extra = kwargs.setdefault("_extra_files", {})
    extra.setdefault("torch_aie", "")
    module = _load(*args, **kwargs)
    policy = extra["torch_aie"].decode() if isinstance(extra["torch_aie"], bytes) else extra["torch_aie"]
    return _Compiled(module, policy) if policy else module
torch.jit.load = _jit_load
'''


def python_with_fake_torch_aie(root: Path) -> Path:
    """A second interpreter (a venv without pip) that sees torch and numpy and the torch_aie stand-in,
    but not this project: ``root/venv/bin/python``."""
    import site
    import venv

    fake = root / "fake"
    (fake / "torch_aie").mkdir(parents=True)
    (fake / "torch_aie" / "__init__.py").write_text(FAKE_TORCH_AIE)
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    packages = next((root / "venv" / "lib").glob("python3*/site-packages"))
    (packages / "deps.pth").write_text("\n".join([*site.getsitepackages(), str(fake)]) + "\n")
    return python
