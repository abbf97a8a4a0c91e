"""The C ABI of include/etha_tensor_bus.h for ctypes: its ETB_* macros, its types and every
function's restype and argtypes, in the header's order. Handles (EtbBootstrapInfo, EtbClient,
EtbCompletion, EtbPayload) are c_void_p.

Generated from the header by scripts/python_abi.py -- do not edit by hand. Regenerate with
`.venv/bin/python scripts/python_abi.py`; tests/python/test_abi.py fails when this file is stale.
"""
from ctypes import (CFUNCTYPE, POINTER, Structure, c_bool, c_char_p, c_double, c_int32, c_int64,
    c_size_t, c_uint32, c_uint64, c_void_p)

# The macros.
ETB_VERSION_MAJOR = 0
ETB_VERSION_MINOR = 1
ETB_VERSION_PATCH = 0
ETB_LOG_ERROR = 1
ETB_LOG_WARN = 2
ETB_LOG_INFO = 3
ETB_LOG_DEBUG = 4
ETB_LOG_TRACE = 5
ETB_PLACEMENT_SHARD = 0
ETB_PLACEMENT_REPLICATE = 1
ETB_PLACEMENT_PARTIAL = 2
ETB_CUDA_AUTO = 0
ETB_CUDA_REQUIRE = 1
ETB_CUDA_SKIP = 2
ETB_PTRACE_AGENT = 0
ETB_PTRACE_ANY = 1
ETB_PTRACE_NONE = 2
ETB_TRANSFER_SEND = 0
ETB_TRANSFER_RECV = 1
ETB_DTYPE_FLOAT32 = 0
ETB_DTYPE_FLOAT64 = 1
ETB_DTYPE_FLOAT16 = 2
ETB_DTYPE_BFLOAT16 = 3
ETB_DTYPE_UINT8 = 4
ETB_DTYPE_INT8 = 5
ETB_DTYPE_INT16 = 6
ETB_DTYPE_INT32 = 7
ETB_DTYPE_INT64 = 8
ETB_DTYPE_BOOL = 9
ETB_DTYPE_FLOAT8_E4M3FN = 10
ETB_DTYPE_FLOAT8_E5M2 = 11
ETB_OK = 0
ETB_ERR_NULL_ARGUMENT = 1
ETB_ERR_INVALID_ARGUMENT = 2
ETB_ERR_ENV = 3
ETB_ERR_NAMING = 4
ETB_ERR_AGENT_NOT_FOUND = 5
ETB_ERR_AGENT_NOT_RESPONDING = 6
ETB_ERR_LMDB = 7
ETB_ERR_IPC = 8
ETB_ERR_TIMEOUT = 9
ETB_ERR_PTRACE = 10
ETB_ERR_PANIC = 11
ETB_ERR_QUEUE_FULL = 12
ETB_ERR_AGENT_DIED = 13
ETB_ERR_PAIR_NOT_MATCHED = 14
ETB_ERR_FORKED = 15
ETB_ERR_CUDA = 16
ETB_ERR_PERMISSION = 17
ETB_ERR_AGENT_BUSY = 18
ETB_ERR_CLOSED = 19

