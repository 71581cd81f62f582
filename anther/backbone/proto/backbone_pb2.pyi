from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("data", "dtype", "shape", "scale")
    DATA_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    scale: bytes
    def __init__(self, data: _Optional[bytes] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., scale: _Optional[bytes] = ...) -> None: ...

class ForwardRequest(_message.Message):
    __slots__ = ("inputs_embeds", "attention_mask", "labels", "grad_dtype", "position_ids")
    INPUTS_EMBEDS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_MASK_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    GRAD_DTYPE_FIELD_NUMBER: _ClassVar[int]
    POSITION_IDS_FIELD_NUMBER: _ClassVar[int]
    inputs_embeds: Tensor
    attention_mask: Tensor
    labels: Tensor
    grad_dtype: str
    position_ids: Tensor
    def __init__(self, inputs_embeds: _Optional[_Union[Tensor, _Mapping]] = ..., attention_mask: _Optional[_Union[Tensor, _Mapping]] = ..., labels: _Optional[_Union[Tensor, _Mapping]] = ..., grad_dtype: _Optional[str] = ..., position_ids: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class TrainStepReply(_message.Message):
    __slots__ = ("loss", "grad")
    LOSS_FIELD_NUMBER: _ClassVar[int]
    GRAD_FIELD_NUMBER: _ClassVar[int]
    loss: float
    grad: Tensor
    def __init__(self, loss: _Optional[float] = ..., grad: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class HiddenStatesReply(_message.Message):
    __slots__ = ("hidden_states",)
    HIDDEN_STATES_FIELD_NUMBER: _ClassVar[int]
    hidden_states: Tensor
    def __init__(self, hidden_states: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class HiddenBackwardRequest(_message.Message):
    __slots__ = ("inputs_embeds", "attention_mask", "grad_hidden", "grad_dtype", "position_ids")
    INPUTS_EMBEDS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_MASK_FIELD_NUMBER: _ClassVar[int]
    GRAD_HIDDEN_FIELD_NUMBER: _ClassVar[int]
    GRAD_DTYPE_FIELD_NUMBER: _ClassVar[int]
    POSITION_IDS_FIELD_NUMBER: _ClassVar[int]
    inputs_embeds: Tensor
    attention_mask: Tensor
    grad_hidden: Tensor
    grad_dtype: str
    position_ids: Tensor
    def __init__(self, inputs_embeds: _Optional[_Union[Tensor, _Mapping]] = ..., attention_mask: _Optional[_Union[Tensor, _Mapping]] = ..., grad_hidden: _Optional[_Union[Tensor, _Mapping]] = ..., grad_dtype: _Optional[str] = ..., position_ids: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class GradReply(_message.Message):
    __slots__ = ("grad",)
    GRAD_FIELD_NUMBER: _ClassVar[int]
    grad: Tensor
    def __init__(self, grad: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ScoreReply(_message.Message):
    __slots__ = ("scores",)
    SCORES_FIELD_NUMBER: _ClassVar[int]
    scores: Tensor
    def __init__(self, scores: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class LogitsReply(_message.Message):
    __slots__ = ("logits",)
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    logits: Tensor
    def __init__(self, logits: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("inputs_embeds", "attention_mask", "max_new_tokens", "stop_token_ids", "position_ids")
    INPUTS_EMBEDS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_MASK_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    POSITION_IDS_FIELD_NUMBER: _ClassVar[int]
    inputs_embeds: Tensor
    attention_mask: Tensor
    max_new_tokens: int
    stop_token_ids: _containers.RepeatedScalarFieldContainer[int]
    position_ids: Tensor
    def __init__(self, inputs_embeds: _Optional[_Union[Tensor, _Mapping]] = ..., attention_mask: _Optional[_Union[Tensor, _Mapping]] = ..., max_new_tokens: _Optional[int] = ..., stop_token_ids: _Optional[_Iterable[int]] = ..., position_ids: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class GenerateReply(_message.Message):
    __slots__ = ("token_ids",)
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    token_ids: Tensor
    def __init__(self, token_ids: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoReply(_message.Message):
    __slots__ = ("fingerprint", "hidden_size", "vocab_size", "model_dtype", "wire_dtypes", "max_sequence_length", "max_chunk_bytes", "max_request_bytes", "max_new_tokens", "batching", "batch_window_ms", "max_batch_sequences", "position_dims", "max_request_tokens", "max_calls_per_client", "max_inflight_bytes", "read_timeout_s")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    MODEL_DTYPE_FIELD_NUMBER: _ClassVar[int]
    WIRE_DTYPES_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    BATCH_WINDOW_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    POSITION_DIMS_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_CALLS_PER_CLIENT_FIELD_NUMBER: _ClassVar[int]
    MAX_INFLIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    READ_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    hidden_size: int
    vocab_size: int
    model_dtype: str
    wire_dtypes: _containers.RepeatedScalarFieldContainer[str]
    max_sequence_length: int
    max_chunk_bytes: int
    max_request_bytes: int
    max_new_tokens: int
    batching: bool
    batch_window_ms: float
    max_batch_sequences: int
    position_dims: int
    max_request_tokens: int
    max_calls_per_client: int
    max_inflight_bytes: int
    read_timeout_s: float
    def __init__(self, fingerprint: _Optional[str] = ..., hidden_size: _Optional[int] = ..., vocab_size: _Optional[int] = ..., model_dtype: _Optional[str] = ..., wire_dtypes: _Optional[_Iterable[str]] = ..., max_sequence_length: _Optional[int] = ..., max_chunk_bytes: _Optional[int] = ..., max_request_bytes: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., batching: _Optional[bool] = ..., batch_window_ms: _Optional[float] = ..., max_batch_sequences: _Optional[int] = ..., position_dims: _Optional[int] = ..., max_request_tokens: _Optional[int] = ..., max_calls_per_client: _Optional[int] = ..., max_inflight_bytes: _Optional[int] = ..., read_timeout_s: _Optional[float] = ...) -> None: ...
