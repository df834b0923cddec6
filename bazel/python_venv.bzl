"""Repository rule that points Bazel's Python toolchain at the project virtualenv.

The virtualenv lives at `<workspace>/.venv` (created by `scripts/setup.sh`).
`py_runtime.interpreter_path` must be absolute, so it is computed here, at
repository-fetch time, from the workspace root. Nothing is downloaded.
"""

def _venv_python_impl(rctx):
    workspace_root = rctx.path(Label("@//:WORKSPACE")).dirname
    interpreter = "%s/.venv/bin/python3" % workspace_root
    if not rctx.path(interpreter).exists:
        fail("ntk_tf: no virtualenv interpreter at %s. Run scripts/setup.sh first." % interpreter)
    rctx.file("WORKSPACE", 'workspace(name = "%s")\n' % rctx.name)
    rctx.file("BUILD", """
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

py_runtime(
    name = "venv_py3",
    interpreter_path = "{interpreter}",
    python_version = "PY3",
    visibility = ["//visibility:public"],
)

py_runtime_pair(
    name = "venv_runtime_pair",
    py3_runtime = ":venv_py3",
)

toolchain(
    name = "venv_toolchain",
    toolchain = ":venv_runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
""".format(interpreter = interpreter))

venv_python = repository_rule(
    implementation = _venv_python_impl,
    local = True,
    environ = ["NTK_TF_VENV_STAMP"],
)