DEFINES = {
    "ETB_VERSION_MAJOR": ETB_VERSION_MAJOR,
    "ETB_VERSION_MINOR": ETB_VERSION_MINOR,
    "ETB_VERSION_PATCH": ETB_VERSION_PATCH,
    "ETB_LOG_ERROR": ETB_LOG_ERROR,
    "ETB_LOG_WARN": ETB_LOG_WARN,
    "ETB_LOG_INFO": ETB_LOG_INFO,
    "ETB_LOG_DEBUG": ETB_LOG_DEBUG,
    "ETB_LOG_TRACE": ETB_LOG_TRACE,
    "ETB_PLACEMENT_SHARD": ETB_PLACEMENT_SHARD,
    "ETB_PLACEMENT_REPLICATE": ETB_PLACEMENT_REPLICATE,
    "ETB_PLACEMENT_PARTIAL": ETB_PLACEMENT_PARTIAL,
    "ETB_CUDA_AUTO": ETB_CUDA_AUTO,
    "ETB_CUDA_REQUIRE": ETB_CUDA_REQUIRE,
    "ETB_CUDA_SKIP": ETB_CUDA_SKIP,
    "ETB_PTRACE_AGENT": ETB_PTRACE_AGENT,
    "ETB_PTRACE_ANY": ETB_PTRACE_ANY,
    "ETB_PTRACE_NONE": ETB_PTRACE_NONE,
    "ETB_TRANSFER_SEND": ETB_TRANSFER_SEND,
    "ETB_TRANSFER_RECV": ETB_TRANSFER_RECV,
    "ETB_DTYPE_FLOAT32": ETB_DTYPE_FLOAT32,
    "ETB_DTYPE_FLOAT64": ETB_DTYPE_FLOAT64,
    "ETB_DTYPE_FLOAT16": ETB_DTYPE_FLOAT16,
    "ETB_DTYPE_BFLOAT16": ETB_DTYPE_BFLOAT16,
    "ETB_DTYPE_UINT8": ETB_DTYPE_UINT8,
    "ETB_DTYPE_INT8": ETB_DTYPE_INT8,
    "ETB_DTYPE_INT16": ETB_DTYPE_INT16,
    "ETB_DTYPE_INT32": ETB_DTYPE_INT32,
    "ETB_DTYPE_INT64": ETB_DTYPE_INT64,
    "ETB_DTYPE_BOOL": ETB_DTYPE_BOOL,
    "ETB_DTYPE_FLOAT8_E4M3FN": ETB_DTYPE_FLOAT8_E4M3FN,
    "ETB_DTYPE_FLOAT8_E5M2": ETB_DTYPE_FLOAT8_E5M2,
    "ETB_OK": ETB_OK,
    "ETB_ERR_NULL_ARGUMENT": ETB_ERR_NULL_ARGUMENT,
    "ETB_ERR_INVALID_ARGUMENT": ETB_ERR_INVALID_ARGUMENT,
    "ETB_ERR_ENV": ETB_ERR_ENV,
    "ETB_ERR_NAMING": ETB_ERR_NAMING,
    "ETB_ERR_AGENT_NOT_FOUND": ETB_ERR_AGENT_NOT_FOUND,
    "ETB_ERR_AGENT_NOT_RESPONDING": ETB_ERR_AGENT_NOT_RESPONDING,
    "ETB_ERR_LMDB": ETB_ERR_LMDB,
    "ETB_ERR_IPC": ETB_ERR_IPC,
    "ETB_ERR_TIMEOUT": ETB_ERR_TIMEOUT,
    "ETB_ERR_PTRACE": ETB_ERR_PTRACE,
    "ETB_ERR_PANIC": ETB_ERR_PANIC,
    "ETB_ERR_QUEUE_FULL": ETB_ERR_QUEUE_FULL,
    "ETB_ERR_AGENT_DIED": ETB_ERR_AGENT_DIED,
    "ETB_ERR_PAIR_NOT_MATCHED": ETB_ERR_PAIR_NOT_MATCHED,
    "ETB_ERR_FORKED": ETB_ERR_FORKED,
    "ETB_ERR_CUDA": ETB_ERR_CUDA,
    "ETB_ERR_PERMISSION": ETB_ERR_PERMISSION,
    "ETB_ERR_AGENT_BUSY": ETB_ERR_AGENT_BUSY,
    "ETB_ERR_CLOSED": ETB_ERR_CLOSED,
}

# The types.
EtbPathNamingFn = CFUNCTYPE(c_int32, c_int64, c_void_p, c_size_t, c_void_p, c_size_t, c_void_p)
EtbCudaMode = c_int32
EtbPtraceMode = c_int32


