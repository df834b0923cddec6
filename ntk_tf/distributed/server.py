"""One task of a TensorFlow cluster: a `tf.distribute.Server` that serves until killed.

    python ntk_tf/distributed/server.py --cluster_spec='{"worker": [...], "ps": [...]}' \
        --job=worker --index=0 [--intra_op_threads=1] [--loopback_only]

`local_cluster.LocalCluster` starts one per worker and parameter server, by
path, so a server imports TensorFlow only (not ntk_tf and Keras: it runs the
coordinator's functions, it does not build them). A TF_CONFIG cluster runs
the gram binary on every task instead: `cluster.serve_if_server` calls `serve`.

Servers keep TF's default inter-op pool: with one inter-op thread, remote
function calls deadlock.

TensorFlow's gRPC server listens on every interface ("0.0.0.0:port", fixed in
its grpc_server_lib.cc) whatever host the cluster spec names, and it has no
authentication. `listen_on_loopback_only` moves this process's TF servers to
127.0.0.1: it points the `bind` imports of TF's shared libraries (their GOT
slots; Linux, 64-bit ELF) at a function that binds wildcard addresses to
loopback instead (and refuses the IPv6 wildcard, so gRPC falls back to IPv4).
`LocalCluster` does this in the coordinator and in every server it starts.
"""

import argparse
import ctypes
import json
import os
import socket
import struct
import sys
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

_PT_DYNAMIC = 2  # ELF program header and dynamic-section tags (elf.h).
_DT_PLTRELSZ, _DT_STRTAB, _DT_SYMTAB, _DT_RELA, _DT_RELASZ, _DT_STRSZ, _DT_JMPREL = (
    2, 5, 6, 7, 8, 10, 23)
_RELA = np.dtype([("offset", "u8"), ("info", "u8"), ("addend", "i8")])  # Elf64_Rela
_SYM = np.dtype([("name", "u4"), ("info", "u1"), ("other", "u1"), ("shndx", "u2"),
                 ("value", "u8"), ("size", "u8")])  # Elf64_Sym
_EADDRNOTAVAIL = 99
_BIND = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32)


class _PhdrInfo(ctypes.Structure):
  """The head of `struct dl_phdr_info` (link.h), 64-bit."""
  _fields_ = [("addr", ctypes.c_uint64), ("name", ctypes.c_char_p),
              ("phdr", ctypes.c_void_p), ("phnum", ctypes.c_uint16)]


_libc = None  # glibc, loaded by `listen_on_loopback_only`.
_loopback_bind_hook = None  # The installed `_BIND` callback (kept alive while installed).


def _loopback_bind(fd: int, address: int, length: int) -> int:
  """bind(2) with 0.0.0.0 replaced by 127.0.0.1; the IPv6 wildcard [::] fails (EADDRNOTAVAIL)."""
  raw = bytearray(ctypes.string_at(address, length))  # struct sockaddr_in / sockaddr_in6
  family = struct.unpack_from("H", raw)[0] if length >= 2 else None
  if family == socket.AF_INET6 and length >= 24 and raw[8:24] == bytes(16):
    _libc.__errno_location()[0] = _EADDRNOTAVAIL
    return -1
  if family == socket.AF_INET and length >= 8 and raw[4:8] == bytes(4):
    raw[4:8] = socket.inet_aton("127.0.0.1")
  result = _libc.bind(fd, (ctypes.c_char * length).from_buffer(raw), length)
  if result != 0:
    _libc.__errno_location()[0] = ctypes.get_errno()
  return result


def _loaded_objects() -> List[tuple]:
  """(load address, path, program headers address, count) of every loaded ELF object."""
  objects = []
  visit_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(_PhdrInfo), ctypes.c_size_t,
                                ctypes.c_void_p)

  def visit(info, unused_size, unused_data):
    objects.append((info.contents.addr, os.fsdecode(info.contents.name or b""),
                    info.contents.phdr, info.contents.phnum))
    return 0

  _libc.dl_iterate_phdr(visit_type(visit), None)
  return objects


def _bind_slots(base: int, phdr: int, phnum: int) -> List[int]:
  """Addresses of the GOT slots through which the object loaded at `base` calls `bind`."""
  headers = [struct.unpack("IIQQQQQQ", ctypes.string_at(phdr + 56 * i, 56))  # Elf64_Phdr
             for i in range(phnum)]
  dynamic = [vaddr for p_type, _, _, vaddr, *_ in headers if p_type == _PT_DYNAMIC]
  if not dynamic:
    return []
  tags, entry = {}, base + dynamic[0]
  while True:
    tag, value = struct.unpack("qQ", ctypes.string_at(entry, 16))  # Elf64_Dyn
    if tag == 0:  # DT_NULL
      break
    tags[tag], entry = value, entry + 16

  def pointer(tag: int) -> int:  # ld.so relocates the dynamic section's pointers in place
    return tags[tag] if tags[tag] >= base else base + tags[tag]  # on most platforms.

  strings = ctypes.string_at(pointer(_DT_STRTAB), tags[_DT_STRSZ])
  name_offsets = []  # Where "bind" starts in the string table (suffixes may be shared).
  at = strings.find(b"bind\0")
  while at >= 0:
    name_offsets.append(at)
    at = strings.find(b"bind\0", at + 1)
  slots = []
  for table, size in ((_DT_JMPREL, _DT_PLTRELSZ), (_DT_RELA, _DT_RELASZ)):
    if table not in tags or not name_offsets:
      continue
    relocations = np.frombuffer(ctypes.string_at(pointer(table), tags[size]), _RELA)
    symbols = relocations["info"] >> np.uint64(32)  # 0: no symbol
    symbol_table = np.frombuffer(
        ctypes.string_at(pointer(_DT_SYMTAB), _SYM.itemsize * (int(symbols.max()) + 1)), _SYM)
    is_bind = np.isin(symbol_table["name"][symbols], name_offsets) & (symbols > 0)
    slots += [base + int(offset) for offset in relocations["offset"][is_bind]]
  return slots


