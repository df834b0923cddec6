"""Offline stand-in: forwards to Bazel's native rules."""

def proto_library(**attrs):
    native.proto_library(**attrs)

def proto_lang_toolchain(**attrs):
    native.proto_lang_toolchain(**attrs)

ProtoInfo = ProtoInfo