class EtbBootstrapOptions(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("path_naming_fn", EtbPathNamingFn),
        ("user_data", c_void_p),
        ("connection_timeout_s", c_double),
        ("cuda_mode", EtbCudaMode),
        ("reserved0", c_uint32),
        ("ptrace_mode", EtbPtraceMode),
        ("allow_shared_group", c_uint32),
        ("allow_shared_agent", c_uint32),
        ("reserved1", c_uint32),
        ("device_index", c_int32),
    ]


EtbStatus = c_int32


class EtbTensorPayload(Structure):
    _fields_ = [
        ("pair_name", c_char_p),
        ("data", c_void_p),
        ("len", c_size_t),
    ]


EtbTransferKind = c_int32
EtbLogFn = CFUNCTYPE(None, c_int32, c_char_p, c_char_p, c_void_p)
EtbDtype = c_int32


class EtbCudaTensor(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("dtype", EtbDtype),
        ("data", c_uint64),
        ("ndim", c_uint32),
        ("wait_on_stream", c_int32),
        ("shape", POINTER(c_int64)),
        ("strides", POINTER(c_int64)),
        ("stream", c_void_p),
    ]


class EtbPlacement(Structure):
    _fields_ = [
        ("kind", c_int32),
        ("dim", c_int32),
        ("reduce_op", c_char_p),
    ]