def _protection(address: int) -> int:
  """The PROT_* bits of the mapping holding `address` (/proc/self/maps)."""
  with open("/proc/self/maps") as f:
    for line in f:
      span, perms = line.split()[:2]
      start, end = (int(a, 16) for a in span.split("-"))
      if start <= address < end:
        return sum(bit for flag, bit in zip(perms[:3], (1, 2, 4)) if flag != "-")
  raise RuntimeError(f"No mapping holds address {address:#x}.")


def listen_on_loopback_only() -> None:
  """Makes every TF server started in this process from now on listen on 127.0.0.1 only.

  Idempotent. See the module docstring.

  Raises:
    RuntimeError: not Linux with 64-bit ELF libraries, or no `bind` import found
      in TensorFlow's loaded libraries.
  """
  global _libc, _loopback_bind_hook
  if _loopback_bind_hook is not None:
    return
  if not sys.platform.startswith("linux") or struct.calcsize("P") != 8:
    raise RuntimeError("Only Linux (64-bit) can bind TensorFlow's servers to loopback. "
                       f"Received: platform {sys.platform!r}")
  _libc = ctypes.CDLL(None, use_errno=True)
  _libc.__errno_location.restype = ctypes.POINTER(ctypes.c_int)
  _libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
  hook = _BIND(_loopback_bind)
  page = os.sysconf("SC_PAGE_SIZE")
  slots = [slot for base, path, phdr, phnum in _loaded_objects()
           if "tensorflow" in os.path.basename(path) for slot in _bind_slots(base, phdr, phnum)]
  if not slots:
    raise RuntimeError("Found no bind() import in TensorFlow's loaded libraries; cannot bind "
                       "its servers to loopback.")
  for slot in slots:
    start, protection = slot & ~(page - 1), _protection(slot)
    if _libc.mprotect(start, page, protection | 2) != 0:  # PROT_WRITE, for full RELRO
      raise OSError(ctypes.get_errno(), f"mprotect of the GOT slot at {slot:#x}")
    ctypes.c_void_p.from_address(slot).value = ctypes.cast(hook, ctypes.c_void_p).value
    _libc.mprotect(start, page, protection)
  _loopback_bind_hook = hook


def serve(spec: Dict[str, List[str]], job: str, index: int,
          intra_op_threads: Optional[int] = None) -> None:
  """Runs task `job`:`index` of the cluster `spec` as a gRPC server; returns never."""
  config = tf.compat.v1.ConfigProto()
  if intra_op_threads:
    config.intra_op_parallelism_threads = int(intra_op_threads)
  if len(os.sched_getaffinity(0)) < 2:
    # TF sizes its default inter-op pool by the cores this process may run on:
    # pinned to one core (`--cpu`, a one-core cpuset) that is one thread, and a
    # closure that loops over nested functions (sharded_passes) deadlocks.
    config.inter_op_parallelism_threads = 2
  server = tf.distribute.Server(tf.train.ClusterSpec(spec), job_name=job, task_index=index,
                                protocol="grpc", config=config, start=True)
  server.join()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cluster_spec", required=True, help="The cluster's spec as JSON.")
  parser.add_argument("--job", required=True, choices=["worker", "ps"])
  parser.add_argument("--index", type=int, default=0, help="This task's index in its job.")
  parser.add_argument("--intra_op_threads", type=int, default=0,
                      help="TF intra-op threads (0: TF's default).")
  parser.add_argument("--cpu", type=int, default=-1,
                      help="Pin the server to this CPU core (-1: no pinning).")
  parser.add_argument("--loopback_only", action="store_true",
                      help="Listen on 127.0.0.1 only (listen_on_loopback_only).")
  args = parser.parse_args()
  if args.loopback_only:
    listen_on_loopback_only()
  if args.cpu >= 0:
    # One core, whatever TF's inter-op pool and oneDNN do with their own threads.
    os.sched_setaffinity(0, {args.cpu})
  serve(json.loads(args.cluster_spec), args.job, args.index, args.intra_op_threads or None)


if __name__ == "__main__":
  main()
