"""Runs a SavedModel through TensorFlow's C API (``TF_LoadSessionFromSavedModel``), in a process
that never imports TensorFlow's Python package: the loader of TF Serving and of the C, C++,
Java and Go bindings, reached with ctypes on the shared library the tensorflow wheel ships.

Usage: ``python c_api_child.py TF_LIB_DIR VERSION_DIR INPUT_OP OUTPUT_OP OUTPUT_INDEX ID [ID ...]``
feeds ``[[ID, ...]]`` (a string tensor of shape [1, n]) to ``INPUT_OP:0`` alone and prints the
float output as JSON.
"""

import ctypes
import json
import os
import sys

TF_FLOAT, TF_STRING = 1, 7
TSTRING_BYTES = 24  # sizeof(TF_TString)


class Output(ctypes.Structure):
    _fields_ = [("oper", ctypes.c_void_p), ("index", ctypes.c_int)]


def main():
    lib_dir, version_dir, input_op, output_op, output_index, *ids = sys.argv[1:]
    ctypes.CDLL(os.path.join(lib_dir, "libtensorflow_framework.so.2"), mode=ctypes.RTLD_GLOBAL)
    tf = ctypes.CDLL(os.path.join(lib_dir, "libtensorflow_cc.so.2"), mode=ctypes.RTLD_GLOBAL)
    for name, restype in [("TF_NewStatus", ctypes.c_void_p), ("TF_NewGraph", ctypes.c_void_p),
                          ("TF_NewSessionOptions", ctypes.c_void_p), ("TF_LoadSessionFromSavedModel", ctypes.c_void_p),
                          ("TF_GraphOperationByName", ctypes.c_void_p), ("TF_AllocateTensor", ctypes.c_void_p),
                          ("TF_TensorData", ctypes.c_void_p), ("TF_Message", ctypes.c_char_p),
                          ("TF_GetCode", ctypes.c_int), ("TF_Dim", ctypes.c_int64), ("TF_TensorType", ctypes.c_int)]:
        getattr(tf, name).restype = restype
    status, graph, options = tf.TF_NewStatus(), tf.TF_NewGraph(), tf.TF_NewSessionOptions()

    def check(step):
        if tf.TF_GetCode(ctypes.c_void_p(status)) != 0:
            sys.exit(f"{step}: {tf.TF_Message(ctypes.c_void_p(status)).decode()}")

    tags = (ctypes.c_char_p * 1)(b"serve")
    session = tf.TF_LoadSessionFromSavedModel(ctypes.c_void_p(options), None, version_dir.encode(), tags, 1,
                                              ctypes.c_void_p(graph), None, ctypes.c_void_p(status))
    check("TF_LoadSessionFromSavedModel")

    dims = (ctypes.c_int64 * 2)(1, len(ids))
    tensor = tf.TF_AllocateTensor(TF_STRING, dims, 2, ctypes.c_size_t(TSTRING_BYTES * len(ids)))
    data = tf.TF_TensorData(ctypes.c_void_p(tensor))
    for i, item in enumerate(ids):
        slot = ctypes.c_void_p(data + i * TSTRING_BYTES)
        tf.TF_StringInit(slot)
        raw = item.encode()
        tf.TF_StringCopy(slot, raw, ctypes.c_size_t(len(raw)))

    def operation(name):
        op = tf.TF_GraphOperationByName(ctypes.c_void_p(graph), name.encode())
        if not op:
            sys.exit(f"no operation {name} in the graph")
        return op

    inputs = (Output * 1)(Output(operation(input_op), 0))
    outputs = (Output * 1)(Output(operation(output_op), int(output_index)))
    values = (ctypes.c_void_p * 1)(tensor)
    results = (ctypes.c_void_p * 1)()
    tf.TF_SessionRun(ctypes.c_void_p(session), None, inputs, values, 1, outputs, results, 1, None, 0, None,
                     ctypes.c_void_p(status))
    check("TF_SessionRun")
    result = ctypes.c_void_p(results[0])
    if tf.TF_TensorType(result) != TF_FLOAT:
        sys.exit("the output is not float32")
    rows, width = tf.TF_Dim(result, 0), tf.TF_Dim(result, 1)
    floats = ctypes.cast(tf.TF_TensorData(result), ctypes.POINTER(ctypes.c_float))
    print(json.dumps({"output": [[floats[r * width + c] for c in range(width)] for r in range(rows)],
                      "python_tensorflow_imported": "tensorflow" in sys.modules}))


if __name__ == "__main__":
    main()