# Every function: name -> (restype, argtypes).
FUNCTIONS = {
    # etb_bootstrap_options_init(options)
    "etb_bootstrap_options_init": (None, [POINTER(EtbBootstrapOptions)]),
    # etb_bootstrap_client(path_naming_fn, user_data, connection_timeout_s, client_out, info_out)
    "etb_bootstrap_client": (EtbStatus, [EtbPathNamingFn, c_void_p, c_double, POINTER(c_void_p),
        POINTER(c_void_p)]),
    # etb_bootstrap_client_ex(options, client_out, info_out)
    "etb_bootstrap_client_ex": (EtbStatus, [POINTER(EtbBootstrapOptions), POINTER(c_void_p),
        POINTER(c_void_p)]),
    # etb_client_connect(agent_rank, command_queue_path, state_path, options, client_out, info_out)
    "etb_client_connect": (EtbStatus, [c_int64, c_char_p, c_char_p, POINTER(EtbBootstrapOptions),
        POINTER(c_void_p), POINTER(c_void_p)]),
    # etb_client_close(client)
    "etb_client_close": (None, [c_void_p]),
    # etb_client_heartbeat_age(client, age_s_out)
    "etb_client_heartbeat_age": (EtbStatus, [c_void_p, POINTER(c_double)]),
    # etb_client_cuda_context(client)
    "etb_client_cuda_context": (c_void_p, [c_void_p]),
    # etb_client_bind_current_thread(client)
    "etb_client_bind_current_thread": (EtbStatus, [c_void_p]),
    # etb_client_reconnect(client, timeout_s)
    "etb_client_reconnect": (EtbStatus, [c_void_p, c_double]),
    # etb_client_event_fd(client, fd_out)
    "etb_client_event_fd": (EtbStatus, [c_void_p, POINTER(c_int32)]),
    # etb_client_take_resolved(client, tokens_out, capacity, count_out)
    "etb_client_take_resolved": (EtbStatus, [c_void_p, POINTER(c_uint64), c_size_t, POINTER(c_size_t)]),
    # etb_client_init_pair(client, pair_name, local_name, remote_name, expected_world_size,
    #     mesh_shape_payload, mesh_shape_payload_len, placements_payload, placements_payload_len, timeout_s)
    "etb_client_init_pair": (EtbStatus, [c_void_p, c_char_p, c_char_p, c_char_p, c_int64, c_void_p, c_size_t,
        c_void_p, c_size_t, c_double]),
    # etb_client_register_tensors(client, batch_id, tensors, tensor_count, bucket_size, timeout_s)
    "etb_client_register_tensors": (EtbStatus, [c_void_p, c_char_p, POINTER(EtbTensorPayload), c_size_t,
        c_int64, c_double]),
    # etb_client_transfer(client, batch_id, kind, timeout_s)
    "etb_client_transfer": (EtbStatus, [c_void_p, c_char_p, EtbTransferKind, c_double]),
    # etb_client_query_transfer_signal(client, batch_id, timeout_s, signal_out)
    "etb_client_query_transfer_signal": (EtbStatus, [c_void_p, c_char_p, c_double, POINTER(c_bool)]),
    # etb_client_cleanup_batch(client, batch_id, timeout_s)
    "etb_client_cleanup_batch": (EtbStatus, [c_void_p, c_char_p, c_double]),
    # etb_client_transfer_async(client, batch_id, kind, timeout_s, completion_out)
    "etb_client_transfer_async": (EtbStatus, [c_void_p, c_char_p, EtbTransferKind, c_double,
        POINTER(c_void_p)]),
    # etb_client_transfer_detached(client, batch_id, kind, timeout_s)
    "etb_client_transfer_detached": (EtbStatus, [c_void_p, c_char_p, EtbTransferKind, c_double]),
    # etb_client_cleanup_batch_detached(client, batch_id, timeout_s)
    "etb_client_cleanup_batch_detached": (EtbStatus, [c_void_p, c_char_p, c_double]),
    # etb_client_init_pair_async(client, pair_name, local_name, remote_name, expected_world_size,
    #     mesh_shape_payload, mesh_shape_payload_len, placements_payload, placements_payload_len, timeout_s,
    #     completion_out)
    "etb_client_init_pair_async": (EtbStatus, [c_void_p, c_char_p, c_char_p, c_char_p, c_int64, c_void_p,
        c_size_t, c_void_p, c_size_t, c_double, POINTER(c_void_p)]),
    # etb_client_cleanup_batch_async(client, batch_id, timeout_s, completion_out)
    "etb_client_cleanup_batch_async": (EtbStatus, [c_void_p, c_char_p, c_double, POINTER(c_void_p)]),
    # etb_client_query_transfer_signal_async(client, batch_id, timeout_s, completion_out)
    "etb_client_query_transfer_signal_async": (EtbStatus, [c_void_p, c_char_p, c_double, POINTER(c_void_p)]),
    # etb_client_read_transfer_signal(client, batch_id, signal_out)
    "etb_client_read_transfer_signal": (EtbStatus, [c_void_p, c_char_p, POINTER(c_bool)]),
    # etb_completion_wait(completion, timeout_s)
    "etb_completion_wait": (EtbStatus, [c_void_p, c_double]),
    # etb_completion_poll(completion, done_out)
    "etb_completion_poll": (EtbStatus, [c_void_p, POINTER(c_bool)]),
    # etb_completion_watch(completion, token)
    "etb_completion_watch": (EtbStatus, [c_void_p, c_uint64]),
    # etb_completion_free(completion)
    "etb_completion_free": (None, [c_void_p]),
    # etb_status_name(status)
    "etb_status_name": (c_char_p, [EtbStatus]),
    # etb_last_error_message()
    "etb_last_error_message": (c_char_p, []),
    # etb_client_adopt_pair(client, pair_name)
    "etb_client_adopt_pair": (EtbStatus, [c_void_p, c_char_p]),
    # etb_client_adopt_batch(client, batch_id)
    "etb_client_adopt_batch": (EtbStatus, [c_void_p, c_char_p]),
    # etb_client_batch_known(client, batch_id, known_out)
    "etb_client_batch_known": (EtbStatus, [c_void_p, c_char_p, POINTER(c_bool)]),
    # etb_client_pair_known(client, pair_name, known_out)
    "etb_client_pair_known": (EtbStatus, [c_void_p, c_char_p, POINTER(c_bool)]),
    # etb_info_agent_rank(info)
    "etb_info_agent_rank": (c_int64, [c_void_p]),
    # etb_info_global_rank(info)
    "etb_info_global_rank": (c_int64, [c_void_p]),
    # etb_info_has_rank_offset(info)
    "etb_info_has_rank_offset": (c_bool, [c_void_p]),
    # etb_info_rank_offset(info)
    "etb_info_rank_offset": (c_int64, [c_void_p]),
    # etb_info_device(info)
    "etb_info_device": (c_char_p, [c_void_p]),
    # etb_info_device_index(info)
    "etb_info_device_index": (c_int32, [c_void_p]),
    # etb_info_command_queue_path(info)
    "etb_info_command_queue_path": (c_char_p, [c_void_p]),
    # etb_info_state_path(info)
    "etb_info_state_path": (c_char_p, [c_void_p]),
    # etb_info_method(info)
    "etb_info_method": (c_char_p, [c_void_p]),
    # etb_info_agent_pid(info)
    "etb_info_agent_pid": (c_int32, [c_void_p]),
    # etb_info_cuda_bound(info)
    "etb_info_cuda_bound": (c_bool, [c_void_p]),
    # etb_info_device_name(info)
    "etb_info_device_name": (c_char_p, [c_void_p]),
    # etb_info_device_pci_bus_id(info)
    "etb_info_device_pci_bus_id": (c_char_p, [c_void_p]),
    # etb_info_device_uuid(info)
    "etb_info_device_uuid": (c_char_p, [c_void_p]),
    # etb_info_cuda_driver_version(info)
    "etb_info_cuda_driver_version": (c_int32, [c_void_p]),
    # etb_info_free(info)
    "etb_info_free": (None, [c_void_p]),
    # etb_set_log_callback(fn, user_data)
    "etb_set_log_callback": (EtbStatus, [EtbLogFn, c_void_p]),
    # etb_cuda_tensor_init(tensor)
    "etb_cuda_tensor_init": (None, [POINTER(EtbCudaTensor)]),
    # etb_client_cuda_tensor_payload(client, tensor, payload_out)
    "etb_client_cuda_tensor_payload": (EtbStatus, [c_void_p, POINTER(EtbCudaTensor), POINTER(c_void_p)]),
    # etb_client_dlpack_payload(client, tensor, wait_on_stream, stream, payload_out)
    "etb_client_dlpack_payload": (EtbStatus, [c_void_p, c_void_p, c_int32, c_void_p, POINTER(c_void_p)]),
    # etb_client_dlpack_legacy_payload(client, tensor, wait_on_stream, stream, payload_out)
    "etb_client_dlpack_legacy_payload": (EtbStatus, [c_void_p, c_void_p, c_int32, c_void_p,
        POINTER(c_void_p)]),
    # etb_mesh_shape_payload(dims, ndims, payload_out)
    "etb_mesh_shape_payload": (EtbStatus, [POINTER(c_int64), c_size_t, POINTER(c_void_p)]),
    # etb_placements_payload(placements, count, payload_out)
    "etb_placements_payload": (EtbStatus, [POINTER(EtbPlacement), c_size_t, POINTER(c_void_p)]),
    # etb_payload_data(payload)
    "etb_payload_data": (c_void_p, [c_void_p]),
    # etb_payload_len(payload)
    "etb_payload_len": (c_size_t, [c_void_p]),
    # etb_payload_in_use(payload, in_use_out)
    "etb_payload_in_use": (EtbStatus, [c_void_p, POINTER(c_bool)]),
    # etb_payload_free(payload)
    "etb_payload_free": (None, [c_void_p]),
    # etb_dtype_name(dtype)
    "etb_dtype_name": (c_char_p, [EtbDtype]),
    # etb_dtype_size(dtype)
    "etb_dtype_size": (c_size_t, [EtbDtype]),
    # etb_setup_ptrace()
    "etb_setup_ptrace": (EtbStatus, []),
    # etb_setup_ptrace_pid(tracer_pid)
    "etb_setup_ptrace_pid": (EtbStatus, [c_int32]),
    # etb_version()
    "etb_version": (c_char_p, []),
}
