from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecommendRequest(_message.Message):
    __slots__ = ("model", "version", "user_id", "history", "top_k", "exclude_item_ids", "exclude_history", "allow_unknown_items", "include_history", "min_journal_seq")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    ALLOW_UNKNOWN_ITEMS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    MIN_JOURNAL_SEQ_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    user_id: str
    history: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    exclude_history: bool
    allow_unknown_items: bool
    include_history: bool
    min_journal_seq: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., user_id: _Optional[str] = ..., history: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., exclude_history: _Optional[bool] = ..., allow_unknown_items: _Optional[bool] = ..., include_history: _Optional[bool] = ..., min_journal_seq: _Optional[int] = ...) -> None: ...

class ScoredItem(_message.Message):
    __slots__ = ("item_id", "score", "title")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    title: str
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., title: _Optional[str] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "model", "version", "unknown_item_ids", "known_user", "journal_seq")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    KNOWN_USER_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_SEQ_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model: str
    version: int
    unknown_item_ids: _containers.RepeatedScalarFieldContainer[str]
    known_user: bool
    journal_seq: int
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., unknown_item_ids: _Optional[_Iterable[str]] = ..., known_user: _Optional[bool] = ..., journal_seq: _Optional[int] = ...) -> None: ...

class RecommendBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[RecommendRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[RecommendRequest, _Mapping]]] = ...) -> None: ...

class RecommendBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[RecommendResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[RecommendResponse, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("user_id", "history", "upsert_items")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    UPSERT_ITEMS_FIELD_NUMBER: _ClassVar[int]
    user_id: bool
    history: bool
    upsert_items: bool
    def __init__(self, user_id: _Optional[bool] = ..., history: _Optional[bool] = ..., upsert_items: _Optional[bool] = ...) -> None: ...

class ModelVersionInfo(_message.Message):
    __slots__ = ("version", "kind", "user_tower", "item_tower", "dim", "num_items", "num_users", "index_type", "capabilities", "loaded_at", "is_default", "pinned", "journal_seq", "deleted_items", "serving", "engine", "item_engine", "index_backend", "encoder_instances")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    USER_TOWER_FIELD_NUMBER: _ClassVar[int]
    ITEM_TOWER_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    NUM_USERS_FIELD_NUMBER: _ClassVar[int]
    INDEX_TYPE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_SEQ_FIELD_NUMBER: _ClassVar[int]
    DELETED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    ITEM_ENGINE_FIELD_NUMBER: _ClassVar[int]
    INDEX_BACKEND_FIELD_NUMBER: _ClassVar[int]
    ENCODER_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    version: int
    kind: str
    user_tower: str
    item_tower: str
    dim: int
    num_items: int
    num_users: int
    index_type: str
    capabilities: Capabilities
    loaded_at: str
    is_default: bool
    pinned: bool
    journal_seq: int
    deleted_items: int
    serving: bool
    engine: str
    item_engine: str
    index_backend: str
    encoder_instances: int
    def __init__(self, version: _Optional[int] = ..., kind: _Optional[str] = ..., user_tower: _Optional[str] = ..., item_tower: _Optional[str] = ..., dim: _Optional[int] = ..., num_items: _Optional[int] = ..., num_users: _Optional[int] = ..., index_type: _Optional[str] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., loaded_at: _Optional[str] = ..., is_default: _Optional[bool] = ..., pinned: _Optional[bool] = ..., journal_seq: _Optional[int] = ..., deleted_items: _Optional[int] = ..., serving: _Optional[bool] = ..., engine: _Optional[str] = ..., item_engine: _Optional[str] = ..., index_backend: _Optional[str] = ..., encoder_instances: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "default_version", "versions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    default_version: int
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersionInfo]
    def __init__(self, name: _Optional[str] = ..., default_version: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[ModelVersionInfo, _Mapping]]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ItemText(_message.Message):
    __slots__ = ("item_id", "text", "title")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    text: str
    title: str
    def __init__(self, item_id: _Optional[str] = ..., text: _Optional[str] = ..., title: _Optional[str] = ...) -> None: ...

class UpsertItemsRequest(_message.Message):
    __slots__ = ("model", "version", "items", "min_journal_seq")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MIN_JOURNAL_SEQ_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    items: _containers.RepeatedCompositeFieldContainer[ItemText]
    min_journal_seq: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., items: _Optional[_Iterable[_Union[ItemText, _Mapping]]] = ..., min_journal_seq: _Optional[int] = ...) -> None: ...

class UpsertItemsResponse(_message.Message):
    __slots__ = ("model", "version", "added", "replaced", "num_items", "journal_seq")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_SEQ_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    added: int
    replaced: int
    num_items: int
    journal_seq: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., added: _Optional[int] = ..., replaced: _Optional[int] = ..., num_items: _Optional[int] = ..., journal_seq: _Optional[int] = ...) -> None: ...

class DeleteItemsRequest(_message.Message):
    __slots__ = ("model", "version", "item_ids", "min_journal_seq")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    MIN_JOURNAL_SEQ_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    min_journal_seq: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., item_ids: _Optional[_Iterable[str]] = ..., min_journal_seq: _Optional[int] = ...) -> None: ...

class DeleteItemsResponse(_message.Message):
    __slots__ = ("model", "version", "deleted", "already_deleted", "num_items", "journal_seq")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_DELETED_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_SEQ_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    deleted: int
    already_deleted: int
    num_items: int
    journal_seq: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., deleted: _Optional[int] = ..., already_deleted: _Optional[int] = ..., num_items: _Optional[int] = ..., journal_seq: _Optional[int] = ...) -> None: ...

class ReloadModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadModelsResponse(_message.Message):
    __slots__ = ("loaded", "unloaded", "refused", "serving")
    LOADED_FIELD_NUMBER: _ClassVar[int]
    UNLOADED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    loaded: _containers.RepeatedScalarFieldContainer[str]
    unloaded: _containers.RepeatedScalarFieldContainer[str]
    refused: _containers.RepeatedScalarFieldContainer[str]
    serving: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, loaded: _Optional[_Iterable[str]] = ..., unloaded: _Optional[_Iterable[str]] = ..., refused: _Optional[_Iterable[str]] = ..., serving: _Optional[_Iterable[str]] = ...) -> None: ...
